// Optimizer resume: after a few real steps, saving and restoring the state of
// Adam, AdamW, SGD with momentum, RMSprop or Adagrad into a fresh optimizer
// must make the next steps bitwise identical to continuing the original.

#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/manager.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

using OptimizerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(TinyNet&)>;

// An optimizer kind with two constructions. The original uses non-default
// options in two parameter groups (fc1 and fc2). The fresh one uses other
// options in the same groups, so only a restore of the saved groups makes the
// next step match.
struct OptimizerCase {
  std::string name;
  OptimizerFactory original;
  OptimizerFactory fresh;
};

template <typename OptimizerT, typename OptionsT>
std::unique_ptr<torch::optim::Optimizer> make_two_groups(TinyNet& net, const OptionsT& first, const OptionsT& second) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(fc1_parameters(net), std::make_unique<OptionsT>(first));
  groups.emplace_back(fc2_parameters(net), std::make_unique<OptionsT>(second));
  return std::make_unique<OptimizerT>(std::move(groups), first);
}

std::vector<OptimizerCase> optimizer_cases() {
  using namespace torch::optim;
  return {
      {"Adam",
       [](TinyNet& net) {
         return make_two_groups<Adam>(net, AdamOptions(0.01).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.01).amsgrad(true),
                                      AdamOptions(0.02).amsgrad(true));
       },
       [](TinyNet& net) { return make_two_groups<Adam>(net, AdamOptions(), AdamOptions()); }},
      {"AdamW",
       [](TinyNet& net) {
         return make_two_groups<AdamW>(net, AdamWOptions(0.01).weight_decay(0.1), AdamWOptions(0.03).betas({0.5, 0.9}));
       },
       [](TinyNet& net) { return make_two_groups<AdamW>(net, AdamWOptions(), AdamWOptions()); }},
      {"SGD",
       [](TinyNet& net) {
         return make_two_groups<SGD>(net, SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(1e-3),
                                     SGDOptions(0.1).momentum(0.5).dampening(0.1));
       },
       [](TinyNet& net) { return make_two_groups<SGD>(net, SGDOptions(0.5), SGDOptions(0.5)); }},
      {"RMSprop",
       [](TinyNet& net) {
         return make_two_groups<RMSprop>(net, RMSpropOptions(0.01).alpha(0.9).momentum(0.5).centered(true),
                                         RMSpropOptions(0.02).weight_decay(0.01));
       },
       [](TinyNet& net) { return make_two_groups<RMSprop>(net, RMSpropOptions(), RMSpropOptions()); }},
      {"Adagrad",
       [](TinyNet& net) {
         return make_two_groups<Adagrad>(net, AdagradOptions(0.1).lr_decay(0.01).initial_accumulator_value(0.1),
                                         AdagradOptions(0.2).weight_decay(0.01));
       },
       [](TinyNet& net) { return make_two_groups<Adagrad>(net, AdagradOptions(), AdagradOptions()); }},
  };
}

class OptimizerResume : public ::testing::TestWithParam<OptimizerCase> {
 protected:
  SharedTempDir dir_{"optimizer"};
};

TEST_P(OptimizerResume, NextStepMatchesBitwise) {
  constexpr int64_t kStep = 3;
  const OptimizerCase& kind = GetParam();
  TinyNet original(4, 3, 2, 1.0);
  std::unique_ptr<torch::optim::Optimizer> original_optimizer = kind.original(original);
  for (int iteration = 0; iteration < kStep; ++iteration) {
    apply_gradients(original, iteration);
    original_optimizer->step();
  }

  ManagerOptions options;
  options.registry_dir = dir_.join("registry");
  PersistenceManager manager(dir_.join("checkpoints"), options);
  manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                      .states = get_model_states(original), .dtype = std::nullopt, .blocking = true});
  manager.save_optimizer({.step = kStep, .name = "optimizer",
                          .states = get_optimizer_states(*original_optimizer, original), .dtype = std::nullopt,
                          .blocking = true});

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << kind.name << " at " << where(kStep);
  TinyNet restored(4, 3, 2, 7.0);
  std::unique_ptr<torch::optim::Optimizer> restored_optimizer = kind.fresh(restored);
  set_model_states(restored, resume->models.at("model").states.load(at::kCPU));
  const PersistedOptimizer& saved = resume->optimizers.at("optimizer");
  set_optimizer_states(*restored_optimizer, restored, saved.states.load(at::kCPU), saved.param_groups.load());

  for (int iteration = kStep; iteration < kStep + 2; ++iteration) {
    apply_gradients(original, iteration);
    original_optimizer->step();
    apply_gradients(restored, iteration);
    restored_optimizer->step();
  }

  const StateDict expected = get_model_states(original);
  const StateDict actual = get_model_states(restored);
  for (const auto& [key, value] : expected) {
    ASSERT_EQ(actual.count(key), 1u) << kind.name << ": " << where(key, kStep);
    EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), std::get<at::Tensor>(actual.at(key))))
        << kind.name << ": parameter after two more steps, " << where(key, kStep);
  }

  const OptimizerStates expected_state = get_optimizer_states(*original_optimizer, original);
  const OptimizerStates actual_state = get_optimizer_states(*restored_optimizer, restored);
  for (const auto& [key, value] : expected_state.states) {
    ASSERT_EQ(actual_state.states.count(key), 1u) << kind.name << ": optimizer state " << where(key, kStep);
    EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), std::get<at::Tensor>(actual_state.states.at(key))))
        << kind.name << ": optimizer state after two more steps, " << where(key, kStep);
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, OptimizerResume, ::testing::ValuesIn(optimizer_cases()),
                         [](const ::testing::TestParamInfo<OptimizerCase>& info) { return info.param.name; });

}  // namespace
}  // namespace persistence::testing
