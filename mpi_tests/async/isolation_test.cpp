// Snapshot isolation of asynchronous saves. Right after save_model or
// save_optimizer returns, the test changes every saved tensor in place (an
// optimizer step, mul_, zero_), and the step file must still hold the values
// as of the call. A WriteGate keeps the background write from starting until
// the changes are done, so on every run the write happens after the change.
// The save calls return while the gate is held, which also shows that they do
// not wait for the write.

#include "async_support.h"
#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/manager.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kStep = 7;

// Deep copies of the full tensors of states, with their values at the save call.
TensorDict copy_full_tensors(const StateDict& states) {
  TensorDict copies;
  for (const auto& [key, value] : states) copies[key] = std::get<at::Tensor>(value).clone();
  return copies;
}

// The values a save with dtype converts tensors to: floating tensors become
// dtype, others keep theirs.
TensorDict converted(const TensorDict& tensors, c10::ScalarType dtype) {
  TensorDict result;
  for (const auto& [key, tensor] : tensors) {
    result[key] = at::isFloatingType(tensor.scalar_type()) ? tensor.to(dtype) : tensor.clone();
  }
  return result;
}

// Changes every tensor of states in place: even positions are multiplied by
// -3 and shifted by 1, odd positions are zeroed.
void change_in_place(StateDict& states) {
  at::NoGradGuard no_grad;
  int position = 0;
  for (auto& [key, value] : states) {
    std::vector<at::Tensor> tensors;
    if (auto* tensor = std::get_if<at::Tensor>(&value)) {
      tensors.push_back(*tensor);
    } else {
      for (auto& shard : std::get<ShardedTensor>(value).shards()) tensors.push_back(shard.data);
    }
    for (at::Tensor& tensor : tensors) {
      if (position % 2 == 0) {
        tensor.mul_(-3).add_(1);
      } else {
        tensor.zero_();
      }
    }
    ++position;
  }
}

// Checks that the change in place reached every full tensor; a tensor that
// kept its value would make the comparison after the save prove nothing.
void expect_changed(const StateDict& live, const TensorDict& before, const std::string& name) {
  for (const auto& [key, tensor] : before) {
    EXPECT_FALSE(std::get<at::Tensor>(live.at(key)).equal(tensor))
        << "the change in place left the tensor unchanged in " << name << ", " << where(key, kStep);
  }
}

// Checks that the step file does not exist yet: the write cannot have run.
void expect_not_written(const std::string& root) {
  EXPECT_FALSE(fs::exists(root + "/" + step_file_name(kStep)))
      << "the step file exists while the write gate is held, " << where(kStep);
}

// Loads group of the step file and compares every tensor with expected, byte for byte.
void expect_saved(const ResumeState& resume, const std::string& name, bool optimizer, const TensorDict& expected) {
  const PersistedStates& states =
      optimizer ? resume.optimizers.at(name).states : resume.models.at(name).states;
  const TensorDict loaded = states.load(at::kCPU);
  ASSERT_EQ(loaded.size(), expected.size()) << "key count of " << name << ", " << where(kStep);
  for (const auto& [key, tensor] : expected) {
    ASSERT_EQ(loaded.count(key), 1u) << "missing in " << name << ", " << where(key, kStep);
    EXPECT_TRUE(bitwise_equal(tensor, loaded.at(key))) << name << ", " << where(key, kStep);
  }
}

class SnapshotIsolation : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }

  SharedTempDir dir_{"async-isolation"};
};

// A model saved as is and as bfloat16, and its Adam state, then an optimizer
// step and mul_ or zero_ on every tensor before the writes start.
TEST_F(SnapshotIsolation, ModelAndOptimizerChangedAfterSave) {
  TinyNet net(6, 5, 3, 1.0);
  torch::optim::Adam optimizer(net.parameters(), torch::optim::AdamOptions(0.05));
  apply_gradients(net, 0);
  optimizer.step();

  StateDict model_states = get_model_states(net);
  OptimizerStates optimizer_states = get_optimizer_states(optimizer, net);
  const TensorDict model_before = copy_full_tensors(model_states);
  const TensorDict optimizer_before = copy_full_tensors(optimizer_states.states);
  ASSERT_FALSE(optimizer_before.empty()) << "Adam has no state after one step, " << where();

  PersistenceManager manager(root(), options());
  WriteGate gate;
  manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                      .states = model_states});
  manager.save_model({.step = kStep, .name = "ema", .config = YAML::Load("{type: tiny_net}"),
                      .states = model_states, .dtype = at::kBFloat16});
  manager.save_optimizer({.step = kStep, .name = "optimizer", .states = optimizer_states});

  apply_gradients(net, 1);
  optimizer.step();
  change_in_place(model_states);
  change_in_place(optimizer_states.states);
  expect_changed(model_states, model_before, "model");
  expect_changed(optimizer_states.states, optimizer_before, "optimizer");
  expect_not_written(root());
  gate.release();

  ASSERT_NO_THROW(manager.wait()) << where(kStep);
  std::optional<ResumeState> resume = manager.load_last_step({.models = {"model", "ema"}, .optimizers = {"optimizer"}});
  ASSERT_TRUE(resume.has_value()) << "no step loads after the asynchronous saves, " << where(kStep);
  ASSERT_EQ(resume->step, kStep) << where();
  expect_saved(*resume, "model", false, model_before);
  expect_saved(*resume, "ema", false, converted(model_before, at::kBFloat16));
  expect_saved(*resume, "optimizer", true, optimizer_before);
  manager.close();
}

// Returns [begin, end) of part rank of count elements split evenly over world.
std::pair<int64_t, int64_t> even_part(int64_t count, int rank, int world) {
  return {count * rank / world, count * (rank + 1) / world};
}

