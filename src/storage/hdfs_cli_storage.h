// HDFS through the `hdfs dfs` command line, for clusters that expose no
// WebHDFS endpoint but have the Hadoop client installed.
#pragma once

#include "storage/command.h"
#include "storage/hdfs_config.h"
#include "storage/storage.h"

#include <string>
#include <vector>

namespace persistence::detail {

// Runs `<cli_command> dfs -ls/-put/-get/-mv/-rm/-mkdir ...` once per
// operation, with no shell in between, and judges the outcome by the exit
// status and the standard error text. uri_prefix ("hdfs://nn:8020", or
// "hdfs://" for hdfs:///dir) is put in front of every path so the command
// reaches the same cluster as the URI.
//
// download cannot resume: it always fetches the whole file, whatever the
// offset. Each call starts a JVM, so every operation costs seconds on a real
// cluster. Calls share no mutable state, so one instance may serve several
// threads.
class HdfsCliStorage : public Storage {
 public:
  HdfsCliStorage(std::string uri_prefix, HdfsConfig config);

  std::string describe() const override;
  std::vector<StorageEntry> list(const std::string& dir) override;
  std::optional<StorageEntry> stat(const std::string& path) override;
  void mkdirs(const std::string& dir) override;
  void upload(const std::string& local_file, const std::string& remote_path) override;
  uint64_t download(const std::string& remote_path, const std::string& local_file, uint64_t offset) override;
  bool rename(const std::string& from, const std::string& to) override;
  bool remove(const std::string& path) override;

 private:
  // Runs `hdfs dfs <arguments>` and logs it.
  CommandResult run(const std::vector<std::string>& arguments);
  std::string uri(const std::string& path) const;

  std::string uri_prefix_;
  HdfsConfig config_;
};

// Parses the listing that `hdfs dfs -ls` prints: one line per entry with
// permissions, replication, owner, group, size, date, time and path, after an
// optional "Found N items" line. Lines of another shape are skipped.
std::vector<StorageEntry> parse_hdfs_ls(const std::string& output);

// Builds the StorageError for a failed `hdfs dfs` command. The error is
// transient unless the standard error text names a permanent cause, such as
// a missing path, a permission problem, an existing file or a usage error.
// Unknown causes count as transient because the command line hides most
// network and NameNode failures behind generic IOException text.
StorageError hdfs_cli_error(const std::string& operation, const std::string& path, const CommandResult& result);

}  // namespace persistence::detail
