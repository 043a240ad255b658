// FlatParameter: the parameter sharding that fully sharded data parallel
// (FSDP) uses, for libtorch modules. Each rank keeps only its shard of the
// flattened parameters as the optimizer's parameter, and gathers the full
// parameters for forward and backward.
#pragma once

#include <persistence/module_states.h>
#include <persistence/persisted.h>
#include <persistence/state_dict.h>

#include <ATen/core/Tensor.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
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

// A module's parameters, in registration order, flattened row-major into one
// buffer, padded with zeros to a multiple of the world size and split evenly:
// rank r keeps elements [r * s, (r + 1) * s) as its shard, where s is the
// padded size divided by the world size. A training step is
//
//   flat.gather();                      // the module's parameters get full values
//   loss = forward(module); loss.backward();
//   flat.reduce_scatter_gradients();    // shard().grad() = mean of this rank's part
//   optimizer.step();                   // an optimizer over {flat.shard()}
//   module.zero_grad();
//
// All parameters must be contiguous CPU tensors of one floating dtype. The
// object keeps handles to the module's parameters and buffers taken at
// construction. Not thread-safe. Methods marked collective must be called by
// every rank of the communicator, in the same order.
//
// NOTE: the full parameters stay in the module between steps; freeing them
// after forward, as FSDP does to save memory, is left to the caller.
class FlatParameter {
 public:
  // Collective over comm, which the object duplicates. Checks that every rank
  // passes the same parameter names, shapes and dtype, and fills this rank's
  // shard from the module's current values, which must agree across ranks.
  explicit FlatParameter(torch::nn::Module& module, MPI_Comm comm = MPI_COMM_WORLD);
  ~FlatParameter();

  FlatParameter(FlatParameter&&) noexcept;
  FlatParameter& operator=(FlatParameter&&) noexcept;
  FlatParameter(const FlatParameter&) = delete;
  FlatParameter& operator=(const FlatParameter&) = delete;

  // This rank's shard: a 1-D leaf tensor of shard_range() size that requires
  // grad. Pass it to a torch::optim optimizer, which then updates it in place.
  at::Tensor shard() const;

  // Collective. All-gathers the shards and copies the full values into the
  // module's parameters.
  void gather();

  // Collective. Sums the parameters' gradients over the ranks, divides by the
  // world size, and sets shard().grad() to this rank's part. Undefined
  // gradients and the padding count as zeros.
  void reduce_scatter_gradients();

  // Copies this rank's part of the module's current parameter values into the
  // shard, for example after the caller has loaded full parameters into the
  // module. Local.
  void copy_from_module();

  // Element count of the parameters without padding.
  int64_t numel() const;

  // Element count with padding: a multiple of the world size.
  int64_t padded_numel() const;

  // This rank's elements of the padded flat buffer.
  FlatRange shard_range() const;

  // Parameter names in flattening order, with wrapper prefixes stripped as
  // get_model_states strips them.
  std::vector<std::string> parameter_names() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;

  friend StateDict get_model_states(FlatParameter& flat);
  friend void set_model_states(FlatParameter& flat, const PersistedStates& states);
  friend OptimizerStates get_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat);
  friend void set_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat,
                                        const PersistedStates& states, const YAML::Node& param_groups);
};

// Returns the module's states by parameter and buffer name: each parameter as
// a sharded tensor of its own shape that contains the part of this rank's shard
// inside it (the padding is never included), and each buffer as a full
// tensor. The pieces are views of the shard. Local.
StateDict get_model_states(FlatParameter& flat);

// Collective. Reads every parameter's part of this rank's shard and every
// buffer from states, whatever world size saved them, then gathers the full
// parameters into the module. Throws StateMismatchError naming the key when
// a name is missing from states or its shape differs.
void set_model_states(FlatParameter& flat, const PersistedStates& states);

// Collective. Returns the state of an optimizer whose only parameter is
// flat.shard(), split per parameter: keys "<parameter name>/<state key>",
// per-element states as sharded tensors of the parameter's shape, scalar
// states such as step as full 0-d tensors. param_groups has one group with
// the optimizer's options and every parameter name, so an unsharded optimizer
// over the module can load it.
OptimizerStates get_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat);

// Collective. Restores into an optimizer over flat.shard() the state that
// get_fsdp_optimizer_states saved, or that an unsharded optimizer with one
// group over the same module saved, at any world size.
void set_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat,
                               const PersistedStates& states, const YAML::Node& param_groups);

}  // namespace persistence
