#include "storage/hdfs_config.h"

#include <persistence/errors.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <sstream>

namespace persistence::detail {
namespace {

constexpr int kDefaultHttpPort = 9870;   // Hadoop 3 dfs.namenode.http-address
constexpr int kDefaultHttpsPort = 9871;  // Hadoop 3 dfs.namenode.https-address

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

[[noreturn]] void reject_variable(const char* name, const std::string& value, const std::string& expected) {
  throw InvalidArgumentError(std::string("Environment variable ") + name + " has the invalid value '" + value + "'",
                             {}, "Set it to " + expected + " or unset it");
}

bool parse_flag(const char* name, const std::string& value) {
  std::string lower = value;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "1" || lower == "true" || lower == "yes" || lower == "on") return true;
  if (lower == "0" || lower == "false" || lower == "no" || lower == "off") return false;
  reject_variable(name, value, "1, true, yes, on, 0, false, no or off");
}

std::chrono::milliseconds parse_seconds(const char* name, const std::string& value) {
  try {
    size_t used = 0;
    double seconds = std::stod(value, &used);
    if (used == value.size() && seconds > 0 && seconds < 1e9) {
      return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    }
  } catch (const std::exception&) {
  }
  reject_variable(name, value, "a positive number of seconds");
}

int parse_positive_int(const char* name, const std::string& value) {
  try {
    size_t used = 0;
    int number = std::stoi(value, &used);
    if (used == value.size() && number > 0) return number;
  } catch (const std::exception&) {
  }
  reject_variable(name, value, "a positive integer");
}

std::vector<std::string> split_addresses(const std::string& text) {
  std::vector<std::string> addresses;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) addresses.push_back(item);
  }
  return addresses;
}

// Parses a decimal port in 1..65535; nullopt for anything else.
std::optional<int> parse_port(const std::string& text) {
  if (text.empty() || text.size() > 5 || text.find_first_not_of("0123456789") != std::string::npos) {
    return std::nullopt;
  }
  int port = std::stoi(text);
  if (port < 1 || port > 65535) return std::nullopt;
  return port;
}

// Splits "host", "host:port", "[v6]" or "[v6]:port" into host and port text.
// Returns whether a ':' separated a port, which may still be empty.
bool split_host_port(const std::string& authority, std::string& host, std::string& port) {
  size_t colon = authority.rfind(':');
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string::npos || colon < close) colon = std::string::npos;
  }
  host = authority.substr(0, colon);
  port = colon == std::string::npos ? std::string() : authority.substr(colon + 1);
  return colon != std::string::npos;
}

// Collapses repeated '/', drops "." components and the trailing '/'; ".." is rejected.
std::string normalize_path(const std::string& uri, const std::string& path) {
  std::string normalized;
  std::stringstream stream(path);
  std::string component;
  while (std::getline(stream, component, '/')) {
    if (component.empty() || component == ".") continue;
    if (component == "..") {
      throw InvalidArgumentError("HDFS URI '" + uri + "' contains '..'", {}, "Pass an absolute path without '..'");
    }
    normalized += "/" + component;
  }
  return normalized.empty() ? "/" : normalized;
}

// Turns a configured address into "http[s]://host:port".
std::string base_url_from_address(const std::string& address) {
  std::string scheme = "http";
  std::string rest = address;
  if (rest.rfind("https://", 0) == 0) {
    scheme = "https";
    rest = rest.substr(8);
  } else if (rest.rfind("http://", 0) == 0) {
    rest = rest.substr(7);
  }
  while (!rest.empty() && rest.back() == '/') rest.pop_back();

  std::string host;
  std::string port_text;
  bool has_port = split_host_port(rest, host, port_text);
  if (host.empty() || rest.find('/') != std::string::npos || (has_port && !parse_port(port_text))) {
    throw InvalidArgumentError("WebHDFS address '" + address + "' is invalid", {},
                               "Write it as host, host:port or http://host:port, for example namenode:9870");
  }
  int port = scheme == "https" ? kDefaultHttpsPort : kDefaultHttpPort;
  if (has_port) port = *parse_port(port_text);
  return scheme + "://" + host + ":" + std::to_string(port);
}

}  // namespace

