// Background writes that fail, and the manager's destructor. A WriteGate keeps
// a queued save from starting while rank 0 breaks the save root. Both ways of
// breaking it also stop a process running as root: the root is replaced by a
// regular file, or a directory takes the name of the step file.
//
// The next manager call (save_model, save_optimizer, wait, commit or close)
// must throw on every rank, naming the step and the save. The failed step must
// not be committed. The previous step must still load, both in the same job
// after a repair and from a fresh manager. The destructor must drain queued
// saves and log what failed, without throwing.

#include "async_support.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kPreviousStep = 1;
constexpr int64_t kFailedStep = 2;
constexpr int64_t kLaterStep = 3;

StateDict model_states(double seed) {
  return {{"weight", deterministic_tensor({6, 4}, at::kFloat, seed)},
          {"count", deterministic_tensor({3}, at::kLong, seed)}};
}

OptimizerStates optimizer_states(double seed) {
  return {.states = {{"weight/exp_avg", deterministic_tensor({6, 4}, at::kFloat, seed)}},
          .param_groups = YAML::Load("[{lr: 0.1, params: [weight]}]")};
}

SaveModelRequest model_request(int64_t step, const std::string& name = "model") {
  return {.step = step, .name = name, .config = YAML::Load("{type: test}"),
          .states = model_states(static_cast<double>(step))};
}

// The manager call that must report the failure.
enum class NextCall { kSaveModel, kSaveOptimizer, kWait, kCommit, kClose };

void make_call(PersistenceManager& manager, NextCall call) {
  switch (call) {
    case NextCall::kSaveModel:
      manager.save_model(model_request(kLaterStep));
      return;
    case NextCall::kSaveOptimizer:
      manager.save_optimizer({.step = kLaterStep, .name = "optimizer", .states = optimizer_states(kLaterStep)});
      return;
    case NextCall::kWait:
      manager.wait();
      return;
    case NextCall::kCommit:
      manager.commit();
      return;
    case NextCall::kClose:
      manager.close();
      return;
  }
}

size_t count_occurrences(const std::string& text, const std::string& fragment) {
  size_t count = 0;
  for (size_t at = text.find(fragment); at != std::string::npos; at = text.find(fragment, at + 1)) ++count;
  return count;
}

