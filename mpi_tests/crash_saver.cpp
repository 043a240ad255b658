// Helper program of the crash test, run under mpiexec.
//
//   crash_saver save ROOT MARKERS    saves step 1, then step 2 (model, ema,
//                                    optimizer), and writes a marker file in
//                                    MARKERS after each save returns; the test
//                                    kills it with SIGKILL during step 2.
//   crash_saver verify ROOT MARKERS  loads the newest step in a fresh process
//                                    and checks that it is step 1 or a step 2
//                                    that contains every save whose marker exists,
//                                    each with all keys and values right.
//
// Each rank writes MARKERS/pid.<rank> at start so the test can kill ranks by
// process id. The exit status is 0 when every check passed on this rank.

#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/scalar_tensor.h>
#include <mpi.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace persistence;
using persistence::testing::deterministic_tensor;

const std::vector<std::string> kNames = {"ema", "model", "optimizer"};

// Model states of a step: four tensors of 2 to 4 MiB, so a save takes long
// enough to be interrupted, and one tensor sharded across the ranks.
StateDict model_states(int64_t step, int rank, int size) {
  const double seed = static_cast<double>(step) * 100;
  StateDict states;
  states["embed.weight"] = deterministic_tensor({512, 1024}, at::kFloat, seed + 1);
  states["layer.weight"] = deterministic_tensor({1024, 1024}, at::kFloat, seed + 2);
  states["layer.bias"] = deterministic_tensor({1024}, at::kFloat, seed + 3);
  states["counter"] = at::scalar_tensor(step, at::kLong);

  constexpr int64_t kFlat = int64_t{1} << 20;
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
  tensors["embed.weight"] = deterministic_tensor({512, 1024}, at::kFloat, seed + 1);
  tensors["layer.weight"] = deterministic_tensor({1024, 1024}, at::kFloat, seed + 2);
  tensors["layer.bias"] = deterministic_tensor({1024}, at::kFloat, seed + 3);
  tensors["counter"] = at::scalar_tensor(step, at::kLong);
  tensors["flat"] = deterministic_tensor({int64_t{1} << 20}, at::kFloat, seed + 4);
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
  tensors["embed.weight/exp_avg"] = deterministic_tensor({512, 1024}, at::kFloat, seed + 1);
  tensors["embed.weight/exp_avg_sq"] = deterministic_tensor({512, 1024}, at::kFloat, seed + 2);
  tensors["layer.weight/exp_avg"] = deterministic_tensor({1024, 1024}, at::kFloat, seed + 3);
  tensors["layer.weight/exp_avg_sq"] = deterministic_tensor({1024, 1024}, at::kFloat, seed + 4);
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

void write_marker(const std::string& markers, const std::string& name, const std::string& content = {}) {
  const std::string temporary = markers + "/." + name;
  std::ofstream(temporary) << content;
  fs::rename(temporary, markers + "/" + name);
}

void save_step(PersistenceManager& manager, int64_t step, int rank, int size, const std::string& markers) {
  const std::string prefix = "step" + std::to_string(step) + "_";
  const YAML::Node config = YAML::Load("{type: crash_net}");
  manager.save_model({.step = step, .name = "model", .config = config, .states = model_states(step, rank, size),
                      .dtype = std::nullopt, .blocking = true});
  if (rank == 0) write_marker(markers, prefix + "model");
  manager.save_model({.step = step, .name = "ema", .config = config, .states = model_states(step, rank, size),
                      .dtype = at::kBFloat16, .blocking = true});
  if (rank == 0) write_marker(markers, prefix + "ema");
  manager.save_optimizer({.step = step, .name = "optimizer", .states = optimizer_states(step), .dtype = std::nullopt,
                          .blocking = true});
  if (rank == 0) write_marker(markers, prefix + "optimizer");
}

int run_save(const std::string& root, const std::string& markers, int rank, int size) {
  ManagerOptions options;
  options.registry_dir = markers + "/registry";
  PersistenceManager manager(root, options);
  save_step(manager, 1, rank, size, markers);
  manager.commit();

  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) write_marker(markers, "step2_started");
  const auto start = std::chrono::steady_clock::now();
  save_step(manager, 2, rank, size, markers);
  manager.commit();
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  if (rank == 0) write_marker(markers, "step2_committed", std::to_string(elapsed.count()));
  manager.close();
  return 0;
}

// Failures of one verify run. Every line names the step and the key.
struct Verdict {
  std::vector<std::string> failures;

  void fail(const std::string& message) { failures.push_back(message); }
};

