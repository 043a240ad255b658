// Helper program of the crash tests, run under mpiexec. The test programs kill
// its save jobs with SIGKILL and check the result with a fresh verify job.
//
//   crash_saver save ROOT MARKERS STEPS   saves steps 1..STEPS: model (blocking),
//                                         then ema and optimizer (asynchronous),
//                                         wait(), commit()
//   crash_saver retention-setup ROOT MARKERS
//                                         saves steps 1..4 without retention
//   crash_saver retention ROOT MARKERS    saves step 5 with keep_last 1 and
//                                         keep_every 2, so its commit removes
//                                         steps 1 and 3
//   crash_saver verify random|retention DIR...
//                                         checks each DIR (holding root/ and
//                                         markers/) in this fresh job
//
// Save jobs write MARKERS/pid.<rank> at start, so a test can kill any rank,
// and rank 0 appends "<step> <name>" to MARKERS/completed, with fsync, after
// each call that makes a save durable has returned: the blocking save call
// for the model, wait() for the asynchronous saves. The exit status is 0 when
// the job ran, or every check passed, on this rank.

#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/scalar_tensor.h>
#include <fcntl.h>
#include <mpi.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace persistence;
using persistence::testing::deterministic_tensor;

const std::vector<std::string> kNames = {"model", "ema", "optimizer"};

// The retention run: steps 1..4 exist, step 5 is saved with keep_last 1 and
// keep_every 2, so retention keeps 2, 4 and 5 and removes 1 and 3.
constexpr int64_t kRetentionSetupSteps = 4;
constexpr int64_t kRetentionStep = 5;
constexpr int64_t kKeepLast = 1;
constexpr int64_t kKeepEvery = 2;
const std::set<int64_t> kRemovedByRetention = {1, 3};

// Model states of a step, about 2.5 MiB: small, so a job reaches its saves
// quickly, and one tensor sharded across the ranks.
StateDict model_states(int64_t step, int rank, int size) {
  const double seed = static_cast<double>(step) * 100;
  StateDict states;
  states["embed.weight"] = deterministic_tensor({256, 512}, at::kFloat, seed + 1);
  states["layer.weight"] = deterministic_tensor({512, 512}, at::kFloat, seed + 2);
  states["layer.bias"] = deterministic_tensor({512}, at::kFloat, seed + 3);
  states["counter"] = at::scalar_tensor(step, at::kLong);

  constexpr int64_t kFlat = int64_t{1} << 18;
  const at::Tensor flat = deterministic_tensor({kFlat}, at::kFloat, seed + 4);
  const int64_t begin = kFlat * rank / size;
  const int64_t end = kFlat * (rank + 1) / size;
  ShardedTensor sharded({kFlat}, at::kFloat);
  sharded.add_flat(flat.narrow(0, begin, end - begin).clone(), begin);
  states.emplace("flat", std::move(sharded));
  return states;
}

// The full tensors model_states describes, as load() returns them.
TensorDict expected_model(int64_t step) {
  const double seed = static_cast<double>(step) * 100;
  TensorDict tensors;
  tensors["embed.weight"] = deterministic_tensor({256, 512}, at::kFloat, seed + 1);
  tensors["layer.weight"] = deterministic_tensor({512, 512}, at::kFloat, seed + 2);
  tensors["layer.bias"] = deterministic_tensor({512}, at::kFloat, seed + 3);
  tensors["counter"] = at::scalar_tensor(step, at::kLong);
  tensors["flat"] = deterministic_tensor({int64_t{1} << 18}, at::kFloat, seed + 4);
  return tensors;
}

TensorDict expected_ema(int64_t step) {
  TensorDict tensors = expected_model(step);
  for (auto& [key, tensor] : tensors) {
    if (at::isFloatingType(tensor.scalar_type())) tensor = tensor.to(at::kBFloat16);
  }
  return tensors;
}

TensorDict expected_optimizer(int64_t step) {
  const double seed = static_cast<double>(step) * 100 + 50;
  TensorDict tensors;
  tensors["embed.weight/exp_avg"] = deterministic_tensor({256, 512}, at::kFloat, seed + 1);
  tensors["embed.weight/exp_avg_sq"] = deterministic_tensor({256, 512}, at::kFloat, seed + 2);
  tensors["layer.weight/exp_avg"] = deterministic_tensor({512, 512}, at::kFloat, seed + 3);
  tensors["layer.weight/exp_avg_sq"] = deterministic_tensor({512, 512}, at::kFloat, seed + 4);
  tensors["layer.weight/step"] = at::scalar_tensor(step, at::kLong);
  return tensors;
}

