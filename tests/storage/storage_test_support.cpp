#include "storage_test_support.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace persistence::test {
namespace {

namespace fs = std::filesystem;

// Reaps pid within timeout; returns false if it is still running.
bool wait_for_exit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t waited = ::waitpid(pid, &status, WNOHANG);
    if (waited == pid || waited < 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

size_t append_to_string(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

}  // namespace

ScratchDir::ScratchDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/persistence-storage-XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (::mkdtemp(buffer.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern + ": " + std::strerror(errno));
  }
  path_ = buffer.data();
}

ScratchDir::~ScratchDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

void write_bytes(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  if (!out) throw std::runtime_error("cannot write test file " + path);
}

std::string write_test_file(const std::string& path, size_t size, uint32_t seed) {
  std::mt19937 engine(seed);
  std::string content(size, '\0');
  for (auto& c : content) c = static_cast<char>(engine() & 0xff);
  write_bytes(path, content);
  return content;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

::testing::AssertionResult same_bytes(const std::string& actual, const std::string& expected) {
  if (actual == expected) return ::testing::AssertionSuccess();
  size_t common = std::min(actual.size(), expected.size());
  size_t first = std::mismatch(actual.begin(), actual.begin() + static_cast<std::ptrdiff_t>(common), expected.begin())
                     .first -
                 actual.begin();
  return ::testing::AssertionFailure() << "got " << actual.size() << " bytes, expected " << expected.size()
                                       << "; first difference at byte " << first;
}

std::vector<std::string> directory_names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

detail::RetryPolicy fast_retry_policy(int max_attempts) {
  detail::RetryPolicy policy;
  policy.max_attempts = max_attempts;
  policy.initial_backoff = std::chrono::milliseconds(10);
  policy.max_backoff = std::chrono::milliseconds(50);
  policy.max_elapsed = std::chrono::seconds(20);
  return policy;
}

WebHdfsServer::WebHdfsServer(std::vector<std::string> extra_arguments) {
  std::string port_file = scratch_ / "ports.json";
  std::vector<std::string> argv = {PERSISTENCE_TEST_PYTHON3,
                                   PERSISTENCE_WEBHDFS_SERVER,
                                   "--root",
                                   scratch_ / "root",
                                   "--log",
                                   scratch_ / "requests.jsonl",
                                   "--port-file",
                                   port_file,
                                   "--parent-pid",
                                   std::to_string(::getpid()),
                                   "--max-lifetime",
                                   "300"};
  argv.insert(argv.end(), extra_arguments.begin(), extra_arguments.end());
  std::vector<char*> arguments;
  for (auto& argument : argv) arguments.push_back(argument.data());
  arguments.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  int error = ::posix_spawn(&pid_, argv[0].c_str(), &actions, nullptr, arguments.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw std::runtime_error("cannot start the WebHDFS test server: " + std::string(std::strerror(error)));

  // The server writes the port file once both ports listen.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!fs::exists(port_file)) {
    if (std::chrono::steady_clock::now() > deadline || wait_for_exit(pid_, std::chrono::milliseconds(0))) {
      ::kill(pid_, SIGKILL);
      wait_for_exit(pid_, std::chrono::seconds(5));
      throw std::runtime_error("the WebHDFS test server did not start; run " + argv[1] + " by hand to see why");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto ports = nlohmann::json::parse(read_file(port_file));
  namenode_port_ = ports["namenode"].get<int>();
  if (ports["standby"].is_number()) standby_port_ = ports["standby"].get<int>();
}

WebHdfsServer::~WebHdfsServer() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  if (!wait_for_exit(pid_, std::chrono::seconds(5))) {
    ::kill(pid_, SIGKILL);
    wait_for_exit(pid_, std::chrono::seconds(5));
  }
}

std::string WebHdfsServer::namenode_address() const { return "127.0.0.1:" + std::to_string(namenode_port_); }

std::string WebHdfsServer::local_path(const std::string& hdfs_path) const { return scratch_.path() + "/root" + hdfs_path; }

detail::HdfsConfig WebHdfsServer::config() const {
  detail::HdfsConfig config;
  config.webhdfs_addresses = {namenode_address()};
  config.user = "alice";
  config.connect_timeout = std::chrono::seconds(5);
  config.request_timeout = std::chrono::seconds(10);
  config.stall_timeout = std::chrono::seconds(10);
  config.retry = fast_retry_policy();
  return config;
}

void WebHdfsServer::control(const std::string& method, const std::string& path, const std::string& body) const {
  std::string response;
  std::string url = "http://" + namenode_address() + path;
  CURL* handle = curl_easy_init();
  curl_easy_setopt(handle, CURLOPT_URL, url.c_str());
  curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (!body.empty()) {
    curl_easy_setopt(handle, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  }
  curl_easy_setopt(handle, CURLOPT_PROXY, "");
  curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, 15000L);
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, append_to_string);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &response);
  CURLcode result = curl_easy_perform(handle);
  long status = 0;
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(handle);
  if (result != CURLE_OK || status != 200) {
    throw std::runtime_error(method + " " + path + " on the WebHDFS test server failed (HTTP " +
                             std::to_string(status) + "): " + response);
  }
}

void WebHdfsServer::set_faults(const nlohmann::json& rules) const { control("PUT", "/control/faults", rules.dump()); }

std::vector<nlohmann::json> WebHdfsServer::requests() const {
  // Requests still being handled have not reached the log yet.
  control("GET", "/control/idle", {});
  std::vector<nlohmann::json> entries;
  std::istringstream log(read_file(scratch_ / "requests.jsonl"));
  std::string line;
  while (std::getline(log, line)) {
    if (!line.empty()) entries.push_back(nlohmann::json::parse(line));
  }
  return entries;
}

std::vector<nlohmann::json> WebHdfsServer::requests(const std::string& role, const std::string& op) const {
  std::vector<nlohmann::json> matching;
  for (auto& entry : requests()) {
    if (entry["role"] == role && entry["op"] == op) matching.push_back(entry);
  }
  return matching;
}

}  // namespace persistence::test
