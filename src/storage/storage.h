// The storage interface behind which step files are listed, moved and copied:
// a local POSIX directory tree, HDFS over WebHDFS, or HDFS through the
// `hdfs dfs` command line. Paths are absolute paths inside the storage's own
// namespace ("/user/alice/run1/step_000000000100.h5"), never URIs.
#pragma once

#include <persistence/errors.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// One file or directory as a listing or a stat returns it.
struct StorageEntry {
  std::string name;  // last path component
  uint64_t size = 0;  // bytes; 0 for directories
  bool is_dir = false;
};

// A failed storage operation. It is an IoError, so callers that do not care
// about retries catch it as one. transient() marks errors that a later attempt
// may not see: connection failures, timeouts, HTTP 5xx, and HDFS exceptions
// such as StandbyException or RetriableException.
class StorageError : public IoError {
 public:
  StorageError(const std::string& problem, ErrorContext context, bool transient, std::string advice = {},
               int http_status = 0, std::string remote_exception = {});

  bool transient() const noexcept { return transient_; }

  // HTTP status of the failed request, or 0 when there was no HTTP response.
  int http_status() const noexcept { return http_status_; }

  // Simple class name of the HDFS exception ("StandbyException"), or empty.
  const std::string& remote_exception() const noexcept { return remote_exception_; }

 private:
  bool transient_;
  int http_status_;
  std::string remote_exception_;
};

// A file system that step files are staged to and from.
//
// Thread-safety: an instance is not thread-safe, so use one per thread. Every
// method throws StorageError on failure, with the operation and the path in
// the message.
class Storage {
 public:
  virtual ~Storage() = default;

  // Short description for log messages, such as "webhdfs http://nn:9870".
  virtual std::string describe() const = 0;

  // Lists the entries of dir in name order. A missing dir has no entries.
  virtual std::vector<StorageEntry> list(const std::string& dir) = 0;

  // Returns the entry at path, or nullopt when nothing exists there.
  virtual std::optional<StorageEntry> stat(const std::string& path) = 0;

  // Creates dir and its missing parents. An existing directory is not an error.
  virtual void mkdirs(const std::string& dir) = 0;

  // Copies local_file to remote_path, creating missing parents and replacing
  // an existing file. A failed upload may leave a partial file at
  // remote_path: HDFS shows a file under construction at its name, so upload
  // only to a temporary name and rename afterwards.
  virtual void upload(const std::string& local_file, const std::string& remote_path) = 0;

  // Copies remote_path to local_file, starting at byte offset of the remote
  // file: local_file is truncated to offset and the bytes from offset on are
  // appended. Bytes received before a failure stay in local_file, so a caller
  // resumes by passing the local size as the next offset. An implementation
  // that cannot read from an offset rewrites the whole file. Returns the size
  // of local_file afterwards.
  virtual uint64_t download(const std::string& remote_path, const std::string& local_file, uint64_t offset) = 0;

  // Renames from to to with HDFS rename semantics, which never replace an
  // existing file: returns false, with nothing changed, when from is missing
  // or to already exists as a file. When to is an existing directory, from
  // moves into it. Returns true when the rename happened.
  virtual bool rename(const std::string& from, const std::string& to) = 0;

  // Removes a file or an empty directory. Returns false when path did not exist.
  virtual bool remove(const std::string& path) = 0;
};

// Joins a directory and a name with one '/'.
std::string join_storage_path(const std::string& dir, const std::string& name);

// The last component of a storage path ("/a/b.h5" gives "b.h5").
std::string storage_base_name(const std::string& path);

}  // namespace persistence::detail