TensorDict expected_states(const std::string& name, int64_t step) {
  if (name == "model") return expected_model(step);
  if (name == "ema") return expected_ema(step);
  return expected_optimizer(step);
}

OptimizerStates optimizer_states(int64_t step) {
  OptimizerStates states;
  for (auto& [key, tensor] : expected_optimizer(step)) states.states[key] = tensor;
  states.param_groups = YAML::Load("[{lr: 0.001, params: [embed.weight, layer.weight, layer.bias]}]");
  return states;
}

std::string step_path(const std::string& root, int64_t step) {
  return root + "/" + persistence::testing::step_file_name(step);
}

// ---------------------------------------------------------------------------
// Save jobs

// Appends "<step> <name>" to MARKERS/completed and syncs it, so the record
// survives a kill that follows at once. Rank 0 only.
void record_completed(const std::string& markers, int64_t step, const std::string& name) {
  const std::string path = markers + "/completed";
  const std::string line = std::to_string(step) + " " + name + "\n";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("Failed to open the marker file " + path + ": " + std::strerror(errno));
  const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!written || !synced) throw std::runtime_error("Failed to write and fsync the marker file " + path);
}

// Saves the model (blocking), then the ema and the optimizer (asynchronous)
// at step, and records each once the call that makes it durable returned.
void save_step(PersistenceManager& manager, int64_t step, int rank, int size, const std::string& markers) {
  const YAML::Node config = YAML::Load("{type: crash_net}");
  manager.save_model({.step = step, .name = "model", .config = config, .states = model_states(step, rank, size),
                      .dtype = std::nullopt, .blocking = true});
  if (rank == 0) record_completed(markers, step, "model");

  manager.save_model({.step = step, .name = "ema", .config = config, .states = model_states(step, rank, size),
                      .dtype = at::kBFloat16, .blocking = false});
  manager.save_optimizer({.step = step, .name = "optimizer", .states = optimizer_states(step), .dtype = std::nullopt,
                          .blocking = false});
  manager.wait();
  if (rank == 0) {
    record_completed(markers, step, "ema");
    record_completed(markers, step, "optimizer");
  }
  manager.commit();
}

int run_save(const std::string& mode, const std::string& root, const std::string& markers, int64_t steps, int rank,
             int size) {
  ManagerOptions options;
  options.registry_dir = markers + "/registry";
  int64_t first = 1;
  int64_t last = steps;
  if (mode == "retention-setup") last = kRetentionSetupSteps;
  if (mode == "retention") {
    options.keep_last = kKeepLast;
    options.keep_every = kKeepEvery;
    first = kRetentionStep;
    last = kRetentionStep;
  }
  PersistenceManager manager(root, options);
  for (int64_t step = first; step <= last; ++step) save_step(manager, step, rank, size, markers);
  manager.close();
  return 0;
}

// ---------------------------------------------------------------------------
// Verify job

// Failures found in one directory; every message names the step and the key.
struct Verdict {
  std::vector<std::string> failures;

  void fail(const std::string& message) { failures.push_back(message); }
};

std::string where_step(const std::string& name, int64_t step) {
  return "'" + name + "' at step " + std::to_string(step);
}

void check_states(Verdict& verdict, const std::string& name, int64_t step, const TensorDict& loaded) {
  const TensorDict expected = expected_states(name, step);
  for (const auto& [key, tensor] : expected) {
    const auto found = loaded.find(key);
    if (found == loaded.end()) {
      verdict.fail(where_step(name, step) + ": key '" + key + "' is missing");
      continue;
    }
    const auto equal = persistence::testing::bitwise_equal(tensor, found->second);
    if (!equal) verdict.fail(where_step(name, step) + ", key '" + key + "': " + equal.message());
  }
  for (const auto& [key, tensor] : loaded) {
    if (expected.count(key) == 0) verdict.fail(where_step(name, step) + ": unexpected key '" + key + "'");
  }
}

std::string states_group(const std::string& name) {
  return name == "optimizer" ? "/optimizers/" + name + "/states" : "/models/" + name + "/states";
}

