// The save half of the training resume suite. Each sharded trainer (ZeRO with
// Adam and with SGD, FSDP with AdamW) trains a few steps, must match the
// unsharded reference, and saves its model and optimizer below
// PERSISTENCE_TRAINING_ROOT; training_resume_test resumes them at other world
// sizes.

#include "training.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>

#ifndef PERSISTENCE_TRAINING_ROOT
#error "PERSISTENCE_TRAINING_ROOT must name the directory shared by the training suites"
#endif

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSavedStep = 3;

class TrainingSave : public ::testing::TestWithParam<TrainingCase> {};

TEST_P(TrainingSave, TrainsLikeReferenceAndSaves) {
  const TrainingCase& kind = GetParam();
  const std::string root = std::string(PERSISTENCE_TRAINING_ROOT) + "/" + kind.name;
  if (world_rank() == 0) {
    fs::remove_all(root);
    fs::create_directories(PERSISTENCE_TRAINING_ROOT);
  }
  barrier();

  std::unique_ptr<Trainer> sharded = make_trainer(kind, 1.0, kind.original);
  ReferenceTrainer reference(1.0, kind.original);
  for (int64_t step = 1; step <= kSavedStep; ++step) {
    sharded->step();
    reference.step();
  }
  sharded->sync();
  EXPECT_TRUE(parameters_close(reference.net(), sharded->net()))
      << kind.name << " at " << world_size() << " ranks, " << where(kSavedStep);

  ManagerOptions options;
  options.registry_dir = std::string(PERSISTENCE_TRAINING_ROOT) + "/registry";
  PersistenceManager manager(root, options);
  ASSERT_NO_THROW(manager.save_model({.step = kSavedStep, .name = "model", .config = YAML::Load("{type: tiny_net}"),
                                      .states = sharded->model_states(), .dtype = std::nullopt, .blocking = true}))
      << kind.name << ", " << where("model", kSavedStep);
  ASSERT_NO_THROW(manager.save_optimizer({.step = kSavedStep, .name = "optimizer",
                                          .states = sharded->optimizer_states(), .dtype = std::nullopt,
                                          .blocking = true}))
      << kind.name << ", " << where("optimizer", kSavedStep);
  manager.close();
}

INSTANTIATE_TEST_SUITE_P(Trainers, TrainingSave, ::testing::ValuesIn(training_cases()),
                         [](const ::testing::TestParamInfo<TrainingCase>& info) { return info.param.name; });

}  // namespace
}  // namespace persistence::testing
