// Settings for reaching HDFS, the retry policy of stage-out and stage-in, and
// the parsing of hdfs:// URIs.
#pragma once

#include <persistence/options.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// Exponential backoff with jitter for transient storage errors. The wait
// before retry n (n = 1, 2, ...) is a random time between half and all of
// min(max_backoff, initial_backoff * multiplier^(n-1)).
struct RetryPolicy {
  // Attempts in total, the first one included; 1 disables retries.
  int max_attempts = 8;
  std::chrono::milliseconds initial_backoff{500};
  std::chrono::milliseconds max_backoff{30000};
  double multiplier = 2.0;

  // No retry starts once this much time has passed since the operation
  // began. A transfer in progress is not cut off by it: stall and connect
  // timeouts bound a single attempt.
  std::chrono::milliseconds max_elapsed{std::chrono::minutes(30)};
};

enum class HdfsBackend {
  kWebHdfs,  // HTTP REST API of the NameNode and DataNodes, through libcurl
  kCli,      // the `hdfs dfs` command line, one process per operation
};

// How to reach HDFS. Build it from manager options with resolve(), or from the
// environment alone with from_environment(), then override fields in code as needed.
struct HdfsConfig {
  HdfsBackend backend = HdfsBackend::kWebHdfs;

  // NameNode HTTP addresses as "host", "host:port" or "http[s]://host:port";
  // the port defaults to 9870, the Hadoop 3 NameNode HTTP port. Several
  // addresses name the NameNodes of a high-availability pair: a request that
  // meets a StandbyException or a refused connection moves on to the next.
  // Empty: the host of the hdfs:// URI on port 9870, because the URI's own
  // port is the RPC port, which does not speak HTTP.
  std::vector<std::string> webhdfs_addresses;

  // Identity sent as user.name when neither a delegation token nor Kerberos
  // is used. Empty: no user.name, so the cluster picks its default web user.
  std::string user;

  // Delegation token (URL-safe encoded), sent as delegation=... on NameNode
  // requests. It takes precedence over user and Kerberos.
  std::string delegation_token;

  // Authenticate to the NameNode with Kerberos SPNEGO, using the caller's
  // ticket cache (run kinit first). The NameNode puts a delegation token into
  // its DataNode redirects, so DataNode requests need no SPNEGO.
  bool kerberos = false;

  // Send the X-XSRF-HEADER header on requests other than GET, as clusters
  // with dfs.webhdfs.rest-csrf.enabled require.
  bool csrf_header = true;

  // Path or name (looked up in PATH) of the `hdfs` command of the CLI backend.
  std::string cli_command = "hdfs";

  // Time allowed for a TCP connection to be established.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(30)};

  // Time allowed for a WebHDFS metadata request (LISTSTATUS, RENAME, ...).
  std::chrono::milliseconds request_timeout{std::chrono::seconds(60)};

  // A WebHDFS transfer that moves no byte for this long is aborted. It is
  // checked about once a second.
  std::chrono::milliseconds stall_timeout{std::chrono::seconds(60)};

  // Time allowed for one `hdfs dfs` command, transfers included.
  std::chrono::milliseconds command_timeout{std::chrono::hours(1)};

  RetryPolicy retry;

  // Returns the defaults above overridden by these environment variables,
  // the only ones the storage layer reads:
  //   PERSISTENCE_HDFS_BACKEND            webhdfs or cli
  //   PERSISTENCE_WEBHDFS_ADDRESS         comma-separated NameNode HTTP addresses
  //   PERSISTENCE_HDFS_USER               user; falls back to HADOOP_USER_NAME
  //   PERSISTENCE_HDFS_DELEGATION_TOKEN   delegation token
  //   PERSISTENCE_HDFS_KERBEROS           1/true/yes/on or 0/false/no/off
  //   PERSISTENCE_HDFS_CSRF_HEADER        1/true/yes/on or 0/false/no/off
  //   PERSISTENCE_HDFS_COMMAND            the hdfs command of the CLI backend
  //   PERSISTENCE_HDFS_CONNECT_TIMEOUT    seconds
  //   PERSISTENCE_HDFS_REQUEST_TIMEOUT    seconds
  //   PERSISTENCE_HDFS_STALL_TIMEOUT      seconds
  //   PERSISTENCE_HDFS_COMMAND_TIMEOUT    seconds
  //   PERSISTENCE_HDFS_RETRY_ATTEMPTS     attempts in total
  //   PERSISTENCE_HDFS_RETRY_MAX_ELAPSED  seconds
  // An invalid value throws InvalidArgumentError naming the variable.
  static HdfsConfig from_environment();

  // Resolves the HDFS settings; this is the one place that does. A field set in
  // options wins. An unset one falls back to its environment variable (the
  // list above), then to the default, and the variable of a set field is not
  // read. An invalid option throws InvalidArgumentError naming the option.
  static HdfsConfig resolve(const HdfsOptions& options);
};

// The parts of "hdfs://authority/path". The authority is a NameNode host, a
// host:port whose port is the NameNode RPC port, or an HA nameservice id. It is
// empty in "hdfs:///path", which names the cluster from the configuration.
struct HdfsUri {
  std::string authority;
  std::string host;
  std::optional<int> rpc_port;
  std::string path;  // absolute, normalized, without a trailing '/'
};

// True for URIs that start with "hdfs://".
bool is_hdfs_uri(const std::string& uri);

// Parses an hdfs:// URI; throws InvalidArgumentError naming the URI when it is
// not one or when its port or path is invalid.
HdfsUri parse_hdfs_uri(const std::string& uri);

// Base URLs ("http://host:9870") of the NameNodes that serve uri over WebHDFS,
// in the order to try them. Throws InvalidArgumentError when uri names no
// host and the configuration names no address.
std::vector<std::string> webhdfs_base_urls(const HdfsUri& uri, const HdfsConfig& config);

}  // namespace persistence::detail
