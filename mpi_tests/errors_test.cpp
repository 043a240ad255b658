// Bad input: each case must throw a clear exception on every rank, with a
// message that names the problem, and must leave the save root unchanged. An
// error found on one rank only must reach all ranks instead of hanging them.

#include "mpi_test_support.h"
#include "test_models.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/model_registry.h>
#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/optim/adam.h>

#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

StateDict small_states(double value = 1.0) {
  return {{"weight", at::full({4, 2}, value, at::kFloat)}, {"counter", at::full({}, 7, at::kLong)}};
}

OptimizerStates small_optimizer_states() {
  return {.states = {{"weight/exp_avg", at::full({4, 2}, 0.5, at::kFloat)}},
          .param_groups = YAML::Load("[{lr: 0.1, params: [weight]}]")};
}

SaveModelRequest model_request(int64_t step, const std::string& name, StateDict states = small_states()) {
  return {.step = step, .name = name, .config = YAML::Load("{type: none}"), .states = std::move(states),
          .dtype = std::nullopt, .blocking = true};
}

SaveOptimizerRequest optimizer_request(int64_t step, const std::string& name) {
  return {.step = step, .name = name, .states = small_optimizer_states(), .dtype = std::nullopt, .blocking = true};
}

class Errors : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }

  // Checks that the save root lists as before, entry by entry.
  void expect_unchanged(const std::vector<std::string>& before, const std::string& dir, const std::string& what) {
    barrier();
    EXPECT_EQ(list_tree(dir), before) << "the directory " << dir << " changed after " << what << " on "
                                      << where();
  }

  SharedTempDir dir_{"errors"};
};

TEST_F(Errors, RootUnderRegularFile) {
  const std::string area = dir_.join("area");
  const std::string file = area + "/file.txt";
  if (world_rank() == 0) {
    fs::create_directories(area);
    std::ofstream(file) << "a regular file";
  }
  barrier();
  const auto before = list_tree(area);

  EXPECT_TRUE(throws_error<Error>([&] { PersistenceManager manager(file + "/sub", options()); }, {file + "/sub"}))
      << "root below a regular file on " << where();
  EXPECT_TRUE(throws_error<Error>([&] { PersistenceManager manager(file, options()); }, {file}))
      << "root that is a regular file on " << where();
  expect_unchanged(before, area, "rejected roots");
}

TEST_F(Errors, MissingRootIsCreated) {
  const std::string fresh = dir_.join("fresh");
  PersistenceManager manager(fresh, options());
  EXPECT_TRUE(fs::is_directory(fresh)) << "the constructor must create " << fresh << " on " << where();
}

TEST_F(Errors, RootWithMissingParent) {
  const std::string area = dir_.join("area");
  if (world_rank() == 0) fs::create_directories(area);
  barrier();
  const auto before = list_tree(area);

  // Only the last component is created, so a typo in a parent is reported.
  EXPECT_TRUE(throws_error<Error>([&] { PersistenceManager manager(area + "/not/there", options()); },
                                  {area + "/not"}))
      << "root whose parent is missing on " << where();
  expect_unchanged(before, area, "a root with a missing parent");
}

TEST_F(Errors, NegativeStep) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(1, "model"));
  const auto before = list_tree(root());

  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_model(model_request(-1, "model")); }, {"-1"}))
      << "save_model at " << where();
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_optimizer(optimizer_request(-1, "optimizer")); },
                                                 {"-1"}))
      << "save_optimizer at " << where();
  expect_unchanged(before, root(), "a negative step");
}

TEST_F(Errors, InvalidNames) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(1, "model"));
  const auto before = list_tree(root());

  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_model(model_request(2, "")); }, {"name"}))
      << "empty model name on " << where(2);
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_optimizer(optimizer_request(2, "")); }, {"name"}))
      << "empty optimizer name on " << where(2);
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_model(model_request(2, "ema/v2")); }, {"ema/v2"}))
      << "model name with '/' on " << where(2);
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { manager.save_optimizer(optimizer_request(2, "adam/1")); },
                                                 {"adam/1"}))
      << "optimizer name with '/' on " << where(2);
  expect_unchanged(before, root(), "invalid names");
}

TEST_F(Errors, SameNameTwiceInOneStep) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(1, "model", small_states(1.0)));
  manager.save_optimizer(optimizer_request(1, "optimizer"));
  const auto before = list_tree(root());

  EXPECT_TRUE(throws_error<Error>([&] { manager.save_model(model_request(1, "model", small_states(2.0))); },
                                  {"model", "1"}))
      << "second save of model 'model' at " << where(1);
  EXPECT_TRUE(throws_error<Error>([&] { manager.save_optimizer(optimizer_request(1, "optimizer")); },
                                  {"optimizer", "1"}))
      << "second save of optimizer 'optimizer' at " << where(1);
  expect_unchanged(before, root(), "saving a name twice in one step");

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(1);
  const TensorDict loaded = resume->models.at("model").states.load(at::kCPU);
  EXPECT_TRUE(bitwise_equal(at::full({4, 2}, 1.0, at::kFloat), loaded.at("weight")))
      << "the first save must survive, " << where("weight", 1);
}

