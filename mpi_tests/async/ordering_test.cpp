// Back-to-back asynchronous saves beside trainer MPI traffic: 21 saves (a
// model, its bfloat16 EMA and an optimizer at each of 7 steps) while the main
// thread calls MPI_Allreduce on MPI_COMM_WORLD between the saves and while the
// I/O thread writes. Every step must land, the writes must run in call order,
// and every value must read back bit for bit. The ctest TIMEOUT and the test
// main's watchdog turn a hang into a failure.

#include "async_support.h"
#include "mpi_test_support.h"

#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSteps = 7;
constexpr int kAllreducesBetweenSaves = 20;
constexpr int64_t kAllreduceLength = 64;

// Shape, dtype and sharding of one saved tensor.
struct KeySpec {
  std::string key;
  std::vector<int64_t> shape;
  c10::ScalarType dtype;
  bool sharded;
};

const std::vector<KeySpec>& model_keys() {
  static const std::vector<KeySpec> keys = {
      {"blocks.weight", {33, 17}, at::kFloat, true},
      {"embedding.weight", {64, 128}, at::kFloat, false},
      {"head.bias", {128}, at::kFloat, false},
      {"norm.count", {}, at::kLong, false},
  };
  return keys;
}

const std::vector<KeySpec>& optimizer_keys() {
  static const std::vector<KeySpec> keys = {
      {"blocks.weight/exp_avg", {33, 17}, at::kFloat, true},
      {"embedding.weight/exp_avg", {64, 128}, at::kFloat, false},
      {"embedding.weight/step", {}, at::kLong, false},
  };
  return keys;
}

// The global value of key number index at step; the optimizer's seeds differ from the model's.
at::Tensor value_at(const KeySpec& spec, size_t index, int64_t step, bool optimizer) {
  return deterministic_tensor(spec.shape, spec.dtype, static_cast<double>(step * 100 + index + (optimizer ? 50 : 0)));
}

// This rank's flat range of a sharded tensor: an even split of its elements.
std::pair<int64_t, int64_t> flat_part(const KeySpec& spec) {
  int64_t numel = 1;
  for (int64_t size : spec.shape) numel *= size;
  return {numel * world_rank() / world_size(), numel * (world_rank() + 1) / world_size()};
}

// Builds the tensors a trainer keeps; set_step later overwrites them in place.
StateDict make_states(const std::vector<KeySpec>& keys) {
  StateDict states;
  for (const KeySpec& spec : keys) {
    if (!spec.sharded) {
      states.emplace(spec.key, deterministic_tensor(spec.shape, spec.dtype, 0.0));
      continue;
    }
    const auto [begin, end] = flat_part(spec);
    ShardedTensor sharded(spec.shape, spec.dtype);
    sharded.add_flat(deterministic_tensor({end - begin}, spec.dtype, 0.0), begin);
    states.emplace(spec.key, std::move(sharded));
  }
  return states;
}

// Overwrites every tensor of states in place with its values at step, as a training step would.
void set_step(StateDict& states, const std::vector<KeySpec>& keys, int64_t step, bool optimizer) {
  for (size_t i = 0; i < keys.size(); ++i) {
    const KeySpec& spec = keys[i];
    const at::Tensor global = value_at(spec, i, step, optimizer);
    StateValue& value = states.at(spec.key);
    if (!spec.sharded) {
      std::get<at::Tensor>(value).copy_(global);
      continue;
    }
    const auto [begin, end] = flat_part(spec);
    std::get<ShardedTensor>(value).shards().at(0).data.copy_(global.reshape({-1}).narrow(0, begin, end - begin));
  }
}

// The full tensors a step file holds for keys, converted to dtype when given.
TensorDict expected_at(const std::vector<KeySpec>& keys, int64_t step, bool optimizer,
                       std::optional<c10::ScalarType> dtype = std::nullopt) {
  TensorDict expected;
  for (size_t i = 0; i < keys.size(); ++i) {
    at::Tensor global = value_at(keys[i], i, step, optimizer);
    if (dtype && at::isFloatingType(global.scalar_type())) global = global.to(*dtype);
    expected[keys[i].key] = global;
  }
  return expected;
}

// Runs count MPI_Allreduce calls on MPI_COMM_WORLD, as a data-parallel trainer
// does for its gradients, and returns how many produced a wrong sum.
int run_allreduces(int count, int64_t round) {
  const int64_t world = world_size();
  std::vector<int64_t> values(kAllreduceLength);
  std::vector<int64_t> sums(kAllreduceLength);
  int wrong = 0;
  for (int call = 0; call < count; ++call) {
    for (int64_t j = 0; j < kAllreduceLength; ++j) values[j] = world_rank() * 1000 + round + call + j;
    MPI_Allreduce(values.data(), sums.data(), static_cast<int>(kAllreduceLength), MPI_INT64_T, MPI_SUM,
                  MPI_COMM_WORLD);
    for (int64_t j = 0; j < kAllreduceLength; ++j) {
      const int64_t expected = 1000 * world * (world - 1) / 2 + world * (round + call + j);
      if (sums[j] != expected) {
        ++wrong;
        break;
      }
    }
  }
  return wrong;
}

// A save as the I/O thread reports it: "model 'ema'" and the step.
using SaveRecord = std::pair<std::string, int64_t>;

// Returns the saves that rank 0's I/O thread logged as finished, in log order.
std::vector<SaveRecord> finished_saves(const LogCapture& log) {
  static const std::regex pattern("^Saved ((model|optimizer) '[^']+') at step ([0-9]+) in ");
  std::vector<SaveRecord> records;
  for (const LogMessage& message : log.messages()) {
    std::smatch match;
    if (message.level == "info" && std::regex_search(message.text, match, pattern)) {
      records.emplace_back(match[1].str(), std::stoll(match[3].str()));
    }
  }
  return records;
}

