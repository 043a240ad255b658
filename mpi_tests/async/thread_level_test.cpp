// A manager in a job that initialised MPI at MPI_THREAD_SERIALIZED. It must
// log exactly one warning that explains how to get background saves, and save
// synchronously: the step file is complete when save_model returns, so a
// change in place right after the call cannot reach the file.
//
// This program has its own main, because the shared MPI test main initialises
// MPI_THREAD_MULTIPLE. Each rank prints its own failures, prefixed with its
// rank, and the exit status is nonzero on every rank when any rank failed.

#include "async_support.h"
#include "mpi_test_support.h"

#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kStep = 4;

// Returns the sum of value over the ranks of MPI_COMM_WORLD.
int64_t sum_over_ranks(int64_t value) {
  int64_t sum = 0;
  MPI_Allreduce(&value, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return sum;
}

TEST(SerializedThreadLevel, MpiProvidesSerialized) {
  int provided = -1;
  MPI_Query_thread(&provided);
  EXPECT_EQ(provided, MPI_THREAD_SERIALIZED) << "the tests below need MPI at MPI_THREAD_SERIALIZED, " << where();
}

// One warning on rank 0 and none elsewhere, for the manager's whole life, with
// the fix in its text.
TEST(SerializedThreadLevel, LogsOneWarningWithFix) {
  SharedTempDir dir("async-serialized");
  LogCapture log;
  {
    ManagerOptions options;
    options.registry_dir = dir.join("registry");
    PersistenceManager manager(dir.join("checkpoints"), options);
    manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: test}"),
                        .states = {{"weight", at::full({3, 2}, 1.5, at::kFloat)}}});
    manager.save_model({.step = kStep + 1, .name = "model", .config = YAML::Load("{type: test}"),
                        .states = {{"weight", at::full({3, 2}, 2.5, at::kFloat)}}});
    manager.close();
  }

  const std::vector<LogMessage> warnings = log.find("warning", "");
  const int64_t total = sum_over_ranks(static_cast<int64_t>(warnings.size()));
  EXPECT_EQ(total, 1) << "expected one warning in the whole job, " << where();
  if (world_rank() != 0) {
    EXPECT_TRUE(warnings.empty()) << "a rank other than 0 logged a warning, " << where();
    return;
  }
  ASSERT_EQ(warnings.size(), 1u) << "expected the warning on rank 0, " << where();
  const std::string& text = warnings[0].text;
  EXPECT_NE(text.find("instead of MPI_THREAD_MULTIPLE"), std::string::npos) << "the cause is missing: " << text;
  EXPECT_NE(text.find("saves run synchronously"), std::string::npos) << "the consequence is missing: " << text;
  EXPECT_NE(text.find("Call MPI_Init_thread with MPI_THREAD_MULTIPLE"), std::string::npos)
      << "the fix is missing: " << text;
}

// A save with the default blocking = false is complete when it returns: the
// step file exists and loads, and changes in place afterwards do not reach it.
TEST(SerializedThreadLevel, SavesSynchronously) {
  SharedTempDir dir("async-serialized");
  const std::string root = dir.join("checkpoints");
  const std::string file = root + "/" + step_file_name(kStep);
  at::Tensor weight = deterministic_tensor({16, 8}, at::kFloat, 1.0);
  at::Tensor counter = deterministic_tensor({4}, at::kLong, 2.0);
  at::Tensor exp_avg = deterministic_tensor({16, 8}, at::kFloat, 3.0);
  const TensorDict model_before = {{"counter", counter.clone()}, {"weight", weight.clone()}};
  const TensorDict optimizer_before = {{"weight/exp_avg", exp_avg.clone()}};

  ManagerOptions options;
  options.registry_dir = dir.join("registry");
  PersistenceManager manager(root, options);
  manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: test}"),
                      .states = {{"weight", weight}, {"counter", counter}}});
  EXPECT_TRUE(fs::exists(file)) << "the step file is missing right after save_model returned, " << where(kStep);
  manager.save_model({.step = kStep, .name = "ema", .config = YAML::Load("{type: test}"),
                      .states = {{"weight", weight}, {"counter", counter}}, .dtype = at::kBFloat16});
  manager.save_optimizer({.step = kStep, .name = "optimizer",
                          .states = {.states = {{"weight/exp_avg", exp_avg}},
                                     .param_groups = YAML::Load("[{lr: 0.1, params: [weight]}]")}});

  // Read before any wait(): a synchronous save left nothing to wait for.
  const TensorDict early = PersistedStates{file, "/optimizers/optimizer/states"}.load(at::kCPU);
  ASSERT_EQ(early.count("weight/exp_avg"), 1u) << where("weight/exp_avg", kStep);
  EXPECT_TRUE(bitwise_equal(optimizer_before.at("weight/exp_avg"), early.at("weight/exp_avg")))
      << "read before wait(), " << where("weight/exp_avg", kStep);

  weight.mul_(-3);
  counter.zero_();
  exp_avg.mul_(0.5).add_(1);
  ASSERT_NO_THROW(manager.wait()) << where(kStep);

  std::optional<ResumeState> resume = manager.load_last_step({.models = {"model", "ema"}, .optimizers = {"optimizer"}});
  ASSERT_TRUE(resume.has_value()) << "no usable step, " << where(kStep);
  ASSERT_EQ(resume->step, kStep) << where();
  const std::vector<std::pair<const PersistedStates*, TensorDict>> groups = {
      {&resume->models.at("model").states, model_before},
      {&resume->models.at("ema").states,
       {{"counter", model_before.at("counter")}, {"weight", model_before.at("weight").to(at::kBFloat16)}}},
      {&resume->optimizers.at("optimizer").states, optimizer_before},
  };
  for (const auto& [states, expected] : groups) {
    const TensorDict loaded = states->load(at::kCPU);
    ASSERT_EQ(loaded.size(), expected.size()) << "key count of " << states->group << ", " << where(kStep);
    for (const auto& [key, tensor] : expected) {
      ASSERT_EQ(loaded.count(key), 1u) << "missing in " << states->group << ", " << where(key, kStep);
      EXPECT_TRUE(bitwise_equal(tensor, loaded.at(key))) << states->group << ", " << where(key, kStep);
    }
  }
  manager.close();
}

// Prints this rank's failed assertions to stderr with the rank in front, for
// ranks other than 0, whose GoogleTest output is turned off.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: %s\n", world_rank(), result.file_name() ? result.file_name() : "unknown file",
                 result.line_number(), result.message());
  }
};

}  // namespace
}  // namespace persistence::testing

int main(int argc, char** argv) {
  int provided = -1;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &provided);
  ::testing::InitGoogleTest(&argc, argv);

  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    // Only rank 0 prints the usual output and writes --gtest_output reports.
    delete listeners.Release(listeners.default_result_printer());
    delete listeners.Release(listeners.default_xml_generator());
    listeners.Append(new persistence::testing::RankFailurePrinter);
  }

  const int local_status = RUN_ALL_TESTS();
  int status = 0;
  MPI_Allreduce(&local_status, &status, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && status != local_status) {
    std::fprintf(stderr, "[rank 0] tests failed on another rank; its messages are printed above\n");
  }
  MPI_Finalize();
  return status;
}
