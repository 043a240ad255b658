// A short data-parallel training loop over TinyNet, in three forms that must
// agree: ZeRO (ZeroRedundancyOptimizer), FSDP (FlatParameter with a plain
// optimizer over its shard), and an unsharded reference that runs the same
// steps on the full batch in one process. The sharded forms split the batch
// over the ranks and average gradients, so all three take the same steps up
// to the order of floating-point sums.
#pragma once

#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/fsdp.h>
#include <persistence/manager.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>
#include <persistence/zero.h>

#include <ATen/ops/abs.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/tanh.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace persistence::testing {

constexpr int64_t kBatch = 12;  // divisible by every world size 1..4, so ranks get equal rows

inline at::Tensor batch_inputs() { return deterministic_tensor({kBatch, 4}, at::kFloat, 3.0); }
inline at::Tensor batch_targets() { return deterministic_tensor({kBatch, 3}, at::kFloat, 5.0); }

// TinyNet(4, 5, 3) has 43 parameter elements: 20 + 5 + 15 + 3, so FSDP pads
// at 2, 3 and 4 ranks and balanced ZeRO ranges cut through parameters.
inline std::shared_ptr<TinyNet> make_net(double seed) { return std::make_shared<TinyNet>(4, 5, 3, seed); }

// Runs forward and backward on rows [begin, end) of the batch with a mean squared error loss.
inline void backward_on_rows(TinyNet& net, int64_t begin, int64_t end) {
  at::Tensor inputs = batch_inputs().slice(0, begin, end);
  at::Tensor targets = batch_targets().slice(0, begin, end);
  at::Tensor outputs = net.fc2->forward(at::tanh(net.fc1->forward(inputs)));
  outputs.sub(targets).pow(2).mean().backward();
}

inline void backward_on_local_rows(TinyNet& net) {
  backward_on_rows(net, kBatch * world_rank() / world_size(), kBatch * (world_rank() + 1) / world_size());
}

// Builds an optimizer over the given tensors with fixed options.
using OptimizerBuilder = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)>;

// One trainer: a module, its optimizer, and the way the two are saved and restored.
class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual void step() = 0;
  // Makes the module's parameters current (FSDP keeps the latest values in the shards).
  virtual void sync() {}
  virtual StateDict model_states() = 0;
  virtual OptimizerStates optimizer_states() = 0;
  // Collective for the sharded trainers.
  virtual void load(const PersistedModel& model, const PersistedOptimizer& optimizer) = 0;
  TinyNet& net() { return *net_; }

 protected:
  std::shared_ptr<TinyNet> net_;
};

class ZeroTrainer : public Trainer {
 public:
  ZeroTrainer(double seed, const OptimizerBuilder& build, ZeroOptions options = {}) {
    net_ = make_net(seed);
    zero_ = std::make_unique<ZeroRedundancyOptimizer>(*net_, build, options);
  }
  void step() override {
    zero_->zero_grad();
    backward_on_local_rows(*net_);
    zero_->average_gradients();
    zero_->step();
  }
  StateDict model_states() override { return get_model_states(*net_); }
  OptimizerStates optimizer_states() override { return get_optimizer_states(*zero_); }
  void load(const PersistedModel& model, const PersistedOptimizer& optimizer) override {
    set_model_states(*net_, model.states.load(at::kCPU));
    set_optimizer_states(*zero_, optimizer.states, optimizer.param_groups.load());
  }
  ZeroRedundancyOptimizer& zero() { return *zero_; }

 private:
  std::unique_ptr<ZeroRedundancyOptimizer> zero_;
};