void check_states(Verdict& verdict, const std::string& name, int64_t step, const TensorDict& loaded) {
  const TensorDict expected = expected_states(name, step);
  for (const auto& [key, tensor] : expected) {
    const auto found = loaded.find(key);
    if (found == loaded.end()) {
      verdict.fail(name + " at step " + std::to_string(step) + ": key '" + key + "' missing");
      continue;
    }
    const auto equal = persistence::testing::bitwise_equal(tensor, found->second);
    if (!equal) verdict.fail(name + " at step " + std::to_string(step) + ", key '" + key + "': " + equal.message());
  }
  for (const auto& [key, tensor] : loaded) {
    if (!expected.count(key)) verdict.fail(name + " at step " + std::to_string(step) + ": unexpected key '" + key + "'");
  }
}

std::set<std::string> names_in(const ResumeState& resume) {
  std::set<std::string> names;
  for (const auto& [name, model] : resume.models) names.insert(name);
  for (const auto& [name, optimizer] : resume.optimizers) names.insert(name);
  return names;
}

void verify_resume(Verdict& verdict, const ResumeState& resume, const std::string& markers) {
  if (resume.step != 1 && resume.step != 2) {
    verdict.fail("load_last_step returned step " + std::to_string(resume.step) + ", expected 1 or 2");
    return;
  }
  const std::set<std::string> present = names_in(resume);
  for (const std::string& name : kNames) {
    const bool completed = resume.step == 1 || fs::exists(markers + "/step2_" + name);
    if (completed && !present.count(name)) {
      verdict.fail("step " + std::to_string(resume.step) + " lacks '" + name + "', whose save had completed");
    }
  }
  if (resume.step == 1 && fs::exists(markers + "/step2_model")) {
    verdict.fail("load_last_step returned step 1 although the first save of step 2 had completed");
  }
  for (const auto& [name, model] : resume.models) check_states(verdict, name, resume.step, model.states.load(at::kCPU));
  for (const auto& [name, optimizer] : resume.optimizers) {
    check_states(verdict, name, resume.step, optimizer.states.load(at::kCPU));
  }
}

// Every step file under its final name must hold a complete, correct model,
// and step 1 its ema too, whatever happened to step 2.
void verify_final_files(Verdict& verdict, const std::string& root) {
  const std::regex pattern("step_([0-9]{12})\\.h5");
  for (const auto& entry : fs::directory_iterator(root)) {
    std::smatch match;
    const std::string file = entry.path().filename().string();
    if (!std::regex_match(file, match, pattern)) continue;
    const int64_t step = std::stoll(match[1].str());
    const std::vector<std::string> names =
        step == 1 ? std::vector<std::string>{"model", "ema"} : std::vector<std::string>{"model"};
    for (const std::string& name : names) {
      try {
        check_states(verdict, name, step, load_model_from_path(root, name, step).states.load(at::kCPU));
      } catch (const std::exception& error) {
        verdict.fail("'" + name + "' in final file " + file + " does not load: " + error.what());
      }
    }
  }
}

int run_verify(const std::string& root, const std::string& markers, int rank) {
  Verdict verdict;
  std::string summary;
  try {
    ManagerOptions options;
    options.registry_dir = markers + "/registry";
    PersistenceManager manager(root, options);
    const auto resume = manager.load_last_step();
    if (!resume) {
      verdict.fail("load_last_step found no step, but step 1 had completed");
    } else {
      verify_resume(verdict, *resume, markers);
      summary = "step " + std::to_string(resume->step) + " with";
      for (const std::string& name : names_in(*resume)) summary += " " + name;
    }
    verify_final_files(verdict, root);
  } catch (const std::exception& error) {
    verdict.fail(std::string("exception: ") + error.what());
  }

  for (const std::string& failure : verdict.failures) std::cout << "[rank " << rank << "] FAILED: " << failure << "\n";
  if (rank == 0 && verdict.failures.empty()) std::cout << "loaded " << summary << "\n";
  std::cout.flush();
  return verdict.failures.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  int size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (argc != 4 || (std::string(argv[1]) != "save" && std::string(argv[1]) != "verify")) {
    if (rank == 0) std::cerr << "usage: crash_saver save|verify ROOT MARKERS\n";
    MPI_Finalize();
    return 2;
  }
  const std::string mode = argv[1];
  const std::string root = argv[2];
  const std::string markers = argv[3];

  int status = 0;
  if (mode == "save") {
    std::ofstream(markers + "/pid." + std::to_string(rank)) << ::getpid();
    try {
      status = run_save(root, markers, rank, size);
    } catch (const std::exception& error) {
      std::cerr << "[rank " << rank << "] save failed: " << error.what() << "\n";
      status = 1;
    }
  } else {
    status = run_verify(root, markers, rank);
  }
  MPI_Finalize();
  return status;
}
