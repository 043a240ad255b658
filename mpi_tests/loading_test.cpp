// Loading paths besides load_last_step: create() through the model registry,
// load_model_from_path, load_model_from_task, load_into full-tensor targets,
// and the wrapper prefixes get_model_states strips.

#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/model_registry.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <regex>
#include <map>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

void register_tiny_net() {
  register_model("tiny_net", [](const YAML::Node& config) {
    return std::make_shared<TinyNet>(config["inputs"].as<int64_t>(), config["hidden"].as<int64_t>(),
                                     config["outputs"].as<int64_t>(), 99.0);
  });
}

YAML::Node tiny_net_config() { return YAML::Load("{type: tiny_net, inputs: 4, hidden: 5, outputs: 2}"); }

// Checks two state dicts of full tensors for equal keys and bitwise equal values.
void expect_same_states(const StateDict& expected, const StateDict& actual, int64_t step) {
  for (const auto& [key, value] : expected) {
    const auto found = actual.find(key);
    ASSERT_NE(found, actual.end()) << "missing at " << where(key, step);
    EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), std::get<at::Tensor>(found->second))) << where(key, step);
  }
  EXPECT_EQ(expected.size(), actual.size()) << "number of keys at " << where(step);
}

void expect_same_states(const StateDict& expected, const TensorDict& actual, int64_t step) {
  StateDict wrapped;
  for (const auto& [key, tensor] : actual) wrapped[key] = tensor;
  expect_same_states(expected, wrapped, step);
}

class Loading : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = registry();
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }
  std::string registry() const { return dir_.join("registry"); }

  // Saves a TinyNet seeded with `seed` as `name` at step, blocking.
  static StateDict save_net(PersistenceManager& manager, int64_t step, double seed, const std::string& name = "model") {
    TinyNet net(4, 5, 2, seed);
    StateDict states = get_model_states(net);
    manager.save_model({.step = step, .name = name, .config = tiny_net_config(), .states = states,
                        .dtype = std::nullopt, .blocking = true});
    return states;
  }

  SharedTempDir dir_{"loading"};
};

TEST_F(Loading, CreateReproducesParameters) {
  register_tiny_net();
  const auto types = registered_models();
  EXPECT_NE(std::find(types.begin(), types.end(), "tiny_net"), types.end()) << "registered_models() on " << where(1);

  PersistenceManager manager(root(), options());
  const StateDict saved = save_net(manager, 1, 3.0);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(1);

  const auto module = resume->models.at("model").create(at::kCPU);
  ASSERT_NE(module, nullptr) << where(1);
  expect_same_states(saved, get_model_states(*module), 1);
  EXPECT_EQ(resume->models.at("model").config.load()["hidden"].as<int>(), 5) << where("config", 1);
}

TEST_F(Loading, FromPathNewestAndByStep) {
  StateDict first;
  StateDict second;
  {
    PersistenceManager manager(root(), options());
    first = save_net(manager, 1, 1.0);
    second = save_net(manager, 2, 2.0);
    save_net(manager, 3, 3.0, "ema");  // the newest step does not hold "model"
  }

  const PersistedModel newest = load_model_from_path(root(), "model");
  EXPECT_EQ(newest.step, 2) << "newest step holding 'model' on " << where(2);
  expect_same_states(second, newest.states.load(at::kCPU), 2);

  const PersistedModel by_step = load_model_from_path(root(), "model", 1);
  EXPECT_EQ(by_step.step, 1) << where(1);
  expect_same_states(first, by_step.states.load(at::kCPU), 1);

  const PersistedModel by_url = load_model_from_path("file://" + root(), "ema");
  EXPECT_EQ(by_url.step, 3) << "file:// form of the path on " << where(3);
}

TEST_F(Loading, FromTaskWithGeneratedId) {
  StateDict saved;
  std::string task_id;
  {
    PersistenceManager manager(root(), options());
    task_id = manager.task_id();
    saved = save_net(manager, 4, 4.0);
  }

  EXPECT_EQ(task_id.size(), 16u) << "generated task id '" << task_id << "' on " << where(4);
  EXPECT_TRUE(std::regex_match(task_id, std::regex("[0-9a-f]{16}")))
      << "generated task id '" << task_id << "' is not 16 lowercase hex digits on " << where(4);
  std::vector<char> rank0_id(task_id.begin(), task_id.end());
  rank0_id.resize(64, '\0');
  MPI_Bcast(rank0_id.data(), 64, MPI_CHAR, 0, MPI_COMM_WORLD);
  EXPECT_EQ(task_id, std::string(rank0_id.data())) << "ranks disagree on the generated task id on " << where(4);

  const PersistedModel model = load_model_from_task(task_id, "model", std::nullopt, registry());
  EXPECT_EQ(model.step, 4) << "task " << task_id << " on " << where(4);
  expect_same_states(saved, model.states.load(at::kCPU), 4);
}

