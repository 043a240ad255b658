// The training states the benchmarks save and load: a transformer-shaped model
// with AdamW moments sharded ZeRO-style, and a state of many small tensors.
// The shapes are also written as JSON so that the Python reference scripts
// build exactly the same tensors.
#pragma once

#include <persistence/module_states.h>
#include <persistence/state_dict.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace persistence::bench {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;

  int64_t numel() const;
};

// A 12-layer GPT-2-style model: token and position embeddings, per layer the
// attention (fused qkv and output projection), the MLP (4x expansion) and two
// layer norms, then a final norm. At scale 1 the hidden size is 1200 and the
// vocabulary 50257 words, about 1.0 GiB of float32 parameters. Scale s
// multiplies both by sqrt(s), so the byte count shrinks by about s while the
// tensor count and the mix of large and small tensors stay the same.
std::vector<TensorSpec> transformer_parameters(double scale);

// Returns count float32 tensors of 1 to 8 KiB, alternately 1-D and 2-D, named like
// the parameters of a deep model built from small blocks.
std::vector<TensorSpec> small_tensors(int count);

// Total float32 bytes of specs.
uint64_t float_bytes(const std::vector<TensorSpec>& specs);

// Elements [begin, end) of a tensor with numel elements that rank owns when
// each tensor is split evenly over size ranks, as ZeRO shards every moment.
FlatRange even_share(int64_t numel, int rank, int size);

// Full float32 tensors of the given shapes with values from a fixed seed, so
// every rank holds the same copy (replicated parameters).
StateDict replicated_tensors(const std::vector<TensorSpec>& specs);

// AdamW state of the given parameters: exp_avg and exp_avg_sq sharded evenly
// over size ranks (this rank's flat range of each), and a replicated 0-d step.
OptimizerStates sharded_adamw_states(const std::vector<TensorSpec>& specs, int rank, int size);

// Bytes this rank holds in states, counting full tensors and its shards.
uint64_t local_bytes(const StateDict& states);

// Global bytes of states: full tensors once, sharded tensors at their global size.
uint64_t global_bytes(const StateDict& states);

// Shapes and sharding of a workload for the Python reference scripts.
nlohmann::json describe(const std::string& workload, const std::vector<TensorSpec>& parameters, bool with_moments);

}  // namespace persistence::bench
