// Save and load round trips at any world size. The cases: every supported
// dtype compared bit for bit, 0-d and empty tensors, keys HDF5 cannot use as
// link names, several models and optimizers in one step, and the choice of
// step on resume.

#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/errors.h>
#include <persistence/manager.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/optim/adam.h>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cfloat>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

template <typename T>
at::Tensor tensor_of(std::vector<T> values, c10::ScalarType dtype, std::vector<int64_t> shape = {}) {
  at::Tensor flat = at::from_blob(values.data(), {static_cast<int64_t>(values.size())}, dtype).clone();
  return shape.empty() ? flat : flat.reshape(shape);
}

// All 65536 bit patterns of a 2-byte dtype, NaN payloads and subnormals included.
at::Tensor every_16_bit_pattern(c10::ScalarType dtype) {
  return at::arange(0, 65536, at::kInt).to(at::kShort).view(dtype).reshape({256, 256});
}

StateDict every_dtype_states() {
  const float inf = std::numeric_limits<float>::infinity();
  const double dinf = std::numeric_limits<double>::infinity();
  StateDict states;
  states["float32"] = tensor_of<float>({0.0f, -0.0f, 1.5f, -3.25f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                                        FLT_MIN, std::numeric_limits<float>::denorm_min(), FLT_MAX, -FLT_MAX, 1e-30f},
                                       at::kFloat, {3, 4});
  states["float64"] = tensor_of<double>({0.0, -0.0, dinf, -dinf, std::numeric_limits<double>::quiet_NaN(),
                                         std::numeric_limits<double>::denorm_min(), DBL_MAX, 0.1},
                                        at::kDouble, {2, 4});
  states["float16"] = every_16_bit_pattern(at::kHalf);
  states["bfloat16"] = every_16_bit_pattern(at::kBFloat16);
  states["int8"] = at::arange(-128, 128, at::kInt).to(at::kChar);
  states["uint8"] = at::arange(0, 256, at::kInt).to(at::kByte);
  states["int16"] = every_16_bit_pattern(at::kShort);
  states["int32"] = tensor_of<int32_t>({INT32_MIN, -1, 0, 1, INT32_MAX, 123456789}, at::kInt);
  states["int64"] = tensor_of<int64_t>({INT64_MIN, -1, 0, 1, INT64_MAX, 1234567890123456789}, at::kLong);
  states["bool"] = tensor_of<uint8_t>({1, 0, 0, 1, 1, 0}, at::kByte, {2, 3}).to(at::kBool);
  states["float32.smooth"] = deterministic_tensor({7, 5, 3}, at::kFloat, 0.5);
  states["float64.smooth"] = deterministic_tensor({33}, at::kDouble, 1.5);
  return states;
}

std::vector<std::string> keys_of(const StateDict& states) {
  std::vector<std::string> keys;
  for (const auto& [key, value] : states) keys.push_back(key);
  return keys;
}

std::vector<std::string> keys_of(const TensorDict& tensors) {
  std::vector<std::string> keys;
  for (const auto& [key, value] : tensors) keys.push_back(key);
  return keys;
}

// Checks that loaded has exactly the keys of saved, with bitwise equal tensors.
// Every value of saved must be a full tensor.
void expect_same_states(const StateDict& saved, const TensorDict& loaded, int64_t step) {
  EXPECT_EQ(keys_of(saved), keys_of(loaded)) << "key sets differ at " << where(step);
  for (const auto& [key, value] : saved) {
    const auto found = loaded.find(key);
    if (found == loaded.end()) continue;
    EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), found->second)) << where(key, step);
  }
}

class RoundTrip : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }

  // Saves states as model `name` at step, blocking.
  static void save(PersistenceManager& manager, int64_t step, const StateDict& states,
                   const std::string& name = "model") {
    manager.save_model({.step = step, .name = name, .config = YAML::Load("{type: none}"), .states = states,
                        .blocking = true});
  }

  SharedTempDir dir_{"roundtrip"};
};

