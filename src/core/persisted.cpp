#include <persistence/persisted.h>

#include "h5/handle.h"
#include "io/step_reader.h"
#include "mpi/communicator.h"

#include <persistence/errors.h>
#include <persistence/model_registry.h>
#include <persistence/module_states.h>

#include <torch/nn/module.h>

namespace persistence {

YAML::Node PersistedConfig::load() const {
  std::string text = detail::read_text(path, dataset);
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& error) {
    throw FormatError("Stored YAML in dataset '" + dataset + "' does not parse: " + error.what(),
                      ErrorContext{path, {}, std::nullopt, std::nullopt});
  }
}

TensorDict PersistedStates::load(c10::Device device) const {
  TensorDict tensors = detail::read_tensors(path, group, verify_checksums);
  if (!device.is_cpu()) {
    for (auto& [key, tensor] : tensors) tensor = tensor.to(device);
  }
  return tensors;
}

void PersistedStates::load_into(StateDict& target) const {
  detail::ensure_mpi_initialized();
  detail::h5::silence_errors();
  detail::Communicator communicator = detail::Communicator::duplicate(comm);
  detail::read_into(communicator, path, group, target, verify_checksums, int64_t{1} << 30, direct_io);
}

std::vector<std::string> PersistedStates::keys() const {
  std::vector<std::string> keys;
  for (const auto& stored : detail::list_tensors(path, group)) keys.push_back(stored.key);
  return keys;
}

std::shared_ptr<torch::nn::Module> PersistedModel::create(c10::Device device) const {
  std::shared_ptr<torch::nn::Module> module = create_model(config.load());

  // Strict dtype check against what was stored: the saved dtype, or the dtype
  // the tensor had before a conversion on save.
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module->named_parameters()) targets.emplace(item.key(), item.value());
  for (const auto& item : module->named_buffers()) targets.emplace(item.key(), item.value());
  for (const auto& stored : detail::list_tensors(states.path, states.group)) {
    auto target = targets.find(stored.key);
    if (target == targets.end()) continue;  // set_model_states reports unexpected keys
    c10::ScalarType wanted = target->second.scalar_type();
    if (wanted != stored.dtype && (!stored.source_dtype || wanted != *stored.source_dtype)) {
      throw StateMismatchError("Dtype mismatch: the file stores " + std::string(c10::toString(stored.dtype)) +
                                   " but the module's tensor is " + c10::toString(wanted),
                               ErrorContext{states.path, stored.key, step, std::nullopt});
    }
  }

  set_model_states(*module, states.load(c10::Device(c10::kCPU)));
  module->to(device);
  return module;
}

}  // namespace persistence