// The one place where HDFS settings are resolved and the storage layer reads
// environment variables; the list is in the header next to the declaration.
HdfsConfig HdfsConfig::resolve(const HdfsOptions& options) {
  HdfsConfig config;

  if (!options.backend.empty() && options.backend != "webhdfs" && options.backend != "cli") {
    throw InvalidArgumentError("HdfsOptions::backend has the invalid value '" + options.backend + "'", {},
                               "Set it to webhdfs or cli, or leave it empty");
  }
  std::string backend = options.backend.empty() ? environment("PERSISTENCE_HDFS_BACKEND") : options.backend;
  if (backend == "webhdfs") {
    config.backend = HdfsBackend::kWebHdfs;
  } else if (backend == "cli") {
    config.backend = HdfsBackend::kCli;
  } else if (!backend.empty()) {
    reject_variable("PERSISTENCE_HDFS_BACKEND", backend, "webhdfs or cli");
  }

  config.webhdfs_addresses = split_addresses(options.webhdfs_address.empty() ? environment("PERSISTENCE_WEBHDFS_ADDRESS")
                                                                             : options.webhdfs_address);
  for (const auto& address : config.webhdfs_addresses) base_url_from_address(address);

  config.user = options.user;
  if (config.user.empty()) config.user = environment("PERSISTENCE_HDFS_USER");
  if (config.user.empty()) config.user = environment("HADOOP_USER_NAME");
  config.delegation_token = options.delegation_token;
  if (config.delegation_token.empty()) config.delegation_token = environment("PERSISTENCE_HDFS_DELEGATION_TOKEN");

  if (options.kerberos) {
    config.kerberos = *options.kerberos;
  } else if (auto value = environment("PERSISTENCE_HDFS_KERBEROS"); !value.empty()) {
    config.kerberos = parse_flag("PERSISTENCE_HDFS_KERBEROS", value);
  }
  if (options.csrf_header) {
    config.csrf_header = *options.csrf_header;
  } else if (auto value = environment("PERSISTENCE_HDFS_CSRF_HEADER"); !value.empty()) {
    config.csrf_header = parse_flag("PERSISTENCE_HDFS_CSRF_HEADER", value);
  }
  config.cli_command = options.command;
  if (config.cli_command.empty()) config.cli_command = environment("PERSISTENCE_HDFS_COMMAND");
  if (config.cli_command.empty()) config.cli_command = HdfsConfig().cli_command;

  // A positive option wins; zero or less means unset.
  auto duration = [](std::chrono::milliseconds option, const char* name, std::chrono::milliseconds& field) {
    if (option.count() > 0) {
      field = option;
    } else if (auto value = environment(name); !value.empty()) {
      field = parse_seconds(name, value);
    }
  };
  duration(options.connect_timeout, "PERSISTENCE_HDFS_CONNECT_TIMEOUT", config.connect_timeout);
  duration(options.request_timeout, "PERSISTENCE_HDFS_REQUEST_TIMEOUT", config.request_timeout);
  duration(options.stall_timeout, "PERSISTENCE_HDFS_STALL_TIMEOUT", config.stall_timeout);
  duration(options.command_timeout, "PERSISTENCE_HDFS_COMMAND_TIMEOUT", config.command_timeout);
  if (options.retry_attempts > 0) {
    config.retry.max_attempts = options.retry_attempts;
  } else if (auto value = environment("PERSISTENCE_HDFS_RETRY_ATTEMPTS"); !value.empty()) {
    config.retry.max_attempts = parse_positive_int("PERSISTENCE_HDFS_RETRY_ATTEMPTS", value);
  }
  duration(options.retry_max_elapsed, "PERSISTENCE_HDFS_RETRY_MAX_ELAPSED", config.retry.max_elapsed);
  return config;
}

HdfsConfig HdfsConfig::from_environment() { return resolve(HdfsOptions{}); }

bool is_hdfs_uri(const std::string& uri) { return uri.rfind("hdfs://", 0) == 0; }

HdfsUri parse_hdfs_uri(const std::string& uri) {
  if (!is_hdfs_uri(uri)) {
    throw InvalidArgumentError("'" + uri + "' is not an hdfs:// URI", {},
                               "Write it as hdfs://namenode:8020/dir or hdfs:///dir");
  }
  std::string rest = uri.substr(7);
  if (rest.find_first_of("?#") != std::string::npos) {
    throw InvalidArgumentError("HDFS URI '" + uri + "' has a query or fragment", {}, "Remove the part after '?' or '#'");
  }

  HdfsUri parsed;
  size_t slash = rest.find('/');
  parsed.authority = rest.substr(0, slash);
  std::string port_text;
  if (split_host_port(parsed.authority, parsed.host, port_text)) {
    parsed.rpc_port = parse_port(port_text);
    if (!parsed.rpc_port) {
      throw InvalidArgumentError("HDFS URI '" + uri + "' has the invalid port '" + port_text + "'", {},
                                 "Use a port between 1 and 65535, or leave it out");
    }
  }
  if (!parsed.authority.empty() && parsed.host.empty()) {
    throw InvalidArgumentError("HDFS URI '" + uri + "' has a port but no host", {},
                               "Write it as hdfs://namenode:8020/dir or hdfs:///dir");
  }
  parsed.path = normalize_path(uri, slash == std::string::npos ? std::string() : rest.substr(slash));
  return parsed;
}

std::vector<std::string> webhdfs_base_urls(const HdfsUri& uri, const HdfsConfig& config) {
  std::vector<std::string> urls;
  for (const auto& address : config.webhdfs_addresses) urls.push_back(base_url_from_address(address));
  if (!urls.empty()) return urls;

  if (uri.host.empty()) {
    throw InvalidArgumentError("An hdfs:/// URI names no NameNode, and no WebHDFS address is configured", {},
                               "Set HdfsOptions::webhdfs_address or PERSISTENCE_WEBHDFS_ADDRESS to the NameNode HTTP address, such as "
                               "namenode:9870");
  }
  // The URI's port is the RPC port (8020 by default); WebHDFS listens on the HTTP port.
  return {base_url_from_address(uri.host)};
}

}  // namespace persistence::detail