// Returns how many messages of rank 0's I/O thread report a finished save.
size_t count_finished_saves(const LogCapture& log) {
  size_t count = 0;
  for (const LogMessage& message : log.messages()) {
    if (message.level == "info" && message.text.rfind("Saved ", 0) == 0) ++count;
  }
  return count;
}

void expect_group_equals(const std::string& file, const std::string& group, const TensorDict& expected,
                         int64_t step) {
  const TensorDict loaded = PersistedStates{file, group}.load(at::kCPU);
  ASSERT_EQ(loaded.size(), expected.size()) << "key count of " << group << ", " << where(step);
  for (const auto& [key, tensor] : expected) {
    ASSERT_EQ(loaded.count(key), 1u) << "missing in " << group << ", " << where(key, step);
    EXPECT_TRUE(bitwise_equal(tensor, loaded.at(key))) << group << ", " << where(key, step);
  }
}

TEST(BackToBackSaves, AllLandInCallOrderBesideAllreduce) {
  SharedTempDir dir("async-ordering");
  const std::string root = dir.join("checkpoints");
  LogCapture log;
  ManagerOptions options;
  options.registry_dir = dir.join("registry");
  PersistenceManager manager(root, options);

  StateDict model = make_states(model_keys());
  OptimizerStates optimizer{make_states(optimizer_keys()), YAML::Load("[{lr: 0.01, params: [blocks.weight]}]")};
  std::vector<SaveRecord> calls;
  int wrong_sums = 0;
  int64_t round = 0;
  for (int64_t step = 1; step <= kSteps; ++step) {
    set_step(model, model_keys(), step, false);
    manager.save_model({.step = step, .name = "model", .config = YAML::Load("{type: test}"), .states = model});
    calls.emplace_back("model 'model'", step);
    wrong_sums += run_allreduces(kAllreducesBetweenSaves, ++round);

    manager.save_model({.step = step, .name = "ema", .config = YAML::Load("{type: test}"), .states = model,
                        .dtype = at::kBFloat16});
    calls.emplace_back("model 'ema'", step);
    wrong_sums += run_allreduces(kAllreducesBetweenSaves, ++round);

    set_step(optimizer.states, optimizer_keys(), step, true);
    manager.save_optimizer({.step = step, .name = "optimizer", .states = optimizer});
    calls.emplace_back("optimizer 'optimizer'", step);
    wrong_sums += run_allreduces(kAllreducesBetweenSaves, ++round);
  }

  // Keep the main thread in MPI_Allreduce while the I/O thread finishes. Rank
  // 0's flag ends the loop once its log shows every save, or after a minute.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  const size_t in_flight = calls.size() - (world_rank() == 0 ? count_finished_saves(log) : 0);
  int64_t flags[2] = {0, 0};
  while (flags[0] == 0 && flags[1] == 0) {
    wrong_sums += run_allreduces(1, ++round);
    int64_t local[2] = {world_rank() == 0 && count_finished_saves(log) >= calls.size() ? 1 : 0,
                        world_rank() == 0 && std::chrono::steady_clock::now() > deadline ? 1 : 0};
    MPI_Allreduce(local, flags, 2, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  }
  EXPECT_EQ(flags[1], 0) << "rank 0 logged fewer than " << calls.size() << " finished saves within a minute, "
                         << where();
  ASSERT_NO_THROW(manager.wait()) << where(kSteps);
  EXPECT_EQ(wrong_sums, 0) << "MPI_Allreduce calls on MPI_COMM_WORLD beside the saves gave wrong sums, " << where();
  if (world_rank() == 0) {
    RecordProperty("saves_in_flight_after_last_call", static_cast<int>(in_flight));
    EXPECT_EQ(finished_saves(log), calls) << "the I/O thread ran the saves in another order than the calls, "
                                          << where();
  }

  std::vector<std::string> expected_listing;
  for (int64_t step = 1; step <= kSteps; ++step) expected_listing.push_back(step_file_name(step));
  std::vector<std::string> listing;
  for (const auto& entry : fs::directory_iterator(root)) listing.push_back(entry.path().filename().string());
  std::sort(listing.begin(), listing.end());
  EXPECT_EQ(listing, expected_listing) << "the save root holds other files than one file per step, " << where();

  // Each step's last save ends before the next step's first save starts, so
  // the modification times of the step files follow the step order.
  for (int64_t step = 2; step <= kSteps; ++step) {
    const std::string earlier = root + "/" + step_file_name(step - 1);
    const std::string later = root + "/" + step_file_name(step);
    if (!fs::exists(earlier) || !fs::exists(later)) continue;  // the listing check above reports it
    EXPECT_LE(fs::last_write_time(earlier), fs::last_write_time(later))
        << "step " << step - 1 << " was modified after step " << step << ", " << where(step);
  }

  for (int64_t step = 1; step <= kSteps; ++step) {
    const std::string file = root + "/" + step_file_name(step);
    expect_group_equals(file, "/models/model/states", expected_at(model_keys(), step, false), step);
    expect_group_equals(file, "/models/ema/states", expected_at(model_keys(), step, false, at::kBFloat16), step);
    expect_group_equals(file, "/optimizers/optimizer/states", expected_at(optimizer_keys(), step, true), step);
  }

  std::optional<ResumeState> resume = manager.load_last_step({.models = {"model", "ema"}, .optimizers = {"optimizer"}});
  ASSERT_TRUE(resume.has_value()) << "no step loads after the saves, " << where(kSteps);
  EXPECT_EQ(resume->step, kSteps) << "load_last_step chose another step than the last one, " << where();
  manager.close();
}

}  // namespace
}  // namespace persistence::testing