TEST_F(RoundTrip, EveryDtypeBitwise) {
  const StateDict states = every_dtype_states();
  PersistenceManager manager(root(), options());
  save(manager, 1, states);
  manager.close();

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step();
  ASSERT_TRUE(resume.has_value()) << "no step found after saving step 1 on " << where(1);
  EXPECT_EQ(resume->step, 1) << where(1);
  EXPECT_EQ(fs::path(resume->path).filename().string(), step_file_name(1)) << where(1);
  ASSERT_EQ(resume->models.count("model"), 1u) << "model missing at " << where(1);
  expect_same_states(states, resume->models.at("model").states.load(at::kCPU), 1);
}

TEST_F(RoundTrip, NoHiddenFilesAfterClose) {
  PersistenceManager manager(root(), options());
  manager.save_config(YAML::Load("{trainer: {steps: 3}}"));
  save(manager, 3, every_dtype_states());
  manager.close();
  barrier();

  for (const std::string& entry : list_tree(root())) {
    EXPECT_NE(entry.front(), '.') << "temporary entry '" << entry << "' left in " << root() << " at " << where(3);
  }
  EXPECT_TRUE(fs::exists(fs::path(root()) / step_file_name(3))) << where(3);
  EXPECT_TRUE(fs::exists(fs::path(root()) / "config.yaml")) << where(3);
}

TEST_F(RoundTrip, ScalarAndEmptyTensors) {
  StateDict states;
  states["scalar.float32"] = at::scalar_tensor(3.5, at::kFloat);
  states["scalar.int64"] = at::scalar_tensor(int64_t{-9007199254740993}, at::kLong);
  states["scalar.bool"] = at::scalar_tensor(true, at::kBool);
  states["scalar.bfloat16"] = at::scalar_tensor(-2.5, at::kBFloat16);
  states["empty.float32"] = at::zeros({0}, at::kFloat);
  states["empty.int32"] = at::zeros({3, 0, 2}, at::kInt);
  states["empty.bfloat16"] = at::zeros({0, 4}, at::kBFloat16);
  states["empty.float16"] = at::zeros({0}, at::kHalf);

  PersistenceManager manager(root(), options());
  save(manager, 2, states);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(2);
  expect_same_states(states, resume->models.at("model").states.load(at::kCPU), 2);
}

TEST_F(RoundTrip, KeysHdf5CannotHoldAsNames) {
  const std::vector<std::string> keys = {
      "layers.0.weight", "a/b", "a/b/c", "/leading", "trailing/", "//", ".", "..", "...", "a/./b", "a/../b",
      "%2F", "a%2Fb", "a%b", "a\\b", "with space", "gr\xC3\xB6\xC3\x9F" "e", "_", "__"};
  StateDict states;
  for (size_t i = 0; i < keys.size(); ++i) {
    states[keys[i]] = at::full({2}, static_cast<double>(i), at::kFloat);
  }

  PersistenceManager manager(root(), options());
  save(manager, 4, states);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(4);
  const PersistedStates& persisted = resume->models.at("model").states;
  EXPECT_EQ(persisted.keys(), keys_of(states)) << "keys() must return the original keys in sorted order at "
                                               << where(4);
  expect_same_states(states, persisted.load(at::kCPU), 4);
}

TEST_F(RoundTrip, NonContiguousTensorsSaveTheirValues) {
  const at::Tensor base = deterministic_tensor({4, 6}, at::kFloat, 2.0);
  StateDict states;
  states["transposed"] = base.t();
  states["narrowed"] = base.narrow(1, 2, 3);
  states["expanded"] = at::arange(4, at::kLong).expand({3, 4});
  StateDict expected;
  for (const auto& [key, value] : states) expected[key] = std::get<at::Tensor>(value).contiguous();

  PersistenceManager manager(root(), options());
  save(manager, 5, states);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(5);
  expect_same_states(expected, resume->models.at("model").states.load(at::kCPU), 5);
}

