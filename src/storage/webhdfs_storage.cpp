#include "storage/webhdfs_storage.h"

#include "core/logging.h"
#include "io/file_descriptor.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

namespace persistence::detail {
namespace {

using nlohmann::json;

// HDFS exceptions that a later attempt may not meet. AlreadyBeingCreated
// comes from the lease of an interrupted upload, which a retry under a new
// name avoids.
const std::set<std::string> kTransientExceptions = {
    "StandbyException", "RetriableException", "SafeModeException", "AlreadyBeingCreatedException",
    "ObserverRetryOnActiveException", "LeaseExpiredException"};

[[noreturn]] void fail_local(const std::string& problem, const std::string& path, int error) {
  throw StorageError(problem + ": " + std::strerror(error), ErrorContext{path, {}, {}, {}}, /*transient=*/false);
}

bool transient_transport_error(CURLcode code) {
  switch (code) {
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_LOGIN_DENIED:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_READ_ERROR:
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
    case CURLE_OUT_OF_MEMORY:
      return false;
    default:
      return true;
  }
}

// The RemoteException of an error body: simple class name and message.
struct RemoteException {
  std::string name;
  std::string message;
};

std::optional<RemoteException> parse_remote_exception(const std::string& body) {
  json document = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!document.is_object() || !document.contains("RemoteException")) return std::nullopt;
  const json& remote = document["RemoteException"];
  if (!remote.is_object()) return std::nullopt;

  RemoteException parsed;
  if (remote.contains("exception") && remote["exception"].is_string()) {
    parsed.name = remote["exception"].get<std::string>();
  } else if (remote.contains("javaClassName") && remote["javaClassName"].is_string()) {
    parsed.name = remote["javaClassName"].get<std::string>();
  }
  // javaClassName may be fully qualified; the simple name is what clients match.
  parsed.name = parsed.name.substr(parsed.name.rfind('.') == std::string::npos ? 0 : parsed.name.rfind('.') + 1);
  if (remote.contains("message") && remote["message"].is_string()) parsed.message = remote["message"].get<std::string>();
  return parsed;
}

// A short single-line excerpt of a body that is not a RemoteException, such
// as the HTML error page of a proxy.
std::string excerpt(const std::string& body) {
  std::string text = body.substr(0, 200);
  std::replace_if(text.begin(), text.end(), [](char c) { return c == '\n' || c == '\r' || c == '\t'; }, ' ');
  if (body.size() > 200) text += "...";
  return text;
}

std::string advice_for(int status, const std::string& exception) {
  if (status == 401 || exception == "AccessControlException" || exception == "SecurityException" ||
      exception == "AuthorizationException" || exception == "InvalidToken") {
    return "Check the HDFS user (HdfsOptions::user or PERSISTENCE_HDFS_USER), the delegation token or the "
           "Kerberos ticket, and the permissions of the path";
  }
  if (status == 404) return "Check that the path exists on HDFS";
  if (exception == "DSQuotaExceededException" || exception == "NSQuotaExceededException") {
    return "Free space in the HDFS directory or raise its quota";
  }
  return {};
}

std::string describe_json_error(const char* unexpected, const std::string& body) {
  return std::string("returned ") + unexpected + ": " + excerpt(body);
}

json parse_json_body(const std::string& op, const std::string& path, const HttpResponse& response) {
  json document = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) {
    throw StorageError("WebHDFS " + op + " " + describe_json_error("a body that is not JSON", response.body),
                       ErrorContext{path, {}, {}, {}}, /*transient=*/false);
  }
  return document;
}

StorageEntry entry_from_status(const json& status, const std::string& fallback_name) {
  StorageEntry entry;
  entry.name = status.value("pathSuffix", std::string());
  if (entry.name.empty()) entry.name = fallback_name;
  entry.is_dir = status.value("type", std::string()) == "DIRECTORY";
  entry.size = entry.is_dir ? 0 : status.value("length", uint64_t{0});
  return entry;
}

}  // namespace

