#include "suites.h"

#include "workloads.h"

#include "format/checksum.h"

#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include <unistd.h>

namespace persistence::bench {
namespace {

constexpr int64_t kStep = 1;
constexpr const char* kModelGroup = "/models/model/states";
constexpr const char* kOptimizerGroup = "/optimizers/optimizer/states";

// Full tensors below this size are checksummed and written whole by one rank.
constexpr uint64_t kSmallTensorBytes = uint64_t{4} << 20;

struct Transformer {
  std::vector<TensorSpec> specs;
  StateDict parameters;
  OptimizerStates optimizer;
};

Transformer make_transformer(double scale) {
  Transformer model;
  model.specs = transformer_parameters(scale);
  model.parameters = replicated_tensors(model.specs);
  model.optimizer = sharded_adamw_states(model.specs, world_rank(), world_size());
  return model;
}

std::string step_path(const std::string& root, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%012lld.h5", static_cast<long long>(step));
  return root + "/" + name;
}

ManagerOptions manager_options(const SuiteSettings& settings) {
  ManagerOptions options;
  // A registry below the scratch directory keeps benchmark tasks out of the user's registry.
  options.registry_dir = settings.dir + "/registry";
  return options;
}

SaveModelRequest model_request(int64_t step, const StateDict& states, bool blocking) {
  SaveModelRequest request;
  request.step = step;
  request.name = "model";
  request.states = states;
  request.blocking = blocking;
  return request;
}

SaveOptimizerRequest optimizer_request(int64_t step, const OptimizerStates& states, bool blocking) {
  SaveOptimizerRequest request;
  request.step = step;
  request.name = "optimizer";
  request.states = states;
  request.blocking = blocking;
  return request;
}

nlohmann::json measurement(const char* workload, const char* operation, int run, uint64_t bytes, double seconds) {
  return {{"workload", workload}, {"system", "persistence"}, {"operation", operation},
          {"run", run},           {"bytes", bytes},          {"seconds", seconds}};
}

// Collective. Returns the seconds that work takes on the slowest rank.
template <typename Work>
double timed(Work&& work) {
  double start = synchronized_now();
  work();
  return synchronized_now() - start;
}

PersistedStates stored_states(const std::string& path, const char* group, bool verify) {
  return PersistedStates{path, group, verify, MPI_COMM_WORLD};
}

bool prepare_cold_read(const SuiteSettings& settings) { return settings.drop_caches && drop_page_cache(); }

uint64_t checksum_tensor_share(const at::Tensor& tensor, size_t key_index) {
  const int rank = world_rank();
  const int size = world_size();
  const auto* bytes = static_cast<const char*>(tensor.data_ptr());
  const auto total = static_cast<uint64_t>(tensor.nbytes());
  if (total < kSmallTensorBytes) {
    return key_index % static_cast<size_t>(size) == static_cast<size_t>(rank)
               ? detail::checksum_piece(bytes, 0, total)
               : 0;
  }
  FlatRange share = even_share(tensor.numel(), rank, size);
  auto element = static_cast<uint64_t>(tensor.element_size());
  auto offset = static_cast<uint64_t>(share.begin) * element;
  return detail::checksum_piece(bytes + offset, offset, static_cast<uint64_t>(share.end - share.begin) * element);
}

// Checksums the bytes that this rank checksums when it saves states: its
// shards, and its share of the full tensors, split as the library splits writes.
uint64_t checksum_save_share(const StateDict& states) {
  uint64_t sum = 0;
  size_t index = 0;
  for (const auto& [key, value] : states) {
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      sum += checksum_tensor_share(*tensor, index++);
      continue;
    }
    ++index;
    for (const auto& shard : std::get<ShardedTensor>(value).shards()) {
      auto element = static_cast<uint64_t>(shard.data.element_size());
      auto offset = static_cast<uint64_t>(std::get<FlatRange>(shard.region).begin) * element;
      sum += detail::checksum_piece(shard.data.data_ptr(), offset, static_cast<uint64_t>(shard.data.nbytes()));
    }
  }
  return sum;
}

// Collective. Times the checksum part of a save of the transformer on its own.
void record_checksum_cost(const Transformer& model, const SuiteSettings& settings, Recorder& recorder) {
  uint64_t bytes = global_bytes(model.parameters) + global_bytes(model.optimizer.states);
  for (int run = 0; run < settings.runs; ++run) {
    volatile uint64_t sink = 0;
    auto start = std::chrono::steady_clock::now();
    sink = sink + checksum_save_share(model.parameters) + checksum_save_share(model.optimizer.states);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    auto record = measurement("transformer", "checksum_on_save", run, bytes, max_over_ranks(seconds));
    record["system"] = "checksum";
    recorder.record(record);
  }
}

void save_transformer(const Transformer& model, const std::string& root, int run, const SuiteSettings& settings,
                      Recorder& recorder) {
  PersistenceManager manager(root, manager_options(settings));
  double model_seconds = timed([&] {
    manager.save_model(model_request(kStep, model.parameters, true));
  });
  double optimizer_seconds = timed([&] {
    manager.save_optimizer(optimizer_request(kStep, model.optimizer, true));
  });
  manager.close();

  uint64_t parameter_bytes = global_bytes(model.parameters);
  uint64_t moment_bytes = global_bytes(model.optimizer.states);
  recorder.record(measurement("transformer", "save_model", run, parameter_bytes, model_seconds));
  recorder.record(measurement("transformer", "save_optimizer", run, moment_bytes, optimizer_seconds));
  recorder.record(
      measurement("transformer", "save", run, parameter_bytes + moment_bytes, model_seconds + optimizer_seconds));
}

void load_transformer(Transformer& model, const std::string& root, int run, const SuiteSettings& settings,
                      Recorder& recorder) {
  const std::string path = step_path(root, kStep);
  uint64_t parameter_bytes = global_bytes(model.parameters);
  uint64_t moment_bytes = global_bytes(model.optimizer.states);

  // The order alternates between runs, so a drift in machine load favours neither setting.
  std::vector<bool> order = run % 2 == 0 ? std::vector<bool>{true, false} : std::vector<bool>{false, true};
  for (bool verify : order) {
    bool cold = prepare_cold_read(settings);
    double model_seconds = timed([&] { stored_states(path, kModelGroup, verify).load_into(model.parameters); });
    double optimizer_seconds =
        timed([&] { stored_states(path, kOptimizerGroup, verify).load_into(model.optimizer.states); });

    nlohmann::json tags = {{"checksums", verify}, {"cold_cache", cold}};
    for (auto record : {measurement("transformer", "load_model", run, parameter_bytes, model_seconds),
                        measurement("transformer", "load_optimizer", run, moment_bytes, optimizer_seconds),
                        measurement("transformer", "load", run, parameter_bytes + moment_bytes,
                                    model_seconds + optimizer_seconds)}) {
      record.update(tags);
      recorder.record(record);
    }
  }
}

// load_last_step verifies every checksum of the newest step before it returns it.
void time_resume_scan(const Transformer& model, const std::string& root, int run, const SuiteSettings& settings,
                      Recorder& recorder) {
  PersistenceManager manager(root, manager_options(settings));
  bool cold = prepare_cold_read(settings);
  double seconds = timed([&] { manager.load_last_step(); });
  auto record = measurement("transformer", "resume_scan", run,
                            global_bytes(model.parameters) + global_bytes(model.optimizer.states), seconds);
  record["cold_cache"] = cold;
  recorder.record(record);
}

// Collective. Copies the data of every tensor on this rank with memcpy into one
// preallocated buffer, as a bound on what a snapshot can cost.
void record_memcpy(const Transformer& model, const SuiteSettings& settings, Recorder& recorder) {
  std::vector<std::pair<const void*, size_t>> sources;
  auto add = [&](const StateDict& states) {
    for (const auto& [key, value] : states) {
      if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
        sources.emplace_back(tensor->data_ptr(), tensor->nbytes());
        continue;
      }
      for (const auto& shard : std::get<ShardedTensor>(value).shards()) {
        sources.emplace_back(shard.data.data_ptr(), shard.data.nbytes());
      }
    }
  };
  add(model.parameters);
  add(model.optimizer.states);
  size_t total = 0;
  for (const auto& source : sources) total += source.second;

