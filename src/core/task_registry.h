// The task registry: one YAML file per task id in a directory, recording where
// that task saves, so a model can be found again by its task id. The directory
// is a local path or an hdfs:// URI. HDFS is reached with the settings of
// HdfsConfig::resolve(hdfs). These functions are not collective: the
// manager calls them on rank 0 only, so one rank talks to the NameNode.
#pragma once

#include <persistence/options.h>

#include <string>

namespace persistence::detail {

// Returns a new random task id of 16 lower-case hex digits.
std::string generate_task_id();

// Throws InvalidArgumentError unless id is 1 to 128 characters of [A-Za-z0-9._-]
// and not "." or "..", because it becomes a file name.
void check_task_id(const std::string& id);

// Writes <registry_dir>/<task_id>.yaml atomically: a local record through a
// temporary file and rename, a record on HDFS by the stage-out commit protocol
// (upload to a temporary name, check the length, rename). An existing record
// of the same id is replaced.
void record_task(const std::string& registry_dir, const std::string& task_id, const std::string& save_path,
                 int world_size, const HdfsOptions& hdfs = {});

// Returns the save path recorded for task_id. NotFoundError names the record
// it looked for (a local path or an hdfs:// URI); IoError when HDFS fails.
std::string resolve_task(const std::string& registry_dir, const std::string& task_id,
                         const HdfsOptions& hdfs = {});

}  // namespace persistence::detail
