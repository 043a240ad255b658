#include <persistence/manager.h>

#include "core/logging.h"
#include "core/snapshot.h"
#include "core/task_registry.h"
#include "format/layout.h"
#include "h5/handle.h"
#include "io/step_files.h"
#include "io/step_reader.h"
#include "io/step_writer.h"
#include "mpi/communicator.h"

#include <persistence/errors.h>

#include <algorithm>
#include <chrono>
#include <set>

namespace persistence {

using detail::Communicator;
using detail::logger;
using detail::run_agreed;

namespace {

void check_name(const std::string& name, const char* what, int64_t step) {
  ErrorContext context{{}, {}, step, std::nullopt};
  if (step < 0) {
    throw InvalidArgumentError("Step " + std::to_string(step) + " is negative", context, "Pass a step of 0 or more");
  }
  if (name.empty()) {
    throw InvalidArgumentError(std::string("The ") + what + " name is empty", context,
                               "Name it, for example \"model\" or \"ema\"");
  }
  if (name.find('/') != std::string::npos || name == "." || name == "..") {
    throw InvalidArgumentError(std::string("The ") + what + " name '" + name + "' contains '/' or is '.' or '..'",
                               context, "Use a name without '/', such as \"ema\"");
  }
}

std::string emit_yaml(const YAML::Node& node) {
  if (!node || node.IsNull()) return {};
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

// Checks that every rank makes the same call; a difference is a CollectiveError on every rank.
void check_same_call(const Communicator& comm, const std::string& call) {
  std::vector<std::string> calls = comm.allgather(call);
  for (size_t r = 1; r < calls.size(); ++r) {
    if (calls[r] != calls[0]) {
      throw CollectiveError("Ranks make different calls: rank 0 calls " + calls[0] + " but rank " + std::to_string(r) +
                                " calls " + calls[r],
                            {}, "Every rank must call the manager in the same order with the same step and name");
    }
  }
}

}  // namespace

class PersistenceManager::Impl {
 public:
  Impl(const std::string& path, const ManagerOptions& requested)
      : thread_level_(detail::ensure_mpi_initialized()),
        options_(requested.resolved()),
        comm_(Communicator::duplicate(requested.comm)) {
    detail::configure_logging(comm_.rank());
    detail::h5::silence_errors();

    run_agreed(comm_, [&] { root_ = detail::local_root(path); });
    run_agreed(comm_, [&] {
      if (comm_.rank() != 0) return;
      detail::make_directories(root_);
      detail::check_writable(root_);
      int removed = detail::remove_stale_temporaries(root_);
      if (removed > 0) logger().info("Removed {} temporary step files left by an interrupted save in {}", removed, root_);
    });

    task_id_ = options_.task_id;
    if (task_id_.empty() && comm_.rank() == 0) task_id_ = detail::generate_task_id();
    task_id_ = comm_.broadcast(task_id_);
    run_agreed(comm_, [&] { detail::check_task_id(task_id_); });
    if (comm_.rank() == 0) {
      try {
        detail::record_task(options_.registry_dir, task_id_, root_, comm_.size());
      } catch (const Error& error) {
        logger().warn("Task {} is not recorded in the task registry: {}", task_id_, error.what());
      }
    }
    logger().info("Task {} saves to {} with {} ranks", task_id_, root_, comm_.size());
  }

  void save_config(const YAML::Node& config) {
    require_open("save_config");
    check_same_call(comm_, "save_config()");
    std::string text = comm_.rank() == 0 ? emit_yaml(config) : std::string();
    training_config_ = comm_.broadcast(text);
    run_agreed(comm_, [&] {
      if (comm_.rank() == 0) detail::write_file_atomically(root_ + "/config.yaml", training_config_);
    });
  }