TEST_F(RoundTrip, AsyncSaveKeepsValuesAtCallTime) {
  const at::Tensor weight = deterministic_tensor({64, 64}, at::kFloat, 3.0);
  const at::Tensor original = weight.clone();
  StateDict states;
  states["weight"] = weight;

  PersistenceManager manager(root(), options());
  manager.save_model({.step = 6, .name = "model", .config = YAML::Load("{type: none}"), .states = states});
  weight.add_(1.0);  // the trainer moves on while the save runs
  manager.wait();

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(6);
  const TensorDict loaded = resume->models.at("model").states.load(at::kCPU);
  ASSERT_EQ(loaded.count("weight"), 1u) << where("weight", 6);
  EXPECT_TRUE(bitwise_equal(original, loaded.at("weight"))) << where("weight", 6);
}

// Full tensors of 4 MiB and more are split over the ranks, and an asynchronous
// save stages only the part each rank writes. Odd element counts make the
// parts uneven; the transposed tensor is not contiguous.
TEST_F(RoundTrip, AsyncSaveOfLargeFullTensors) {
  StateDict states = every_dtype_states();
  states["large.float32"] = deterministic_tensor({1099, 1001}, at::kFloat, 4.0);
  states["large.float64.transposed"] = deterministic_tensor({1001, 601}, at::kDouble, 5.0).t();
  states["large.int64"] = at::arange(0, 600001, at::kLong).reshape({600001});
  StateDict originals;
  for (const auto& [key, value] : states) originals[key] = std::get<at::Tensor>(value).clone();

  PersistenceManager manager(root(), options());
  manager.save_model({.step = 7, .name = "model", .config = YAML::Load("{type: none}"), .states = states});
  manager.save_model({.step = 7, .name = "half", .config = YAML::Load("{type: none}"), .states = states,
                      .dtype = at::kBFloat16});
  for (const auto& [key, value] : states) std::get<at::Tensor>(value).zero_();
  manager.wait();

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(7);
  ASSERT_EQ(resume->models.count("model"), 1u) << "model missing at " << where(7);
  ASSERT_EQ(resume->models.count("half"), 1u) << "half missing at " << where(7);
  expect_same_states(originals, resume->models.at("model").states.load(at::kCPU), 7);

  const TensorDict half = resume->models.at("half").states.load(at::kCPU);
  for (const auto& [key, value] : originals) {
    const at::Tensor& original = std::get<at::Tensor>(value);
    const auto found = half.find(key);
    ASSERT_NE(found, half.end()) << "half: " << where(key, 7);
    const at::Tensor expected = c10::isFloatingType(original.scalar_type()) ? original.to(at::kBFloat16) : original;
    EXPECT_TRUE(bitwise_equal(expected, found->second)) << "half: " << where(key, 7);
  }
}

// The second save copies the 40 MB step file in more than one chunk of the
// direct copy. No tensor size is a multiple of 4 KiB.
TEST_F(RoundTrip, BlockingSavesOfLargeTensorsExtendTheStep) {
  StateDict first;
  first["big"] = deterministic_tensor({5003, 2001}, at::kFloat, 6.0);
  first["odd"] = deterministic_tensor({262147}, at::kDouble, 7.0);
  StateDict second;
  second["rows"] = deterministic_tensor({1501, 333}, at::kFloat, 8.0);

  {
    PersistenceManager manager(root(), options());
    save(manager, 3, first, "model");
    save(manager, 3, second, "ema");
  }

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step({.models = {"model", "ema"}});
  ASSERT_TRUE(resume.has_value()) << "step with model and ema not found at " << where(3);
  expect_same_states(first, resume->models.at("model").states.load(at::kCPU), 3);
  expect_same_states(second, resume->models.at("ema").states.load(at::kCPU), 3);
}

