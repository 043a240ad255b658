// Storage on a POSIX file system: local disk, Lustre, GPFS or NFS.
#pragma once

#include "storage/storage.h"

namespace persistence::detail {

// Works on absolute local paths. upload fsyncs the copy, and rename fsyncs the
// directory, so a finished stage-out survives a crash of the machine.
// rename follows HDFS semantics through renameat2(RENAME_NOREPLACE), with a
// check-then-rename fallback on file systems that lack it.
class PosixStorage : public Storage {
 public:
  std::string describe() const override { return "posix"; }
  std::vector<StorageEntry> list(const std::string& dir) override;
  std::optional<StorageEntry> stat(const std::string& path) override;
  void mkdirs(const std::string& dir) override;
  void upload(const std::string& local_file, const std::string& remote_path) override;
  uint64_t download(const std::string& remote_path, const std::string& local_file, uint64_t offset) override;
  bool rename(const std::string& from, const std::string& to) override;
  bool remove(const std::string& path) override;
};

}  // namespace persistence::detail