StorageError webhdfs_error(const std::string& op, const std::string& path, const HttpResponse& response) {
  ErrorContext context{path, {}, {}, {}};
  if (response.local_errno != 0) {
    return StorageError("WebHDFS " + op + " failed on the local side: " + std::strerror(response.local_errno),
                        context, /*transient=*/false);
  }
  if (!response.completed()) {
    std::string problem = "WebHDFS " + op + " failed: " + response.transport_error;
    // A 100 Continue is interim, so a transfer that ends after it has no final status.
    if (response.status >= 200) problem += " (after HTTP " + std::to_string(response.status) + ")";
    return StorageError(problem, context, transient_transport_error(response.result), {},
                        static_cast<int>(response.status));
  }

  auto status = static_cast<int>(response.status);
  std::string problem = "WebHDFS " + op + " failed with HTTP " + std::to_string(status);
  auto remote = parse_remote_exception(response.body);
  if (remote) {
    problem += ": " + remote->name + ": " + remote->message;
  } else if (!response.body.empty()) {
    problem += ": " + excerpt(response.body);
  }
  std::string name = remote ? remote->name : std::string();
  bool transient = status >= 500 || kTransientExceptions.count(name) > 0;
  return StorageError(problem, context, transient, advice_for(status, name), status, name);
}

WebHdfsStorage::WebHdfsStorage(std::vector<std::string> base_urls, HdfsConfig config)
    : base_urls_(std::move(base_urls)), config_(std::move(config)) {
  if (base_urls_.empty()) throw InvalidArgumentError("WebHDFS storage needs at least one NameNode address", {});
}

std::string WebHdfsStorage::describe() const {
  std::string text = "webhdfs";
  for (const auto& url : base_urls_) text += " " + url;
  return text;
}

HttpRequest WebHdfsStorage::make_request(const char* method, const std::string& url, bool transfer) const {
  HttpRequest request;
  request.method = method;
  request.url = url;
  request.negotiate = config_.kerberos;
  request.connect_timeout = config_.connect_timeout;
  if (transfer) {
    request.stall_timeout = config_.stall_timeout;
  } else {
    request.total_timeout = config_.request_timeout;
  }
  // Any value satisfies the CSRF filter; only non-GET requests need it.
  if (config_.csrf_header && std::string(method) != "GET") request.headers.push_back("X-XSRF-HEADER: persistence");
  return request;
}

HttpResponse WebHdfsStorage::call_namenode(const NamenodeCall& call) {
  std::string query = "op=" + std::string(call.op);
  // A delegation token takes precedence. With Kerberos, SPNEGO carries the
  // identity, and otherwise user.name does.
  if (!config_.delegation_token.empty()) {
    query += "&delegation=" + url_encode(config_.delegation_token);
  } else if (!config_.kerberos && !config_.user.empty()) {
    query += "&user.name=" + url_encode(config_.user);
  }
  if (!call.query.empty()) query += "&" + call.query;

  HttpResponse response;
  for (size_t tried = 0; tried < base_urls_.size(); ++tried) {
    size_t index = (active_namenode_ + tried) % base_urls_.size();
    std::string url = base_urls_[index] + "/webhdfs/v1" + url_encode(call.path, "/") + "?" + query;
    HttpRequest request = make_request(call.method, url, call.transfer);
    request.response_fd = call.response_fd;
    if (call.response_fd >= 0) request.stall_timeout = config_.stall_timeout;

    response = client_.perform(request);
    logger().debug("WebHDFS {} {} on {}: HTTP {}", call.op, call.path, base_urls_[index], response.status);

    // Only failures that prove the NameNode did not act move on to the next one.
    bool not_connected = response.result == CURLE_COULDNT_CONNECT || response.result == CURLE_COULDNT_RESOLVE_HOST;
    bool standby = response.completed() && response.status == 403 &&
                   response.body.find("StandbyException") != std::string::npos;
    if (!(not_connected || standby) || base_urls_.size() == 1) {
      active_namenode_ = index;
      return response;
    }
    logger().info("WebHDFS NameNode {} is {}; trying the next one", base_urls_[index],
                  standby ? "in standby" : "unreachable");
  }
  return response;
}