TEST_F(Errors, RankDependentKeySet) {
  if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to make the ranks disagree";
  PersistenceManager manager(root(), options());
  const auto before = list_tree(root());

  StateDict states = small_states();
  if (world_rank() == 1) states["only_on_rank_1"] = at::zeros({2}, at::kFloat);
  EXPECT_TRUE(throws_error<CollectiveError>([&] { manager.save_model(model_request(1, "model", states)); },
                                            {"only_on_rank_1"}))
      << where("only_on_rank_1", 1);
  expect_unchanged(before, root(), "a rank-dependent key set");
}

TEST_F(Errors, RankDependentShapeAndDtype) {
  if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to make the ranks disagree";
  PersistenceManager manager(root(), options());
  const auto before = list_tree(root());
  const bool last = world_rank() == world_size() - 1;

  StateDict shapes = small_states();
  shapes["weight"] = at::zeros({last ? 5 : 4, 2}, at::kFloat);
  EXPECT_TRUE(throws_error<CollectiveError>([&] { manager.save_model(model_request(1, "model", shapes)); }, {"weight"}))
      << "shape differs on the last rank, " << where("weight", 1);

  StateDict dtypes = small_states();
  dtypes["counter"] = at::full({}, 7, last ? at::kInt : at::kLong);
  EXPECT_TRUE(throws_error<CollectiveError>([&] { manager.save_model(model_request(1, "model", dtypes)); }, {"counter"}))
      << "dtype differs on the last rank, " << where("counter", 1);
  expect_unchanged(before, root(), "rank-dependent shapes and dtypes");
}

TEST_F(Errors, RankDependentStepAndName) {
  if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to make the ranks disagree";
  PersistenceManager manager(root(), options());
  const auto before = list_tree(root());
  const int rank = world_rank();

  EXPECT_TRUE(throws_error<CollectiveError>([&] { manager.save_model(model_request(1 + rank, "model")); }, {"step"}))
      << "step 1 + rank on " << where(1 + rank);
  EXPECT_TRUE(throws_error<CollectiveError>(
      [&] { manager.save_model(model_request(1, rank == 0 ? "model" : "model_" + std::to_string(rank))); }, {"model"}))
      << "name differs on ranks above 0, " << where(1);
  expect_unchanged(before, root(), "a rank-dependent step or name");
}

TEST_F(Errors, InvalidArgumentOnOneRankOnly) {
  if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to make the ranks disagree";
  PersistenceManager manager(root(), options());
  const auto before = list_tree(root());
  const bool last = world_rank() == world_size() - 1;

  EXPECT_TRUE(throws_error<Error>([&] { manager.save_model(model_request(1, last ? "bad/name" : "model")); }, {}))
      << "an invalid name on the last rank only must fail every rank, " << where(1);
  EXPECT_TRUE(throws_error<Error>([&] { manager.save_model(model_request(last ? -1 : 1, "model")); }, {}))
      << "a negative step on the last rank only must fail every rank, " << where(1);
  expect_unchanged(before, root(), "an error on one rank");
}

TEST_F(Errors, ManagerUsableAfterRejectedSave) {
  PersistenceManager manager(root(), options());
  StateDict states = small_states();
  if (world_rank() == world_size() - 1) states["extra"] = at::zeros({1}, at::kFloat);
  if (world_size() == 1) states["bad"] = at::Tensor();  // an undefined tensor fails on a single rank too
  EXPECT_TRUE(throws_error<Error>([&] { manager.save_model(model_request(1, "model", states)); }, {}))
      << where(1);

  manager.save_model(model_request(2, "model", small_states(3.0)));
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << "no step after a rejected save, " << where(2);
  EXPECT_EQ(resume->step, 2) << where(2);
  EXPECT_TRUE(bitwise_equal(at::full({4, 2}, 3.0, at::kFloat),
                            resume->models.at("model").states.load(at::kCPU).at("weight")))
      << where("weight", 2);
}

// A module whose own parameter `weight` collides with `<wrapper>.weight` once
// the wrapper prefix is stripped.
class Colliding : public torch::nn::Module {
 public:
  explicit Colliding(const std::string& wrapper) {
    register_parameter("weight", at::zeros({2, 2}, at::kFloat));
    register_module(wrapper, torch::nn::Linear(2, 2));
  }
};

