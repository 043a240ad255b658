// Registry of model factories, used by PersistedModel::create. An application
// registers one factory per model type name; a saved model config names its
// type under the key `type`. Thread-safe.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace persistence {

using ModelFactory = std::function<std::shared_ptr<torch::nn::Module>(const YAML::Node& config)>;

// Registers factory under type; registering a type twice replaces the factory.
void register_model(const std::string& type, ModelFactory factory);

// Builds a module from config through the factory its `type` names. A missing
// `type` key or an unregistered type is a NotFoundError listing the registered types.
std::shared_ptr<torch::nn::Module> create_model(const YAML::Node& config);

// Registered type names, sorted.
std::vector<std::string> registered_models();

}  // namespace persistence
