#include "hdfs_test_support.h"

#include "mpi_test_support.h"

#include <ATen/ops/arange.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <mpi.h>
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
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>

extern char** environ;

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

// Waits up to timeout for pid to exit and reaps it. Returns false if it still runs.
bool wait_for_exit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t waited = ::waitpid(pid, &status, WNOHANG);
    if (waited == pid || waited < 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void stop_process(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  if (!wait_for_exit(pid, std::chrono::seconds(5))) {
    ::kill(pid, SIGKILL);
    wait_for_exit(pid, std::chrono::seconds(5));
  }
}

std::string broadcast_string(std::string text) {
  int size = static_cast<int>(text.size());
  MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
  text.resize(static_cast<size_t>(size));
  MPI_Bcast(text.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
  return text;
}

size_t append_to_string(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

// Spawns the server as a child of this process and returns its pid and NameNode address.
std::pair<pid_t, std::string> spawn_server(const std::string& root, const std::string& log) {
  fs::create_directories(root);
  std::string port_file = root + ".ports.json";
  fs::remove(port_file);
  std::vector<std::string> argv = {PERSISTENCE_TEST_PYTHON3, PERSISTENCE_WEBHDFS_SERVER,
                                   "--root", root,
                                   "--log", log,
                                   "--port-file", port_file,
                                   "--parent-pid", std::to_string(::getpid()),
                                   "--max-lifetime", "600"};
  std::vector<char*> arguments;
  for (auto& argument : argv) arguments.push_back(argument.data());
  arguments.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int error = ::posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, arguments.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (error != 0) throw std::runtime_error("cannot start the WebHDFS test server: " + std::string(std::strerror(error)));

  // The server writes the port file once both of its ports listen.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!fs::exists(port_file)) {
    if (std::chrono::steady_clock::now() > deadline || wait_for_exit(pid, std::chrono::milliseconds(0))) {
      stop_process(pid);
      throw std::runtime_error("the WebHDFS test server did not start within 30 s; run " + argv[1] +
                               " --root /tmp/x by hand to see why");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto ports = nlohmann::json::parse(file_bytes(port_file));
  return {pid, "127.0.0.1:" + std::to_string(ports["namenode"].get<int>())};
}

}  // namespace

std::string hdfs_uri(const std::string& path) { return std::string("hdfs://") + kRpcAuthority + path; }

ScopedEnvironment::ScopedEnvironment(const std::map<std::string, std::string>& values) {
  for (const auto& [name, value] : values) set(name, value);
}

void ScopedEnvironment::set(const std::string& name, const std::string& value) {
  if (saved_.count(name) == 0) {
    const char* earlier = std::getenv(name.c_str());
    saved_[name] = earlier == nullptr ? std::nullopt : std::optional<std::string>(earlier);
  }
  ::setenv(name.c_str(), value.c_str(), 1);
}

ScopedEnvironment::~ScopedEnvironment() {
  for (const auto& [name, value] : saved_) {
    if (value) {
      ::setenv(name.c_str(), value->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
}

WebHdfsTestServer::WebHdfsTestServer(const std::string& root, const std::string& log, bool set_environment)
    : root_(root), log_(log) {
  std::string failure;
  if (world_rank() == 0) {
    try {
      std::tie(pid_, address_) = spawn_server(root, log);
    } catch (const std::exception& error) {
      failure = error.what();
    }
  }
  failure = broadcast_string(failure);
  if (!failure.empty()) throw std::runtime_error(failure);
  address_ = broadcast_string(address_);
  if (set_environment) environment_.set("PERSISTENCE_WEBHDFS_ADDRESS", address_);
}

WebHdfsTestServer::~WebHdfsTestServer() {
  barrier();
  stop_process(pid_);
}

std::string WebHdfsTestServer::control(const std::string& method, const std::string& path,
                                       const std::string& body) const {
  std::string response;
  std::string url = "http://" + address_ + path;
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
                             std::to_string(status) + ", " + curl_easy_strerror(result) + "): " + response);
  }
  return response;
}

void WebHdfsTestServer::set_faults(const nlohmann::json& rules) const { control("PUT", "/control/faults", rules.dump()); }

nlohmann::json WebHdfsTestServer::armed_faults() const {
  return nlohmann::json::parse(control("GET", "/control/faults", ""));
}

std::vector<nlohmann::json> WebHdfsTestServer::requests() const {
  control("GET", "/control/idle", "");
  return read_json_lines(log_);
}

std::vector<nlohmann::json> read_json_lines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

std::vector<std::string> directory_names(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

bool is_stage_out_temporary(const std::string& name) {
  static const std::regex temporary(R"(\..+\.tmp-[0-9a-f]{16}(\._COPYING_)?)");
  return std::regex_match(name, temporary) || name.find("._COPYING_") != std::string::npos;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

void reset_directory(const std::string& dir) {
  if (world_rank() == 0) {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
  barrier();
}

StepStates step_states(int64_t step) {
  const double seed = static_cast<double>(step) * 10.0;
  StepStates states;
  states.model["encoder.weight"] = deterministic_tensor({64, 48}, at::kFloat, seed + 1);
  states.model["encoder.bias"] = deterministic_tensor({64}, at::kFloat, seed + 2);
  states.model["decoder.weight"] = deterministic_tensor({48, 64}, at::kBFloat16, seed + 3);
  states.model["steps_seen"] = at::arange(step, step + 4, at::kLong);
  states.ema["encoder.weight"] = deterministic_tensor({64, 48}, at::kFloat, seed + 4);
  states.ema["decoder.weight"] = deterministic_tensor({48, 64}, at::kDouble, seed + 5);
  states.optimizer.states["encoder.weight/exp_avg"] = deterministic_tensor({64, 48}, at::kFloat, seed + 6);
  states.optimizer.states["encoder.weight/exp_avg_sq"] = deterministic_tensor({64, 48}, at::kFloat, seed + 7);
  states.optimizer.states["encoder.weight/step"] = at::arange(step, step + 1, at::kLong);
  states.optimizer.param_groups =
      YAML::Load("[{lr: 0.001, betas: [0.9, 0.999], params: [encoder.weight]}]");
  return states;
}

void save_step(PersistenceManager& manager, int64_t step) {
  StepStates states = step_states(step);
  YAML::Node config = YAML::Load("{type: test_net, step: " + std::to_string(step) + "}");
  manager.save_model({.step = step, .name = "model", .config = config, .states = states.model});
  manager.save_model({.step = step, .name = "ema", .config = config, .states = states.ema});
  manager.save_optimizer({.step = step, .name = "optimizer", .states = states.optimizer});
}

namespace {

std::string base_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_final_step_name(const std::string& name) {
  static const std::regex final_name(R"(step_[0-9]{12,}\.h5)");
  return std::regex_match(name, final_name);
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// The HDFS path of an hdfs:// URI or a plain path, as the fake hdfs command receives it.
std::string cli_path(const std::string& argument) {
  if (!starts_with(argument, "hdfs://")) return argument;
  size_t slash = argument.find('/', std::strlen("hdfs://"));
  return slash == std::string::npos ? "/" : argument.substr(slash);
}

}  // namespace

void expect_no_create_on_final_name(const std::vector<nlohmann::json>& requests, const std::string& remote_dir) {
  for (const auto& request : requests) {
    const std::string path = request.value("path", "");
    if (request.value("op", "") != "CREATE" || !starts_with(path, remote_dir + "/")) continue;
    EXPECT_FALSE(is_final_step_name(base_name(path)))
        << request.value("role", "") << " CREATE on the final name " << path << " on " << where();
  }
}

void expect_one_commit_per_step(const std::vector<nlohmann::json>& requests, const std::string& remote_dir,
                                const std::vector<int64_t>& steps) {
  expect_no_create_on_final_name(requests, remote_dir);

  for (int64_t step : steps) {
    const std::string final_path = remote_dir + "/" + step_file_name(step);
    const std::string temporary_prefix = remote_dir + "/." + step_file_name(step) + ".tmp-";
    std::vector<std::string> creates;
    std::vector<std::string> renames;
    for (const auto& request : requests) {
      const std::string path = request.value("path", "");
      const std::string op = request.value("op", "");
      if (request.value("role", "") != "namenode") continue;
      if (op == "CREATE" && starts_with(path, temporary_prefix)) creates.push_back(path);
      if (op == "RENAME" && request["query"].value("destination", "") == final_path) renames.push_back(path);
    }
    ASSERT_EQ(creates.size(), 1u) << "NameNode CREATEs of a temporary name on " << where(step);
    ASSERT_EQ(renames.size(), 1u) << "RENAMEs to " << final_path << " on " << where(step);
    EXPECT_EQ(renames[0], creates[0]) << "source of the RENAME to " << final_path << " on " << where(step);
  }
}

void expect_one_cli_commit_per_step(const std::vector<nlohmann::json>& invocations, const std::string& remote_dir,
                                    const std::vector<int64_t>& steps) {
  for (const auto& invocation : invocations) {
    const auto argv = invocation["argv"].get<std::vector<std::string>>();
    if (argv.size() < 2 || argv[1] != "-put") continue;
    EXPECT_FALSE(is_final_step_name(base_name(cli_path(argv.back()))))
        << "hdfs dfs -put to the final name " << argv.back() << " on " << where();
  }

  for (int64_t step : steps) {
    const std::string final_path = remote_dir + "/" + step_file_name(step);
    const std::string temporary_prefix = remote_dir + "/." + step_file_name(step) + ".tmp-";
    std::vector<std::string> puts;
    std::vector<std::string> moves;
    for (const auto& invocation : invocations) {
      const auto argv = invocation["argv"].get<std::vector<std::string>>();
      if (argv.size() < 4) continue;
      if (argv[1] == "-put" && starts_with(cli_path(argv.back()), temporary_prefix)) puts.push_back(cli_path(argv.back()));
      if (argv[1] == "-mv" && cli_path(argv[3]) == final_path) moves.push_back(cli_path(argv[2]));
    }
    ASSERT_EQ(puts.size(), 1u) << "hdfs dfs -put to a temporary name on " << where(step);
    ASSERT_EQ(moves.size(), 1u) << "hdfs dfs -mv to " << final_path << " on " << where(step);
    EXPECT_EQ(moves[0], puts[0]) << "source of the -mv to " << final_path << " on " << where(step);
  }
}

void expect_same_tensors(const StateDict& expected, const TensorDict& actual, const std::string& name, int64_t step) {
  for (const auto& [key, value] : expected) {
    const std::string full_key = name + "/" + key;
    const auto found = actual.find(key);
    ASSERT_NE(found, actual.end()) << "missing " << where(full_key, step);
    EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), found->second)) << where(full_key, step);
  }
  EXPECT_EQ(actual.size(), expected.size()) << "number of keys of '" << name << "' on " << where(step);
}

void expect_step_restored(const ResumeState& resume, int64_t step) {
  const StepStates expected = step_states(step);
  ASSERT_EQ(resume.step, step) << "resumed step on " << where();
  ASSERT_EQ(resume.models.count("model"), 1u) << "model 'model' on " << where(step);
  ASSERT_EQ(resume.models.count("ema"), 1u) << "model 'ema' on " << where(step);
  ASSERT_EQ(resume.optimizers.count("optimizer"), 1u) << "optimizer 'optimizer' on " << where(step);

  expect_same_tensors(expected.model, resume.models.at("model").states.load(at::kCPU), "model", step);
  expect_same_tensors(expected.ema, resume.models.at("ema").states.load(at::kCPU), "ema", step);
  expect_same_tensors(expected.optimizer.states, resume.optimizers.at("optimizer").states.load(at::kCPU), "optimizer",
                      step);
  EXPECT_EQ(resume.models.at("model").config.load()["step"].as<int64_t>(), step) << where("model/config", step);
}

}  // namespace persistence::testing