TEST(ModuleStatesErrors, WrapperPrefixCollision) {
  for (const std::string wrapper : {"module", "_orig_mod"}) {
    Colliding module(wrapper);
    EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { get_model_states(module); }, {"weight"}))
        << "'weight' and '" << wrapper << ".weight' strip to one key on " << where();
  }
}

TEST(ModuleStatesErrors, OptimizerParameterNotInModule) {
  TinyNet owner(4, 3, 2);
  TinyNet other(4, 3, 2);
  torch::optim::Adam adam(owner.parameters(), torch::optim::AdamOptions(0.1));
  apply_gradients(owner, 0);
  adam.step();
  EXPECT_TRUE(throws_error<InvalidArgumentError>([&] { get_optimizer_states(adam, other); }, {}))
      << "optimizer over another module's parameters on " << where();
}

TEST(ModuleStatesErrors, SetModelStatesStrict) {
  TinyNet net(4, 3, 2);
  TensorDict states;
  for (const auto& [key, value] : get_model_states(net)) states[key] = std::get<at::Tensor>(value).clone();

  TensorDict missing = states;
  missing.erase("fc2.bias");
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { set_model_states(net, missing); }, {"fc2.bias"}))
      << where("fc2.bias");

  TensorDict unexpected = states;
  unexpected["fc3.weight"] = at::zeros({1}, at::kFloat);
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { set_model_states(net, unexpected); }, {"fc3.weight"}))
      << where("fc3.weight");

  TensorDict reshaped = states;
  reshaped["fc1.weight"] = at::zeros({4, 3}, at::kFloat);
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { set_model_states(net, reshaped); }, {"fc1.weight"}))
      << where("fc1.weight");
}

void register_error_net() {
  register_model("error_net", [](const YAML::Node& config) {
    return std::make_shared<TinyNet>(4, config["hidden"].as<int64_t>(), 2);
  });
}

TEST_F(Errors, CreateUnknownOrMissingType) {
  PersistenceManager manager(root(), options());
  SaveModelRequest unknown = model_request(1, "unknown");
  unknown.config = YAML::Load("{type: no_such_type}");
  manager.save_model(unknown);
  SaveModelRequest untyped = model_request(1, "untyped");
  untyped.config = YAML::Load("{hidden: 3}");
  manager.save_model(untyped);

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(1);
  EXPECT_TRUE(throws_error<NotFoundError>([&] { resume->models.at("unknown").create(at::kCPU); }, {"no_such_type"}))
      << "create() with an unregistered type on " << where(1);
  EXPECT_TRUE(throws_error<NotFoundError>([&] { resume->models.at("untyped").create(at::kCPU); }, {"type"}))
      << "create() with no type key on " << where(1);
  EXPECT_TRUE(throws_error<NotFoundError>([&] { create_model(YAML::Load("{type: no_such_type}")); }, {"no_such_type"}))
      << "create_model() on " << where(1);
}

TEST_F(Errors, CreateStrictAgainstSavedStates) {
  register_error_net();
  TinyNet net(4, 3, 2);
  const StateDict states = get_model_states(net);
  PersistenceManager manager(root(), options());

  StateDict missing = states;
  missing.erase("fc2.bias");
  SaveModelRequest missing_request = model_request(1, "missing", missing);
  missing_request.config = YAML::Load("{type: error_net, hidden: 3}");
  manager.save_model(missing_request);

  StateDict reshaped = states;
  reshaped["fc2.weight"] = at::zeros({2, 4}, at::kFloat);
  SaveModelRequest reshaped_request = model_request(1, "reshaped", reshaped);
  reshaped_request.config = YAML::Load("{type: error_net, hidden: 3}");
  manager.save_model(reshaped_request);

  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(1);
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { resume->models.at("missing").create(at::kCPU); }, {"fc2.bias"}))
      << "a key the file lacks, " << where("fc2.bias", 1);
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { resume->models.at("reshaped").create(at::kCPU); }, {"fc2.weight"}))
      << "a shape that differs from the file, " << where("fc2.weight", 1);
}

TEST_F(Errors, LoadIntoMismatchedTargets) {
  PersistenceManager manager(root(), options());
  manager.save_model(model_request(1, "model"));
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(1);
  const PersistedStates& states = resume->models.at("model").states;

  StateDict wrong_shape = {{"weight", at::zeros({2, 4}, at::kFloat)}};
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { states.load_into(wrong_shape); }, {"weight"}))
      << "target shape [2, 4] against [4, 2], " << where("weight", 1);

  StateDict wrong_dtype = {{"weight", at::zeros({4, 2}, at::kInt)}};
  EXPECT_TRUE(throws_error<Error>([&] { states.load_into(wrong_dtype); }, {"weight"}))
      << "int32 target for float32, " << where("weight", 1);

  StateDict absent = {{"absent", at::zeros({1}, at::kFloat)}};
  EXPECT_TRUE(throws_error<Error>([&] { states.load_into(absent); }, {"absent"})) << where("absent", 1);
}