TEST_F(RoundTrip, ModelsAndOptimizerInOneStep) {
  TinyNet net(4, 3, 2);
  torch::optim::Adam adam(net.parameters(), torch::optim::AdamOptions(0.01));
  for (int iteration = 0; iteration < 3; ++iteration) {
    apply_gradients(net, iteration);
    adam.step();
  }
  const StateDict model_states = get_model_states(net);
  const OptimizerStates optimizer_states = get_optimizer_states(adam, net);
  const YAML::Node config = YAML::Load("{trainer: {lr: 0.01, name: tiny}}");

  {
    PersistenceManager manager(root(), options());
    manager.save_config(config);
    manager.save_model({.step = 10, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                        .states = model_states, .blocking = true});
    manager.save_model({.step = 10, .name = "ema", .config = YAML::Load("{type: tiny_net}"),
                        .states = model_states, .dtype = at::kBFloat16, .blocking = true});
    manager.save_optimizer({.step = 10, .name = "optimizer", .states = optimizer_states, .blocking = true});
  }

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step({.models = {"model", "ema"}, .optimizers = {"optimizer"}});
  ASSERT_TRUE(resume.has_value()) << "step with model, ema and optimizer not found at " << where(10);
  EXPECT_EQ(resume->step, 10) << where(10);
  EXPECT_EQ(resume->config.load()["trainer"]["name"].as<std::string>(), "tiny") << where("/config", 10);

  expect_same_states(model_states, resume->models.at("model").states.load(at::kCPU), 10);

  // The ema copy converts floating tensors only: the int64 buffer stays int64.
  StateDict converted;
  for (const auto& [key, value] : model_states) {
    const at::Tensor& tensor = std::get<at::Tensor>(value);
    converted[key] = at::isFloatingType(tensor.scalar_type()) ? tensor.to(at::kBFloat16) : tensor;
  }
  const TensorDict ema = resume->models.at("ema").states.load(at::kCPU);
  expect_same_states(converted, ema, 10);
  ASSERT_EQ(ema.count("steps_seen"), 1u) << where("steps_seen", 10);
  EXPECT_EQ(ema.at("steps_seen").scalar_type(), at::kLong) << where("steps_seen", 10);

  const PersistedOptimizer& optimizer = resume->optimizers.at("optimizer");
  const TensorDict optimizer_loaded = optimizer.states.load(at::kCPU);
  expect_same_states(optimizer_states.states, optimizer_loaded, 10);
  for (const std::string parameter : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}) {
    EXPECT_EQ(optimizer_loaded.count(parameter + "/exp_avg"), 1u) << where(parameter + "/exp_avg", 10);
    EXPECT_EQ(optimizer_loaded.count(parameter + "/exp_avg_sq"), 1u) << where(parameter + "/exp_avg_sq", 10);
  }
  const YAML::Node groups = optimizer.param_groups.load();
  EXPECT_TRUE(groups.IsSequence()) << "param_groups is not a YAML list at " << where("param_groups", 10);
  EXPECT_EQ(groups.size(), 1u) << where("param_groups", 10);
}

TEST_F(RoundTrip, ConfigYamlCopyInRoot) {
  const YAML::Node config = YAML::Load("{trainer: {name: 'caf\xC3\xA9', layers: [4, 3, 2]}}");
  PersistenceManager manager(root(), options());
  manager.save_config(config);
  save(manager, 1, {{"w", at::zeros({2}, at::kFloat)}});
  manager.close();

  const YAML::Node copy = YAML::LoadFile(root() + "/config.yaml");
  EXPECT_EQ(copy["trainer"]["name"].as<std::string>(), "caf\xC3\xA9") << where("config.yaml", 1);
  EXPECT_EQ(copy["trainer"]["layers"][2].as<int>(), 2) << where("config.yaml", 1);
}

class Steps : public RoundTrip {};

