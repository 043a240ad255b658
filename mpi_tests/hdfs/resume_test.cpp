// The second job of the HDFS save-and-resume pairs. It starts with an empty
// staging directory and resumes from the step files that save_test.cpp left in
// the backing directories of the WebHDFS test server and the fake hdfs
// command. load_model_from_task then finds the saved tasks through a local
// registry and through one on HDFS.

#include "hdfs_test_support.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

// Checks that only rank 0 makes run in an immediately called lambda, so that a
// failed ASSERT returns from the lambda and rank 0 still reaches the barrier
// that the other ranks wait in.

const std::string kRoot = PERSISTENCE_HDFS_TEST_ROOT;
constexpr int64_t kNewestStep = 40;

// Resumes from uri with a staging directory that this call empties first.
void resume_newest(const std::string& uri, const std::string& staging_dir) {
  reset_directory(staging_dir);
  ASSERT_FALSE(std::filesystem::exists(staging_dir)) << "staging directory before the resume on " << where();

  ManagerOptions options;
  options.task_id = "resume-job";
  options.registry_dir = staging_dir + "-registry";
  options.staging_dir = staging_dir;
  PersistenceManager manager(uri, options);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << "load_last_step() from " << uri << " on " << where();
  expect_step_restored(*resume, kNewestStep);
  manager.close();
}

TEST(WebHdfsResume, NewestStepFromEmptyStaging) {
  const std::string base = kRoot + "/webhdfs";
  std::filesystem::remove(base + "/resume-requests.jsonl");
  WebHdfsTestServer server(base + "/namenode", base + "/resume-requests.jsonl");

  resume_newest(hdfs_uri("/runs/webhdfs"), base + "/staging-resume");

  if (world_rank() == 0) [&] {
    std::vector<std::string> opened;
    for (const auto& request : server.requests()) {
      const std::string op = request.value("op", "");
      for (const char* forbidden : {"CREATE", "RENAME", "DELETE"}) {
        EXPECT_NE(op, forbidden) << request.value("path", "") << " during a resume on " << where();
      }
      if (op == "OPEN" && request.value("role", "") == "namenode") opened.push_back(request.value("path", ""));
    }
    EXPECT_EQ(opened, std::vector<std::string>{"/runs/webhdfs/" + step_file_name(kNewestStep)})
        << "files opened on the NameNode on " << where(kNewestStep);
  }();
  barrier();
}

TEST(CliResume, NewestStepFromEmptyStaging) {
  const std::string base = kRoot + "/cli";
  const std::string log = base + "/resume-invocations.jsonl";
  std::filesystem::remove(log);
  ScopedEnvironment environment({{"PERSISTENCE_HDFS_BACKEND", "cli"},
                                 {"PERSISTENCE_HDFS_COMMAND", PERSISTENCE_FAKE_HDFS},
                                 {"FAKE_HDFS_ROOT", base + "/namenode"},
                                 {"FAKE_HDFS_LOG", log}});

  resume_newest(hdfs_uri("/runs/cli"), base + "/staging-resume");

  if (world_rank() == 0) [&] {
    std::vector<std::string> fetched;
    for (const auto& invocation : read_json_lines(log)) {
      const auto argv = invocation["argv"].get<std::vector<std::string>>();
      ASSERT_GE(argv.size(), 2u) << "fake hdfs invocation " << invocation.dump() << " on " << where();
      for (const char* forbidden : {"-put", "-mv", "-rm"}) {
        EXPECT_NE(argv[1], forbidden) << "hdfs dfs command during a resume on " << where();
      }
      if (argv[1] == "-get") fetched.push_back(argv[2]);
    }
    EXPECT_EQ(fetched, std::vector<std::string>{hdfs_uri("/runs/cli/" + step_file_name(kNewestStep))})
        << "files fetched with hdfs dfs -get on " << where(kNewestStep);
  }();
  barrier();
}

// load_model_from_task is a local call; rank 0 makes it, as a tool outside
// the training job would.
TEST(TaskResume, LocalRegistry) {
  const std::string base = kRoot + "/webhdfs";
  WebHdfsTestServer server(base + "/namenode", base + "/task-requests.jsonl");
  reset_directory(base + "/tmp-local-task");
  if (world_rank() == 0) [&] {
    std::filesystem::create_directories(base + "/tmp-local-task");
    ScopedEnvironment environment({{"TMPDIR", base + "/tmp-local-task"}});

    const PersistedModel model = load_model_from_task("webhdfs-run", "model", std::nullopt, base + "/registry");
    EXPECT_EQ(model.step, kNewestStep) << "newest step of task 'webhdfs-run' on " << where();
    expect_same_tensors(step_states(kNewestStep).model, model.states.load(at::kCPU), "model", kNewestStep);

    const PersistedModel older = load_model_from_task("webhdfs-run", "ema", 20, base + "/registry");
    EXPECT_EQ(older.step, 20) << "step 20 of task 'webhdfs-run' on " << where();
    expect_same_tensors(step_states(20).ema, older.states.load(at::kCPU), "ema", 20);
  }();
  barrier();
}

TEST(TaskResume, RegistryOnHdfs) {
  const std::string base = kRoot + "/task";
  WebHdfsTestServer server(base + "/namenode", base + "/resume-requests.jsonl");
  reset_directory(base + "/tmp-hdfs-task");
  if (world_rank() == 0) [&] {
    std::filesystem::create_directories(base + "/tmp-hdfs-task");
    ScopedEnvironment environment({{"TMPDIR", base + "/tmp-hdfs-task"}});

    const PersistedModel model = load_model_from_task("hdfs-registry-run", "model", std::nullopt,
                                                      hdfs_uri("/registry"));
    EXPECT_EQ(model.step, kNewestStep) << "newest step of task 'hdfs-registry-run' on " << where();
    expect_same_tensors(step_states(kNewestStep).model, model.states.load(at::kCPU), "model", kNewestStep);

    // The registry record was only read: nothing stays behind in the local temporary directory.
    std::vector<std::string> left;
    for (const auto& name : directory_names(base + "/tmp-hdfs-task")) {
      if (name != "persistence-staging") left.push_back(name);
    }
    EXPECT_TRUE(left.empty()) << "files left in TMPDIR by the registry lookup on " << where();
  }();
  barrier();
}

TEST(TaskResume, UnknownIdNamesWhereItLooked) {
  const std::string base = kRoot + "/task";
  WebHdfsTestServer server(base + "/namenode", base + "/unknown-requests.jsonl");
  if (world_rank() == 0) [&] {
    EXPECT_TRUE(throws_error<NotFoundError>(
        [&] { load_model_from_task("no-such-task", "model", std::nullopt, hdfs_uri("/registry")); },
        {"no-such-task", hdfs_uri("/registry/no-such-task.yaml")}))
        << "unknown task id with the registry on HDFS on " << where();
    EXPECT_TRUE(throws_error<NotFoundError>(
        [&] { load_model_from_task("no-such-task", "model", std::nullopt, kRoot + "/webhdfs/registry"); },
        {"no-such-task", kRoot + "/webhdfs/registry/no-such-task.yaml"}))
        << "unknown task id with a local registry on " << where();
  }();
  barrier();
}

}  // namespace
}  // namespace persistence::testing
