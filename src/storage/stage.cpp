#include "storage/stage.h"

#include "core/logging.h"
#include "io/step_files.h"
#include "storage/retry.h"

#include <algorithm>
#include <filesystem>
#include <thread>

namespace persistence::detail {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTemporaryMarker = ".tmp-";

uint64_t local_file_size(const std::string& path) {
  std::error_code error;
  auto size = fs::file_size(path, error);
  if (error == std::errc::no_such_file_or_directory) {
    throw NotFoundError("The local step file to stage out does not exist", ErrorContext{path, {}, {}, {}});
  }
  if (error) {
    throw IoError("Cannot read the size of the local step file: " + error.message(), ErrorContext{path, {}, {}, {}});
  }
  return size;
}

// Removes a remote temporary file when it goes out of scope, unless it was
// committed. Failures are logged, not thrown: the name is hidden and
// remove_remote_temporaries can collect it later.
class RemoteTemporary {
 public:
  explicit RemoteTemporary(Storage& storage) : storage_(storage) {}
  RemoteTemporary(const RemoteTemporary&) = delete;
  RemoteTemporary& operator=(const RemoteTemporary&) = delete;
  ~RemoteTemporary() { discard(); }

  // Discards the current temporary file and names a new one.
  const std::string& renew(const std::string& path) {
    discard();
    path_ = path;
    return path_;
  }

  void committed() { path_.clear(); }

  void discard() {
    if (path_.empty()) return;
    try {
      storage_.remove(path_);
    } catch (const std::exception& error) {
      logger().warn("Cannot remove the remote temporary file {}: {}", path_, error.what());
    }
    path_.clear();
  }

  const std::string& path() const { return path_; }

 private:
  Storage& storage_;
  std::string path_;
};

void check_remote_size(Storage& storage, const std::string& path, uint64_t expected) {
  auto entry = storage.stat(path);
  if (!entry) {
    throw StorageError("The uploaded file is missing right after its upload", ErrorContext{path, {}, {}, {}},
                       /*transient=*/true);
  }
  if (entry->is_dir || entry->size != expected) {
    throw StorageError("The uploaded file has " + std::to_string(entry->size) + " bytes, but the local file has " +
                           std::to_string(expected),
                       ErrorContext{path, {}, {}, {}}, /*transient=*/true);
  }
}

// Fails early, before any upload, when the final name is taken. Returns true
// when a file there is to be replaced.
bool check_final_name_free(Storage& storage, const std::string& final_path, bool replace_existing) {
  auto entry = storage.stat(final_path);
  if (!entry) return false;
  if (entry->is_dir) {
    throw StorageError("A directory has the name of the step file to stage out", ErrorContext{final_path, {}, {}, {}},
                       /*transient=*/false, "Remove or rename that directory");
  }
  if (!replace_existing) {
    throw StorageError("The remote step file already exists, and stage-out does not replace step files",
                       ErrorContext{final_path, {}, {}, {}}, /*transient=*/false,
                       "Remove the remote file, or stage out with replace_existing set");
  }
  return true;
}

enum class CommitOutcome { kCommitted, kTemporaryLost };

// Renames temporary to final_path. A false from RENAME does not say why, so
// both names are examined: the final name with the right size and no
// temporary left means an earlier attempt's rename went through.
//
// replace_pending is set when a file that existed before this stage-out is to
// be replaced. It is removed once, and the flag cleared: after a RENAME whose
// reply was lost, the file under the final name may be this stage-out's own.
CommitOutcome commit(Storage& storage, const std::string& temporary, const std::string& final_path, uint64_t size,
                     bool& replace_pending) {
  if (replace_pending) {
    logger().info("Replacing the remote step file {}", final_path);
    storage.remove(final_path);
    replace_pending = false;
  }
  if (storage.rename(temporary, final_path)) return CommitOutcome::kCommitted;

  auto final_entry = storage.stat(final_path);
  auto temporary_entry = storage.stat(temporary);
  logger().debug("RENAME of {} to {} returned false; final {}, temporary {}", temporary, final_path,
                 final_entry ? "exists" : "missing", temporary_entry ? "exists" : "missing");
  if (!temporary_entry && final_entry && !final_entry->is_dir && final_entry->size == size) {
    return CommitOutcome::kCommitted;
  }
  if (!temporary_entry) return CommitOutcome::kTemporaryLost;
  if (final_entry) {
    throw StorageError("Cannot rename the uploaded file to the final name, because that name is taken",
                       ErrorContext{final_path, {}, {}, {}}, /*transient=*/false,
                       "Another writer may be staging out the same step; remove the remote file if it is stale");
  }
  throw StorageError("RENAME returned false although the uploaded file exists and the final name is free",
                     ErrorContext{final_path, {}, {}, {}}, /*transient=*/true);
}

// Waits out the backoff after a transient error, or throws the error when the
// policy allows no more attempts.
void wait_before_retry(Backoff& backoff, const StorageError& error, const std::string& operation) {
  const int failed_attempt = backoff.attempts();
  auto delay = backoff.next_delay();
  if (!delay) {
    throw IoError(operation + " failed after " + std::to_string(failed_attempt) + " attempts in " +
                      std::to_string(backoff.elapsed().count()) + " ms: " + error.problem(),
                  error.context(), "Check that the storage is reachable, then retry");
  }
  logger().warn("{} failed (attempt {}): {}; retrying in {} ms", operation, failed_attempt, error.what(),
                delay->count());
  std::this_thread::sleep_for(*delay);
}

uint64_t partial_size(const std::string& path) {
  std::error_code error;
  auto size = fs::file_size(path, error);
  return error ? 0 : size;
}

// Removes a local file when it goes out of scope, unless released.
class LocalTemporary {
 public:
  explicit LocalTemporary(std::string path) : path_(std::move(path)) {}
  LocalTemporary(const LocalTemporary&) = delete;
  LocalTemporary& operator=(const LocalTemporary&) = delete;
  ~LocalTemporary() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove(path_, ignored);
  }
  void release() { path_.clear(); }