// Returns this rank's [begin, end) of count elements. With several ranks, rank
// 0 gets no elements and the other ranks split them evenly.
std::pair<int64_t, int64_t> part_without_rank_zero(int64_t count) {
  const int world = world_size();
  const int rank = world_rank();
  if (world == 1) return {0, count};
  if (rank == 0) return {0, 0};
  return even_part(count, rank - 1, world - 1);
}

// Sharded states cut from global tensors that every rank builds alike. The
// pieces are row boxes, column boxes (non-contiguous views into a larger local
// tensor), flat ranges that leave rank 0 empty, and int64 flat ranges, beside
// one full tensor. column_owner is the tensor the column pieces view, so the
// test can change them through it.
struct ShardedCase {
  TensorDict globals;
  StateDict states;
  at::Tensor column_owner;
};

ShardedCase make_sharded_case() {
  const int world = world_size();
  const int rank = world_rank();
  ShardedCase sharded_case;
  sharded_case.globals["rows"] = deterministic_tensor({10, 6}, at::kFloat, 3.0);
  sharded_case.globals["columns"] = deterministic_tensor({5, 9}, at::kDouble, 4.0);
  sharded_case.globals["flat"] = deterministic_tensor({7, 3}, at::kFloat, 5.0);
  sharded_case.globals["counts"] = deterministic_tensor({13}, at::kLong, 6.0);
  sharded_case.globals["scale"] = deterministic_tensor({4}, at::kFloat, 7.0);

  const auto [row_begin, row_end] = even_part(10, rank, world);
  ShardedTensor rows({10, 6}, at::kFloat);
  rows.add_box(sharded_case.globals["rows"].narrow(0, row_begin, row_end - row_begin).clone(), {row_begin, 0});

  const auto [column_begin, column_end] = even_part(9, rank, world);
  sharded_case.column_owner = sharded_case.globals["columns"].clone();
  ShardedTensor columns({5, 9}, at::kDouble);
  columns.add_box(sharded_case.column_owner.narrow(1, column_begin, column_end - column_begin), {0, column_begin});

  const auto [flat_begin, flat_end] = part_without_rank_zero(21);
  ShardedTensor flat({7, 3}, at::kFloat);
  flat.add_flat(sharded_case.globals["flat"].reshape({-1}).narrow(0, flat_begin, flat_end - flat_begin).clone(), flat_begin);

  const auto [count_begin, count_end] = even_part(13, rank, world);
  ShardedTensor counts({13}, at::kLong);
  counts.add_flat(sharded_case.globals["counts"].narrow(0, count_begin, count_end - count_begin).clone(), count_begin);

  sharded_case.states.emplace("rows", std::move(rows));
  sharded_case.states.emplace("columns", std::move(columns));
  sharded_case.states.emplace("flat", std::move(flat));
  sharded_case.states.emplace("counts", std::move(counts));
  sharded_case.states.emplace("scale", sharded_case.globals["scale"].clone());
  return sharded_case;
}

// Checks that every non-empty piece and full tensor changed from its global values.
void expect_pieces_changed(const ShardedCase& sharded_case) {
  for (const auto& [key, value] : sharded_case.states) {
    const at::Tensor& global = sharded_case.globals.at(key);
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      EXPECT_FALSE(tensor->equal(global)) << "the change in place left the tensor unchanged, " << where(key, kStep);
      continue;
    }
    for (const Shard& shard : std::get<ShardedTensor>(value).shards()) {
      if (shard.data.numel() == 0) continue;
      at::Tensor before;
      if (const auto* box = std::get_if<Box>(&shard.region)) {
        before = global;
        for (size_t d = 0; d < box->offsets.size(); ++d) {
          before = before.narrow(static_cast<int64_t>(d), box->offsets[d], box->sizes[d]);
        }
      } else {
        const auto& range = std::get<FlatRange>(shard.region);
        before = global.reshape({-1}).narrow(0, range.begin, range.end - range.begin);
      }
      EXPECT_FALSE(shard.data.reshape(before.sizes()).equal(before))
          << "the change in place left a piece unchanged, " << where(key, kStep);
    }
  }
}

// Pieces of sharded tensors, saved as stored and converted to bfloat16, then
// changed through the tensors that own them before the writes start.
TEST_F(SnapshotIsolation, ShardedPiecesChangedAfterSave) {
  ShardedCase sharded_case = make_sharded_case();

  PersistenceManager manager(root(), options());
  WriteGate gate;
  manager.save_model({.step = kStep, .name = "sharded", .config = YAML::Load("{type: sharded}"),
                      .states = sharded_case.states});
  manager.save_model({.step = kStep, .name = "sharded_bf16", .config = YAML::Load("{type: sharded}"),
                      .states = sharded_case.states, .dtype = at::kBFloat16});

  change_in_place(sharded_case.states);
  sharded_case.column_owner.mul_(-2);  // reaches the column pieces through the tensor they view
  expect_pieces_changed(sharded_case);
  expect_not_written(root());
  gate.release();

  ASSERT_NO_THROW(manager.wait()) << where(kStep);
  std::optional<ResumeState> resume = manager.load_last_step({.models = {"sharded", "sharded_bf16"}});
  ASSERT_TRUE(resume.has_value()) << "no step loads after the asynchronous saves, " << where(kStep);
  ASSERT_EQ(resume->step, kStep) << where();
  expect_saved(*resume, "sharded", false, sharded_case.globals);
  expect_saved(*resume, "sharded_bf16", false, converted(sharded_case.globals, at::kBFloat16));
  manager.close();
}

}  // namespace
}  // namespace persistence::testing