  void save(detail::SaveJob job, const StateDict& states, std::optional<c10::ScalarType> dtype, bool blocking,
            const char* what) {
    require_open(what);
    run_agreed(comm_, [&] { check_name(job.name, what, job.step); });
    check_same_call(comm_, std::string(what) + "(step=" + std::to_string(job.step) + ", name='" + job.name + "')");

    std::string entry = job.group + "/" + job.name;
    run_agreed(comm_, [&] {
      ErrorContext context{root_ + "/" + detail::step_file_name(job.step), {}, job.step, std::nullopt};
      if (open_step_ && job.step < *open_step_) {
        throw InvalidArgumentError("Step " + std::to_string(job.step) + " is older than step " +
                                       std::to_string(*open_step_) + ", which this manager already saved",
                                   context, "Save steps in increasing order");
      }
      if (open_step_ && job.step == *open_step_ && saved_names_.count(entry) != 0) {
        throw InvalidArgumentError(std::string(what) + " '" + job.name + "' was already saved at this step", context,
                                   "Save each name at most once per step");
      }
      detail::add_states(job, states, dtype);
    });
    if (!blocking && !logged_synchronous_) {
      logger().info("Asynchronous saves are not available yet; blocking=false saves synchronously");
      logged_synchronous_ = true;
    }

    if (open_step_ && job.step > *open_step_) seal();
    job.extend_existing = open_step_.has_value() && !saved_names_.empty();
    job.training_config = training_config_;
    job.task_id = task_id_;

    auto started = std::chrono::steady_clock::now();
    detail::WriterSettings settings{static_cast<int64_t>(options_.max_bytes_per_call), options_.alignment,
                                    options_.alignment_threshold};
    detail::write_step(comm_, root_, job, settings);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    open_step_ = job.step;
    saved_names_.insert(entry);
    logger().info("Saved {} '{}' at step {} in {:.3f} s", what == std::string("save_model") ? "model" : "optimizer",
                  job.name, job.step, seconds);
  }

  std::optional<ResumeState> load_last_step(const StepRequirements& required) {
    require_open("load_last_step");
    check_same_call(comm_, "load_last_step()");
    std::vector<int64_t> steps;
    run_agreed(comm_, [&] {
      if (comm_.rank() == 0) steps = detail::list_steps(root_);
    });
    int64_t count = comm_.broadcast(static_cast<int64_t>(steps.size()));
    steps.resize(static_cast<size_t>(count));
    for (auto& step : steps) step = comm_.broadcast(step);

    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      std::string path = root_ + "/" + detail::step_file_name(*it);
      detail::StepInfo info;
      try {
        run_agreed(comm_, [&] { info = detail::read_step_info(path); });
        run_agreed(comm_, [&] { check_requirements(info, required, path); });
        if (options_.verify_checksums) detail::verify_step(comm_, path);
      } catch (const Error& error) {
        logger().warn("Skipping step {}: {}", *it, error.what());
        continue;
      }
      logger().info("Resuming from step {} ({})", *it, path);
      return make_resume_state(info, path);
    }
    logger().info("No usable step in {}; starting from scratch", root_);
    return std::nullopt;
  }

  void commit() {
    require_open("commit");
    check_same_call(comm_, "commit()");
    seal();
  }

  void wait() {
    require_open("wait");
    check_same_call(comm_, "wait()");
  }

  void close() {
    if (closed_) return;
    wait();
    commit();
    closed_ = true;
  }

  bool closed() const { return closed_; }
  const std::string& root() const { return root_; }
  const std::string& task_id() const { return task_id_; }

 private:
  void require_open(const char* call) const {
    if (closed_) {
      throw InvalidArgumentError(std::string("The manager is closed; ") + call + " cannot run",
                                 ErrorContext{root_, {}, std::nullopt, comm_.rank()},
                                 "Create a new PersistenceManager");
    }
  }

  void seal() {
    if (open_step_) logger().debug("Sealed step {}", *open_step_);
    open_step_.reset();
    saved_names_.clear();
  }