class FsdpTrainer : public Trainer {
 public:
  FsdpTrainer(double seed, const OptimizerBuilder& build) {
    net_ = make_net(seed);
    flat_ = std::make_unique<FlatParameter>(*net_);
    optimizer_ = build({flat_->shard()});
  }
  void step() override {
    flat_->gather();
    net_->zero_grad();
    backward_on_local_rows(*net_);
    flat_->reduce_scatter_gradients();
    optimizer_->step();
  }
  void sync() override { flat_->gather(); }
  StateDict model_states() override { return get_model_states(*flat_); }
  OptimizerStates optimizer_states() override { return get_fsdp_optimizer_states(*optimizer_, *flat_); }
  void load(const PersistedModel& model, const PersistedOptimizer& optimizer) override {
    set_model_states(*flat_, model.states);
    set_fsdp_optimizer_states(*optimizer_, *flat_, optimizer.states, optimizer.param_groups.load());
  }
  FlatParameter& flat() { return *flat_; }

 private:
  std::unique_ptr<FlatParameter> flat_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

// The unsharded reference: a plain optimizer over all parameters, full-batch gradients. Local.
class ReferenceTrainer : public Trainer {
 public:
  ReferenceTrainer(double seed, const OptimizerBuilder& build) {
    net_ = make_net(seed);
    optimizer_ = build(net_->parameters());
  }
  void step() override {
    optimizer_->zero_grad();
    backward_on_rows(*net_, 0, kBatch);
    optimizer_->step();
  }
  StateDict model_states() override { return get_model_states(*net_); }
  OptimizerStates optimizer_states() override { return get_optimizer_states(*optimizer_, *net_); }
  void load(const PersistedModel& model, const PersistedOptimizer& optimizer) override {
    set_model_states(*net_, model.states.load(at::kCPU));
    set_optimizer_states(*optimizer_, *net_, optimizer.states.load(at::kCPU), optimizer.param_groups.load());
  }

 private:
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
};

// A sharded trainer kind with the options it trains with and other options
// for the object that resumes, so that only restoring the saved groups makes
// the resumed steps match.
struct TrainingCase {
  std::string name;
  bool fsdp = false;
  OptimizerBuilder original;
  OptimizerBuilder fresh;
};

inline std::vector<TrainingCase> training_cases() {
  using namespace torch::optim;
  return {
      {"zero_adam", false,
       [](std::vector<at::Tensor> p) {
         return std::make_unique<Adam>(p, AdamOptions(0.01).betas({0.8, 0.95}).weight_decay(0.01));
       },
       [](std::vector<at::Tensor> p) { return std::make_unique<Adam>(p, AdamOptions(0.5)); }},
      {"zero_sgd", false,
       [](std::vector<at::Tensor> p) {
         return std::make_unique<SGD>(p, SGDOptions(0.05).momentum(0.9).nesterov(true));
       },
       [](std::vector<at::Tensor> p) { return std::make_unique<SGD>(p, SGDOptions(0.5)); }},
      {"fsdp_adamw", true,
       [](std::vector<at::Tensor> p) {
         return std::make_unique<AdamW>(p, AdamWOptions(0.01).weight_decay(0.1).amsgrad(true));
       },
       [](std::vector<at::Tensor> p) { return std::make_unique<AdamW>(p, AdamWOptions(0.5)); }},
  };
}

inline std::unique_ptr<Trainer> make_trainer(const TrainingCase& kind, double seed, const OptimizerBuilder& build) {
  if (kind.fsdp) return std::make_unique<FsdpTrainer>(seed, build);
  return std::make_unique<ZeroTrainer>(seed, build);
}

// Succeeds when every parameter of actual is within floating-point summation
// tolerance of the reference: |a - r| <= 1e-6 + 1e-5 |r|.
inline ::testing::AssertionResult parameters_close(TinyNet& reference, TinyNet& actual) {
  auto expected = reference.named_parameters();
  auto got = actual.named_parameters();
  for (const auto& item : expected) {
    const at::Tensor& want = item.value();
    const at::Tensor& have = got[item.key()];
    if (!at::allclose(have, want, 1e-5, 1e-6)) {
      std::ostringstream text;
      text << "parameter '" << item.key() << "' differs from the unsharded reference by up to "
           << at::abs(have - want).max().item<double>();
      return ::testing::AssertionFailure() << text.str();
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace persistence::testing
