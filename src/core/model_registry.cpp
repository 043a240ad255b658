#include <persistence/model_registry.h>

#include <persistence/errors.h>

#include <map>
#include <mutex>

namespace persistence {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, ModelFactory> factories;
};

Registry& registry() {
  static Registry instance;
  return instance;
}

std::string list_types() {
  std::string text;
  for (const auto& type : registered_models()) text += (text.empty() ? "" : ", ") + type;
  return text.empty() ? "none" : text;
}

}  // namespace

void register_model(const std::string& type, ModelFactory factory) {
  if (type.empty() || !factory) {
    throw InvalidArgumentError("A model registration needs a type name and a factory", {});
  }
  std::lock_guard<std::mutex> lock(registry().mutex);
  registry().factories[type] = std::move(factory);
}

std::shared_ptr<torch::nn::Module> create_model(const YAML::Node& config) {
  if (!config.IsMap() || !config["type"]) {
    throw NotFoundError("The model config has no 'type' key naming a registered model", {},
                        "Add 'type: <name>' to the model config; registered types: " + list_types());
  }
  std::string type = config["type"].as<std::string>();
  ModelFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry().mutex);
    auto found = registry().factories.find(type);
    if (found != registry().factories.end()) factory = found->second;
  }
  if (!factory) {
    throw NotFoundError("Model type '" + type + "' is not registered", {},
                        "Call persistence::register_model(\"" + type + "\", factory) first; registered types: " +
                            list_types());
  }
  auto module = factory(config);
  if (!module) throw InvalidArgumentError("The factory of model type '" + type + "' returned no module", {});
  return module;
}

std::vector<std::string> registered_models() {
  std::lock_guard<std::mutex> lock(registry().mutex);
  std::vector<std::string> types;
  for (const auto& [type, factory] : registry().factories) types.push_back(type);
  return types;
}

}  // namespace persistence