 private:
  std::string path_;
};

}  // namespace

std::string remote_temporary_name(const std::string& final_name) {
  return "." + final_name + kTemporaryMarker + random_token();
}

void stage_out(Storage& storage, const std::string& local_file, const std::string& remote_dir,
               const std::string& final_name, const RetryPolicy& policy, bool replace_existing) {
  const uint64_t size = local_file_size(local_file);
  const std::string final_path = join_storage_path(remote_dir, final_name);
  const std::string operation = "Stage-out of " + local_file + " to " + final_path;
  logger().info("Staging out {} ({} bytes) to {} on {}", local_file, size, final_path, storage.describe());

  Backoff backoff(policy);
  RemoteTemporary temporary(storage);
  bool uploaded = false;
  bool replace_pending = false;
  while (true) {
    try {
      if (!uploaded) {
        storage.mkdirs(remote_dir);
        replace_pending = check_final_name_free(storage, final_path, replace_existing);
        temporary.renew(join_storage_path(remote_dir, remote_temporary_name(final_name)));
        storage.upload(local_file, temporary.path());
        check_remote_size(storage, temporary.path(), size);
        uploaded = true;
      }
      if (commit(storage, temporary.path(), final_path, size, replace_pending) == CommitOutcome::kCommitted) {
        temporary.committed();
        logger().info("Staged out {} after {} attempt(s)", final_path, backoff.attempts());
        return;
      }
      uploaded = false;
      throw StorageError("The uploaded file disappeared before its rename", ErrorContext{temporary.path(), {}, {}, {}},
                         /*transient=*/true);
    } catch (const StorageError& error) {
      // A failed upload leaves a partial file: drop it, and upload under a new name next time.
      if (!uploaded) temporary.discard();
      if (!error.transient()) throw IoError(operation + " failed: " + error.problem(), error.context(), error.advice());
      wait_before_retry(backoff, error, operation);
    }
  }
}

uint64_t stage_in(Storage& storage, const std::string& remote_path, const std::string& local_file,
                  std::optional<uint64_t> expected_size, const RetryPolicy& policy) {
  const std::string operation = "Stage-in of " + remote_path + " to " + local_file;
  fs::path local(local_file);
  std::string parent = local.parent_path().empty() ? "." : local.parent_path().string();
  make_directories(parent);
  const std::string partial = parent + "/." + local.filename().string() + ".part-" + random_token();
  LocalTemporary partial_guard(partial);

  Backoff backoff(policy);
  uint64_t received = 0;
  while (true) {
    try {
      if (!expected_size) {
        auto entry = storage.stat(remote_path);
        if (!entry || entry->is_dir) {
          throw NotFoundError("The remote step file does not exist", ErrorContext{remote_path, {}, {}, {}});
        }
        expected_size = entry->size;
      }
      // A local file longer than the remote one cannot be a prefix of it.
      uint64_t offset = std::min(partial_size(partial), *expected_size);
      received = storage.download(remote_path, partial, offset);
      if (received > *expected_size) {
        throw IoError("The remote file has more than the expected " + std::to_string(*expected_size) + " bytes",
                      ErrorContext{remote_path, {}, {}, {}}, "The remote file changed during stage-in; retry it");
      }
      // A transfer cut short fails in download(); a complete one this short
      // means the remote file is shorter than expected.
      if (received < *expected_size) {
        throw IoError("The remote file has " + std::to_string(received) + " bytes, but " +
                          std::to_string(*expected_size) + " were expected",
                      ErrorContext{remote_path, {}, {}, {}}, "The remote file changed during stage-in; retry it");
      }
      break;
    } catch (const StorageError& error) {
      if (!error.transient()) throw IoError(operation + " failed: " + error.problem(), error.context(), error.advice());
      // Progress since the last failure earns a fresh set of attempts.
      uint64_t now = partial_size(partial);
      if (now > received) backoff.reset_failures();
      received = now;
      wait_before_retry(backoff, error, operation);
    }
  }

  // The data must be on disk before the rename publishes it.
  sync_path(partial);
  rename_durably(partial, local_file);
  partial_guard.release();
  logger().info("Staged in {} ({} bytes) to {}", remote_path, received, local_file);
  return received;
}

std::vector<int64_t> list_remote_steps(Storage& storage, const std::string& remote_dir) {
  std::vector<int64_t> steps;
  for (const auto& entry : storage.list(remote_dir)) {
    if (entry.is_dir) continue;
    if (auto step = parse_step_file_name(entry.name)) steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
  return steps;
}

int remove_remote_temporaries(Storage& storage, const std::string& remote_dir) {
  int removed = 0;
  for (const auto& entry : storage.list(remote_dir)) {
    if (entry.is_dir || entry.name.empty() || entry.name[0] != '.') continue;
    if (entry.name.find(kTemporaryMarker) == std::string::npos) continue;
    if (storage.remove(join_storage_path(remote_dir, entry.name))) ++removed;
  }
  if (removed > 0) logger().info("Removed {} stale temporary file(s) from {}", removed, remote_dir);
  return removed;
}

}  // namespace persistence::detail
