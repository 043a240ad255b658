// PersistenceManager: the collective save and resume entry point of a trainer.
#pragma once

#include <persistence/module_states.h>
#include <persistence/options.h>
#include <persistence/persisted.h>
#include <persistence/state_dict.h>

#include <c10/core/ScalarType.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace persistence {

struct SaveModelRequest {
  int64_t step = 0;
  std::string name = "model";
  YAML::Node config;
  StateDict states;
  std::optional<c10::ScalarType> dtype;  // floating tensors are converted to it on save
  bool blocking = false;
};

struct SaveOptimizerRequest {
  int64_t step = 0;
  std::string name = "optimizer";
  OptimizerStates states;
  std::optional<c10::ScalarType> dtype;
  bool blocking = false;
};

// Names a step must hold for load_last_step to return it.
struct StepRequirements {
  std::vector<std::string> models;
  std::vector<std::string> optimizers;
};

// Saves training state into one HDF5 file per step under a root directory,
// `<root>/step_<12-digit step>.h5`, and finds the newest one on resume.
//
// Every method except the accessors is collective over options.comm: all ranks
// call it in the same order with agreeing arguments, and an error on one rank
// is thrown on every rank. Not thread-safe: call from one thread per rank.
class PersistenceManager {
 public:
  // Collective. Creates the root directory if its parent exists, initialises MPI with
  // MPI_THREAD_MULTIPLE if the application has not, and records the task id.
  explicit PersistenceManager(const std::string& path, ManagerOptions options = {});

  // Calls close(); errors are logged, never thrown.
  ~PersistenceManager();

  PersistenceManager(const PersistenceManager&) = delete;
  PersistenceManager& operator=(const PersistenceManager&) = delete;

  // Collective. Stores the training config as <root>/config.yaml and in every later step file.
  void save_config(const YAML::Node& config);

  // Collective. Returns the newest step that opens, verifies and contains every
  // required name; steps that fail are logged at warning level and skipped.
  std::optional<ResumeState> load_last_step(const StepRequirements& required = {});

  // Collective. Saves a model into the file of request.step. A later save at
  // the same step adds to that file; a crash during it leaves the earlier
  // saves of the step loadable.
  void save_model(SaveModelRequest request);

  // Collective. Saves an optimizer's states and parameter groups, as save_model does.
  void save_optimizer(SaveOptimizerRequest request);

  // Collective. Seals the current step: no later save may add to it.
  void commit();

  // Collective. Waits for pending saves and rethrows their errors. For an
  // hdfs:// path it does not wait for stage-outs, because they run in the
  // background so that uploads never block training. It does rethrow the
  // error of a stage-out that has already failed. close() waits for stage-outs.
  void wait();

  // Collective. wait() then commit(). Later calls do nothing.
  void close();

  const std::string& root() const noexcept;
  const std::string& task_id() const noexcept;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace persistence