TEST_F(Loading, FromTaskWithGivenId) {
  ManagerOptions given = options();
  given.task_id = "resume-test-task";
  StateDict saved;
  {
    PersistenceManager manager(root(), given);
    EXPECT_EQ(manager.task_id(), "resume-test-task") << where(5);
    saved = save_net(manager, 5, 5.0);
  }
  const PersistedModel model = load_model_from_task("resume-test-task", "model", 5, registry());
  EXPECT_EQ(model.step, 5) << where(5);
  expect_same_states(saved, model.states.load(at::kCPU), 5);
}

TEST_F(Loading, LoadIntoFullTargetsInPlace) {
  PersistenceManager manager(root(), options());
  const StateDict saved = save_net(manager, 6, 6.0);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(6);

  StateDict target;
  std::map<std::string, const void*> addresses;
  for (const auto& [key, value] : saved) {
    const at::Tensor& tensor = std::get<at::Tensor>(value);
    at::Tensor empty = at::zeros(tensor.sizes(), tensor.scalar_type());
    addresses[key] = empty.data_ptr();
    target[key] = empty;
  }
  resume->models.at("model").states.load_into(target);

  expect_same_states(saved, target, 6);
  for (const auto& [key, value] : target) {
    EXPECT_EQ(std::get<at::Tensor>(value).data_ptr(), addresses[key]) << "load_into must fill in place, " << where(key, 6);
  }
}

TEST_F(Loading, LoadIntoSubsetAndPreConversionDtype) {
  PersistenceManager manager(root(), options());
  TinyNet net(4, 5, 2, 8.0);
  const StateDict states = get_model_states(net);
  manager.save_model({.step = 7, .name = "ema", .config = tiny_net_config(), .states = states,
                      .dtype = at::kBFloat16, .blocking = true});
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(7);

  // float32 targets for tensors saved as bfloat16: the dtype before the conversion.
  StateDict target;
  target["fc1.weight"] = at::zeros({5, 4}, at::kFloat);
  target["steps_seen"] = at::zeros({}, at::kLong);
  resume->models.at("ema").states.load_into(target);

  const at::Tensor expected_weight = std::get<at::Tensor>(states.at("fc1.weight")).to(at::kBFloat16).to(at::kFloat);
  EXPECT_TRUE(bitwise_equal(expected_weight, std::get<at::Tensor>(target.at("fc1.weight")))) << where("fc1.weight", 7);
  EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(states.at("steps_seen")), std::get<at::Tensor>(target.at("steps_seen"))))
      << where("steps_seen", 7);
}

// A module that keeps its real layers under a child named like a wrapper.
class Wrapped : public torch::nn::Module {
 public:
  explicit Wrapped(const std::string& prefix) { inner = register_module(prefix, std::make_shared<TinyNet>(4, 5, 2, 2.0)); }
  std::shared_ptr<TinyNet> inner;
};

TEST(ModuleStates, StripsWrapperPrefixes) {
  TinyNet plain(4, 5, 2, 2.0);
  const StateDict expected = get_model_states(plain);
  for (const std::string prefix : {"module", "_orig_mod"}) {
    Wrapped wrapped(prefix);
    const StateDict actual = get_model_states(wrapped);
    EXPECT_EQ(actual.size(), expected.size()) << "prefix '" << prefix << "' on " << where();
    for (const auto& [key, value] : expected) {
      EXPECT_EQ(actual.count(key), 1u) << "prefix '" << prefix << "' not stripped, " << where(key);
    }
  }

  auto both = std::make_shared<Wrapped>("_orig_mod");
  torch::nn::Module outer;
  outer.register_module("module", both);
  const StateDict nested = get_model_states(outer);
  for (const auto& [key, value] : expected) {
    EXPECT_EQ(nested.count(key), 1u) << "prefixes 'module._orig_mod.' not stripped, " << where(key);
  }
}

}  // namespace
}  // namespace persistence::testing
