// HDFS through the WebHDFS REST API of the NameNode and DataNodes.
#pragma once

#include "storage/hdfs_config.h"
#include "storage/http_client.h"
#include "storage/storage.h"

#include <string>
#include <vector>

namespace persistence::detail {

// Talks to the NameNodes at base_urls ("http://host:9870"), failing over to
// the next one on a refused connection or a StandbyException. CREATE and OPEN
// take the documented two steps: the NameNode request carries no data and
// gets a redirect, and the data goes to the DataNode named in its Location. A transfer succeeds only when it completed and the final status
// is 201 Created (CREATE) or 200 OK (OPEN).
//
// Thread-safety: not thread-safe; the instance owns one libcurl handle.
class WebHdfsStorage : public Storage {
 public:
  WebHdfsStorage(std::vector<std::string> base_urls, HdfsConfig config);

  std::string describe() const override;
  std::vector<StorageEntry> list(const std::string& dir) override;
  std::optional<StorageEntry> stat(const std::string& path) override;
  void mkdirs(const std::string& dir) override;
  void upload(const std::string& local_file, const std::string& remote_path) override;
  uint64_t download(const std::string& remote_path, const std::string& local_file, uint64_t offset) override;
  bool rename(const std::string& from, const std::string& to) override;
  bool remove(const std::string& path) override;

 private:
  // One WebHDFS operation on the NameNode. query contains the parameters after op.
  struct NamenodeCall {
    const char* method;
    const char* op;
    std::string path;
    std::string query;
    bool transfer = false;   // use the stall timeout instead of the request timeout
    int response_fd = -1;    // where a 200 body goes, since HttpFS serves OPEN data itself
  };

  HttpResponse call_namenode(const NamenodeCall& call);
  HttpRequest make_request(const char* method, const std::string& url, bool transfer) const;
  bool call_boolean(const char* method, const char* op, const std::string& path, const std::string& query);
  std::string data_location(const char* op, const std::string& path, const HttpResponse& response) const;

  std::vector<std::string> base_urls_;
  size_t active_namenode_ = 0;
  HdfsConfig config_;
  HttpClient client_;
};

// Builds the StorageError for a failed WebHDFS request: the operation, the
// path, the HTTP status and the RemoteException class and message when the
// body has one. transient() is set for transport failures, HTTP 5xx, and the
// StandbyException, RetriableException, SafeModeException and
// AlreadyBeingCreatedException classes.
StorageError webhdfs_error(const std::string& op, const std::string& path, const HttpResponse& response);

}  // namespace persistence::detail
