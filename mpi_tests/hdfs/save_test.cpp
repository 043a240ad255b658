// The first job of the HDFS save-and-resume pairs: saves several steps through
// the manager to hdfs:// URIs, over WebHDFS and over the fake hdfs command, and
// checks the commit protocol in the request logs. resume_test.cpp is the
// second job; the two share PERSISTENCE_HDFS_TEST_ROOT in the build tree.

#include "hdfs_test_support.h"
#include "mpi_test_support.h"

#include <persistence/manager.h>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace persistence::testing {
namespace {

// Checks that only rank 0 makes run in an immediately called lambda, so that a
// failed ASSERT returns from the lambda and rank 0 still reaches the barrier
// that the other ranks wait in.

const std::string kRoot = PERSISTENCE_HDFS_TEST_ROOT;
const std::vector<int64_t> kSteps = {10, 20, 30, 40};

// Saves kSteps to uri through a manager that stages in staging_dir.
void save_steps(const std::string& uri, ManagerOptions options) {
  PersistenceManager manager(uri, options);
  for (int64_t step : kSteps) save_step(manager, step);
  manager.close();
}

// Checks that dir contains the final file of each step of kSteps and no
// temporary file, and that the newest one equals its local staging copy.
void expect_remote_steps(const std::string& dir, const std::string& staging_dir) {
  std::vector<std::string> expected;
  for (int64_t step : kSteps) expected.push_back(step_file_name(step));
  EXPECT_EQ(directory_names(dir), expected) << "remote step files in " << dir << " on " << where();

  const std::string newest = step_file_name(kSteps.back());
  const std::string local = file_bytes(staging_dir + "/" + newest);
  ASSERT_FALSE(local.empty()) << "local copy " << staging_dir << "/" << newest << " on " << where(kSteps.back());
  EXPECT_TRUE(file_bytes(dir + "/" + newest) == local)
      << "remote bytes differ from the local step file on " << where(kSteps.back());
}

TEST(WebHdfsSave, SeveralStepsAsync) {
  const std::string base = kRoot + "/webhdfs";
  reset_directory(base);
  WebHdfsTestServer server(base + "/namenode", base + "/save-requests.jsonl");

  ManagerOptions options;
  options.task_id = "webhdfs-run";
  options.registry_dir = base + "/registry";
  options.staging_dir = base + "/staging-save";
  save_steps(hdfs_uri("/runs/webhdfs"), options);

  if (world_rank() == 0) [&] {
    expect_one_commit_per_step(server.requests(), "/runs/webhdfs", kSteps);
    expect_remote_steps(server.local_path("/runs/webhdfs"), options.staging_dir);

    // Only the newest step stays local once the older ones are verified remotely.
    EXPECT_EQ(directory_names(options.staging_dir), std::vector<std::string>{step_file_name(kSteps.back())})
        << "staging directory after close on " << where();
  }();
  barrier();
}

TEST(CliSave, SeveralStepsAsync) {
  const std::string base = kRoot + "/cli";
  reset_directory(base);
  const std::string log = base + "/save-invocations.jsonl";
  ScopedEnvironment environment({{"PERSISTENCE_HDFS_BACKEND", "cli"},
                                 {"PERSISTENCE_HDFS_COMMAND", PERSISTENCE_FAKE_HDFS},
                                 {"FAKE_HDFS_ROOT", base + "/namenode"},
                                 {"FAKE_HDFS_LOG", log}});

  ManagerOptions options;
  options.task_id = "cli-run";
  options.registry_dir = base + "/registry";
  options.staging_dir = base + "/staging-save";
  save_steps(hdfs_uri("/runs/cli"), options);

  if (world_rank() == 0) [&] {
    expect_one_cli_commit_per_step(read_json_lines(log), "/runs/cli", kSteps);
    expect_remote_steps(base + "/namenode/runs/cli", options.staging_dir);
  }();
  barrier();
}

// A task whose registry record lives on HDFS, for TaskResume.RegistryOnHdfs.
TEST(TaskSave, RegistryOnHdfs) {
  const std::string base = kRoot + "/task";
  reset_directory(base);
  WebHdfsTestServer server(base + "/namenode", base + "/save-requests.jsonl");

  ManagerOptions options;
  options.task_id = "hdfs-registry-run";
  options.registry_dir = hdfs_uri("/registry");
  options.staging_dir = base + "/staging-save";
  save_steps(hdfs_uri("/runs/task"), options);

  if (world_rank() == 0) [&] {
    const std::string record_path = server.local_path("/registry/hdfs-registry-run.yaml");
    const std::string record_text = file_bytes(record_path);
    ASSERT_FALSE(record_text.empty()) << "registry record " << record_path << " on " << where();
    YAML::Node record = YAML::Load(record_text);
    EXPECT_EQ(record["save_path"].as<std::string>(""), hdfs_uri("/runs/task")) << where("save_path");
    EXPECT_EQ(record["world_size"].as<int>(0), world_size()) << where("world_size");
    EXPECT_EQ(directory_names(server.local_path("/registry")), std::vector<std::string>{"hdfs-registry-run.yaml"})
        << "registry directory on HDFS, temporary files included, on " << where();
  }();
  barrier();
}

}  // namespace
}  // namespace persistence::testing