  // Touched once before timing, as the library's staging memory is after its first save.
  std::unique_ptr<char[]> target(new char[total]);
  std::memset(target.get(), 1, total);
  for (int run = 0; run < settings.runs; ++run) {
    double seconds = timed([&] {
      size_t offset = 0;
      for (const auto& [data, bytes] : sources) {
        std::memcpy(target.get() + offset, data, bytes);
        offset += bytes;
      }
    });
    auto record = measurement("async", "memcpy", run, total, seconds);
    record["system"] = "memcpy";
    recorder.record(record);
  }
}

}  // namespace

void run_transformer(const SuiteSettings& settings, Recorder& recorder) {
  Transformer model = make_transformer(settings.scale);
  for (int run = 0; run < settings.runs; ++run) {
    std::string root = settings.dir + "/transformer_" + std::to_string(run);
    save_transformer(model, root, run, settings, recorder);
    load_transformer(model, root, run, settings, recorder);
    if (settings.resume_scan) time_resume_scan(model, root, run, settings, recorder);
    remove_tree(root);
  }
  record_checksum_cost(model, settings, recorder);
}

void run_small_tensors(const SuiteSettings& settings, Recorder& recorder) {
  StateDict states = replicated_tensors(small_tensors(settings.small_count));
  uint64_t bytes = global_bytes(states);
  for (int run = 0; run < settings.runs; ++run) {
    std::string root = settings.dir + "/small_" + std::to_string(run);
    {
      PersistenceManager manager(root, manager_options(settings));
      double seconds =
          timed([&] { manager.save_model(model_request(kStep, states, true)); });
      manager.close();
      recorder.record(measurement("small", "save", run, bytes, seconds));
    }
    bool cold = prepare_cold_read(settings);
    double seconds = timed([&] { stored_states(step_path(root, kStep), kModelGroup, true).load_into(states); });
    auto record = measurement("small", "load", run, bytes, seconds);
    record["cold_cache"] = cold;
    recorder.record(record);
    remove_tree(root);
  }
}

