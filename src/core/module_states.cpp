#include <persistence/module_states.h>

#include <persistence/errors.h>

#include <torch/nn/module.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <ATen/ops/scalar_tensor.h>

#include <map>
#include <unordered_map>

namespace persistence {
namespace {

// Prefixes that wrappers put in front of the wrapped module's names.
constexpr const char* kWrapperPrefixes[] = {"module.", "_orig_mod.", "_fsdp_wrapped_module."};

std::string strip_wrappers(std::string name) {
  bool stripped = true;
  while (stripped) {
    stripped = false;
    for (const char* prefix : kWrapperPrefixes) {
      std::string text(prefix);
      if (name.size() > text.size() && name.compare(0, text.size(), text) == 0) {
        name = name.substr(text.size());
        stripped = true;
      }
    }
  }
  return name;
}

ErrorContext key_context(const std::string& key) { return ErrorContext{{}, key, std::nullopt, std::nullopt}; }

// Named parameters and buffers with wrapper prefixes stripped. The same tensor
// under two names is kept once; two different tensors under one name are an error.
std::map<std::string, at::Tensor> named_tensors(const torch::nn::Module& module, bool with_buffers) {
  std::map<std::string, at::Tensor> result;
  std::map<std::string, std::string> original_names;
  auto add = [&](const std::string& original, const at::Tensor& tensor) {
    std::string name = strip_wrappers(original);
    auto [it, inserted] = result.emplace(name, tensor);
    if (!inserted && !it->second.is_same(tensor)) {
      throw InvalidArgumentError("Two different tensors, '" + original_names[name] + "' and '" + original +
                                     "', map to the same key once wrapper prefixes are stripped",
                                 key_context(name), "Rename one of them");
    }
    original_names.emplace(name, original);
  };
  for (const auto& item : module.named_parameters(true)) add(item.key(), item.value());
  if (with_buffers) {
    for (const auto& item : module.named_buffers(true)) add(item.key(), item.value());
  }
  return result;
}

at::Tensor step_tensor(int64_t step) { return at::scalar_tensor(step, at::TensorOptions().dtype(at::kLong)); }

void put(StateDict& states, const std::string& parameter, const char* key, const at::Tensor& tensor) {
  if (tensor.defined()) states.emplace(parameter + "/" + key, tensor);
}

// Adds one parameter's optimizer state; returns false for an unknown state type.
bool add_parameter_state(StateDict& states, const std::string& name, torch::optim::OptimizerParamState& state) {
  if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(&state)) {
    put(states, name, "step", step_tensor(adam->step()));
    put(states, name, "exp_avg", adam->exp_avg());
    put(states, name, "exp_avg_sq", adam->exp_avg_sq());
    put(states, name, "max_exp_avg_sq", adam->max_exp_avg_sq());
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(&state)) {
    put(states, name, "step", step_tensor(adamw->step()));
    put(states, name, "exp_avg", adamw->exp_avg());
    put(states, name, "exp_avg_sq", adamw->exp_avg_sq());
    put(states, name, "max_exp_avg_sq", adamw->max_exp_avg_sq());
  } else if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(&state)) {
    put(states, name, "momentum_buffer", sgd->momentum_buffer());
  } else if (auto* rmsprop = dynamic_cast<torch::optim::RMSpropParamState*>(&state)) {
    put(states, name, "step", step_tensor(rmsprop->step()));
    put(states, name, "square_avg", rmsprop->square_avg());
    put(states, name, "momentum_buffer", rmsprop->momentum_buffer());
    put(states, name, "grad_avg", rmsprop->grad_avg());
  } else if (auto* adagrad = dynamic_cast<torch::optim::AdagradParamState*>(&state)) {
    put(states, name, "step", step_tensor(adagrad->step()));
    put(states, name, "sum", adagrad->sum());
  } else {
    return false;
  }
  return true;
}

