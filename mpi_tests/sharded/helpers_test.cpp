// ZeroRedundancyOptimizer and FlatParameter at one world size. The cases:
// agreement with an unsharded optimizer, uneven and empty ranges, parameters
// without gradients, padding that is never saved, and a 0-d parameter. Both
// helpers must also raise the same error on every rank when ranks pass
// different modules or partitions.

#include "training.h"

#include <persistence/errors.h>

#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/optim/sgd.h>
#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace persistence::testing {
namespace {

constexpr int64_t kStep = 5;

OptimizerBuilder adam() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(0.02).weight_decay(0.01));
  };
}

OptimizerBuilder sgd_momentum() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.1).momentum(0.9));
  };
}

// With several ranks, rank 0 owns nothing and rank 1 owns one element. The
// remaining ranks split the rest evenly, so at 4 ranks one range spans three parameters.
std::vector<int64_t> lopsided_partition(int64_t numel) {
  const int world = world_size();
  if (world == 1) return {0, numel};
  std::vector<int64_t> partition = {0, 0, 1};
  for (int r = 2; r < world; ++r) partition.push_back(1 + (numel - 1) * (r - 1) / (world - 2));
  if (world == 2) partition.back() = numel;
  return partition;
}

// A module with a 0-d parameter and a 4-element one: 5 elements, so FSDP at
// 4 ranks leaves one rank with padding only.
class ScalarNet : public torch::nn::Module {
 public:
  ScalarNet() {
    scale = register_parameter("scale", at::scalar_tensor(0.5));
    shift = register_parameter("shift", deterministic_tensor({4}, at::kFloat, 2.0));
  }
  at::Tensor scale;
  at::Tensor shift;
};

// Loss whose gradient differs per element and per step.
void scalar_net_backward(ScalarNet& net, int iteration) {
  at::Tensor inputs = deterministic_tensor({4}, at::kFloat, 1.0 + iteration);
  inputs.mul(net.scale).add(net.shift).pow(2).sum().backward();
}

std::string saved_in(SharedTempDir& dir, const OptimizerStates& states, const StateDict& model) {
  ManagerOptions options;
  options.registry_dir = dir.join("registry");
  PersistenceManager manager(dir.join("checkpoints"), options);
  manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: test}"), .states = model,
                      .dtype = std::nullopt, .blocking = true});
  manager.save_optimizer({.step = kStep, .name = "optimizer", .states = states, .dtype = std::nullopt,
                          .blocking = true});
  manager.close();
  return dir.join("checkpoints/" + step_file_name(kStep));
}

TEST(ZeroRedundancyOptimizer, LopsidedPartitionMatchesReference) {
  ZeroOptions options;
  options.partition = lopsided_partition(43);
  ZeroTrainer sharded(1.0, adam(), options);
  ReferenceTrainer reference(1.0, adam());
  EXPECT_EQ(sharded.zero().range().begin, options.partition[world_rank()]) << where() << ": range begin";
  EXPECT_EQ(sharded.zero().range().end, options.partition[world_rank() + 1]) << where() << ": range end";
  for (int i = 0; i < 3; ++i) {
    sharded.step();
    reference.step();
  }
  EXPECT_TRUE(parameters_close(reference.net(), sharded.net())) << where(3);
}

TEST(ZeroRedundancyOptimizer, LopsidedStateLoadsIntoBalancedRanges) {
  SharedTempDir dir("zero-lopsided");
  ZeroOptions options;
  options.partition = lopsided_partition(43);
  ZeroTrainer lopsided(1.0, adam(), options);
  for (int i = 0; i < 2; ++i) lopsided.step();
  const std::string path = saved_in(dir, lopsided.optimizer_states(), lopsided.model_states());

  ZeroTrainer balanced(3.0, adam());
  PersistedModel model{"model", kStep, {path, "/models/model/config"}, {path, "/models/model/states"}};
  PersistedOptimizer optimizer{"optimizer", kStep, {path, "/optimizers/optimizer/param_groups"},
                               {path, "/optimizers/optimizer/states"}};
  ASSERT_NO_THROW(balanced.load(model, optimizer)) << where("optimizer", kStep);
  for (int i = 0; i < 2; ++i) {
    lopsided.step();
    balanced.step();
  }
  EXPECT_TRUE(parameters_close(lopsided.net(), balanced.net())) << where(kStep + 2);
}