bool WebHdfsStorage::call_boolean(const char* method, const char* op, const std::string& path,
                                  const std::string& query) {
  HttpResponse response = call_namenode({method, op, path, query});
  if (!response.completed() || response.status != 200) throw webhdfs_error(op, path, response);
  json document = parse_json_body(op, path, response);
  if (!document.is_object() || !document.contains("boolean") || !document["boolean"].is_boolean()) {
    throw StorageError(std::string("WebHDFS ") + op + " " + describe_json_error("no boolean", response.body),
                       ErrorContext{path, {}, {}, {}}, /*transient=*/false);
  }
  return document["boolean"].get<bool>();
}

std::vector<StorageEntry> WebHdfsStorage::list(const std::string& dir) {
  HttpResponse response = call_namenode({"GET", "LISTSTATUS", dir, {}});
  if (response.completed() && response.status == 404) return {};
  if (!response.completed() || response.status != 200) throw webhdfs_error("LISTSTATUS", dir, response);

  json document = parse_json_body("LISTSTATUS", dir, response);
  const json* statuses = nullptr;
  if (document.is_object() && document.contains("FileStatuses") && document["FileStatuses"].is_object() &&
      document["FileStatuses"].contains("FileStatus") && document["FileStatuses"]["FileStatus"].is_array()) {
    statuses = &document["FileStatuses"]["FileStatus"];
  }
  if (statuses == nullptr) {
    throw StorageError("WebHDFS LISTSTATUS " + describe_json_error("no FileStatuses array", response.body),
                       ErrorContext{dir, {}, {}, {}}, /*transient=*/false);
  }

  std::vector<StorageEntry> entries;
  for (const auto& status : *statuses) {
    if (status.is_object()) entries.push_back(entry_from_status(status, storage_base_name(dir)));
  }
  // HDFS happens to sort listings, but the file system specification does not promise it.
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return entries;
}

std::optional<StorageEntry> WebHdfsStorage::stat(const std::string& path) {
  HttpResponse response = call_namenode({"GET", "GETFILESTATUS", path, {}});
  if (response.completed() && response.status == 404) return std::nullopt;
  if (!response.completed() || response.status != 200) throw webhdfs_error("GETFILESTATUS", path, response);

  json document = parse_json_body("GETFILESTATUS", path, response);
  if (!document.is_object() || !document.contains("FileStatus") || !document["FileStatus"].is_object()) {
    throw StorageError("WebHDFS GETFILESTATUS " + describe_json_error("no FileStatus", response.body),
                       ErrorContext{path, {}, {}, {}}, /*transient=*/false);
  }
  return entry_from_status(document["FileStatus"], storage_base_name(path));
}

void WebHdfsStorage::mkdirs(const std::string& dir) {
  if (!call_boolean("PUT", "MKDIRS", dir, {})) {
    throw StorageError("WebHDFS MKDIRS returned false", ErrorContext{dir, {}, {}, {}}, /*transient=*/false, {}, 200);
  }
}

// The DataNode URL of a CREATE or OPEN: the Location of a 307, or the
// {"Location": ...} body that servers send for noredirect=true.
std::string WebHdfsStorage::data_location(const char* op, const std::string& path,
                                          const HttpResponse& response) const {
  if (response.status == 307 && !response.location.empty()) return response.location;
  if (response.status == 200) {
    json document = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (document.is_object() && document.contains("Location") && document["Location"].is_string()) {
      return document["Location"].get<std::string>();
    }
  }
  throw StorageError(std::string("WebHDFS ") + op + " returned HTTP " + std::to_string(response.status) +
                         " without a DataNode location",
                     ErrorContext{path, {}, {}, {}}, /*transient=*/false, {}, static_cast<int>(response.status));
}

