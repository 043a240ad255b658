// Settings of a PersistenceManager. Unset fields fall back to environment
// variables and then to defaults, resolved once in ManagerOptions::resolved().
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace persistence {

// How to reach HDFS for hdfs:// save paths, task registries and loads. An
// unset field (empty string, nullopt, zero) falls back to the environment
// variable named beside it, then to the default. The fallbacks are read only
// when an hdfs:// path is used, by the storage layer's HdfsConfig::resolve()
// (src/storage/hdfs_config.cpp); README.md lists every setting.
struct HdfsOptions {
  // "webhdfs" (REST API over libcurl) or "cli" (the `hdfs dfs` command).
  // PERSISTENCE_HDFS_BACKEND; default "webhdfs".
  std::string backend;

  // Comma-separated NameNode HTTP addresses, each "host", "host:port" or
  // "http[s]://host:port" (port default 9870, 9871 for https); several name an
  // HA pair, tried in order. This is also the NameNode of hdfs:///dir paths.
  // PERSISTENCE_WEBHDFS_ADDRESS; default: the host of the hdfs:// URI on port
  // 9870, since the URI's own port is the RPC port.
  std::string webhdfs_address;

  // Sent as user.name when neither a delegation token nor Kerberos is used.
  // PERSISTENCE_HDFS_USER, then HADOOP_USER_NAME; default: none.
  std::string user;

  // Delegation token, sent as delegation=...; it wins over user and Kerberos.
  // PERSISTENCE_HDFS_DELEGATION_TOKEN; default: none.
  std::string delegation_token;

  // Kerberos SPNEGO to the NameNode with the caller's ticket cache.
  // PERSISTENCE_HDFS_KERBEROS; default false.
  std::optional<bool> kerberos;

  // Send X-XSRF-HEADER on requests other than GET.
  // PERSISTENCE_HDFS_CSRF_HEADER; default true.
  std::optional<bool> csrf_header;

  // Path or name (looked up in PATH) of the `hdfs` command of the cli backend.
  // PERSISTENCE_HDFS_COMMAND; default "hdfs".
  std::string command;

  // TCP connect time limit. PERSISTENCE_HDFS_CONNECT_TIMEOUT (seconds); default 30 s.
  std::chrono::milliseconds connect_timeout{0};
  // Time limit of one WebHDFS metadata request. PERSISTENCE_HDFS_REQUEST_TIMEOUT; default 60 s.
  std::chrono::milliseconds request_timeout{0};
  // A WebHDFS transfer that moves no byte for this long is aborted.
  // PERSISTENCE_HDFS_STALL_TIMEOUT; default 60 s.
  std::chrono::milliseconds stall_timeout{0};
  // Time limit of one `hdfs dfs` command. PERSISTENCE_HDFS_COMMAND_TIMEOUT; default 1 h.
  std::chrono::milliseconds command_timeout{0};

  // Attempts in total of an operation that meets transient errors, the first
  // one included. PERSISTENCE_HDFS_RETRY_ATTEMPTS; default 8.
  int retry_attempts = 0;
  // No retry starts once this much time has passed since the operation began.
  // PERSISTENCE_HDFS_RETRY_MAX_ELAPSED (seconds); default 30 min.
  std::chrono::milliseconds retry_max_elapsed{0};
};

struct ManagerOptions {
  // Communicator of every collective call; the manager works on its own duplicate.
  MPI_Comm comm = MPI_COMM_WORLD;

  // Task id recorded in the task registry. Empty: PERSISTENCE_TASK_ID, else a
  // generated 16-hex-digit id that is logged at start.
  std::string task_id;

  // Directory of the task registry, a local path or an hdfs:// URI (rank 0
  // writes the record). Empty: PERSISTENCE_REGISTRY, else
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

  // Datasets of at least alignment_threshold bytes move between memory and
  // the file with O_DIRECT, each rank moving its own contiguous pieces, so
  // checkpoint data skips the page cache; HDF5 still creates every object
  // collectively. false: they go through HDF5's collective MPI-IO transfers,
  // as smaller datasets always do. File systems without O_DIRECT use the page
  // cache either way. PERSISTENCE_DIRECT_IO=0 (or false, no, off) turns it
  // off without a rebuild.
  bool direct_io = true;

  // Retention: keep the newest keep_last committed steps (0 keeps every step)
  // and, beyond those, every step that is a multiple of keep_every (0: none).
  // Older steps are removed only after a newer step is committed and every
  // checksum of it verified, and the newest committed step is never removed.
  int64_t keep_last = 0;
  int64_t keep_every = 0;

  // For hdfs:// save paths: the local directory that step files are written
  // to before stage-out, and staged in to on resume. It must be on a file
  // system that every rank reaches (the same path on every node). Empty:
  // PERSISTENCE_STAGING_DIR, else <TMPDIR or /tmp>/persistence-staging/<path>.
  std::string staging_dir;

  // For hdfs:// save paths and registries: how to reach HDFS (see HdfsOptions).
  HdfsOptions hdfs;

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

  // Returns a copy with every unset field filled from the environment and
  // defaults, except hdfs, whose fallbacks are read only for hdfs:// paths.
  ManagerOptions resolved() const;
};

}  // namespace persistence
