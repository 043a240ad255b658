// HDFS settings given as manager options (ManagerOptions::hdfs) rather than
// environment variables. The ctest entry sets no HDFS variable, and the suite
// also removes any that the calling shell passed on, so a save and resume
// through the WebHDFS test server can only reach it through the options. A
// second case checks that an explicit option wins over its environment
// variable and that an unset one falls back to it.

#include "hdfs_test_support.h"
#include "mpi_test_support.h"

#include "storage/hdfs_config.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

const std::string kRoot = PERSISTENCE_HDFS_TEST_ROOT;
const std::vector<int64_t> kSteps = {1, 2, 3};
const std::string kUser = "options-user";

// Every environment variable that the HDFS settings fall back to.
const char* const kHdfsVariables[] = {
    "PERSISTENCE_HDFS_BACKEND",         "PERSISTENCE_WEBHDFS_ADDRESS",       "PERSISTENCE_HDFS_USER",
    "HADOOP_USER_NAME",                 "PERSISTENCE_HDFS_DELEGATION_TOKEN", "PERSISTENCE_HDFS_KERBEROS",
    "PERSISTENCE_HDFS_CSRF_HEADER",     "PERSISTENCE_HDFS_COMMAND",          "PERSISTENCE_HDFS_CONNECT_TIMEOUT",
    "PERSISTENCE_HDFS_REQUEST_TIMEOUT", "PERSISTENCE_HDFS_STALL_TIMEOUT",    "PERSISTENCE_HDFS_COMMAND_TIMEOUT",
    "PERSISTENCE_HDFS_RETRY_ATTEMPTS",  "PERSISTENCE_HDFS_RETRY_MAX_ELAPSED"};

// The HDFS options of both jobs: the server's address, a user name and no CSRF header.
HdfsOptions hdfs_options(const std::string& address) {
  HdfsOptions hdfs;
  hdfs.backend = "webhdfs";
  hdfs.webhdfs_address = address;
  hdfs.user = kUser;
  hdfs.csrf_header = false;
  hdfs.request_timeout = std::chrono::seconds(20);
  hdfs.retry_attempts = 3;
  return hdfs;
}

TEST(HdfsOptionsOnly, SaveAndResumeWithoutEnvironment) {
  for (const char* name : kHdfsVariables) ::unsetenv(name);
  const std::string base = kRoot + "/options";
  reset_directory(base);
  WebHdfsTestServer server(base + "/namenode", base + "/requests.jsonl", /*set_environment=*/false);
  ASSERT_EQ(std::getenv("PERSISTENCE_WEBHDFS_ADDRESS"), nullptr) << "PERSISTENCE_WEBHDFS_ADDRESS on " << where();

  ManagerOptions options;
  options.task_id = "options-run";
  options.registry_dir = hdfs_uri("/options/registry");
  options.staging_dir = base + "/staging-save";
  options.hdfs = hdfs_options(server.namenode_address());
  {
    PersistenceManager manager(hdfs_uri("/options/run"), options);
    for (int64_t step : kSteps) save_step(manager, step);
    manager.close();
  }

  if (world_rank() == 0) [&] {
    const auto requests = server.requests();
    expect_one_commit_per_step(requests, "/options/run", kSteps);
    ASSERT_FALSE(requests.empty()) << "no request reached the server on " << where();
    for (const auto& request : requests) {
      if (request.value("role", "") != "namenode") continue;
      EXPECT_EQ(request["query"].value("user.name", ""), kUser)
          << "user.name of " << request.value("op", "") << " " << request.value("path", "") << " on " << where();
      EXPECT_FALSE(request.value("csrf", true))
          << "CSRF header on " << request.value("op", "") << " " << request.value("path", "") << " on " << where();
    }
  }();
  barrier();

  // A fresh job: an empty staging directory, so the step comes from HDFS.
  options.staging_dir = base + "/staging-resume";
  {
    PersistenceManager manager(hdfs_uri("/options/run"), options);
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "load_last_step() through options on " << where(kSteps.back());
    expect_step_restored(*resume, kSteps.back());
    manager.close();
  }

  // The local loading calls take the same settings, also for a registry on HDFS.
  if (world_rank() == 0) [&] {
    const PersistedModel model = load_model_from_path(hdfs_uri("/options/run"), "model", 2, options.hdfs);
    EXPECT_EQ(model.step, 2) << "step of load_model_from_path on " << where("model", 2);
    expect_same_tensors(step_states(2).model, model.states.load(at::kCPU), "model", 2);

    const PersistedModel by_task =
        load_model_from_task("options-run", "ema", std::nullopt, hdfs_uri("/options/registry"), options.hdfs);
    EXPECT_EQ(by_task.step, kSteps.back()) << "step of load_model_from_task on " << where("ema", kSteps.back());
    expect_same_tensors(step_states(kSteps.back()).ema, by_task.states.load(at::kCPU), "ema", kSteps.back());
  }();
  barrier();
}