YAML::Node group_options(torch::optim::OptimizerOptions& options) {
  YAML::Node node;
  if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    node["type"] = "Adam";
    node["lr"] = adam->lr();
    node["betas"].push_back(std::get<0>(adam->betas()));
    node["betas"].push_back(std::get<1>(adam->betas()));
    node["eps"] = adam->eps();
    node["weight_decay"] = adam->weight_decay();
    node["amsgrad"] = adam->amsgrad();
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    node["type"] = "AdamW";
    node["lr"] = adamw->lr();
    node["betas"].push_back(std::get<0>(adamw->betas()));
    node["betas"].push_back(std::get<1>(adamw->betas()));
    node["eps"] = adamw->eps();
    node["weight_decay"] = adamw->weight_decay();
    node["amsgrad"] = adamw->amsgrad();
  } else if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    node["type"] = "SGD";
    node["lr"] = sgd->lr();
    node["momentum"] = sgd->momentum();
    node["dampening"] = sgd->dampening();
    node["weight_decay"] = sgd->weight_decay();
    node["nesterov"] = sgd->nesterov();
  } else if (auto* rmsprop = dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    node["type"] = "RMSprop";
    node["lr"] = rmsprop->lr();
    node["alpha"] = rmsprop->alpha();
    node["eps"] = rmsprop->eps();
    node["weight_decay"] = rmsprop->weight_decay();
    node["momentum"] = rmsprop->momentum();
    node["centered"] = rmsprop->centered();
  } else if (auto* adagrad = dynamic_cast<torch::optim::AdagradOptions*>(&options)) {
    node["type"] = "Adagrad";
    node["lr"] = adagrad->lr();
    node["lr_decay"] = adagrad->lr_decay();
    node["weight_decay"] = adagrad->weight_decay();
    node["initial_accumulator_value"] = adagrad->initial_accumulator_value();
    node["eps"] = adagrad->eps();
  } else {
    throw InvalidArgumentError("Unsupported optimizer options type", {},
                               "Supported optimizers: Adam, AdamW, SGD, RMSprop, Adagrad");
  }
  return node;
}

void restore_options(torch::optim::OptimizerOptions& options, const YAML::Node& node, size_t group) {
  std::string type = node["type"] ? node["type"].as<std::string>() : "";
  auto betas = [&] { return std::make_tuple(node["betas"][0].as<double>(), node["betas"][1].as<double>()); };
  auto mismatch = [&](const char* expected) {
    throw StateMismatchError("Parameter group " + std::to_string(group) + " was saved from a " + type +
                                 " optimizer but is loaded into " + expected,
                             {});
  };
  if (auto* adam = dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    if (type != "Adam") mismatch("Adam");
    adam->lr(node["lr"].as<double>()).betas(betas()).eps(node["eps"].as<double>());
    adam->weight_decay(node["weight_decay"].as<double>()).amsgrad(node["amsgrad"].as<bool>());
  } else if (auto* adamw = dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    if (type != "AdamW") mismatch("AdamW");
    adamw->lr(node["lr"].as<double>()).betas(betas()).eps(node["eps"].as<double>());
    adamw->weight_decay(node["weight_decay"].as<double>()).amsgrad(node["amsgrad"].as<bool>());
  } else if (auto* sgd = dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    if (type != "SGD") mismatch("SGD");
    sgd->lr(node["lr"].as<double>()).momentum(node["momentum"].as<double>());
    sgd->dampening(node["dampening"].as<double>()).weight_decay(node["weight_decay"].as<double>());
    sgd->nesterov(node["nesterov"].as<bool>());
  } else if (auto* rmsprop = dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    if (type != "RMSprop") mismatch("RMSprop");
    rmsprop->lr(node["lr"].as<double>()).alpha(node["alpha"].as<double>()).eps(node["eps"].as<double>());
    rmsprop->weight_decay(node["weight_decay"].as<double>()).momentum(node["momentum"].as<double>());
    rmsprop->centered(node["centered"].as<bool>());
  } else if (auto* adagrad = dynamic_cast<torch::optim::AdagradOptions*>(&options)) {
    if (type != "Adagrad") mismatch("Adagrad");
    adagrad->lr(node["lr"].as<double>()).lr_decay(node["lr_decay"].as<double>());
    adagrad->weight_decay(node["weight_decay"].as<double>());
    adagrad->initial_accumulator_value(node["initial_accumulator_value"].as<double>());
    adagrad->eps(node["eps"].as<double>());
  }
}

