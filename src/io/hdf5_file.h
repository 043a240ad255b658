// Opening and creating step files with the MPI-IO driver (collective) or the
// POSIX driver (one process), with the property lists every step file uses.
#pragma once

#include "h5/handle.h"
#include "mpi/communicator.h"

#include <cstddef>
#include <string>

namespace persistence::detail {

struct FileSettings {
  std::size_t alignment = std::size_t{1} << 20;
  std::size_t alignment_threshold = std::size_t{1} << 20;
};

// Collective over comm.
h5::Handle create_parallel_file(const std::string& path, const Communicator& comm, const FileSettings& settings);
h5::Handle open_parallel_file(const std::string& path, const Communicator& comm, bool writable);

// Local: opens read-only with the POSIX driver and without file locking, so a
// reader never blocks or is blocked by another reader.
h5::Handle open_local_file(const std::string& path);

// A transfer property list for collective MPI-IO transfers.
h5::Handle collective_transfer();

// Dataset creation properties: contiguous, allocated at creation, never filled
// (the writer overwrites every byte, and filling would double the write).
h5::Handle tensor_dataset_creation();

}  // namespace persistence::detail
