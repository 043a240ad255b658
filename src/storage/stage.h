// Copies finished step files to remote storage and back, so that a reader
// never sees a partial file under a final name.
//
// Stage-out commit protocol: upload to a hidden temporary name in the target
// directory, check that the remote length equals the local size, then rename
// the temporary file to the final name. Every attempt uses a new temporary
// name, because HDFS keeps a lease on the file of an interrupted upload. HDFS
// renames within one namespace atomically, so the final name appears complete
// or not at all. Transient errors are retried with exponential backoff and
// jitter.
//
// These functions are not collective: call them on one rank (or one thread)
// per step file, and share the outcome with the other ranks yourself.
#pragma once

#include "storage/hdfs_config.h"
#include "storage/storage.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// Copies local_file to remote_dir/final_name by the commit protocol above.
// Creates remote_dir when missing. An existing remote_dir/final_name is an
// IoError unless replace_existing is true, in which case it is removed just
// before the first rename (the local copy stays intact, so nothing is lost if
// the rename then fails). A retried rename does not remove the final file,
// because after a lost reply it may be this stage-out's own. The temporary
// file is removed on every failure path while the storage still responds.
// The local file is not modified.
//
// Throws IoError naming the operation and the path after a non-transient
// error, or after the policy's attempts or time run out; NotFoundError
// when local_file does not exist.
void stage_out(Storage& storage, const std::string& local_file, const std::string& remote_dir,
               const std::string& final_name, const RetryPolicy& policy, bool replace_existing = false);

// Copies remote_path to local_file: downloads to a hidden temporary name next
// to local_file, resumes from the bytes already received after a dropped
// connection, checks the size, fsyncs, and renames to local_file durably.
// expected_size is the remote length from a listing; when nullopt, the remote
// file is stat-ed first. Replaces an existing local_file. Returns the size.
//
// Throws NotFoundError when remote_path does not exist, IoError when the
// size differs from expected_size or after the policy's attempts run out.
uint64_t stage_in(Storage& storage, const std::string& remote_path, const std::string& local_file,
                  std::optional<uint64_t> expected_size, const RetryPolicy& policy = {});

// Steps of the committed step files (step_<12 digits>.h5) in remote_dir,
// ascending. Temporary files and directories are ignored; a missing
// remote_dir has none.
std::vector<int64_t> list_remote_steps(Storage& storage, const std::string& remote_dir);

// The temporary name that stage_out uploads final_name under:
// ".<final_name>.tmp-<16 hex digits>", new on each call.
std::string remote_temporary_name(const std::string& final_name);

// Removes the temporary files that interrupted stage-outs left in remote_dir
// and returns how many it removed. Only call it while no stage-out into
// remote_dir is running, since it cannot tell an active upload from a stale one.
int remove_remote_temporaries(Storage& storage, const std::string& remote_dir);

}  // namespace persistence::detail
