// The resume half of the training suite. At another world size than the save
// (1 and 3 ranks against 2), each sharded trainer loads the checkpoint that
// training_save_test wrote, continues a few steps, and must match an
// unsharded reference that loads the same checkpoint with a plain optimizer
// and takes the same full-batch steps. Saving the loaded state again at this
// world size must reproduce the checkpoint bit for bit.

#include "training.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <optional>
#include <string>

#ifndef PERSISTENCE_TRAINING_ROOT
#error "PERSISTENCE_TRAINING_ROOT must name the directory shared by the training suites"
#endif

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSavedStep = 3;
constexpr int kResumedSteps = 3;

std::string emit(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return out.c_str();
}

std::string saved_root(const std::string& name) { return std::string(PERSISTENCE_TRAINING_ROOT) + "/" + name; }

std::string context(const std::string& name, const std::string& key, int64_t step) {
  return name + " saved at 2 ranks, resumed at " + std::to_string(world_size()) + " ranks, " + where(key, step);
}

// Collective. The checkpoint that the save suite wrote for case `name`, read
// through a manager on its directory.
std::optional<ResumeState> resume(const std::string& name) {
  ManagerOptions options;
  options.registry_dir = std::string(PERSISTENCE_TRAINING_ROOT) + "/registry";
  PersistenceManager manager(saved_root(name), options);
  return manager.load_last_step({.models = {"model"}, .optimizers = {"optimizer"}});
}

// Resumes the checkpoint of case `saved_name` into a trainer of `kind`, takes
// a few steps beside the unsharded reference, and compares the parameters.
void expect_resume_matches_reference(const TrainingCase& kind, const std::string& saved_name) {
  const std::optional<ResumeState> state = resume(saved_name);
  ASSERT_TRUE(state.has_value()) << context(saved_name, "model", kSavedStep) << ": no checkpoint in "
                                 << saved_root(saved_name) << "; the TrainingSave tests write it";
  ASSERT_EQ(state->step, kSavedStep) << context(saved_name, "model", kSavedStep);
  const PersistedModel& model = state->models.at("model");
  const PersistedOptimizer& optimizer = state->optimizers.at("optimizer");

  // Different seeds and options than the save, so only the loaded state can make them agree.
  std::unique_ptr<Trainer> sharded = make_trainer(kind, 7.0, kind.fresh);
  ASSERT_NO_THROW(sharded->load(model, optimizer)) << context(saved_name, "optimizer", kSavedStep);
  ReferenceTrainer reference(9.0, kind.fresh);
  ASSERT_NO_THROW(reference.load(model, optimizer))
      << context(saved_name, "optimizer", kSavedStep) << ", unsharded reference";

  sharded->sync();
  for (const auto& item : reference.net().named_parameters()) {
    EXPECT_TRUE(bitwise_equal(item.value(), sharded->net().named_parameters()[item.key()]))
        << context(saved_name, item.key(), kSavedStep) << ": loaded parameter";
  }

  for (int i = 1; i <= kResumedSteps; ++i) {
    sharded->step();
    reference.step();
  }
  sharded->sync();
  EXPECT_TRUE(parameters_close(reference.net(), sharded->net()))
      << context(saved_name, "model", kSavedStep + kResumedSteps);
}

class TrainingResume : public ::testing::TestWithParam<TrainingCase> {};

TEST_P(TrainingResume, ContinuesLikeUnshardedReference) {
  expect_resume_matches_reference(GetParam(), GetParam().name);
}

// Both helpers store the same per-parameter format, so FSDP resumes what ZeRO saved.
TEST(TrainingResumeAcrossHelpers, FsdpResumesZeroCheckpoint) {
  TrainingCase kind = training_cases().front();
  ASSERT_EQ(kind.name, "zero_adam");
  kind.fsdp = true;
  expect_resume_matches_reference(kind, "zero_adam");
}

TEST_P(TrainingResume, SavingAgainReproducesCheckpoint) {
  const TrainingCase& kind = GetParam();
  const std::optional<ResumeState> state = resume(kind.name);
  ASSERT_TRUE(state.has_value()) << context(kind.name, "model", kSavedStep) << ": no checkpoint in "
                                 << saved_root(kind.name);
  const PersistedModel& model = state->models.at("model");
  const PersistedOptimizer& optimizer = state->optimizers.at("optimizer");
  std::unique_ptr<Trainer> sharded = make_trainer(kind, 7.0, kind.fresh);
  ASSERT_NO_THROW(sharded->load(model, optimizer)) << context(kind.name, "optimizer", kSavedStep);

  const std::string root = saved_root(kind.name) + "_resaved_np" + std::to_string(world_size());
  if (world_rank() == 0) fs::remove_all(root);
  barrier();
  {
    ManagerOptions options;
    options.registry_dir = std::string(PERSISTENCE_TRAINING_ROOT) + "/registry";
    PersistenceManager manager(root, options);
    ASSERT_NO_THROW(manager.save_model({.step = kSavedStep, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                                        .states = sharded->model_states(), .dtype = std::nullopt, .blocking = true}))
        << context(kind.name, "model", kSavedStep);
    ASSERT_NO_THROW(manager.save_optimizer({.step = kSavedStep, .name = "optimizer",
                                            .states = sharded->optimizer_states(), .dtype = std::nullopt,
                                            .blocking = true}))
        << context(kind.name, "optimizer", kSavedStep);
    manager.close();
  }

  const std::string path = root + "/" + step_file_name(kSavedStep);
  const PersistedStates resaved_model{path, "/models/model/states", true, MPI_COMM_WORLD};
  const PersistedStates resaved_optimizer{path, "/optimizers/optimizer/states", true, MPI_COMM_WORLD};
  const std::pair<const PersistedStates*, const PersistedStates*> pairs[] = {
      {&model.states, &resaved_model}, {&optimizer.states, &resaved_optimizer}};
  for (const auto& [original, again] : pairs) {
    const TensorDict expected = original->load(at::kCPU);
    const TensorDict actual = again->load(at::kCPU);
    ASSERT_EQ(actual.size(), expected.size()) << context(kind.name, original->group, kSavedStep) << ": key count";
    for (const auto& [key, tensor] : expected) {
      ASSERT_EQ(actual.count(key), 1u) << context(kind.name, key, kSavedStep) << ": missing after saving again";
      EXPECT_TRUE(bitwise_equal(tensor, actual.at(key))) << context(kind.name, key, kSavedStep) << ": saved again";
    }
  }

  const PersistedConfig resaved_groups{path, "/optimizers/optimizer/param_groups"};
  EXPECT_EQ(emit(resaved_groups.load()), emit(optimizer.param_groups.load()))
      << context(kind.name, "param_groups", kSavedStep);
}

INSTANTIATE_TEST_SUITE_P(Trainers, TrainingResume, ::testing::ValuesIn(training_cases()),
                         [](const ::testing::TestParamInfo<TrainingCase>& info) { return info.param.name; });

}  // namespace
}  // namespace persistence::testing
