// Faults injected into the WebHDFS test server while a manager stages steps
// out and in. A transient fault must end in a verified remote step after
// retries. A permanent one must end in an error from a later manager call
// (close() at the latest), and the local step must stay loadable. No fault may
// leave a file under a final step name that differs from the local step file,
// and no temporary file may stay behind.
//
// Each case uses its own remote directory /faults/<case> and staging directory.

#include "hdfs_test_support.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace persistence::testing {
namespace {

using nlohmann::json;

const std::string kRoot = PERSISTENCE_HDFS_TEST_ROOT;

// What a save sequence ended in: the message of the first error any manager call threw.
struct SaveOutcome {
  std::optional<std::string> error;
};

// Server, environment and checks shared by the cases. A check that only rank 0
// makes returns at once on the other ranks and runs in a function of its own,
// so a failed ASSERT there never makes rank 0 skip a later barrier.
class HdfsFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    reset_directory(base());
    // Short timeouts, so that the slow-response cases run into them quickly.
    environment_ = std::make_unique<ScopedEnvironment>(std::map<std::string, std::string>{
        {"PERSISTENCE_HDFS_REQUEST_TIMEOUT", "2"},
        {"PERSISTENCE_HDFS_STALL_TIMEOUT", "3"},
        {"PERSISTENCE_HDFS_CONNECT_TIMEOUT", "3"},
        {"PERSISTENCE_HDFS_RETRY_ATTEMPTS", "6"},
        {"PERSISTENCE_HDFS_RETRY_MAX_ELAPSED", "60"}});
    server_ = std::make_unique<WebHdfsTestServer>(base() + "/namenode", base() + "/requests.jsonl");
  }

  static void TearDownTestSuite() {
    server_.reset();
    environment_.reset();
  }

  void TearDown() override {
    if (world_rank() == 0) server_->set_faults(json::array());
    barrier();
  }

  static std::string base() { return kRoot + "/faults"; }

  static std::string case_name() { return ::testing::UnitTest::GetInstance()->current_test_info()->name(); }

  std::string remote_dir() const { return "/faults/" + case_name(); }
  std::string staging_dir() const { return base() + "/" + case_name() + "/staging"; }

  ManagerOptions options() const {
    ManagerOptions options;
    options.task_id = "faults-" + case_name();
    options.registry_dir = base() + "/registry";
    options.staging_dir = staging_dir();
    options.local_steps_kept = 100;  // keep every local copy to compare with the remote one
    return options;
  }

  // Arms rules, then saves steps (each sealed by the next save, the last by
  // commit()) and closes the manager. Collective.
  SaveOutcome save_with_faults(const json& rules, const std::vector<int64_t>& steps) {
    if (world_rank() == 0) server_->set_faults(rules);
    barrier();

    SaveOutcome outcome;
    std::unique_ptr<PersistenceManager> manager;
    try {
      manager = std::make_unique<PersistenceManager>(hdfs_uri(remote_dir()), options());
      for (int64_t step : steps) save_step(*manager, step);
      manager->commit();
      manager->close();
    } catch (const Error& error) {
      outcome.error = error.what();
    }
    // A manager whose call threw is still open; close it, ignoring a repeat of the error.
    try {
      if (manager) manager->close();
    } catch (const Error&) {
    }
    return outcome;
  }

  // Checks that every rule fired its full count: the server lists spent rules with "times": 0.
  static void expect_faults_fired() {
    if (world_rank() != 0) return;
    for (const auto& rule : server_->armed_faults()) {
      EXPECT_EQ(rule.value("times", 1), 0) << "fault rule " << rule.dump() << " did not fire its count on " << where();
    }
  }

  // Checks the remote directory after a transient fault: the final file of
  // each step, equal to its local step file, and nothing else.
  void expect_remote_steps(const std::vector<int64_t>& steps) const {
    if (world_rank() != 0) return;
    const std::string remote = server_->local_path(remote_dir());
    std::vector<std::string> expected;
    for (int64_t step : steps) expected.push_back(step_file_name(step));
    EXPECT_EQ(directory_names(remote), expected) << "files in " << remote << " on " << where();
    expect_final_names_complete();
  }

  // Checks that every file under a final step name in the remote directory
  // equals its local step file, and that no temporary file is left.
  void expect_final_names_complete() const {
    if (world_rank() != 0) return;
    const std::string remote = server_->local_path(remote_dir());
    for (const auto& name : directory_names(remote)) {
      EXPECT_FALSE(is_stage_out_temporary(name)) << "temporary file " << name << " left in " << remote << " on "
                                                 << where();
      if (is_stage_out_temporary(name)) continue;
      const std::string local = file_bytes(staging_dir() + "/" + name);
      EXPECT_FALSE(local.empty()) << "local step file of remote " << name << " on " << where(name);
      EXPECT_TRUE(file_bytes(remote + "/" + name) == local)
          << "remote " << name << " differs from the local step file on " << where(name);
    }
    expect_no_create_on_final_name(server_->requests(), remote_dir());
  }

  // Checks that a transient fault ended in verified remote steps.
  void expect_recovered(const SaveOutcome& outcome, const std::vector<int64_t>& steps) const {
    EXPECT_FALSE(outcome.error.has_value()) << "error after a transient fault on " << where() << ": "
                                            << outcome.error.value_or("");
    expect_faults_fired();
    expect_remote_steps(steps);
  }

  // Checks that a permanent fault ended in an error naming every fragment,
  // left no remote step, and that a new manager resumes from the local step.
  void expect_failed_but_loadable(const SaveOutcome& outcome, int64_t step,
                                  const std::vector<std::string>& fragments) {
    ASSERT_TRUE(outcome.error.has_value()) << "no error after a permanent fault on " << where(step);
    for (const auto& fragment : fragments) {
      EXPECT_NE(outcome.error->find(fragment), std::string::npos)
          << "the error does not name '" << fragment << "' on " << where(step) << ": " << *outcome.error;
    }
    if (world_rank() == 0) {
      EXPECT_TRUE(directory_names(server_->local_path(remote_dir())).empty())
          << "files in the remote directory after a permanent fault on " << where(step);
    }
    expect_final_names_complete();

    // The fault stays armed: the local step must load without any upload.
    PersistenceManager manager(hdfs_uri(remote_dir()), options());
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "load_last_step() after a permanent fault on " << where(step);
    expect_step_restored(*resume, step);
    manager.close();
  }

  static std::unique_ptr<ScopedEnvironment> environment_;
  static std::unique_ptr<WebHdfsTestServer> server_;
};