void run_reshard_save(const SuiteSettings& settings, Recorder& recorder) {
  OptimizerStates optimizer = sharded_adamw_states(transformer_parameters(settings.scale), world_rank(), world_size());
  std::string root = settings.dir + "/reshard";
  remove_tree(root);
  PersistenceManager manager(root, manager_options(settings));
  double seconds = timed([&] {
    manager.save_optimizer(optimizer_request(kStep, optimizer, true));
  });
  manager.close();
  recorder.record(measurement("reshard", "save", 0, global_bytes(optimizer.states), seconds));
}

void run_reshard_load(const SuiteSettings& settings, Recorder& recorder) {
  OptimizerStates optimizer = sharded_adamw_states(transformer_parameters(settings.scale), world_rank(), world_size());
  std::string path = step_path(settings.dir + "/reshard", kStep);
  uint64_t bytes = global_bytes(optimizer.states);
  for (int run = 0; run < settings.runs; ++run) {
    bool cold = prepare_cold_read(settings);
    double seconds = timed([&] { stored_states(path, kOptimizerGroup, true).load_into(optimizer.states); });
    auto record = measurement("reshard", "load", run, bytes, seconds);
    record["cold_cache"] = cold;
    record["saved_ranks"] = settings.saved_ranks;
    recorder.record(record);
  }
}

void run_async(const SuiteSettings& settings, Recorder& recorder) {
  Transformer model = make_transformer(settings.scale);
  uint64_t bytes = global_bytes(model.parameters) + global_bytes(model.optimizer.states);
  record_memcpy(model, settings, recorder);

  std::string root = settings.dir + "/async";
  PersistenceManager manager(root, manager_options(settings));
  // Run -1 is the first save, which also allocates and touches the staging memory.
  for (int run = -1; run < settings.runs; ++run) {
    const int64_t step = run + 2;
    double start = synchronized_now();
    manager.save_model(model_request(step, model.parameters, false));
    manager.save_optimizer(optimizer_request(step, model.optimizer, false));
    double returned = synchronized_now();
    manager.wait();
    double durable = synchronized_now();

    nlohmann::json tags = {{"staging", run < 0 ? "first save" : "reused"}};
    for (auto record : {measurement("async", "stall", run, bytes, returned - start),
                        measurement("async", "durable", run, bytes, durable - start)}) {
      record.update(tags);
      recorder.record(record);
    }
    // The step is complete and no later save reads it. Removing it keeps the disk use to one step.
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) std::filesystem::remove(step_path(root, step));
    // Kernel threads keep freeing (and, with the discard mount option,
    // discarding) the removed file's blocks for a while. The pause keeps that
    // work out of the next timed stall.
    ::sync();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    MPI_Barrier(MPI_COMM_WORLD);
  }
  manager.close();
  remove_tree(root);
}

}  // namespace persistence::bench
