#include "storage/open_storage.h"

#include "io/step_files.h"
#include "storage/hdfs_cli_storage.h"
#include "storage/posix_storage.h"
#include "storage/webhdfs_storage.h"

namespace persistence::detail {

StorageLocation open_storage(const std::string& uri, const HdfsConfig& config) {
  if (!is_hdfs_uri(uri)) return {std::make_unique<PosixStorage>(), local_root(uri)};

  HdfsUri parsed = parse_hdfs_uri(uri);
  if (config.backend == HdfsBackend::kCli) {
    // The command line resolves the authority itself, RPC port and HA nameservice included.
    return {std::make_unique<HdfsCliStorage>("hdfs://" + parsed.authority, config), parsed.path};
  }
  return {std::make_unique<WebHdfsStorage>(webhdfs_base_urls(parsed, config), config), parsed.path};
}

}  // namespace persistence::detail