// Returns the names in dir, sorted.
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class BackgroundFailure : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }
  std::string step_path(int64_t step) const { return root() + "/" + step_file_name(step); }

  // Collective. Rank 0 moves the save root aside and puts a regular file in
  // its place, so creating any file in the root fails with ENOTDIR.
  void replace_root_with_file() {
    if (world_rank() == 0) {
      fs::rename(root(), root() + ".moved");
      std::ofstream(root()) << "not a directory";
    }
    barrier();
  }

  // Collective. Undoes replace_root_with_file.
  void restore_root() {
    barrier();
    if (world_rank() == 0) {
      fs::remove(root());
      fs::rename(root() + ".moved", root());
    }
    barrier();
  }

  // Collective. Rank 0 creates a directory where the file of step must go, so
  // the rename that commits the step fails with EISDIR after the data is written.
  void block_step_path(int64_t step) {
    if (world_rank() == 0) fs::create_directory(step_path(step));
    barrier();
  }

  // Collective. Removes what block_step_path created.
  void unblock_step_path(int64_t step) {
    barrier();
    if (world_rank() == 0) fs::remove(step_path(step));
    barrier();
  }

  // Checks, on this rank, that model `name` of step loads with the values its save gave it.
  void expect_model_loads(int64_t step, const std::string& name = "model") {
    const TensorDict loaded = PersistedStates{step_path(step), "/models/" + name + "/states"}.load(at::kCPU);
    const StateDict expected = model_states(static_cast<double>(step));
    ASSERT_EQ(loaded.size(), expected.size()) << "key count of model '" << name << "', " << where(step);
    for (const auto& [key, value] : expected) {
      ASSERT_EQ(loaded.count(key), 1u) << "missing in model '" << name << "', " << where(key, step);
      EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), loaded.at(key)))
          << "model '" << name << "', " << where(key, step);
    }
  }

  // Checks that the save root contains exactly these step files and nothing else,
  // so the failed step left neither a final nor a temporary file.
  void expect_root_holds(const std::vector<int64_t>& steps, const std::string& after) {
    barrier();
    std::vector<std::string> expected;
    for (int64_t step : steps) expected.push_back(step_file_name(step));
    EXPECT_EQ(names_in(root()), expected) << "the save root after " << after << ", " << where(kFailedStep);
  }

  // Checks with a fresh manager that newest_step is the newest usable step and
  // that the step saved before the failure still loads.
  void expect_fresh_manager_resumes(int64_t newest_step) {
    PersistenceManager fresh(root(), options());
    std::optional<ResumeState> resume = fresh.load_last_step({.models = {"model"}});
    ASSERT_TRUE(resume.has_value()) << "a fresh manager finds no usable step, " << where(kFailedStep);
    EXPECT_EQ(resume->step, newest_step) << "a fresh manager resumes from another step, " << where();
    expect_model_loads(kPreviousStep);
    fresh.close();
  }

  // Waits, on this rank, until the I/O thread has logged that it skipped
  // model `name` at step, which it does only after an earlier save failed.
  // Returns false after 30 seconds.
  bool wait_for_skipped_save(const std::string& name, int64_t step) const {
    const std::string fragment = "Skipping the save of model '" + name + "' at step " + std::to_string(step);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (log_.find("warning", fragment).empty()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  // Saves step 1, queues a save of step 2 behind the gate, and replaces the
  // root with a file. A marker save queued behind the failing one is skipped
  // once the failure is recorded, so the test makes the next call only after
  // the write has failed, then checks that the call throws on every rank.
  void check_failure_reported_by(NextCall next, bool failing_optimizer) {
    PersistenceManager manager(root(), options());
    manager.save_model(model_request(kPreviousStep));
    manager.wait();
    {
      WriteGate gate;
      if (failing_optimizer) {
        manager.save_optimizer({.step = kFailedStep, .name = "optimizer", .states = optimizer_states(kFailedStep)});
      } else {
        manager.save_model(model_request(kFailedStep));
      }
      manager.save_model(model_request(kFailedStep, "marker"));
      replace_root_with_file();
    }
    ASSERT_TRUE(wait_for_skipped_save("marker", kFailedStep))
        << "the I/O thread did not skip the save queued behind the failing one, " << where(kFailedStep);

    const std::string subject = failing_optimizer ? "optimizer 'optimizer'" : "model 'model'";
    std::string message;
    auto call = [&] {
      try {
        make_call(manager, next);
      } catch (const std::exception& error) {
        message = error.what();
        throw;
      }
    };
    EXPECT_TRUE(throws_error<IoError>(call, {"The save of " + subject + " failed", "step 2", "was not committed"}))
        << where(kFailedStep);
    EXPECT_LE(count_occurrences(message, "[failed on "), 1u)
        << "the message states the failing ranks more than once: " << message << ", " << where(kFailedStep);
    restore_root();
    expect_root_holds({kPreviousStep}, "the failure");

    if (next != NextCall::kClose) {
      // The manager recovers: the failure has been reported, so a new save runs.
      ASSERT_NO_THROW(manager.save_model(model_request(kLaterStep))) << where(kLaterStep);
      ASSERT_NO_THROW(manager.wait()) << where(kLaterStep);
      std::optional<ResumeState> resume = manager.load_last_step({.models = {"model"}});
      ASSERT_TRUE(resume.has_value()) << "no usable step after the recovery, " << where(kLaterStep);
      EXPECT_EQ(resume->step, kLaterStep) << "the step saved after the recovery is not the newest, " << where();
      expect_model_loads(kLaterStep);
      ASSERT_NO_THROW(manager.close()) << where(kLaterStep);
    }
    expect_model_loads(kPreviousStep);
    expect_fresh_manager_resumes(next == NextCall::kClose ? kPreviousStep : kLaterStep);
  }

  SharedTempDir dir_{"async-failure"};
  LogCapture log_;  // created before and destroyed after every manager of a test
};

TEST_F(BackgroundFailure, WaitThrowsOnEveryRank) { check_failure_reported_by(NextCall::kWait, false); }

TEST_F(BackgroundFailure, CommitThrowsOnEveryRank) { check_failure_reported_by(NextCall::kCommit, false); }

TEST_F(BackgroundFailure, NextSaveModelThrowsOnEveryRank) { check_failure_reported_by(NextCall::kSaveModel, false); }

TEST_F(BackgroundFailure, NextSaveOptimizerThrowsOnEveryRank) {
  check_failure_reported_by(NextCall::kSaveOptimizer, true);
}

TEST_F(BackgroundFailure, CloseThrowsOnEveryRank) { check_failure_reported_by(NextCall::kClose, false); }

// The next save of the failing name first waits for the failed write to free
// its staging memory. The gate opens only after that save has started, so the
// failure happens while the save waits, and the save must still report it
// instead of queueing a write that the I/O thread would skip.
TEST_F(BackgroundFailure, SaveWaitingForFailedWriteThrows) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(kPreviousStep));
  manager.wait();
  WriteGate gate;
  manager.save_model(model_request(kFailedStep));
  replace_root_with_file();

  gate.release_after(std::chrono::milliseconds(300));
  EXPECT_TRUE(throws_error<IoError>([&] { manager.save_model(model_request(kLaterStep)); },
                                    {"The save of model 'model' failed", "step 2"}))
      << where(kLaterStep);
  gate.release();
  restore_root();
  expect_root_holds({kPreviousStep}, "the failure");

  ASSERT_NO_THROW(manager.save_model(model_request(kLaterStep))) << where(kLaterStep);
  ASSERT_NO_THROW(manager.close()) << where(kLaterStep);
  expect_model_loads(kLaterStep);
  expect_fresh_manager_resumes(kLaterStep);
}