TEST_F(Steps, LoadLastStepPicksNewest) {
  const std::vector<int64_t> steps = {9, 10, 100, 100000000000};
  {
    PersistenceManager manager(root(), options());
    for (int64_t step : steps) {
      save(manager, step, {{"value", at::scalar_tensor(step, at::kLong)}});
    }
  }
  for (int64_t step : steps) {
    EXPECT_TRUE(fs::exists(fs::path(root()) / step_file_name(step))) << where(step);
  }

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(steps.back());
  EXPECT_EQ(resume->step, steps.back()) << where(steps.back());
  const TensorDict loaded = resume->models.at("model").states.load(at::kCPU);
  EXPECT_EQ(loaded.at("value").item<int64_t>(), steps.back()) << where("value", steps.back());
}

TEST_F(Steps, EmptyRootHasNoStep) {
  PersistenceManager manager(root(), options());
  EXPECT_FALSE(manager.load_last_step().has_value()) << "an empty root returned a step on " << where();
}

TEST_F(Steps, RequirementsSkipStepMissingName) {
  const StateDict states = {{"w", at::ones({3}, at::kFloat)}};
  const OptimizerStates optimizer = {.states = {{"w/exp_avg", at::ones({3}, at::kFloat)}},
                                     .param_groups = YAML::Load("[{lr: 0.1, params: [w]}]")};
  {
    PersistenceManager manager(root(), options());
    save(manager, 10, states, "model");
    save(manager, 10, states, "ema");
    manager.save_optimizer({.step = 10, .name = "optimizer", .states = optimizer, .blocking = true});
    save(manager, 20, states, "model");
    save(manager, 30, states, "model");
    manager.save_optimizer({.step = 30, .name = "optimizer", .states = optimizer, .blocking = true});
  }

  PersistenceManager reader(root(), options());
  const auto newest = reader.load_last_step();
  ASSERT_TRUE(newest.has_value());
  EXPECT_EQ(newest->step, 30) << "without requirements on " << where(30);

  const auto with_ema = reader.load_last_step({.models = {"ema"}});
  ASSERT_TRUE(with_ema.has_value());
  EXPECT_EQ(with_ema->step, 10) << "requiring model 'ema' on " << where(10);

  const auto with_optimizer = reader.load_last_step({.optimizers = {"optimizer"}});
  ASSERT_TRUE(with_optimizer.has_value());
  EXPECT_EQ(with_optimizer->step, 30) << "requiring optimizer 'optimizer' on " << where(30);

  const auto with_all = reader.load_last_step({.models = {"model", "ema"}, .optimizers = {"optimizer"}});
  ASSERT_TRUE(with_all.has_value());
  EXPECT_EQ(with_all->step, 10) << "requiring model, ema and optimizer on " << where(10);

  EXPECT_FALSE(reader.load_last_step({.models = {"absent"}}).has_value())
      << "requiring model 'absent' must find no step on " << where();
  EXPECT_FALSE(reader.load_last_step({.optimizers = {"ema"}}).has_value())
      << "'ema' is a model, not an optimizer, on " << where();
}

TEST_F(Steps, SkipsCorruptNewerFiles) {
  {
    PersistenceManager manager(root(), options());
    save(manager, 5, {{"w", at::full({4}, 5.0, at::kFloat)}});
  }
  if (world_rank() == 0) {
    const fs::path dir(root());
    std::ofstream(dir / step_file_name(7)) << "not an HDF5 file";
    std::ofstream(dir / step_file_name(8));  // empty
    fs::copy_file(dir / step_file_name(5), dir / step_file_name(6));
    fs::resize_file(dir / step_file_name(6), fs::file_size(dir / step_file_name(6)) / 2);
    std::ofstream(dir / "notes.txt") << "step_000000000009.h5";
  }
  barrier();

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step();
  ASSERT_TRUE(resume.has_value()) << "the valid step 5 was not found on " << where(5);
  EXPECT_EQ(resume->step, 5) << "garbage, empty and truncated step files must be skipped on " << where(5);
}

}  // namespace
}  // namespace persistence::testing
