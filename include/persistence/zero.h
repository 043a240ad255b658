// ZeroRedundancyOptimizer: ZeRO stage 1 for libtorch. Parameters and
// gradients stay replicated on every rank, but the optimizer state is split
// over the ranks of a communicator, so each rank keeps state only for its
// share of the parameters.
#pragma once

#include <persistence/module_states.h>
#include <persistence/persisted.h>
#include <persistence/state_dict.h>

#include <ATen/core/Tensor.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}

namespace persistence {

// Builds the optimizer that updates the tensors one rank owns, for example
//   [](std::vector<at::Tensor> p) { return std::make_unique<torch::optim::Adam>(p, AdamOptions(1e-3)); }
// The factory must put every tensor it receives into one parameter group, and
// it is called even when a rank owns no elements (with an empty vector).
using OptimizerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor> parameters)>;

struct ZeroOptions {
  // Communicator that the ranks sharing the optimizer state belong to. The
  // optimizer works on its own duplicate.
  MPI_Comm comm = MPI_COMM_WORLD;

  // Optional split of the flat parameter space: world size + 1 non-decreasing
  // element offsets from 0 to the total element count; rank r owns
  // [partition[r], partition[r + 1]). Empty: balanced, rank r owns
  // [n * r / world size, n * (r + 1) / world size).
  std::vector<int64_t> partition;
};

// Shards the state of any torch::optim optimizer over the ranks of a
// communicator. The module's parameters, taken in registration order and
// flattened row-major, form one flat parameter space. Each rank owns one
// contiguous range of it, so a parameter may straddle ranks. For each
// parameter that meets its range, a rank keeps a flat copy of the overlap,
// and the inner optimizer updates these copies. step() then exchanges the
// updated ranges, so every rank ends with the full parameters.
//
// All parameters must be contiguous CPU tensors of one floating dtype. The
// object keeps handles to the parameters taken at construction, so it does
// not need the module to stay alive. Not thread-safe. Methods marked
// collective must be called by every rank of the communicator, in the same
// order.
class ZeroRedundancyOptimizer {
 public:
  // Collective. Checks that every rank passes the same parameter names,
  // shapes, dtype and partition, then builds the inner optimizer over this
  // rank's range. Throws InvalidArgumentError or CollectiveError, the same on
  // every rank.
  ZeroRedundancyOptimizer(torch::nn::Module& module, OptimizerFactory factory, ZeroOptions options = {});
  ~ZeroRedundancyOptimizer();

  ZeroRedundancyOptimizer(ZeroRedundancyOptimizer&&) noexcept;
  ZeroRedundancyOptimizer& operator=(ZeroRedundancyOptimizer&&) noexcept;
  ZeroRedundancyOptimizer(const ZeroRedundancyOptimizer&) = delete;
  ZeroRedundancyOptimizer& operator=(const ZeroRedundancyOptimizer&) = delete;

  // Collective. Replaces every parameter's gradient by its mean over the
  // ranks, as data-parallel training does after backward. A gradient that is
  // undefined on some ranks counts as zeros there.
  void average_gradients();

  // Collective. Copies the current parameter values and gradients of this
  // rank's range into the inner optimizer's tensors, steps it, and
  // all-gathers the updated ranges into every rank's parameters. Gradients
  // must already agree across ranks (see average_gradients).
  void step();

  // Zeros the gradients of the module's parameters. Local.
  void zero_grad();

  // Optimizer that updates this rank's range, as the factory built it.
  torch::optim::Optimizer& inner();

  // This rank's range of the flat parameter space (possibly empty).
  FlatRange range() const;

  // Element count of the flat parameter space.
  int64_t numel() const;

  // Parameter names in flattening order, with wrapper prefixes stripped as
  // get_model_states strips them.
  std::vector<std::string> parameter_names() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;

  friend OptimizerStates get_optimizer_states(ZeroRedundancyOptimizer& optimizer);
  friend void set_optimizer_states(ZeroRedundancyOptimizer& optimizer, const PersistedStates& states,
                                   const YAML::Node& param_groups);
};

// Collective. Returns the optimizer's state keyed "<parameter name>/<state
// key>". Per-element states (exp_avg, momentum_buffer, ...) are sharded
// tensors of the parameter's shape holding this rank's part as a flat range.
// Scalar states such as step are full 0-d tensors that must agree across
// ranks. param_groups has one group: the inner optimizer's options and every
// parameter name, so an unsharded optimizer over the same module can load it.
OptimizerStates get_optimizer_states(ZeroRedundancyOptimizer& optimizer);

// Collective. Restores the state that get_optimizer_states saved, or that an
// unsharded optimizer with one group over the same module saved, at any world
// size: each rank reads only its own range. Throws StateMismatchError naming
// the key when the saved parameters, shapes or optimizer type do not match.
void set_optimizer_states(ZeroRedundancyOptimizer& optimizer, const PersistedStates& states,
                          const YAML::Node& param_groups);

}  // namespace persistence
