// A small blocking HTTP client over one libcurl easy handle, with what the
// WebHDFS backend needs: no automatic redirects, request bodies streamed from
// a file descriptor, response bodies streamed to one, and optional SPNEGO.
#pragma once

#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace persistence::detail {

struct HttpRequest {
  std::string method = "GET";  // GET, PUT or DELETE
  std::string url;
  std::vector<std::string> headers;  // "Name: value"

  // Authenticate with Kerberos SPNEGO when the server requests it.
  bool negotiate = false;

  // Request body: body_size bytes read from body_fd, starting at its current
  // offset. A PUT without body_fd sends an empty body with Content-Length: 0.
  int body_fd = -1;
  uint64_t body_size = 0;

  // When the response status is response_fd_status, its body is appended to
  // response_fd; any other response body is kept in HttpResponse::body.
  int response_fd = -1;
  long response_fd_status = 200;

  std::chrono::milliseconds connect_timeout{30000};
  // Limit on the whole request; zero means none.
  std::chrono::milliseconds total_timeout{0};
  // Abort when no byte moves for this long, checked about once a second;
  // zero means never.
  std::chrono::milliseconds stall_timeout{0};
};

struct HttpResponse {
  CURLcode result = CURLE_OK;
  std::string transport_error;  // libcurl's message when result is not CURLE_OK

  // errno of a failed read of the request body or write of the response
  // body to its file descriptor, or 0.
  int local_errno = 0;

  long status = 0;        // final HTTP status; 0 when none was received
  std::string location;   // absolute Location of a redirect, or empty
  std::string body;       // body not written to response_fd, capped at 64 KiB
  uint64_t bytes_to_fd = 0;  // bytes written to response_fd

  bool completed() const { return result == CURLE_OK; }
};

// Owns one libcurl easy handle, so connections to the same host are reused.
// Not thread-safe; use one client per thread.
class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends request and waits for the whole response. Transport failures are
  // reported in the response, never thrown.
  HttpResponse perform(const HttpRequest& request);

 private:
  CURL* handle_;
};

// Percent-encodes text for a URL; characters in keep stay as they are in
// addition to the RFC 3986 unreserved ones.
std::string url_encode(const std::string& text, const std::string& keep = {});

}  // namespace persistence::detail