std::unique_ptr<ScopedEnvironment> HdfsFaults::environment_;
std::unique_ptr<WebHdfsTestServer> HdfsFaults::server_;

TEST_F(HdfsFaults, UploadDroppedAfterBytes) {
  const json rules = json::parse(R"([{"op": "CREATE", "action": "drop_after_bytes", "bytes": 4096}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

TEST_F(HdfsFaults, ServerError500) {
  const json rules = json::parse(R"([{"op": "CREATE", "action": "error", "status": 500},
                                     {"op": "GETFILESTATUS", "action": "error", "status": 503, "skip": 1}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

TEST_F(HdfsFaults, StandbyNameNode) {
  const json rules = json::parse(R"([
      {"op": "MKDIRS", "action": "error", "status": 403, "exception": "StandbyException"},
      {"op": "RENAME", "action": "error", "status": 403, "exception": "StandbyException"}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

// The retry after a dropped upload meets AlreadyBeingCreatedException, as a
// retry under the old name would on HDFS; the next attempt succeeds.
TEST_F(HdfsFaults, AlreadyBeingCreatedOnRetry) {
  const json rules = json::parse(R"([
      {"op": "CREATE", "action": "drop_after_bytes", "bytes": 4096},
      {"op": "CREATE", "role": "namenode", "action": "error", "status": 403,
       "exception": "AlreadyBeingCreatedException", "skip": 1}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

TEST_F(HdfsFaults, SlowResponses) {
  const json rules = json::parse(R"([
      {"op": "CREATE", "role": "datanode", "action": "delay", "seconds": 1.0},
      {"op": "GETFILESTATUS", "action": "delay", "seconds": 0.5, "times": 2}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

// The RENAME reply comes after the 2 s request timeout, so the client retries
// a rename that the server may already have made.
TEST_F(HdfsFaults, RenameReplyTooSlow) {
  const json rules = json::parse(R"([{"op": "RENAME", "action": "delay", "seconds": 3.0}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

// The server renames, then drops the connection without a reply. The retried
// RENAME returns false, and the stage-out must find its own file under the
// final name instead of replacing it and uploading again.
TEST_F(HdfsFaults, RenameReplyLost) {
  const json rules = json::parse(R"([{"op": "RENAME", "action": "drop", "perform": true}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});

  if (world_rank() == 0) {
    int creates = 0;
    for (const auto& request : server_->requests()) {
      const std::string path = request.value("path", "");
      if (request.value("op", "") == "CREATE" && request.value("role", "") == "namenode" &&
          path.rfind(remote_dir() + "/." + step_file_name(1) + ".tmp-", 0) == 0) {
        ++creates;
      }
    }
    EXPECT_EQ(creates, 1) << "NameNode CREATEs of step 1 after a lost RENAME reply on " << where(1);
  }
  barrier();
}

TEST_F(HdfsFaults, RenameReturnsFalse) {
  const json rules = json::parse(R"([{"op": "RENAME", "action": "rename_false"}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

// RENAME renames, then returns false, as when a reply was lost and an earlier
// attempt's rename went through.
TEST_F(HdfsFaults, RenameReturnsFalseAfterRenaming) {
  const json rules = json::parse(R"([{"op": "RENAME", "action": "rename_false", "perform": true}])");
  expect_recovered(save_with_faults(rules, {1, 2}), {1, 2});
}

TEST_F(HdfsFaults, CreateAccessDenied) {
  const json rules = json::parse(R"([{"op": "CREATE", "action": "error", "status": 403,
                                      "exception": "AccessControlException", "times": -1}])");
  expect_failed_but_loadable(save_with_faults(rules, {1}), 1,
                             {"CREATE", "AccessControlException", "403", step_file_name(1), "Stage-out of"});
}

TEST_F(HdfsFaults, RenameAccessDenied) {
  const json rules = json::parse(R"([{"op": "RENAME", "action": "error", "status": 403,
                                      "exception": "AccessControlException", "times": -1}])");
  expect_failed_but_loadable(save_with_faults(rules, {1}), 1,
                             {"RENAME", "AccessControlException", step_file_name(1), "Stage-out of"});
}

// The stage-out of step 1 fails for good while step 2 is open. The next
// manager call reports the error, and step 1 stays in the staging directory
// only. Step 2, open when the error was reported, is still staged out once a
// later save seals it, and so is step 3.
TEST_F(HdfsFaults, StageOutFailureKeepsOpenStep) {
  if (world_rank() == 0) {
    server_->set_faults(json::parse(R"([{"op": "CREATE", "action": "error", "status": 403,
                                          "exception": "AccessControlException", "times": 1}])"));
  }
  barrier();

  PersistenceManager manager(hdfs_uri(remote_dir()), options());
  save_step(manager, 1);
  save_step(manager, 2);  // seals step 1, whose stage-out then fails
  // wait() agrees on the outcome on every rank, so all ranks leave the loop together.
  std::optional<std::string> error;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!error && std::chrono::steady_clock::now() < deadline) {
    try {
      manager.wait();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } catch (const Error& caught) {
      error = caught.what();
    }
  }
  ASSERT_TRUE(error.has_value()) << "no error from wait() after a failed stage-out on " << where(1);
  if (world_rank() == 0) {
    EXPECT_NE(error->find(step_file_name(1)), std::string::npos)
        << "the stage-out error does not name the step file on " << where(1) << ": " << *error;
  }

  std::optional<std::string> later_error;
  try {
    save_step(manager, 3);  // seals step 2
    manager.commit();       // seals step 3
    manager.close();
  } catch (const Error& caught) {
    later_error = caught.what();
  }
  EXPECT_FALSE(later_error.has_value()) << "error after the failed stage-out was reported on " << where(3) << ": "
                                        << later_error.value_or("");
  expect_faults_fired();
  expect_remote_steps({2, 3});
  if (world_rank() == 0) {
    EXPECT_FALSE(file_bytes(staging_dir() + "/" + step_file_name(1)).empty())
        << "local step file after a failed stage-out on " << where(1);
  }
  barrier();
}

// Stage-in resumes a download that the DataNode cut off, with OPEN offset=.
TEST_F(HdfsFaults, DownloadDroppedAfterBytes) {
  const SaveOutcome saved = save_with_faults(json::array(), {1, 2});
  ASSERT_FALSE(saved.error.has_value()) << "save without faults on " << where() << ": " << saved.error.value_or("");

  reset_directory(staging_dir());
  if (world_rank() == 0) {
    server_->set_faults(json::parse(R"([{"op": "OPEN", "action": "drop_after_bytes", "bytes": 8192}])"));
  }
  barrier();
  {
    PersistenceManager manager(hdfs_uri(remote_dir()), options());
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "load_last_step() after a dropped download on " << where(2);
    expect_step_restored(*resume, 2);
    manager.close();
  }
  expect_faults_fired();

  if (world_rank() == 0) [&] {
    std::vector<std::string> offsets;
    for (const auto& request : server_->requests()) {
      if (request.value("op", "") != "OPEN" || request.value("role", "") != "datanode") continue;
      if (request.value("path", "") != remote_dir() + "/" + step_file_name(2)) continue;
      offsets.push_back(request["query"].value("offset", "0"));
    }
    ASSERT_EQ(offsets.size(), 2u) << "DataNode OPENs of step 2 on " << where(2);
    EXPECT_EQ(offsets[0], "0") << "offset of the first OPEN on " << where(2);
    EXPECT_NE(offsets[1], "0") << "offset of the resumed OPEN on " << where(2);
  }();
  barrier();
}

}  // namespace
}  // namespace persistence::testing
