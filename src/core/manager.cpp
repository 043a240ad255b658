#include <persistence/manager.h>

#include "core/io_worker.h"
#include "core/logging.h"
#include "core/remote_paths.h"
#include "core/snapshot.h"
#include "core/staging.h"
#include "core/task_registry.h"
#include "format/layout.h"
#include "h5/handle.h"
#include "io/phase_trace.h"
#include "io/step_files.h"
#include "io/step_reader.h"
#include "io/step_writer.h"
#include "shard/plan.h"
#include "mpi/communicator.h"
#include "mpi/rendezvous.h"
#include "storage/open_storage.h"
#include "storage/stage.h"

#include <persistence/errors.h>


#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <filesystem>
#include <mutex>
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

}  // namespace

class PersistenceManager::Impl {
 public:
  Impl(const std::string& path, const ManagerOptions& requested)
      : thread_level_(detail::ensure_mpi_initialized()),
        options_(requested.resolved()),
        comm_(Communicator::duplicate(requested.comm)) {
    detail::configure_logging(comm_.rank());
    detail::h5::silence_errors();

    save_path_ = path;
    run_agreed(comm_, [&] { resolve_root(path); });
    run_agreed(comm_, [&] {
      if (comm_.rank() != 0) return;
      if (remote_) {
        open_remote(path);
        detail::make_directories(root_);
      } else {
        detail::make_save_directory(root_);
      }
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
        detail::record_task(options_.registry_dir, task_id_, remote_ ? save_path_ : root_, comm_.size(),
                            options_.hdfs);
      } catch (const Error& error) {
        logger().warn("Task {} is not recorded in the task registry: {}", task_id_, error.what());
      }
    }
    if (remote_) {
      logger().info("Task {} saves to {} through the staging directory {} with {} ranks", task_id_, save_path_, root_,
                    comm_.size());
    } else {
      logger().info("Task {} saves to {} with {} ranks", task_id_, root_, comm_.size());
    }

    // Background writes need MPI_THREAD_MULTIPLE, because the trainer keeps
    // calling MPI on its own thread while the I/O thread writes.
    if (thread_level_ >= MPI_THREAD_MULTIPLE) {
      io_comm_.emplace(Communicator::duplicate(comm_.get()));
      worker_ = std::make_unique<detail::IoWorker>();
    } else if (comm_.rank() == 0) {
      logger().warn("MPI was initialised with thread level {} instead of MPI_THREAD_MULTIPLE ({}), so saves run "
                    "synchronously. Call MPI_Init_thread with MPI_THREAD_MULTIPLE, or let the manager initialise MPI, "
                    "to save in the background",
                    thread_level_, MPI_THREAD_MULTIPLE);
    }
  }

  void save_config(const YAML::Node& config) {
    require_open("save_config");
    check_same_call("save_config()");
    std::string text = comm_.rank() == 0 ? emit_yaml(config) : std::string();
    training_config_ = comm_.broadcast(text);
    run_agreed(comm_, [&] {
      if (comm_.rank() == 0) detail::write_file_atomically(root_ + "/config.yaml", training_config_);
    });
  }