TEST(ZeroRedundancyOptimizer, ParameterWithoutGradientKeepsNoState) {
  SharedTempDir dir("zero-frozen");
  ZeroTrainer sharded(1.0, sgd_momentum());
  sharded.net().fc2->bias.set_requires_grad(false);
  ReferenceTrainer reference(1.0, sgd_momentum());
  reference.net().fc2->bias.set_requires_grad(false);
  for (int i = 0; i < 2; ++i) {
    sharded.step();
    reference.step();
  }
  EXPECT_TRUE(parameters_close(reference.net(), sharded.net())) << where(2);

  OptimizerStates states = sharded.optimizer_states();
  EXPECT_EQ(states.states.count("fc2.bias/momentum_buffer"), 0u) << where("fc2.bias/momentum_buffer");
  EXPECT_EQ(states.states.count("fc2.weight/momentum_buffer"), 1u) << where("fc2.weight/momentum_buffer");
  EXPECT_NO_THROW(saved_in(dir, states, sharded.model_states())) << where(kStep);
}

TEST(ZeroRedundancyOptimizer, RejectsDifferentModulesOnAllRanks) {
  if (world_size() < 2) GTEST_SKIP() << "ranks can only disagree with at least 2 ranks";
  TinyNet net(4, world_rank() == 1 ? 6 : 5, 3);
  EXPECT_TRUE(throws_error<CollectiveError>([&] { ZeroRedundancyOptimizer zero(net, adam()); },
                                            {"fc1.weight", "rank 0", "rank 1"}))
      << where("fc1.weight");
}

TEST(ZeroRedundancyOptimizer, RejectsInvalidPartitionOnAllRanks) {
  TinyNet net(4, 5, 3);
  ZeroOptions options;
  options.partition.assign(static_cast<size_t>(world_size()) + 1, 0);
  options.partition.back() = 42;  // one element short of the 43
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { ZeroRedundancyOptimizer zero(net, adam(), options); },
                                                 {"partition", "43"}))
      << where();
}

TEST(ZeroRedundancyOptimizer, ScalarParameterRoundTrips) {
  SharedTempDir dir("zero-scalar");
  ScalarNet net;
  ZeroRedundancyOptimizer zero(net, adam());
  for (int i = 0; i < 2; ++i) {
    zero.zero_grad();
    scalar_net_backward(net, i);
    zero.step();
  }
  const std::string path = saved_in(dir, get_optimizer_states(zero), get_model_states(net));

  ScalarNet fresh;
  ZeroRedundancyOptimizer restored(fresh, adam());
  set_model_states(fresh, PersistedStates{path, "/models/model/states"}.load(at::kCPU));
  ASSERT_NO_THROW(set_optimizer_states(restored, PersistedStates{path, "/optimizers/optimizer/states"},
                                       PersistedConfig{path, "/optimizers/optimizer/param_groups"}.load()))
      << where("scale/exp_avg", kStep);
  for (int i = 2; i < 4; ++i) {
    zero.zero_grad();
    scalar_net_backward(net, i);
    zero.step();
    restored.zero_grad();
    scalar_net_backward(fresh, i);
    restored.step();
  }
  EXPECT_TRUE(bitwise_equal(net.scale, fresh.scale)) << where("scale", kStep + 2);
  EXPECT_TRUE(bitwise_equal(net.shift, fresh.shift)) << where("shift", kStep + 2);
}

TEST(FlatParameter, MatchesReference) {
  FsdpTrainer sharded(1.0, adam());
  ReferenceTrainer reference(1.0, adam());
  for (int i = 0; i < 3; ++i) {
    sharded.step();
    reference.step();
  }
  sharded.sync();
  EXPECT_TRUE(parameters_close(reference.net(), sharded.net())) << where(3);
}

