// Reading step files: the root attributes and format check, the list of saved
// models and optimizers, and tensors, in full (local) or into sharded targets
// (collective), with checksum verification.
#pragma once

#include "h5/handle.h"
#include "mpi/communicator.h"
#include "shard/regions.h"

#include <persistence/state_dict.h>

#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// A tensor dataset as found in a step file.
struct StoredTensor {
  std::string key;
  std::string dataset;  // HDF5 path
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::optional<c10::ScalarType> source_dtype;
  Shape shape;
  std::optional<uint64_t> checksum;
};

// Root facts of a step file.
struct StepInfo {
  int64_t step = 0;
  int64_t world_size = 0;
  std::string task_id;
  std::vector<std::string> models;      // sorted
  std::vector<std::string> optimizers;  // sorted
};

// Opens path locally and checks that it is a step file this version can read.
// Throws FormatError (wrong format, newer major version) or IoError.
StepInfo read_step_info(const std::string& path);

// Lists the tensors below group (e.g. /models/model/states). Local.
std::vector<StoredTensor> list_tensors(const std::string& path, const std::string& group);

// Reads a string dataset. Local.
std::string read_text(const std::string& path, const std::string& dataset);

// Reads every tensor below group in full. Local. Throws IntegrityError naming
// file and key when verify is set and a checksum does not match.
TensorDict read_tensors(const std::string& path, const std::string& group, bool verify);

// Reads and verifies every tensor below group, spreading the keys over the
// ranks of comm. Collective; throws the same error on every rank.
void verify_step(const Communicator& comm, const std::string& path);

// Collective over comm. Fills target in place; see PersistedStates::load_into.
// With direct_io, each rank reads its contiguous pieces of datasets of at
// least 1 MiB itself with O_DIRECT (DirectFile) instead of through HDF5.
void read_into(const Communicator& comm, const std::string& path, const std::string& group, StateDict& target,
               bool verify, int64_t max_bytes_per_call, bool direct_io = true);

}  // namespace persistence::detail
