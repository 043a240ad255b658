#include "storage/http_client.h"

#include <persistence/errors.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <memory>
#include <mutex>

namespace persistence::detail {
namespace {

constexpr size_t kMaxCapturedBody = 64 * 1024;

// State shared with the libcurl callbacks of one transfer.
struct Transfer {
  CURL* handle;
  const HttpRequest* request;
  HttpResponse* response;
  uint64_t body_sent = 0;
  off_t body_start = 0;

  // Stall detection: when the byte counts last changed, and to what.
  std::chrono::steady_clock::time_point last_progress = std::chrono::steady_clock::now();
  curl_off_t last_downloaded = 0;
  curl_off_t last_uploaded = 0;
  bool stalled = false;
};

size_t read_body(char* buffer, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  uint64_t remaining = transfer->request->body_size - transfer->body_sent;
  size_t wanted = static_cast<size_t>(std::min<uint64_t>(size * count, remaining));
  if (wanted == 0) return 0;

  ssize_t n;
  do {
    n = ::read(transfer->request->body_fd, buffer, wanted);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    transfer->response->local_errno = errno;
    return CURL_READFUNC_ABORT;
  }
  transfer->body_sent += static_cast<uint64_t>(n);
  return static_cast<size_t>(n);
}

// libcurl rewinds the body when it must send it again, for example after an
// authentication round trip.
int seek_body(void* user, curl_off_t offset, int origin) {
  auto* transfer = static_cast<Transfer*>(user);
  if (origin != SEEK_SET) return CURL_SEEKFUNC_CANTSEEK;
  off_t target = transfer->body_start + static_cast<off_t>(offset);
  if (::lseek(transfer->request->body_fd, target, SEEK_SET) != target) return CURL_SEEKFUNC_FAIL;
  transfer->body_sent = static_cast<uint64_t>(offset);
  return CURL_SEEKFUNC_OK;
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

size_t write_body(char* data, size_t size, size_t count, void* user) {
  auto* transfer = static_cast<Transfer*>(user);
  size_t total = size * count;
  long status = 0;
  curl_easy_getinfo(transfer->handle, CURLINFO_RESPONSE_CODE, &status);

  if (transfer->request->response_fd >= 0 && status == transfer->request->response_fd_status) {
    if (!write_all(transfer->request->response_fd, data, total)) {
      transfer->response->local_errno = errno;
      return 0;  // makes libcurl stop with CURLE_WRITE_ERROR
    }
    transfer->response->bytes_to_fd += total;
    return total;
  }

  std::string& body = transfer->response->body;
  if (body.size() < kMaxCapturedBody) body.append(data, std::min(total, kMaxCapturedBody - body.size()));
  return total;
}

// libcurl calls this about once a second, and whenever data moves. Its own
// CURLOPT_LOW_SPEED_TIME averages the speed over several seconds, so a burst
// before a stall would hide the stall for that long.
int check_progress(void* user, curl_off_t, curl_off_t downloaded, curl_off_t, curl_off_t uploaded) {
  auto* transfer = static_cast<Transfer*>(user);
  auto now = std::chrono::steady_clock::now();
  if (downloaded != transfer->last_downloaded || uploaded != transfer->last_uploaded) {
    transfer->last_downloaded = downloaded;
    transfer->last_uploaded = uploaded;
    transfer->last_progress = now;
    return 0;
  }
  if (now - transfer->last_progress > transfer->request->stall_timeout) {
    transfer->stalled = true;
    return 1;  // makes libcurl stop with CURLE_ABORTED_BY_CALLBACK
  }
  return 0;
}

void initialize_curl_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      throw IoError("libcurl global initialization failed", {});
    }
  });
}

struct HeaderList {
  curl_slist* list = nullptr;
  ~HeaderList() { curl_slist_free_all(list); }
};

