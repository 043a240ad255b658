// Chooses the storage backend for a save path.
#pragma once

#include "storage/hdfs_config.h"
#include "storage/storage.h"

#include <memory>
#include <string>

namespace persistence::detail {

// A storage and the directory inside it that a URI names.
struct StorageLocation {
  std::unique_ptr<Storage> storage;
  std::string dir;
};

// Opens the storage of uri: "hdfs://authority/dir" and "hdfs:///dir" give a
// WebHdfsStorage or an HdfsCliStorage, as config.backend selects; a local
// path or "file:///dir" gives a PosixStorage. Throws InvalidArgumentError for
// other schemes and for hdfs:/// URIs that config does not complete.
StorageLocation open_storage(const std::string& uri, const HdfsConfig& config);

}  // namespace persistence::detail