// Copies a saved tensor for a parameter's state: same device and dtype as the parameter.
at::Tensor take(const TensorDict& states, const std::string& key, const at::Tensor& parameter, bool required) {
  auto found = states.find(key);
  if (found == states.end()) {
    if (required) throw StateMismatchError("Optimizer state is missing", key_context(key));
    return {};
  }
  if (found->second.sizes() != parameter.sizes()) {
    throw StateMismatchError("Shape mismatch between the saved optimizer state and the parameter", key_context(key));
  }
  return found->second.to(parameter.device(), parameter.scalar_type()).clone();
}

int64_t take_step(const TensorDict& states, const std::string& key) {
  auto found = states.find(key);
  if (found == states.end()) throw StateMismatchError("Optimizer state is missing", key_context(key));
  return found->second.item<int64_t>();
}

std::unique_ptr<torch::optim::OptimizerParamState> restore_state(torch::optim::OptimizerOptions& options,
                                                                 const TensorDict& states, const std::string& name,
                                                                 const at::Tensor& parameter) {
  auto key = [&](const char* state) { return name + "/" + state; };
  if (dynamic_cast<torch::optim::AdamOptions*>(&options)) {
    auto state = std::make_unique<torch::optim::AdamParamState>();
    state->step(take_step(states, key("step")));
    state->exp_avg(take(states, key("exp_avg"), parameter, true));
    state->exp_avg_sq(take(states, key("exp_avg_sq"), parameter, true));
    state->max_exp_avg_sq(take(states, key("max_exp_avg_sq"), parameter, false));
    return state;
  }
  if (dynamic_cast<torch::optim::AdamWOptions*>(&options)) {
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(take_step(states, key("step")));
    state->exp_avg(take(states, key("exp_avg"), parameter, true));
    state->exp_avg_sq(take(states, key("exp_avg_sq"), parameter, true));
    state->max_exp_avg_sq(take(states, key("max_exp_avg_sq"), parameter, false));
    return state;
  }
  if (dynamic_cast<torch::optim::SGDOptions*>(&options)) {
    auto state = std::make_unique<torch::optim::SGDParamState>();
    state->momentum_buffer(take(states, key("momentum_buffer"), parameter, true));
    return state;
  }
  if (dynamic_cast<torch::optim::RMSpropOptions*>(&options)) {
    auto state = std::make_unique<torch::optim::RMSpropParamState>();
    state->step(take_step(states, key("step")));
    state->square_avg(take(states, key("square_avg"), parameter, true));
    state->momentum_buffer(take(states, key("momentum_buffer"), parameter, false));
    state->grad_avg(take(states, key("grad_avg"), parameter, false));
    return state;
  }
  if (dynamic_cast<torch::optim::AdagradOptions*>(&options)) {
    auto state = std::make_unique<torch::optim::AdagradParamState>();
    state->step(take_step(states, key("step")));
    state->sum(take(states, key("sum"), parameter, true));
    return state;
  }
  throw InvalidArgumentError("Unsupported optimizer options type", {},
                             "Supported optimizers: Adam, AdamW, SGD, RMSprop, Adagrad");
}

std::unordered_map<const c10::TensorImpl*, std::string> names_by_tensor(const torch::nn::Module& module) {
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& [name, tensor] : named_tensors(module, false)) names.emplace(tensor.unsafeGetTensorImpl(), name);
  return names;
}

std::string parameter_name(const std::unordered_map<const c10::TensorImpl*, std::string>& names,
                           const at::Tensor& parameter, size_t group, size_t index) {
  auto found = names.find(parameter.unsafeGetTensorImpl());
  if (found == names.end()) {
    throw InvalidArgumentError("Parameter " + std::to_string(index) + " of optimizer group " + std::to_string(group) +
                                   " is not a parameter of the module",
                               {}, "Pass the module whose parameters the optimizer updates");
  }
  return found->second;
}

}  // namespace

StateDict get_model_states(const torch::nn::Module& module) {
  StateDict states;
  for (auto& [name, tensor] : named_tensors(module, true)) states.emplace(name, tensor);
  return states;
}