  static void check_requirements(const detail::StepInfo& info, const StepRequirements& required,
                                 const std::string& path) {
    auto need = [&](const std::vector<std::string>& have, const std::vector<std::string>& wanted, const char* what) {
      for (const auto& name : wanted) {
        if (!std::binary_search(have.begin(), have.end(), name)) {
          throw NotFoundError(std::string("The step holds no ") + what + " '" + name + "'",
                              ErrorContext{path, {}, info.step, std::nullopt});
        }
      }
    };
    need(info.models, required.models, "model");
    need(info.optimizers, required.optimizers, "optimizer");
  }

  ResumeState make_resume_state(const detail::StepInfo& info, const std::string& path) const {
    ResumeState state;
    state.step = info.step;
    state.path = path;
    state.config = PersistedConfig{path, std::string("/") + detail::layout::kConfig};
    for (const auto& name : info.models) {
      std::string base = std::string("/") + detail::layout::kModels + "/" + name;
      PersistedModel model;
      model.name = name;
      model.step = info.step;
      model.config = PersistedConfig{path, base + "/" + detail::layout::kConfig};
      model.states = PersistedStates{path, base + "/" + detail::layout::kStates, options_.verify_checksums, options_.comm};
      state.models.emplace(name, std::move(model));
    }
    for (const auto& name : info.optimizers) {
      std::string base = std::string("/") + detail::layout::kOptimizers + "/" + name;
      PersistedOptimizer optimizer;
      optimizer.name = name;
      optimizer.step = info.step;
      optimizer.param_groups = PersistedConfig{path, base + "/" + detail::layout::kParamGroups};
      optimizer.states =
          PersistedStates{path, base + "/" + detail::layout::kStates, options_.verify_checksums, options_.comm};
      state.optimizers.emplace(name, std::move(optimizer));
    }
    return state;
  }

  int thread_level_;
  ManagerOptions options_;
  Communicator comm_;
  std::string root_;
  std::string task_id_;
  std::string training_config_;
  std::optional<int64_t> open_step_;
  std::set<std::string> saved_names_;
  bool closed_ = false;
  bool logged_synchronous_ = false;
};

PersistenceManager::PersistenceManager(const std::string& path, ManagerOptions options)
    : impl_(std::make_unique<Impl>(path, options)) {}

PersistenceManager::~PersistenceManager() {
  try {
    if (impl_ && !impl_->closed()) impl_->close();
  } catch (const std::exception& error) {
    logger().error("Closing the persistence manager failed: {}", error.what());
  }
}

void PersistenceManager::save_config(const YAML::Node& config) { impl_->save_config(config); }

std::optional<ResumeState> PersistenceManager::load_last_step(const StepRequirements& required) {
  return impl_->load_last_step(required);
}

void PersistenceManager::save_model(SaveModelRequest request) {
  detail::SaveJob job;
  job.step = request.step;
  job.group = detail::layout::kModels;
  job.name = request.name;
  job.config_name = detail::layout::kConfig;
  job.config_text = emit_yaml(request.config);
  impl_->save(std::move(job), request.states, request.dtype, request.blocking, "save_model");
}

void PersistenceManager::save_optimizer(SaveOptimizerRequest request) {
  detail::SaveJob job;
  job.step = request.step;
  job.group = detail::layout::kOptimizers;
  job.name = request.name;
  job.config_name = detail::layout::kParamGroups;
  job.config_text = emit_yaml(request.states.param_groups);
  impl_->save(std::move(job), request.states.states, request.dtype, request.blocking, "save_optimizer");
}

void PersistenceManager::commit() { impl_->commit(); }
void PersistenceManager::wait() { impl_->wait(); }
void PersistenceManager::close() { impl_->close(); }
const std::string& PersistenceManager::root() const noexcept { return impl_->root(); }
const std::string& PersistenceManager::task_id() const noexcept { return impl_->task_id(); }

}  // namespace persistence