// An explicit option wins over its environment variable, whose value is then
// not even parsed; an unset option falls back to the variable.
TEST(HdfsOptionsResolve, ExplicitOptionWinsOverEnvironment) {
  ScopedEnvironment environment({{"PERSISTENCE_HDFS_BACKEND", "not-a-backend"},
                                 {"PERSISTENCE_WEBHDFS_ADDRESS", "env-nn:9870"},
                                 {"PERSISTENCE_HDFS_USER", "env-user"},
                                 {"PERSISTENCE_HDFS_DELEGATION_TOKEN", "env-token"},
                                 {"PERSISTENCE_HDFS_KERBEROS", "yes"},
                                 {"PERSISTENCE_HDFS_CSRF_HEADER", "no"},
                                 {"PERSISTENCE_HDFS_COMMAND", "/env/hdfs"},
                                 {"PERSISTENCE_HDFS_CONNECT_TIMEOUT", "1"},
                                 {"PERSISTENCE_HDFS_REQUEST_TIMEOUT", "2"},
                                 {"PERSISTENCE_HDFS_STALL_TIMEOUT", "3"},
                                 {"PERSISTENCE_HDFS_COMMAND_TIMEOUT", "4"},
                                 {"PERSISTENCE_HDFS_RETRY_ATTEMPTS", "5"},
                                 {"PERSISTENCE_HDFS_RETRY_MAX_ELAPSED", "6"}});
  HdfsOptions explicit_options;
  explicit_options.backend = "cli";
  explicit_options.webhdfs_address = "option-nn:50070";
  explicit_options.user = "option-user";
  explicit_options.delegation_token = "option-token";
  explicit_options.kerberos = false;
  explicit_options.csrf_header = true;
  explicit_options.command = "/option/hdfs";
  explicit_options.connect_timeout = std::chrono::seconds(11);
  explicit_options.request_timeout = std::chrono::seconds(12);
  explicit_options.stall_timeout = std::chrono::seconds(13);
  explicit_options.command_timeout = std::chrono::seconds(14);
  explicit_options.retry_attempts = 15;
  explicit_options.retry_max_elapsed = std::chrono::seconds(16);

  const detail::HdfsConfig config = detail::HdfsConfig::resolve(explicit_options);
  EXPECT_EQ(config.backend, detail::HdfsBackend::kCli) << "backend on " << where();
  EXPECT_EQ(config.webhdfs_addresses, std::vector<std::string>{"option-nn:50070"}) << "addresses on " << where();
  EXPECT_EQ(config.user, "option-user") << "user on " << where();
  EXPECT_EQ(config.delegation_token, "option-token") << "delegation token on " << where();
  EXPECT_FALSE(config.kerberos) << "kerberos on " << where();
  EXPECT_TRUE(config.csrf_header) << "csrf header on " << where();
  EXPECT_EQ(config.cli_command, "/option/hdfs") << "command on " << where();
  EXPECT_EQ(config.connect_timeout, std::chrono::seconds(11)) << "connect timeout on " << where();
  EXPECT_EQ(config.request_timeout, std::chrono::seconds(12)) << "request timeout on " << where();
  EXPECT_EQ(config.stall_timeout, std::chrono::seconds(13)) << "stall timeout on " << where();
  EXPECT_EQ(config.command_timeout, std::chrono::seconds(14)) << "command timeout on " << where();
  EXPECT_EQ(config.retry.max_attempts, 15) << "retry attempts on " << where();
  EXPECT_EQ(config.retry.max_elapsed, std::chrono::seconds(16)) << "retry time budget on " << where();

  // Unset options fall back to the variables; the backend's is invalid and named.
  HdfsOptions unset;
  unset.backend = "webhdfs";
  const detail::HdfsConfig fallback = detail::HdfsConfig::resolve(unset);
  EXPECT_EQ(fallback.webhdfs_addresses, std::vector<std::string>{"env-nn:9870"}) << "fallback addresses on " << where();
  EXPECT_EQ(fallback.user, "env-user") << "fallback user on " << where();
  EXPECT_TRUE(fallback.kerberos) << "fallback kerberos on " << where();
  EXPECT_FALSE(fallback.csrf_header) << "fallback csrf header on " << where();
  EXPECT_EQ(fallback.cli_command, "/env/hdfs") << "fallback command on " << where();
  EXPECT_EQ(fallback.retry.max_attempts, 5) << "fallback retry attempts on " << where();
  EXPECT_EQ(fallback.retry.max_elapsed, std::chrono::seconds(6)) << "fallback retry time budget on " << where();
  try {
    detail::HdfsConfig::resolve(HdfsOptions{});
    ADD_FAILURE() << "PERSISTENCE_HDFS_BACKEND=not-a-backend was accepted on " << where();
  } catch (const InvalidArgumentError& error) {
    EXPECT_NE(std::string(error.what()).find("PERSISTENCE_HDFS_BACKEND"), std::string::npos)
        << "error without the variable name on " << where() << ": " << error.what();
  }
  HdfsOptions invalid;
  invalid.backend = "libhdfs";
  try {
    detail::HdfsConfig::resolve(invalid);
    ADD_FAILURE() << "HdfsOptions::backend=libhdfs was accepted on " << where();
  } catch (const InvalidArgumentError& error) {
    EXPECT_NE(std::string(error.what()).find("HdfsOptions::backend"), std::string::npos)
        << "error without the option name on " << where() << ": " << error.what();
  }
}

}  // namespace
}  // namespace persistence::testing
