// The task registry: one YAML file per task id in a directory, recording where
// that task saves, so a model can be found again by its task id.
#pragma once

#include <string>

namespace persistence::detail {

// Returns a new random task id of 16 lower-case hex digits.
std::string generate_task_id();

// Throws InvalidArgumentError unless id is 1 to 128 characters of [A-Za-z0-9._-]
// and not "." or "..", because it becomes a file name.
void check_task_id(const std::string& id);

// Writes <registry_dir>/<task_id>.yaml atomically.
void record_task(const std::string& registry_dir, const std::string& task_id, const std::string& save_path,
                 int world_size);

// Returns the save path recorded for task_id; NotFoundError names the registry file it looked for.
std::string resolve_task(const std::string& registry_dir, const std::string& task_id);

}  // namespace persistence::detail
