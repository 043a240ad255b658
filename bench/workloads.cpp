#include "workloads.h"

#include <ATen/ops/rand.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace persistence::bench {
namespace {

constexpr int kLayers = 12;
constexpr int64_t kFullHidden = 1200;
constexpr int64_t kFullVocabulary = 50257;
constexpr int64_t kPositions = 1024;
constexpr uint64_t kSeed = 20240601;

// Rounds to a multiple of 8, as hidden sizes are in practice.
int64_t round_to_8(double value) { return std::max<int64_t>(8, static_cast<int64_t>(std::lround(value / 8.0)) * 8); }

void add_layer(std::vector<TensorSpec>& specs, int layer, int64_t d) {
  std::string prefix = "h." + std::to_string(layer) + ".";
  specs.push_back({prefix + "ln_1.weight", {d}});
  specs.push_back({prefix + "ln_1.bias", {d}});
  specs.push_back({prefix + "attn.c_attn.weight", {3 * d, d}});
  specs.push_back({prefix + "attn.c_attn.bias", {3 * d}});
  specs.push_back({prefix + "attn.c_proj.weight", {d, d}});
  specs.push_back({prefix + "attn.c_proj.bias", {d}});
  specs.push_back({prefix + "ln_2.weight", {d}});
  specs.push_back({prefix + "ln_2.bias", {d}});
  specs.push_back({prefix + "mlp.c_fc.weight", {4 * d, d}});
  specs.push_back({prefix + "mlp.c_fc.bias", {4 * d}});
  specs.push_back({prefix + "mlp.c_proj.weight", {d, 4 * d}});
  specs.push_back({prefix + "mlp.c_proj.bias", {d}});
}

at::Tensor random_tensor(at::IntArrayRef shape, at::Generator& generator) {
  return at::rand(shape, generator, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t count = 1;
  for (int64_t size : shape) count *= size;
  return count;
}

std::vector<TensorSpec> transformer_parameters(double scale) {
  const double width = std::sqrt(scale);
  const int64_t d = round_to_8(static_cast<double>(kFullHidden) * width);
  const auto vocabulary = static_cast<int64_t>(std::lround(static_cast<double>(kFullVocabulary) * width));

  std::vector<TensorSpec> specs;
  specs.push_back({"wte.weight", {vocabulary, d}});
  specs.push_back({"wpe.weight", {kPositions, d}});
  for (int layer = 0; layer < kLayers; ++layer) add_layer(specs, layer, d);
  specs.push_back({"ln_f.weight", {d}});
  specs.push_back({"ln_f.bias", {d}});
  return specs;
}

std::vector<TensorSpec> small_tensors(int count) {
  std::vector<TensorSpec> specs;
  specs.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    // 256 to 2048 float32 elements: 1 to 8 KiB, 4.5 KiB on average.
    int64_t numel = 256 * (1 + (i * 5) % 8);
    std::string name = "blocks." + std::to_string(i / 8) + ".unit" + std::to_string(i % 8) + ".weight";
    if (i % 2 == 0) {
      specs.push_back({name, {numel}});
    } else {
      specs.push_back({name, {16, numel / 16}});
    }
  }
  return specs;
}

uint64_t float_bytes(const std::vector<TensorSpec>& specs) {
  uint64_t bytes = 0;
  for (const auto& spec : specs) bytes += static_cast<uint64_t>(spec.numel()) * sizeof(float);
  return bytes;
}

FlatRange even_share(int64_t numel, int rank, int size) {
  return FlatRange{numel * rank / size, numel * (rank + 1) / size};
}

StateDict replicated_tensors(const std::vector<TensorSpec>& specs) {
  // The same seed on every rank gives every rank the same values, as data parallel training keeps them.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(kSeed);
  StateDict states;
  for (const auto& spec : specs) states.emplace(spec.name, random_tensor(spec.shape, generator));
  return states;
}

OptimizerStates sharded_adamw_states(const std::vector<TensorSpec>& specs, int rank, int size) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(kSeed + 1 + static_cast<uint64_t>(rank));
  OptimizerStates optimizer;
  YAML::Node names;
  for (const auto& spec : specs) {
    FlatRange share = even_share(spec.numel(), rank, size);
    for (const char* moment : {"exp_avg", "exp_avg_sq"}) {
      ShardedTensor sharded(spec.shape, at::kFloat);
      sharded.add_flat(random_tensor({share.end - share.begin}, generator), share.begin);
      optimizer.states.emplace(spec.name + "/" + moment, std::move(sharded));
    }
    optimizer.states.emplace(spec.name + "/step", at::scalar_tensor(1000.0, at::kFloat));
    names.push_back(spec.name);
  }
  YAML::Node group;
  group["lr"] = 3e-4;
  group["betas"].push_back(0.9);
  group["betas"].push_back(0.95);
  group["weight_decay"] = 0.1;
  group["params"] = names;
  optimizer.param_groups.push_back(group);
  return optimizer;
}

uint64_t local_bytes(const StateDict& states) {
  uint64_t bytes = 0;
  for (const auto& [key, value] : states) {
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      bytes += static_cast<uint64_t>(tensor->nbytes());
      continue;
    }
    for (const auto& shard : std::get<ShardedTensor>(value).shards()) bytes += static_cast<uint64_t>(shard.data.nbytes());
  }
  return bytes;
}

uint64_t global_bytes(const StateDict& states) {
  uint64_t bytes = 0;
  for (const auto& [key, value] : states) {
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      bytes += static_cast<uint64_t>(tensor->nbytes());
      continue;
    }
    const auto& sharded = std::get<ShardedTensor>(value);
    bytes += static_cast<uint64_t>(sharded.global_numel()) * c10::elementSize(sharded.dtype());
  }
  return bytes;
}

nlohmann::json describe(const std::string& workload, const std::vector<TensorSpec>& parameters, bool with_moments) {
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& spec : parameters) tensors.push_back({{"name", spec.name}, {"shape", spec.shape}});
  return {{"workload", workload},
          {"dtype", "float32"},
          {"parameters", tensors},
          {"moments", with_moments ? nlohmann::json::array({"exp_avg", "exp_avg_sq"}) : nlohmann::json::array()},
          {"moment_sharding", "each moment split evenly by flat element range: rank r of P holds "
                              "[numel*r/P, numel*(r+1)/P)"},
          {"scalar_states", with_moments ? nlohmann::json::array({"step"}) : nlohmann::json::array()}};
}

}  // namespace persistence::bench