void set_method_and_body(CURL* handle, const HttpRequest& request, Transfer& transfer) {
  if (request.method == "PUT") {
    // UPLOAD makes libcurl send Content-Length, which is 0 for a PUT without a body.
    curl_easy_setopt(handle, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(handle, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(request.body_fd >= 0 ? request.body_size : 0));
    curl_easy_setopt(handle, CURLOPT_READFUNCTION, read_body);
    curl_easy_setopt(handle, CURLOPT_READDATA, &transfer);
    curl_easy_setopt(handle, CURLOPT_SEEKFUNCTION, seek_body);
    curl_easy_setopt(handle, CURLOPT_SEEKDATA, &transfer);
  } else if (request.method == "DELETE") {
    curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, "DELETE");
  } else {
    curl_easy_setopt(handle, CURLOPT_HTTPGET, 1L);
  }
}

void set_timeouts(CURL* handle, const HttpRequest& request, Transfer& transfer) {
  curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.connect_timeout.count()));
  curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, static_cast<long>(request.total_timeout.count()));
  if (request.stall_timeout.count() > 0) {
    curl_easy_setopt(handle, CURLOPT_XFERINFOFUNCTION, check_progress);
    curl_easy_setopt(handle, CURLOPT_XFERINFODATA, &transfer);
    curl_easy_setopt(handle, CURLOPT_NOPROGRESS, 0L);
  }
}

}  // namespace

HttpClient::HttpClient() {
  initialize_curl_once();
  handle_ = curl_easy_init();
  if (handle_ == nullptr) throw IoError("libcurl could not create a transfer handle", {});
}

HttpClient::~HttpClient() { curl_easy_cleanup(handle_); }

HttpResponse HttpClient::perform(const HttpRequest& request) {
  HttpResponse response;
  Transfer transfer{handle_, &request, &response};
  if (request.body_fd >= 0) transfer.body_start = ::lseek(request.body_fd, 0, SEEK_CUR);

  curl_easy_reset(handle_);
  char error_buffer[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(handle_, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(handle_, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(handle_, CURLOPT_NOSIGNAL, 1L);
  // Redirects are followed by the caller: a PUT must not resend its body to
  // wherever a Location points.
  curl_easy_setopt(handle_, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(handle_, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(handle_, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  // Hadoop's own client ignores http_proxy and friends; so does this one.
  curl_easy_setopt(handle_, CURLOPT_PROXY, "");
  curl_easy_setopt(handle_, CURLOPT_WRITEFUNCTION, write_body);
  curl_easy_setopt(handle_, CURLOPT_WRITEDATA, &transfer);
  set_method_and_body(handle_, request, transfer);
  set_timeouts(handle_, request, transfer);

  if (request.negotiate) {
    curl_easy_setopt(handle_, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_NEGOTIATE));
    // SPNEGO takes the identity from the Kerberos ticket cache. The empty
    // user and password only switch authentication on.
    // NOTE: no test covers this path, because the tests run without a KDC.
    curl_easy_setopt(handle_, CURLOPT_USERPWD, ":");
  }

  HeaderList headers;
  for (const auto& header : request.headers) headers.list = curl_slist_append(headers.list, header.c_str());
  if (headers.list != nullptr) curl_easy_setopt(handle_, CURLOPT_HTTPHEADER, headers.list);

  response.result = curl_easy_perform(handle_);
  if (transfer.stalled) {
    response.result = CURLE_OPERATION_TIMEDOUT;
    response.transport_error = "no data moved for " + std::to_string(request.stall_timeout.count()) + " ms";
  } else if (response.result != CURLE_OK) {
    response.transport_error = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(response.result);
  }
  curl_easy_getinfo(handle_, CURLINFO_RESPONSE_CODE, &response.status);
  char* location = nullptr;
  if (curl_easy_getinfo(handle_, CURLINFO_REDIRECT_URL, &location) == CURLE_OK && location != nullptr) {
    response.location = location;
  }
  return response;
}

std::string url_encode(const std::string& text, const std::string& keep) {
  static const char* kHex = "0123456789ABCDEF";
  std::string encoded;
  for (unsigned char c : text) {
    bool unreserved = std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved || keep.find(static_cast<char>(c)) != std::string::npos) {
      encoded += static_cast<char>(c);
    } else {
      encoded += '%';
      encoded += kHex[c >> 4];
      encoded += kHex[c & 15];
    }
  }
  return encoded;
}

}  // namespace persistence::detail