TEST_F(Errors, LoadNotFound) {
  const std::string missing_dir = dir_.join("no_such_dir");
  EXPECT_TRUE(throws_error<NotFoundError>([&] { load_model_from_path(missing_dir, "model"); }, {missing_dir}))
      << where();

  {
    PersistenceManager manager(root(), options());
    manager.save_model(model_request(1, "model"));
  }
  EXPECT_TRUE(throws_error<NotFoundError>([&] { load_model_from_path(root(), "absent"); }, {"absent"}))
      << "unknown model name on " << where(1);
  EXPECT_TRUE(throws_error<NotFoundError>([&] { load_model_from_path(root(), "model", 99); }, {"99"}))
      << "unknown step on " << where(99);
  EXPECT_TRUE(throws_error<NotFoundError>(
      [&] { load_model_from_task("0123456789abcdef", "model", std::nullopt, dir_.join("registry")); },
      {"0123456789abcdef"}))
      << "unknown task id on " << where();
}

// Returns the offset of the first occurrence of needle in the file, or -1.
int64_t find_bytes(const std::string& path, const std::string& needle) {
  std::ifstream in(path, std::ios::binary);
  const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t found = content.find(needle);
  return found == std::string::npos ? -1 : static_cast<int64_t>(found);
}

TEST_F(Errors, CorruptedDataFailsChecksum) {
  std::vector<int64_t> values(64);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0x5eed000000000000LL + static_cast<int64_t>(i) * 0x0101;
  const at::Tensor pattern = at::from_blob(values.data(), {64}, at::kLong).clone();
  {
    PersistenceManager manager(root(), options());
    manager.save_model(model_request(1, "model", {{"pattern", pattern}}));
  }
  const std::string file = root() + "/" + step_file_name(1);

  int64_t offset = -1;
  if (world_rank() == 0) {
    std::string needle(reinterpret_cast<const char*>(values.data()), 16);
    offset = find_bytes(file, needle);
    if (offset >= 0) {
      std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
      io.seekp(offset + 8 * 10);
      io.put('\x7f');
    }
  }
  MPI_Bcast(&offset, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  ASSERT_GE(offset, 0) << "the tensor bytes were not found verbatim in " << file;

  const PersistedModel model = load_model_from_path(root(), "model", 1);
  EXPECT_TRUE(throws_error<IntegrityError>([&] { model.states.load(at::kCPU); }, {"pattern", step_file_name(1)}))
      << "a flipped byte in the data of " << where("pattern", 1);
}

TEST_F(Errors, NewerFormatVersionRejected) {
  {
    PersistenceManager manager(root(), options());
    manager.save_model(model_request(1, "model"));
    manager.save_model(model_request(2, "model"));
  }
  const std::string file = root() + "/" + step_file_name(2);

  // Raise the major version in place, keeping the attribute's type and size.
  const std::string script = R"(
import sys, h5py, numpy
with h5py.File(sys.argv[1], 'r+') as f:
    old = f.attrs['format_version']
    if isinstance(old, (bytes, str)):
        text = old.decode() if isinstance(old, bytes) else old
        major = text.split('.')[0]
        new = '9' * len(major) + text[len(major):]
        f.attrs.modify('format_version', new.encode() if isinstance(old, bytes) else new)
    else:
        array = numpy.array(old)
        array.flat[0] = 99
        f.attrs.modify('format_version', array if array.shape else array.item())
    print(repr(old), '->', repr(f.attrs['format_version']))
)";
  CommandResult edit;
  if (world_rank() == 0) {
    edit = run_command("HDF5_USE_FILE_LOCKING=FALSE /usr/bin/python3 -c " + shell_quote(script) + " " + shell_quote(file));
  }
  MPI_Bcast(&edit.exit_code, 1, MPI_INT, 0, MPI_COMM_WORLD);
  ASSERT_EQ(edit.exit_code, 0) << "editing format_version with h5py failed: " << edit.output;

  EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 2).states.load(at::kCPU); },
                                        {step_file_name(2)}))
      << "a newer major format version, " << where(2);

  PersistenceManager reader(root(), options());
  const auto resume = reader.load_last_step();
  ASSERT_TRUE(resume.has_value()) << "step 1 must still load, " << where(1);
  EXPECT_EQ(resume->step, 1) << "a step with a newer major format version must be skipped, " << where(2);
}

}  // namespace
}  // namespace persistence::testing