// Loads one save from a step file with checksum verification and checks every
// value; a failure to load is a verdict failure.
void check_save(Verdict& verdict, const std::string& root, int64_t step, const std::string& name) {
  try {
    const PersistedStates states{step_path(root, step), states_group(name), true, MPI_COMM_SELF};
    check_states(verdict, name, step, states.load(at::kCPU));
  } catch (const std::exception& error) {
    verdict.fail(where_step(name, step) + " does not load: " + error.what());
  }
}

// The saves of one step file: the names whose states group exists. Any error
// other than a missing group propagates.
std::set<std::string> names_in_file(const std::string& path) {
  std::set<std::string> names;
  for (const std::string& name : kNames) {
    try {
      PersistedStates{path, states_group(name), true, MPI_COMM_SELF}.keys();
      names.insert(name);
    } catch (const NotFoundError&) {
    }
  }
  return names;
}

std::set<std::string> names_in(const ResumeState& resume) {
  std::set<std::string> names;
  for (const auto& [name, model] : resume.models) names.insert(name);
  for (const auto& [name, optimizer] : resume.optimizers) names.insert(name);
  return names;
}

// The saves recorded in MARKERS/completed, in the order they completed.
std::vector<std::pair<int64_t, std::string>> read_completed(const std::string& markers) {
  std::vector<std::pair<int64_t, std::string>> completed;
  std::ifstream in(markers + "/completed");
  int64_t step = 0;
  std::string name;
  while (in >> step >> name) completed.emplace_back(step, name);
  return completed;
}

std::set<int64_t> final_steps(const std::string& root) {
  std::set<int64_t> steps;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string file = entry.path().filename().string();
    for (int64_t step = 1; step <= kRetentionStep; ++step) {
      if (file == persistence::testing::step_file_name(step)) steps.insert(step);
    }
  }
  return steps;
}

// load_last_step must return the step of the newest completed save, or a
// newer step, with every save of that step complete and correct.
void check_resume(Verdict& verdict, const std::optional<ResumeState>& resume,
                  const std::vector<std::pair<int64_t, std::string>>& completed) {
  if (!resume) {
    if (!completed.empty()) {
      verdict.fail("load_last_step found no step, but the save " + where_step(completed.back().second,
                                                                               completed.back().first) +
                   " had completed");
    }
    return;
  }
  if (!completed.empty()) {
    const int64_t newest = completed.back().first;
    if (resume->step < newest) {
      verdict.fail("load_last_step returned step " + std::to_string(resume->step) + ", older than step " +
                   std::to_string(newest) + " of the newest completed save");
    }
    const std::set<std::string> present = names_in(*resume);
    for (const auto& [step, name] : completed) {
      if (step == resume->step && present.count(name) == 0) {
        verdict.fail("load_last_step returned step " + std::to_string(step) + " without '" + name +
                     "', whose save had completed");
      }
    }
  }
  for (const auto& [name, model] : resume->models) check_states(verdict, name, resume->step, model.states.load(at::kCPU));
  for (const auto& [name, optimizer] : resume->optimizers) {
    check_states(verdict, name, resume->step, optimizer.states.load(at::kCPU));
  }
}

// Every file under a final step name contains only whole, correct saves.
void check_final_files(Verdict& verdict, const std::string& root) {
  for (int64_t step : final_steps(root)) {
    std::set<std::string> names;
    try {
      names = names_in_file(step_path(root, step));
    } catch (const std::exception& error) {
      verdict.fail("the final file of step " + std::to_string(step) + " does not open: " + error.what());
      continue;
    }
    for (const std::string& name : names) check_save(verdict, root, step, name);
  }
}

// Retention may remove steps 1 and 3 only. It may remove them only after every
// save of step 5 completed and loads with verified checksums.
void check_retention(Verdict& verdict, const std::string& root,
                     const std::vector<std::pair<int64_t, std::string>>& completed) {
  const std::set<int64_t> present = final_steps(root);
  bool removed_any = false;
  for (int64_t step = 1; step <= kRetentionSetupSteps; ++step) {
    if (present.count(step) != 0) continue;
    removed_any = true;
    if (kRemovedByRetention.count(step) == 0) {
      verdict.fail("retention removed step " + std::to_string(step) + ", which keep_every " +
                   std::to_string(kKeepEvery) + " keeps");
    }
  }
  if (!removed_any) return;

  for (const std::string& name : kNames) {
    const bool recorded = std::find(completed.begin(), completed.end(), std::make_pair(kRetentionStep, name)) !=
                          completed.end();
    if (!recorded) {
      verdict.fail("an old step was removed before the save " + where_step(name, kRetentionStep) + " completed");
    }
    if (present.count(kRetentionStep) == 0) {
      verdict.fail("an old step was removed, but step " + std::to_string(kRetentionStep) + " is not committed");
      return;
    }
    check_save(verdict, root, kRetentionStep, name);
  }
}

