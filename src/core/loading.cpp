#include <persistence/loading.h>

#include "core/logging.h"
#include "core/remote_paths.h"
#include "core/task_registry.h"
#include "format/layout.h"
#include "io/step_files.h"
#include "io/step_reader.h"
#include "storage/open_storage.h"
#include "storage/stage.h"

#include <persistence/errors.h>
#include <persistence/options.h>

#include <algorithm>
#include <filesystem>

namespace persistence {

namespace {

// Stages the remote steps of an hdfs:// path in, newest first, until one contains model name.
PersistedModel load_remote_model(const std::string& path, const std::string& name, std::optional<int64_t> step,
                                 const HdfsOptions& hdfs) {
  detail::HdfsConfig config = detail::HdfsConfig::resolve(hdfs);
  detail::StorageLocation location = detail::open_storage(path, config);
  std::vector<int64_t> steps = detail::list_remote_steps(*location.storage, location.dir);
  if (step) {
    if (!std::binary_search(steps.begin(), steps.end(), *step)) {
      throw NotFoundError("No step file for this step", ErrorContext{path, {}, *step, std::nullopt},
                          "List the remote directory to see the saved steps");
    }
    steps = {*step};
  }
  std::string staging = detail::default_staging_dir(path);
  detail::make_directories(staging);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    std::string file_name = detail::step_file_name(*it);
    std::string local = staging + "/" + file_name;
    if (!std::filesystem::exists(local)) {
      detail::stage_in(*location.storage, location.dir + "/" + file_name, local, std::nullopt, config.retry);
    }
    try {
      return load_model_from_path(staging, name, *it);
    } catch (const NotFoundError&) {
      if (step) throw;
    }
  }
  throw NotFoundError("No step holds model '" + name + "'", ErrorContext{path, {}, step, std::nullopt},
                      steps.empty() ? "The remote directory has no step files" : "Check the model name");
}

}  // namespace

PersistedModel load_model_from_path(const std::string& path, const std::string& name, std::optional<int64_t> step,
                                    const HdfsOptions& hdfs) {
  if (detail::is_hdfs_uri(path)) return load_remote_model(path, name, step, hdfs);
  std::string root = detail::local_root(path);
  std::vector<int64_t> steps = detail::list_steps(root);
  if (step) {
    if (!std::binary_search(steps.begin(), steps.end(), *step)) {
      throw NotFoundError("No step file for this step", ErrorContext{root + "/" + detail::step_file_name(*step), {}, *step, {}},
                          "List the directory to see the saved steps");
    }
    steps = {*step};
  }

  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    std::string file = root + "/" + detail::step_file_name(*it);
    detail::StepInfo info;
    try {
      info = detail::read_step_info(file);
    } catch (const Error& error) {
      if (step) throw;
      detail::logger().warn("Skipping step {}: {}", *it, error.what());
      continue;
    }
    if (!std::binary_search(info.models.begin(), info.models.end(), name)) continue;

    std::string base = std::string("/") + detail::layout::kModels + "/" + name;
    PersistedModel model;
    model.name = name;
    model.step = *it;
    model.config = PersistedConfig{file, base + "/" + detail::layout::kConfig};
    model.states = PersistedStates{file, base + "/" + detail::layout::kStates};
    return model;
  }
  throw NotFoundError("No step holds model '" + name + "'",
                      ErrorContext{root, {}, step, std::nullopt},
                      steps.empty() ? "The directory has no step files" : "Check the model name");
}

PersistedModel load_model_from_task(const std::string& task_id, const std::string& name, std::optional<int64_t> step,
                                    const std::string& registry_dir, const HdfsOptions& hdfs) {
  ManagerOptions options;
  options.registry_dir = registry_dir;
  std::string root = detail::resolve_task(options.resolved().registry_dir, task_id, hdfs);
  return load_model_from_path(root, name, step, hdfs);
}

}  // namespace persistence
