// Conversions between libtorch modules and optimizers and the state dicts that
// the manager saves. get_* functions return views that share storage with the
// module: nothing is copied until a save snapshots them.
#pragma once

#include <persistence/state_dict.h>

#include <yaml-cpp/yaml.h>

namespace torch::nn {
class Module;
}
namespace torch::optim {
class Optimizer;
}

namespace persistence {

// An optimizer's per-parameter state keyed "<parameter name>/<state key>"
// (for Adam: exp_avg, exp_avg_sq, step), and its parameter groups as YAML.
struct OptimizerStates {
  StateDict states;
  YAML::Node param_groups;
};

// Returns the module's parameters and buffers by fully qualified name. Prefixes
// that data-parallel and compile wrappers add (`module.`, `_orig_mod.`) are
// stripped; two different tensors that strip to one name are an InvalidArgumentError.
StateDict get_model_states(const torch::nn::Module& module);

// Returns the state of a torch::optim Adam, AdamW, SGD, RMSprop or Adagrad
// optimizer, keyed by the names that module gives its parameters. A parameter
// the module does not own is an InvalidArgumentError.
OptimizerStates get_optimizer_states(torch::optim::Optimizer& optimizer,
                                     const torch::nn::Module& module);

// Copies states into the module's parameters and buffers, strictly: missing or
// unexpected keys and shape mismatches are StateMismatchErrors naming the key.
// Floating values convert to the parameter's dtype.
void set_model_states(torch::nn::Module& module, const TensorDict& states);

// Restores an optimizer's per-parameter state and group options from what
// get_optimizer_states saved. Parameters are matched by name through module.
void set_optimizer_states(torch::optim::Optimizer& optimizer, const torch::nn::Module& module,
                          const TensorDict& states, const YAML::Node& param_groups);

}  // namespace persistence
