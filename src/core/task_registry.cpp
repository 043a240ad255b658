#include "core/task_registry.h"

#include "io/step_files.h"

#include <persistence/errors.h>

#include <yaml-cpp/yaml.h>

#include <unistd.h>

#include <ctime>
#include <fstream>
#include <random>
#include <sstream>

namespace persistence::detail {

std::string generate_task_id() {
  std::random_device random;
  uint64_t value = (static_cast<uint64_t>(random()) << 32) ^ random();
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

void check_task_id(const std::string& id) {
  bool valid = !id.empty() && id.size() <= 128 && id != "." && id != ".." &&
               id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
                   std::string::npos;
  if (!valid) {
    throw InvalidArgumentError("Task id '" + id + "' is invalid", {},
                               "Use 1 to 128 characters from letters, digits, '.', '_' and '-'");
  }
}

void record_task(const std::string& registry_dir, const std::string& task_id, const std::string& save_path,
                 int world_size) {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char started[32];
  std::strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &utc);

  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "task_id" << YAML::Value << task_id;
  out << YAML::Key << "save_path" << YAML::Value << save_path;
  out << YAML::Key << "world_size" << YAML::Value << world_size;
  out << YAML::Key << "started" << YAML::Value << started;
  out << YAML::Key << "host" << YAML::Value << host;
  out << YAML::EndMap;

  make_directories(registry_dir);
  write_file_atomically(registry_dir + "/" + task_id + ".yaml", std::string(out.c_str()) + "\n");
}

std::string resolve_task(const std::string& registry_dir, const std::string& task_id) {
  check_task_id(task_id);
  std::string path = registry_dir + "/" + task_id + ".yaml";
  std::ifstream in(path);
  if (!in) {
    throw NotFoundError("Task '" + task_id + "' is not in the task registry (looked for '" + path + "')",
                        ErrorContext{path, {}, std::nullopt, std::nullopt},
                        "Check the id, or set PERSISTENCE_REGISTRY to the registry the task used");
  }
  std::stringstream text;
  text << in.rdbuf();
  try {
    YAML::Node record = YAML::Load(text.str());
    if (!record["save_path"]) throw YAML::Exception(YAML::Mark::null_mark(), "no save_path key");
    return record["save_path"].as<std::string>();
  } catch (const YAML::Exception& error) {
    throw FormatError(std::string("Task registry record is unreadable: ") + error.what(),
                      ErrorContext{path, {}, std::nullopt, std::nullopt});
  }
}

}  // namespace persistence::detail