void WebHdfsStorage::upload(const std::string& local_file, const std::string& remote_path) {
  FileDescriptor in(::open(local_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) fail_local("Cannot open the local file for upload", local_file, errno);
  struct stat info {};
  if (::fstat(in.get(), &info) != 0) fail_local("Cannot stat the local file", local_file, errno);

  // Step 1: the NameNode picks a DataNode. No data goes with this request.
  HttpResponse redirect = call_namenode({"PUT", "CREATE", remote_path, "overwrite=true"});
  if (!redirect.completed() || (redirect.status != 307 && redirect.status != 200)) {
    throw webhdfs_error("CREATE", remote_path, redirect);
  }
  std::string location = data_location("CREATE", remote_path, redirect);

  // Step 2: the data goes to the DataNode. Only 201 Created means it is all there.
  HttpRequest request = make_request("PUT", location, /*transfer=*/true);
  request.headers.push_back("Content-Type: application/octet-stream");
  request.body_fd = in.get();
  request.body_size = static_cast<uint64_t>(info.st_size);
  HttpResponse response = client_.perform(request);
  logger().debug("WebHDFS CREATE {} on the DataNode: HTTP {}, {} bytes", remote_path, response.status,
                 request.body_size);
  if (!response.completed() || response.status != 201) throw webhdfs_error("CREATE", remote_path, response);
}

uint64_t WebHdfsStorage::download(const std::string& remote_path, const std::string& local_file, uint64_t offset) {
  FileDescriptor out(::open(local_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (out.get() < 0) fail_local("Cannot create the download target", local_file, errno);
  struct stat info {};
  if (::fstat(out.get(), &info) != 0) fail_local("Cannot stat the download target", local_file, errno);
  if (static_cast<uint64_t>(info.st_size) < offset) {
    throw StorageError("Cannot resume the download at byte " + std::to_string(offset) +
                           " because the local file has only " + std::to_string(info.st_size) + " bytes",
                       ErrorContext{local_file, {}, {}, {}}, /*transient=*/false);
  }
  if (::ftruncate(out.get(), static_cast<off_t>(offset)) != 0) fail_local("Cannot truncate", local_file, errno);
  if (::lseek(out.get(), static_cast<off_t>(offset), SEEK_SET) < 0) fail_local("Cannot seek", local_file, errno);

  // Step 1: the NameNode redirects to a DataNode. HttpFS sends the data
  // itself with 200, which then goes straight into the file.
  NamenodeCall open{"GET", "OPEN", remote_path, "offset=" + std::to_string(offset), true, out.get()};
  HttpResponse redirect = call_namenode(open);
  if (redirect.completed() && redirect.status == 200) return offset + redirect.bytes_to_fd;
  if (!redirect.completed() || redirect.status != 307 || redirect.location.empty()) {
    throw webhdfs_error("OPEN", remote_path, redirect);
  }

  // Step 2: the DataNode streams the bytes from offset on.
  HttpRequest request = make_request("GET", redirect.location, /*transfer=*/true);
  request.response_fd = out.get();
  request.response_fd_status = 200;
  HttpResponse response = client_.perform(request);
  logger().debug("WebHDFS OPEN {} on the DataNode: HTTP {}, {} bytes from offset {}", remote_path, response.status,
                 response.bytes_to_fd, offset);
  if (!response.completed() || response.status != 200) throw webhdfs_error("OPEN", remote_path, response);
  return offset + response.bytes_to_fd;
}

bool WebHdfsStorage::rename(const std::string& from, const std::string& to) {
  // Without renameoptions this is HDFS rename/2: false when from is missing or to exists.
  return call_boolean("PUT", "RENAME", from, "destination=" + url_encode(to, "/"));
}

bool WebHdfsStorage::remove(const std::string& path) {
  return call_boolean("DELETE", "DELETE", path, "recursive=false");
}

}  // namespace persistence::detail