// Checks one kill directory and returns the summary line of rank 0.
std::string verify_directory(Verdict& verdict, const std::string& kind, const std::string& dir) {
  const std::string root = dir + "/root";
  const std::string markers = dir + "/markers";
  const auto completed = read_completed(markers);

  ManagerOptions options;
  options.registry_dir = markers + "/verify-registry";
  PersistenceManager manager(root, options);
  const std::optional<ResumeState> resume = manager.load_last_step();
  check_resume(verdict, resume, completed);

  // Every completed save stays loadable, except in steps retention removed.
  const std::set<int64_t> present = final_steps(root);
  for (const auto& [step, name] : completed) {
    const bool removable = kind == "retention" && kRemovedByRetention.count(step) != 0;
    if (removable && present.count(step) == 0) continue;
    check_save(verdict, root, step, name);
  }
  check_final_files(verdict, root);
  if (kind == "retention") check_retention(verdict, root, completed);
  manager.close();

  std::ostringstream summary;
  summary << "newest completed ";
  if (completed.empty()) {
    summary << "none";
  } else {
    summary << where_step(completed.back().second, completed.back().first);
  }
  summary << "; loaded ";
  if (resume) {
    summary << "step " << resume->step << " with";
    for (const std::string& name : names_in(*resume)) summary << " " << name;
  } else {
    summary << "nothing";
  }
  summary << "; final steps";
  for (int64_t step : present) summary << " " << step;
  return summary.str();
}

int run_verify(const std::string& kind, const std::vector<std::string>& dirs, int rank) {
  int failed = 0;
  for (const std::string& dir : dirs) {
    Verdict verdict;
    std::string summary;
    try {
      summary = verify_directory(verdict, kind, dir);
    } catch (const std::exception& error) {
      verdict.fail(std::string("exception: ") + error.what());
    }
    const std::string label = fs::path(dir).filename().string();
    for (const std::string& failure : verdict.failures) {
      std::cout << "[rank " << rank << "] " << label << " FAILED: " << failure << "\n";
    }
    if (rank == 0 && verdict.failures.empty()) std::cout << label << " ok: " << summary << "\n";
    if (!verdict.failures.empty()) ++failed;
  }
  std::cout.flush();
  return failed == 0 ? 0 : 1;
}

void print_usage() {
  std::cerr << "usage: crash_saver save ROOT MARKERS STEPS\n"
               "       crash_saver retention-setup|retention ROOT MARKERS\n"
               "       crash_saver verify random|retention DIR...\n";
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  const std::vector<std::string> args(argv + 1, argv + argc);
  const std::string mode = args.empty() ? "" : args[0];
  const bool save_mode = mode == "save" || mode == "retention-setup" || mode == "retention";
  const bool valid = (mode == "save" && args.size() == 4) || (save_mode && mode != "save" && args.size() == 3) ||
                     (mode == "verify" && args.size() >= 3 && (args[1] == "random" || args[1] == "retention"));
  if (!valid) {
    if (rank == 0) print_usage();
    MPI_Finalize();
    return 2;
  }

  int status = 0;
  if (save_mode) {
    const std::string& markers = args[2];
    std::ofstream(markers + "/pid." + std::to_string(rank)) << ::getpid();
    try {
      const int64_t steps = mode == "save" ? std::stoll(args[3]) : 0;
      status = run_save(mode, args[1], markers, steps, rank, size);
    } catch (const std::exception& error) {
      std::cerr << "[rank " << rank << "] save failed: " << error.what() << "\n";
      status = 1;
    }
  } else {
    status = run_verify(args[1], std::vector<std::string>(args.begin() + 2, args.end()), rank);
  }
  MPI_Finalize();
  return status;
}