TEST(FlatParameter, PaddingIsNeverSaved) {
  TinyNet net(4, 5, 3);
  FlatParameter flat(net);
  const int64_t world = world_size();
  EXPECT_EQ(flat.padded_numel(), (43 + world - 1) / world * world) << where();
  EXPECT_EQ(flat.shard().numel(), flat.padded_numel() / world) << where();

  StateDict states = get_model_states(flat);
  int64_t held = 0;
  for (const auto& item : net.named_parameters()) {
    ASSERT_EQ(states.count(item.key()), 1u) << where(item.key());
    const auto* sharded = std::get_if<ShardedTensor>(&states.at(item.key()));
    ASSERT_NE(sharded, nullptr) << where(item.key()) << ": parameter is not sharded";
    EXPECT_EQ(sharded->global_shape(), item.value().sizes().vec()) << where(item.key());
    for (const auto& shard : sharded->shards()) held += shard.data.numel();
  }
  EXPECT_EQ(states.size(), net.named_parameters().size() + net.named_buffers().size()) << where();
  int64_t total = 0;
  MPI_Allreduce(&held, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(total, 43) << where() << ": elements saved over all ranks";
}

TEST(FlatParameter, PaddingOnlyShardRoundTrips) {
  SharedTempDir dir("fsdp-scalar");
  ScalarNet net;
  FlatParameter flat(net);
  auto optimizer = sgd_momentum()({flat.shard()});
  auto train = [](ScalarNet& module, FlatParameter& parameter, torch::optim::Optimizer& opt, int iteration) {
    parameter.gather();
    module.zero_grad();
    scalar_net_backward(module, iteration);
    parameter.reduce_scatter_gradients();
    opt.step();
  };
  for (int i = 0; i < 2; ++i) train(net, flat, *optimizer, i);
  const std::string path = saved_in(dir, get_fsdp_optimizer_states(*optimizer, flat), get_model_states(flat));

  ScalarNet fresh;
  FlatParameter restored(fresh);
  auto restored_optimizer = sgd_momentum()({restored.shard()});
  ASSERT_NO_THROW(set_model_states(restored, PersistedStates{path, "/models/model/states"})) << where(kStep);
  ASSERT_NO_THROW(set_fsdp_optimizer_states(*restored_optimizer, restored,
                                            PersistedStates{path, "/optimizers/optimizer/states"},
                                            PersistedConfig{path, "/optimizers/optimizer/param_groups"}.load()))
      << where("scale/momentum_buffer", kStep);
  for (int i = 2; i < 4; ++i) {
    train(net, flat, *optimizer, i);
    train(fresh, restored, *restored_optimizer, i);
  }
  flat.gather();
  restored.gather();
  EXPECT_TRUE(bitwise_equal(net.scale, fresh.scale)) << where("scale", kStep + 2);
  EXPECT_TRUE(bitwise_equal(net.shift, fresh.shift)) << where("shift", kStep + 2);
}

TEST(FlatParameter, RejectsDifferentModulesOnAllRanks) {
  if (world_size() < 2) GTEST_SKIP() << "ranks can only disagree with at least 2 ranks";
  TinyNet net(4, 5, world_rank() == 1 ? 2 : 3);
  EXPECT_TRUE(throws_error<CollectiveError>([&] { FlatParameter flat(net); }, {"fc2.weight", "rank 0", "rank 1"}))
      << where("fc2.weight");
}

TEST(FlatParameter, RejectsOptimizerOverOtherTensors) {
  TinyNet net(4, 5, 3);
  FlatParameter flat(net);
  auto optimizer = adam()(net.parameters());
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { get_fsdp_optimizer_states(*optimizer, flat); },
                                                 {"sharded optimizer"}))
      << where();
}

// The states that get_model_states and the optimizer-state functions return
// are views of tensors that the next step changes in place. An asynchronous
// save must keep the values at the time of the call, so a step saved
// asynchronously and then trained past equals the same state saved blocking.
TEST(ShardedStates, AsynchronousSaveKeepsValuesAtCall) {
  for (const TrainingCase& kind : training_cases()) {
    SharedTempDir dir("sharded-async");
    std::unique_ptr<Trainer> trainer = make_trainer(kind, 1.0, kind.original);
    trainer->step();

    ManagerOptions options;
    options.registry_dir = dir.join("registry");
    PersistenceManager manager(dir.join("checkpoints"), options);
    for (int64_t step : {1, 2}) {
      const bool blocking = step == 1;
      manager.save_model({.step = step, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                          .states = trainer->model_states(), .dtype = std::nullopt, .blocking = blocking});
      manager.save_optimizer({.step = step, .name = "optimizer", .states = trainer->optimizer_states(),
                              .dtype = std::nullopt, .blocking = blocking});
    }
    trainer->step();
    trainer->step();
    ASSERT_NO_THROW(manager.close()) << kind.name << ", " << where(2);

    for (const char* group : {"/models/model/states", "/optimizers/optimizer/states"}) {
      const TensorDict blocking_save =
          PersistedStates{dir.join("checkpoints/" + step_file_name(1)), group}.load(at::kCPU);
      const TensorDict async_save = PersistedStates{dir.join("checkpoints/" + step_file_name(2)), group}.load(at::kCPU);
      ASSERT_EQ(async_save.size(), blocking_save.size()) << kind.name << ", " << where(group, 2);
      for (const auto& [key, tensor] : blocking_save) {
        ASSERT_EQ(async_save.count(key), 1u) << kind.name << ", " << where(key, 2);
        EXPECT_TRUE(bitwise_equal(tensor, async_save.at(key))) << kind.name << ", " << where(key, 2);
      }
    }
  }
}

}  // namespace
}  // namespace persistence::testing
