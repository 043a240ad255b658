// Ranks that call save_model differently: other steps, other names, another
// operation, other key sets, or a rank that never calls. Every rank that
// makes the call throws a CollectiveError within seconds, and the message
// names what differs (the step values, the names, the keys) and the ranks.
// Needs at least 2 ranks; registered at 2 and 4.

#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace persistence::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Each throw must come within this bound; the collective timeout in these tests is 2 s.
constexpr std::chrono::seconds kThrowBound{30};

// How long a rank that "never calls" stays away: past the 2 s timeout and the
// margin that ranks other than 0 allow rank 0 (timeout / 10 + 1 s).
constexpr std::chrono::seconds kAbsence{5};

StateDict small_states() {
  return {{"weight", at::full({4, 2}, 1.5, at::kFloat)}, {"steps_seen", at::full({}, 3, at::kLong)}};
}

SaveModelRequest model_request(int64_t step, const std::string& name, StateDict states = small_states(),
                               bool blocking = true) {
  return {.step = step, .name = name, .config = YAML::Load("{type: none}"), .states = std::move(states),
          .blocking = blocking};
}

// Returns "rank 0" or "ranks 0, 1, 2": the ranks below the last, as plan errors list them.
std::string ranks_below_last() {
  std::string text = world_size() == 2 ? "rank " : "ranks ";
  for (int r = 0; r + 1 < world_size(); ++r) text += (r ? ", " : "") + std::to_string(r);
  return text;
}

class MismatchedCalls : public ::testing::Test {
 protected:
  void SetUp() override {
    if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to make the ranks disagree";
  }

  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    options.collective_timeout = std::chrono::milliseconds(2000);
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }

  // Runs fn and checks that it throws a CollectiveError containing every
  // fragment, within kThrowBound.
  template <typename Fn>
  void expect_collective_error(Fn&& fn, const std::vector<std::string>& fragments, const std::string& what,
                               int64_t step) {
    const auto started = Clock::now();
    EXPECT_TRUE(throws_error<CollectiveError>(std::forward<Fn>(fn), fragments)) << what << ", " << where(step);
    const auto elapsed = Clock::now() - started;
    EXPECT_LT(elapsed, kThrowBound) << what << " took "
                                    << std::chrono::duration<double>(elapsed).count() << " s, " << where(step);
  }

  // Collective: the manager still saves and loads after a rejected call, and
  // the rejected call left no step behind.
  void expect_usable(PersistenceManager& manager, int64_t step) {
    manager.save_model(model_request(step, "model"));
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "no step after the rejected call, " << where(step);
    EXPECT_EQ(resume->step, step) << "the rejected call must leave no newer step, " << where(step);
  }

  SharedTempDir dir_{"mismatch"};
};

TEST_F(MismatchedCalls, DifferentSteps) {
  PersistenceManager manager(root(), options());
  const int64_t step = 10 + world_rank();
  expect_collective_error([&] { manager.save_model(model_request(step, "model")); },
                          {"step=10", "step=11", "rank 1"}, "save_model at step 10 + rank", step);
  expect_usable(manager, 5);
}

TEST_F(MismatchedCalls, DifferentNames) {
  PersistenceManager manager(root(), options());
  const std::string name = world_rank() == 0 ? "model" : "ema";
  expect_collective_error([&] { manager.save_model(model_request(1, name)); },
                          {"name='model'", "name='ema'", "rank 1"}, "save_model of 'model' on rank 0 only", 1);
  expect_usable(manager, 1);
}

TEST_F(MismatchedCalls, DifferentOperations) {
  PersistenceManager manager(root(), options());
  expect_collective_error(
      [&] {
        if (world_rank() == 0) {
          manager.save_model(model_request(1, "model"));
        } else {
          manager.save_optimizer({.step = 1, .name = "model", .states = {.states = small_states()}, .blocking = true});
        }
      },
      {"save_model", "save_optimizer", "rank 1"}, "save_model on rank 0, save_optimizer elsewhere", 1);
  expect_usable(manager, 1);
}

TEST_F(MismatchedCalls, DifferentKeySets) {
  PersistenceManager manager(root(), options());
  const bool last = world_rank() == world_size() - 1;
  StateDict states = small_states();
  if (last) states["only_on_last"] = at::full({3}, 1.0, at::kFloat);
  expect_collective_error([&] { manager.save_model(model_request(1, "model", states)); },
                          {"only_on_last", "missing on " + ranks_below_last(), "step 1"},
                          "a key only the last rank passes", 1);

  // Two keys differ: the message names the first and counts the others.
  StateDict two_missing = small_states();
  if (last) two_missing.erase("weight");
  if (last) two_missing.erase("steps_seen");
  if (last) two_missing["renamed"] = at::full({4, 2}, 1.5, at::kFloat);
  expect_collective_error([&] { manager.save_model(model_request(2, "model", two_missing)); },
                          {"key sets", "more keys differ"}, "the last rank renames every key", 2);

  // A background save reports the disagreement at the next call, on every rank.
  manager.save_model(model_request(3, "model", states, false));
  expect_collective_error([&] { manager.wait(); }, {"only_on_last", "model 'model'", "step 3"},
                          "a background save with a key only the last rank passes", 3);
  expect_usable(manager, 4);
}

TEST_F(MismatchedCalls, LastRankNeverCalls) {
  PersistenceManager manager(root(), options());
  const int last = world_size() - 1;
  if (world_rank() != last) {
    expect_collective_error([&] { manager.save_model(model_request(1, "model")); },
                            {"Timed out after 2000 ms", "save_model(step=1, name='model')",
                             "ranks that did not arrive: " + std::to_string(last)},
                            "save_model that the last rank never calls", 1);
  } else {
    std::this_thread::sleep_for(kAbsence);
  }
  // The manager's call counts now differ between ranks; its destructor logs that and does not hang.
}

TEST_F(MismatchedCalls, RankZeroNeverCalls) {
  PersistenceManager manager(root(), options());
  if (world_rank() != 0) {
    expect_collective_error([&] { manager.save_model(model_request(1, "model")); },
                            {"Timed out", "rank 0", "save_model(step=1, name='model')"},
                            "save_model that rank 0 never calls", 1);
  } else {
    std::this_thread::sleep_for(kAbsence);
  }
}

}  // namespace
}  // namespace persistence::testing