OptimizerStates get_optimizer_states(torch::optim::Optimizer& optimizer, const torch::nn::Module& module) {
  auto names = names_by_tensor(module);
  OptimizerStates result;
  result.param_groups = YAML::Node(YAML::NodeType::Sequence);
  auto& state = optimizer.state();
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    auto& group = optimizer.param_groups()[g];
    YAML::Node node;
    node["options"] = group_options(group.options());
    node["params"] = YAML::Node(YAML::NodeType::Sequence);
    for (size_t i = 0; i < group.params().size(); ++i) {
      const at::Tensor& parameter = group.params()[i];
      std::string name = parameter_name(names, parameter, g, i);
      node["params"].push_back(name);
      auto found = state.find(c10::guts::to_string(parameter.unsafeGetTensorImpl()));
      if (found == state.end()) continue;  // not stepped yet
      if (!add_parameter_state(result.states, name, *found->second)) {
        throw InvalidArgumentError("Unsupported optimizer state type", key_context(name),
                                   "Supported optimizers: Adam, AdamW, SGD, RMSprop, Adagrad");
      }
    }
    result.param_groups.push_back(node);
  }
  return result;
}

void set_model_states(torch::nn::Module& module, const TensorDict& states) {
  auto targets = named_tensors(module, true);
  for (const auto& [key, value] : states) {
    if (targets.find(key) == targets.end()) {
      throw StateMismatchError("Unexpected key: the module has no parameter or buffer of this name", key_context(key),
                               "Check that the saved model and the module have the same architecture");
    }
  }
  for (auto& [key, target] : targets) {
    auto found = states.find(key);
    if (found == states.end()) {
      throw StateMismatchError("Missing key: the saved states have no value for this parameter or buffer",
                               key_context(key), "Check that the saved model and the module have the same architecture");
    }
    const at::Tensor& value = found->second;
    if (value.sizes() != target.sizes()) {
      throw StateMismatchError("Shape mismatch: saved " + c10::str(value.sizes()) + " but the module has " +
                                   c10::str(target.sizes()),
                               key_context(key));
    }
    bool convertible = value.scalar_type() == target.scalar_type() ||
                       (c10::isFloatingType(value.scalar_type()) && c10::isFloatingType(target.scalar_type()));
    if (!convertible) {
      throw StateMismatchError("Dtype mismatch: saved " + std::string(c10::toString(value.scalar_type())) +
                                   " but the module has " + c10::toString(target.scalar_type()),
                               key_context(key));
    }
  }
  at::NoGradGuard no_grad;
  for (auto& [key, target] : targets) target.copy_(states.at(key));
}

void set_optimizer_states(torch::optim::Optimizer& optimizer, const torch::nn::Module& module,
                          const TensorDict& states, const YAML::Node& param_groups) {
  auto names = names_by_tensor(module);
  auto& groups = optimizer.param_groups();
  if (!param_groups.IsSequence() || param_groups.size() != groups.size()) {
    throw StateMismatchError("The optimizer has " + std::to_string(groups.size()) + " parameter groups but " +
                                 std::to_string(param_groups.IsSequence() ? param_groups.size() : 0) + " were saved",
                             {});
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    const YAML::Node saved = param_groups[g];
    auto& group = groups[g];
    if (saved["params"].size() != group.params().size()) {
      throw StateMismatchError("Parameter group " + std::to_string(g) + " has " + std::to_string(group.params().size()) +
                                   " parameters but " + std::to_string(saved["params"].size()) + " were saved",
                               {});
    }
    restore_options(group.options(), saved["options"], g);
    for (size_t i = 0; i < group.params().size(); ++i) {
      const at::Tensor& parameter = group.params()[i];
      std::string name = parameter_name(names, parameter, g, i);
      std::string saved_name = saved["params"][i].as<std::string>();
      if (saved_name != name) {
        throw StateMismatchError("Parameter " + std::to_string(i) + " of group " + std::to_string(g) + " is '" + name +
                                     "' but '" + saved_name + "' was saved there",
                                 key_context(name));
      }
      std::string state_key = c10::guts::to_string(parameter.unsafeGetTensorImpl());
      bool has_state = false;
      for (auto it = states.lower_bound(name + "/"); it != states.end() && it->first.rfind(name + "/", 0) == 0; ++it) {
        has_state = true;
        break;
      }
      if (!has_state) {
        optimizer.state().erase(state_key);
        continue;
      }
      optimizer.state()[state_key] = restore_state(group.options(), states, name, parameter);
    }
  }
}

}  // namespace persistence