// The commit of step 2 fails after its data is written, because a directory
// has the step file's name. The saves queued behind it are skipped, the
// temporary file is removed, and resume skips the directory.
TEST_F(BackgroundFailure, FailedCommitSkipsQueuedSaves) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(kPreviousStep));
  manager.wait();
  {
    WriteGate gate;
    manager.save_model(model_request(kFailedStep));
    manager.save_model(model_request(kFailedStep, "ema"));
    manager.save_model(model_request(kLaterStep, "extra"));
    block_step_path(kFailedStep);
  }

  EXPECT_TRUE(throws_error<IoError>([&] { manager.wait(); }, {"The save of model 'model' failed", "step 2"}))
      << where(kFailedStep);
  expect_root_holds({kPreviousStep, kFailedStep}, "the failed commit, which left only the blocking directory");
  EXPECT_TRUE(fs::is_directory(step_path(kFailedStep))) << "the blocking directory was replaced, " << where(kFailedStep);
  EXPECT_FALSE(fs::exists(step_path(kLaterStep))) << "a save queued behind the failed one ran, " << where(kLaterStep);

  std::optional<ResumeState> resume = manager.load_last_step({.models = {"model"}});
  ASSERT_TRUE(resume.has_value()) << "no usable step beside the blocking directory, " << where(kFailedStep);
  EXPECT_EQ(resume->step, kPreviousStep) << "resume did not skip the blocking directory, " << where();

  unblock_step_path(kFailedStep);
  ASSERT_NO_THROW(manager.save_model(model_request(kLaterStep))) << where(kLaterStep);
  ASSERT_NO_THROW(manager.close()) << where(kLaterStep);
  expect_root_holds({kPreviousStep, kLaterStep}, "the recovery");
  expect_model_loads(kLaterStep);
  expect_fresh_manager_resumes(kLaterStep);
}

// Saves queued when the manager goes out of scope, without wait() or close(),
// are written by its destructor.
TEST_F(BackgroundFailure, DestructorDrainsQueuedSaves) {
  {
    PersistenceManager manager(root(), options());
    WriteGate gate;
    manager.save_model(model_request(kPreviousStep));
    manager.save_optimizer({.step = kPreviousStep, .name = "optimizer", .states = optimizer_states(kPreviousStep)});
    manager.save_model(model_request(kFailedStep, "ema"));
    EXPECT_FALSE(fs::exists(step_path(kPreviousStep))) << "a write ran while the gate was held, " << where();
    barrier();
    gate.release();
  }

  expect_root_holds({kPreviousStep, kFailedStep}, "the destructor");
  expect_model_loads(kPreviousStep);
  expect_model_loads(kFailedStep, "ema");
  const TensorDict optimizer =
      PersistedStates{step_path(kPreviousStep), "/optimizers/optimizer/states"}.load(at::kCPU);
  ASSERT_EQ(optimizer.count("weight/exp_avg"), 1u) << where("weight/exp_avg", kPreviousStep);
  EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(optimizer_states(kPreviousStep).states.at("weight/exp_avg")),
                            optimizer.at("weight/exp_avg")))
      << where("weight/exp_avg", kPreviousStep);
}

// A queued save that fails is reported by the destructor in the log on every
// rank, naming the save and the step, and nothing is thrown.
TEST_F(BackgroundFailure, DestructorLogsFailureWithoutThrowing) {
  EXPECT_NO_THROW({
    PersistenceManager manager(root(), options());
    manager.save_model(model_request(kPreviousStep));
    manager.wait();
    WriteGate gate;
    manager.save_model(model_request(kFailedStep));
    replace_root_with_file();
    gate.release();
  }) << where(kFailedStep);
  restore_root();

  const std::vector<LogMessage> errors = log_.find("error", "Closing the persistence manager failed");
  ASSERT_EQ(errors.size(), 1u) << "expected one error message from the destructor, " << where(kFailedStep);
  EXPECT_NE(errors[0].text.find("model 'model'"), std::string::npos)
      << "the message does not name the save: " << errors[0].text << ", " << where(kFailedStep);
  EXPECT_NE(errors[0].text.find("step 2"), std::string::npos)
      << "the message does not name the step: " << errors[0].text << ", " << where(kFailedStep);
  expect_root_holds({kPreviousStep}, "the destructor");
  expect_fresh_manager_resumes(kPreviousStep);
}

}  // namespace
}  // namespace persistence::testing