  void save(detail::SaveJob job, const StateDict& states, std::optional<c10::ScalarType> dtype, bool blocking,
            const char* what) {
    require_open(what);
    check_same_call(std::string(what) + "(step=" + std::to_string(job.step) + ", name='" + job.name + "')");
    run_agreed(comm_, [&] { check_name(job.name, what, job.step); });
    check_background_failure();

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
    });

    if (open_step_ && job.step > *open_step_) seal();
    job.extend_existing = open_step_.has_value() && !saved_names_.empty();
    job.training_config = training_config_;
    job.task_id = task_id_;
    auto& cache = plan_caches_[entry];
    if (!cache) cache = std::make_shared<detail::PlanCache>();
    job.plan_cache = cache;

    bool background = worker_ != nullptr && !blocking;
    std::shared_ptr<detail::StagingArena> arena;
    if (background) {
      // Each rank stages only the part of each full tensor that it writes.
      detail::StagedShare share{comm_.rank(), comm_.size()};
      arena = reserve_staging(entry, detail::staging_bytes(states, dtype, share));
      // The write waited for above may have failed. Report it from this call,
      // because the I/O thread would skip this save with only a log message.
      check_background_failure();
      auto copy_started = std::chrono::steady_clock::now();
      run_agreed(comm_, [&] {
        // The I/O thread pauses during the copy; the gate opens before the agreement below.
        detail::SnapshotGate::Closed closed(*snapshot_gate_);
        detail::add_states(job, states, dtype, [&](const at::Tensor& source, c10::ScalarType stored) {
          at::Tensor copy = arena->take(source.sizes(), stored);
          detail::copy_snapshot(copy, source.detach());
          return copy;
        }, share);
      });
      logger().debug("Copied the snapshot of {} '{}' at step {} in {:.3f} s", what, job.name, job.step,
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - copy_started).count());
    } else {
      run_agreed(comm_, [&] { detail::add_states(job, states, dtype, detail::reference_or_convert); });
    }

    open_step_ = job.step;
    saved_names_.insert(entry);
    std::string description = std::string(job.group == detail::layout::kModels ? "model" : "optimizer") + " '" +
                              job.name + "'";
    uint64_t sequence = submit(std::move(job), description);
    if (background) {
      arena_jobs_[entry] = sequence;
      return;
    }
    if (worker_) worker_->drain();
    check_background_failure();
  }

  std::optional<ResumeState> load_last_step(const StepRequirements& required) {
    require_open("load_last_step");
    check_same_call("load_last_step()");
    if (worker_) worker_->drain();
    std::vector<int64_t> steps;
    run_agreed(comm_, [&] {
      if (comm_.rank() != 0) return;
      steps = detail::list_steps(root_);
      if (remote_) {
        for (int64_t step : detail::list_remote_steps(*storage_, remote_dir_)) steps.push_back(step);
        std::sort(steps.begin(), steps.end());
        steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
      }
    });
    int64_t count = comm_.broadcast(static_cast<int64_t>(steps.size()));
    steps.resize(static_cast<size_t>(count));
    for (auto& step : steps) step = comm_.broadcast(step);

    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      std::string path = root_ + "/" + detail::step_file_name(*it);
      detail::StepInfo info;
      try {
        run_agreed(comm_, [&] { stage_in_if_missing(*it, path); });
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
    check_same_call("commit()");
    check_background_failure();
    seal();
  }

  void wait() {
    require_open("wait");
    check_same_call("wait()");
    if (worker_) worker_->drain();
    check_background_failure();
  }

  void close() {
    if (closed_) return;
    closed_ = true;  // a failing close is not retried by the destructor
    require_open_for_close();
    seal();
    if (worker_) worker_->drain();
    if (stage_worker_) stage_worker_->drain();
    check_background_failure();
    worker_.reset();
    stage_worker_.reset();
  }

  bool closed() const { return closed_; }

  // Drops queued saves without running them; for use after MPI_Finalize.
  void abandon() {
    closed_ = true;
    if (worker_) worker_->abandon();
    if (stage_worker_) stage_worker_->abandon();
    worker_.reset();
    stage_worker_.reset();
  }
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

  // Sets root_: the save directory, or for hdfs:// paths the local staging directory.
  void resolve_root(const std::string& path) {
    remote_ = detail::is_hdfs_uri(path);
    if (!remote_) {
      root_ = detail::local_root(path);
      return;
    }
    std::string staging = options_.staging_dir;
    if (staging.empty()) staging = detail::default_staging_dir(path);
    root_ = detail::local_root(staging);
  }

  // Rank 0 only: the remote storage and the thread that stages step files out.
  void open_remote(const std::string& path) {
    detail::HdfsConfig config = detail::HdfsConfig::resolve(options_.hdfs);
    detail::StorageLocation location = detail::open_storage(path, config);
    storage_ = std::move(location.storage);
    remote_dir_ = location.dir;
    retry_ = config.retry;
    stage_worker_ = std::make_unique<detail::IoWorker>();
  }

  // Rank 0 downloads a remote step that has no local copy.
  void stage_in_if_missing(int64_t step, const std::string& path) {
    if (!remote_ || comm_.rank() != 0 || std::filesystem::exists(path)) return;
    std::string name = detail::step_file_name(step);
    logger().info("Staging in step {} from {}", step, save_path_);
    detail::stage_in(*storage_, remote_dir_ + "/" + name, path, std::nullopt, retry_);
  }

  // Queues, behind the writes of step, its stage-out on rank 0's stage thread,
  // then remote retention and the removal of local copies already staged out.
  // A failure is recorded in stage_failure_ instead of failing the stage
  // thread, because the thread would then skip the stage-outs of later steps,
  // which do not depend on this one.
  void queue_stage_out(int64_t step) {
    if (comm_.rank() != 0) return;
    auto stage = [this, step] {
      std::string name = detail::step_file_name(step);
      std::string local = root_ + "/" + name;
      if (!std::filesystem::exists(local)) return;  // its saves failed; nothing was committed
      try {
        auto started = std::chrono::steady_clock::now();
        detail::stage_out(*storage_, local, remote_dir_, name, retry_, true);
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        logger().info("Staged out step {} to {} in {:.3f} s", step, save_path_, seconds);
        staged_out_.insert(step);
        prune_after_stage_out();
      } catch (const std::exception& error) {
        logger().error("The stage-out of step {} to {} failed: {}", step, save_path_, error.what());
        std::lock_guard<std::mutex> lock(stage_failure_mutex_);
        if (!stage_failure_) {
          stage_failure_ = std::make_pair(
              detail::JobLabel{0, step, "the stage-out of step " + std::to_string(step)},
              std::current_exception());
        }
      }
    };
    auto hand_over = [this, step, stage] {
      if (!stage_worker_) return;
      stage_worker_->submit(detail::JobLabel{++stage_jobs_, step, "the stage-out of step " + std::to_string(step)},
                            stage);
    };
    if (worker_) {
      worker_->submit(detail::JobLabel{++submitted_, step, "stage-out hand-over"}, hand_over);
    } else {
      hand_over();
    }
  }

  // Runs on the stage thread after a verified stage-out.
  void prune_after_stage_out() {
    if (options_.keep_last > 0) {
      std::vector<int64_t> remote = detail::list_remote_steps(*storage_, remote_dir_);
      for (int64_t step : detail::steps_to_remove(remote, options_.keep_last, options_.keep_every)) {
        std::string path = remote_dir_ + "/" + detail::step_file_name(step);
        if (storage_->remove(path)) logger().info("Retention removed step {} from {}", step, save_path_);
      }
    }
    std::vector<int64_t> local = detail::list_steps(root_);
    if (local.size() <= static_cast<size_t>(options_.local_steps_kept)) return;
    for (size_t i = 0; i + static_cast<size_t>(options_.local_steps_kept) < local.size(); ++i) {
      if (staged_out_.count(local[i]) == 0) continue;  // no verified remote copy yet
      std::error_code ignored;
      std::filesystem::remove(root_ + "/" + detail::step_file_name(local[i]), ignored);
    }
  }

  void require_open_for_close() { check_same_call("close()"); }

  // Collective. Every rank must make this call next, within the collective timeout.
  void check_same_call(const std::string& call) {
    detail::rendezvous(comm_, ++calls_, call, options_.collective_timeout);
  }

  // Writes job on the I/O thread (or here, when saves are synchronous) and
  // returns its sequence number.
  uint64_t submit(detail::SaveJob job, const std::string& description) {
    uint64_t sequence = ++submitted_;
    detail::WriterSettings settings;
    settings.max_bytes_per_call = static_cast<int64_t>(options_.max_bytes_per_call);
    settings.alignment = options_.alignment;
    settings.alignment_threshold = options_.alignment_threshold;
    settings.direct_io = options_.direct_io;
    settings.pause_point = [gate = snapshot_gate_] { gate->wait_until_open(); };
    auto shared_job = std::make_shared<detail::SaveJob>(std::move(job));
    const Communicator& comm = io_comm_ ? *io_comm_ : comm_;
    auto work = [shared_job, settings, description, &comm, root = root_] {
      auto started = std::chrono::steady_clock::now();
      detail::write_step(comm, root, *shared_job, settings);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      logger().info("Saved {} at step {} in {:.3f} s", description, shared_job->step, seconds);
    };
    if (!worker_) {
      try {
        work();
      } catch (...) {
        failure_ = std::make_pair(detail::JobLabel{sequence, shared_job->step, description}, std::current_exception());
      }
      return sequence;
    }
    worker_->submit(detail::JobLabel{sequence, shared_job->step, description}, std::move(work));
    return sequence;
  }

  // Returns the staging arena of entry once its previous background write has
  // finished, after waiting for the writes in flight if the cap requires it.
  std::shared_ptr<detail::StagingArena> reserve_staging(const std::string& entry, std::size_t bytes) {
    auto& arena = arenas_[entry];
    if (!arena) arena = std::make_shared<detail::StagingArena>();

    auto started = std::chrono::steady_clock::now();
    bool waited = false;
    auto previous = arena_jobs_.find(entry);
    if (previous != arena_jobs_.end()) {
      waited = true;
      worker_->wait_for(previous->second);
    }
    if (options_.max_staging_bytes > 0 && bytes > arena->capacity()) {
      std::size_t total = bytes;
      for (const auto& [name, other] : arenas_) {
        if (name != entry) total += other->capacity();
      }
      if (total > options_.max_staging_bytes) {
        waited = true;
        worker_->drain();
      }
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (waited && seconds > 0.001) {
      logger().info("Waited {:.3f} s for earlier background writes to free the staging memory of {}", seconds, entry);
    }
    arena->reset(bytes);
    return arena;
  }

  // Collective over comm_. When a save or a stage-out failed on any rank,
  // every rank drains its queues (so all ranks hold the same outcome), clears
  // the failure and throws it, naming the save and step. After a failed save
  // the step being saved is sealed, so the next save starts a new file rather
  // than extend a failed one. A failed stage-out alone leaves the open step
  // open: its writes succeeded, and it is staged out when it is sealed.
  void check_background_failure() {
    auto save_failure = [&] { return worker_ ? worker_->failure() : failure_; };
    // A stage job that escaped its own catch (not a std::exception) fails the stage thread instead.
    auto stage_failure = [&] {
      std::lock_guard<std::mutex> lock(stage_failure_mutex_);
      auto failure = stage_failure_;
      if (!failure && stage_worker_) failure = stage_worker_->failure();
      return failure;
    };
    auto current = [&] {
      auto failure = save_failure();
      if (!failure) failure = stage_failure();
      return failure;
    };
    if (comm_.allreduce_max(current() ? 1 : 0) == 0) return;
    if (worker_) worker_->drain();
    if (stage_worker_) stage_worker_->drain();

    auto failure = current();
    // Only rank 0 stages out; a failed stage-out leaves its step complete in the staging directory.
    const bool stage_out_failed = failure && !save_failure();
    const bool any_save_failed = comm_.allreduce_max(save_failure() ? 1 : 0) != 0;
    if (worker_) {
      worker_->clear_failure();
    } else {
      failure_.reset();
    }
    if (stage_worker_) stage_worker_->clear_failure();
    {
      std::lock_guard<std::mutex> lock(stage_failure_mutex_);
      stage_failure_.reset();
    }
    if (any_save_failed) seal(false);  // the failed step may be partial: no retention against it

    std::exception_ptr local;
    if (failure) {
      const detail::JobLabel& label = failure->first;
      std::string advice = "The step was not committed; earlier steps are intact";
      std::string problem_prefix = "The save of " + label.description + " failed: ";
      if (stage_out_failed) {
        advice = "The step stays complete in the staging directory " + root_ +
                 ", and load_last_step() resumes from it there; it is not staged out again";
        problem_prefix.clear();  // the stage-out error names the step file and the remote path
      }
      try {
        std::rethrow_exception(failure->second);
      } catch (const Error& error) {
        // Keep the error's class: an invalid plan stays a CollectiveError.
        ErrorContext context = error.context();
        context.step = label.step;
        local = detail::make_error(error.kind(), problem_prefix + error.problem(),
                                   context, error.advice().empty() ? advice : error.advice() + ". " + advice);
      } catch (const std::exception& error) {
        local = std::make_exception_ptr(IoError("The save of " + label.description + " failed: " + error.what(),
                                                ErrorContext{{}, {}, label.step, std::nullopt}, advice));
      }
    } else {
      local = std::make_exception_ptr(IoError("A save failed on another rank", {}, ""));
    }
    detail::agree(comm_, local);
  }

  // Ends the open step. With retention set, queues the removal of old steps
  // behind the step's writes, so it runs only once they have committed.
  void seal(bool apply_retention = true) {
    if (open_step_ && apply_retention && remote_) queue_stage_out(*open_step_);
    if (open_step_ && apply_retention && !remote_ && options_.keep_last > 0) queue_retention(*open_step_);
    open_step_.reset();
    saved_names_.clear();
  }

  void queue_retention(int64_t sealed_step) {
    auto work = [root = root_, keep_last = options_.keep_last, keep_every = options_.keep_every,
                 rank = comm_.rank(), sealed_step] {
      if (rank != 0) return;
      std::vector<int64_t> committed = detail::list_steps(root);
      if (committed.empty() || committed.back() < sealed_step) return;

      // The newest step must open as a step file and pass every checksum
      // before anything older goes; this rank alone reads it back.
      std::string newest = root + "/" + detail::step_file_name(committed.back());
      detail::trace_phase(detail::phase::kRetention, rank, committed.back(), "retention", "");
      detail::read_step_info(newest);
      detail::verify_step(Communicator::borrow(MPI_COMM_SELF), newest);
      for (int64_t step : detail::steps_to_remove(committed, keep_last, keep_every)) {
        std::string path = root + "/" + detail::step_file_name(step);
        detail::trace_phase(detail::phase::kRemove, rank, step, "retention", "");
        if (std::remove(path.c_str()) != 0) {
          logger().warn("Retention could not remove {}: {}", path, std::strerror(errno));
          continue;
        }
        logger().info("Retention removed step {} ({})", step, path);
      }
      detail::sync_path(root);
      detail::trace_phase(detail::phase::kPruned, rank, committed.back(), "retention", "");
    };
    if (!worker_) {
      try {
        work();
      } catch (const std::exception& error) {
        logger().warn("Retention after step {} failed: {}", sealed_step, error.what());
      }
      return;
    }
    uint64_t sequence = ++submitted_;
    worker_->submit(detail::JobLabel{sequence, sealed_step, "retention"}, [work, sealed_step] {
      try {
        work();
      } catch (const std::exception& error) {
        logger().warn("Retention after step {} failed: {}", sealed_step, error.what());
      }
    });
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
      model.states = PersistedStates{path, base + "/" + detail::layout::kStates, options_.verify_checksums,
                                     options_.comm, options_.direct_io};
      state.models.emplace(name, std::move(model));
    }
    for (const auto& name : info.optimizers) {
      std::string base = std::string("/") + detail::layout::kOptimizers + "/" + name;
      PersistedOptimizer optimizer;
      optimizer.name = name;
      optimizer.step = info.step;
      optimizer.param_groups = PersistedConfig{path, base + "/" + detail::layout::kParamGroups};
      optimizer.states = PersistedStates{path, base + "/" + detail::layout::kStates, options_.verify_checksums,
                                         options_.comm, options_.direct_io};
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

  std::optional<Communicator> io_comm_;  // the I/O thread's communicator
  std::unique_ptr<detail::IoWorker> worker_;
  std::map<std::string, std::shared_ptr<detail::StagingArena>> arenas_;
  std::shared_ptr<detail::SnapshotGate> snapshot_gate_ = std::make_shared<detail::SnapshotGate>();
  std::map<std::string, uint64_t> arena_jobs_;
  std::map<std::string, std::shared_ptr<detail::PlanCache>> plan_caches_;  // last job that reads each arena
  uint64_t submitted_ = 0;
  uint64_t calls_ = 0;  // collective calls made, compared across ranks
  std::optional<std::pair<detail::JobLabel, std::exception_ptr>> failure_;  // of synchronous saves

  // hdfs:// save paths. storage_ and stage_worker_ exist on rank 0 only, the
  // only rank that talks to the NameNode.
  std::string save_path_;
  bool remote_ = false;
  std::string remote_dir_;
  std::unique_ptr<detail::Storage> storage_;
  detail::RetryPolicy retry_;
  std::set<int64_t> staged_out_;  // touched by the stage thread only
  uint64_t stage_jobs_ = 0;
  std::mutex stage_failure_mutex_;
  // The first failed stage-out not yet reported; set by the stage thread.
  std::optional<std::pair<detail::JobLabel, std::exception_ptr>> stage_failure_;
  std::unique_ptr<detail::IoWorker> stage_worker_;  // declared last: stops first
};

PersistenceManager::PersistenceManager(const std::string& path, ManagerOptions options)
    : impl_(std::make_unique<Impl>(path, options)) {}

PersistenceManager::~PersistenceManager() {
  if (!impl_ || impl_->closed()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized != 0) {
    // No collective call is possible any more; queued saves are lost.
    logger().error("The persistence manager of {} was destroyed after MPI_Finalize without close(); saves still "
                   "queued were dropped. Call close() before MPI_Finalize",
                   impl_->root());
    impl_->abandon();
    return;
  }
  try {
    impl_->close();
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
