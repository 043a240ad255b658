// Helpers for the storage tests: scratch directories, file contents, and a
// WebHDFS test server (scripts/webhdfs_server.py) run as a child process.
#pragma once

#include "storage/hdfs_config.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace persistence::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes content to path, creating missing parent directories.
void write_bytes(const std::string& path, const std::string& content);

// Writes size pseudo-random bytes, derived from seed, to path and returns them.
std::string write_test_file(const std::string& path, size_t size, uint32_t seed = 1);

// Returns the bytes of path; an empty string when it does not exist.
std::string read_file(const std::string& path);

// Compares byte strings without printing them; a failure gives both sizes
// and the offset of the first difference.
::testing::AssertionResult same_bytes(const std::string& actual, const std::string& expected);

// Names of the entries of a local directory, sorted; empty when it does not exist.
std::vector<std::string> directory_names(const std::string& dir);

// A retry policy with millisecond backoffs, so fault tests stay fast.
detail::RetryPolicy fast_retry_policy(int max_attempts = 6);

// The WebHDFS test server, started in the constructor and stopped (SIGTERM,
// then SIGKILL) in the destructor. It also stops by itself if this process
// dies. Its namespace lives in a scratch directory.
class WebHdfsServer {
 public:
  explicit WebHdfsServer(std::vector<std::string> extra_arguments = {});
  ~WebHdfsServer();
  WebHdfsServer(const WebHdfsServer&) = delete;
  WebHdfsServer& operator=(const WebHdfsServer&) = delete;

  int namenode_port() const { return namenode_port_; }
  int standby_port() const { return standby_port_; }
  std::string namenode_address() const;

  // The backing file of an HDFS path, for checks that bypass the protocol.
  std::string local_path(const std::string& hdfs_path) const;

  // A configuration that reaches this server, with short timeouts.
  detail::HdfsConfig config() const;

  // Replaces the armed fault rules with rules, a JSON list as documented in
  // scripts/webhdfs_server.py.
  void set_faults(const nlohmann::json& rules) const;

  // The request log so far, one object per WebHDFS request.
  std::vector<nlohmann::json> requests() const;

  // Requests of the log with the given role ("namenode" or "datanode") and op.
  std::vector<nlohmann::json> requests(const std::string& role, const std::string& op) const;

 private:
  // Sends a request to the server's control endpoint; throws unless it returns 200.
  void control(const std::string& method, const std::string& path, const std::string& body) const;

  ScratchDir scratch_;
  pid_t pid_ = -1;
  int namenode_port_ = 0;
  int standby_port_ = 0;
};

}  // namespace persistence::test
