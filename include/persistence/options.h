// Settings of a PersistenceManager. Unset fields fall back to environment
// variables and then to defaults, resolved once in ManagerOptions::resolved().
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace persistence {

struct ManagerOptions {
  // Communicator of every collective call; the manager works on its own duplicate.
  MPI_Comm comm = MPI_COMM_WORLD;

  // Task id recorded in the task registry. Empty: PERSISTENCE_TASK_ID, else a
  // generated 16-hex-digit id that is logged at start.
  std::string task_id;

  // Directory of the task registry. Empty: PERSISTENCE_REGISTRY, else
  // $XDG_CACHE_HOME/persistence/tasks or ~/.cache/persistence/tasks.
  std::string registry_dir;

  // Verify every dataset's checksum on load.
  bool verify_checksums = true;

  // Largest byte count one rank moves in one HDF5 read or write call; larger
  // transfers are split (MPI-IO counts are 32-bit ints on this stack).
  std::size_t max_bytes_per_call = std::size_t{1} << 30;

  // Datasets of at least alignment_threshold bytes start at a multiple of
  // alignment bytes (match the file-system block or stripe size).
  std::size_t alignment = std::size_t{1} << 20;
  std::size_t alignment_threshold = std::size_t{1} << 20;

  // Retention: keep the newest keep_last committed steps (0 keeps every step)
  // and, beyond those, every step that is a multiple of keep_every (0: none).
  // Older steps are removed only after a newer step is committed, and the
  // newest committed step is never removed.
  int64_t keep_last = 0;
  int64_t keep_every = 0;

  // For hdfs:// save paths: the local directory that step files are written
  // to before stage-out, and staged in to on resume. It must be on a file
  // system that every rank reaches (the same path on every node). Empty:
  // PERSISTENCE_STAGING_DIR, else <TMPDIR or /tmp>/persistence-staging/<path>.
  // HDFS itself is configured through the PERSISTENCE_HDFS_* and
  // PERSISTENCE_WEBHDFS_* environment variables (docs/hdfs.md).
  std::string staging_dir;

  // For hdfs:// save paths: local step files kept after their stage-out is
  // verified, newest first. The newest committed step always stays.
  int64_t local_steps_kept = 1;

  // Cap on the host staging memory of asynchronous saves, in bytes; 0 means no
  // cap. Each save name keeps one staging buffer; a save that would exceed the
  // cap first waits for the background writes in flight.
  std::size_t max_staging_bytes = 0;

  // How long a collective call waits for every rank to arrive before all
  // ranks that arrived throw a CollectiveError naming the ranks that did not.
  // Zero: PERSISTENCE_COLLECTIVE_TIMEOUT (seconds), else 30 minutes.
  std::chrono::milliseconds collective_timeout{0};

  // Returns a copy with every unset field filled from the environment and defaults.
  ManagerOptions resolved() const;
};

}  // namespace persistence
