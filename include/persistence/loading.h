// Loading a saved model outside a training job, by save path or by task id.
// Both calls are local: any single process can make them, with or without MPI.
#pragma once

#include <persistence/options.h>
#include <persistence/persisted.h>

#include <cstdint>
#include <optional>
#include <string>

namespace persistence {

// Returns model `name` from the newest step under path that contains it, or from
// `step` when given. Path forms: "/abs/dir", "file:///abs/dir", and
// "hdfs://namenode:port/dir" or "hdfs:///dir", whose step files are staged in
// to the default local staging directory first. hdfs contains the HDFS settings,
// as in ManagerOptions::hdfs; unset ones fall back to the PERSISTENCE_HDFS_*
// environment variables. NotFoundError when no such step or model exists.
PersistedModel load_model_from_path(const std::string& path, const std::string& name = "model",
                                    std::optional<int64_t> step = std::nullopt, const HdfsOptions& hdfs = {});

// Resolves task_id to its save path through the task registry, then behaves
// like load_model_from_path. registry_dir is a local directory or an hdfs://
// URI; empty means the default registry. hdfs reaches a registry and a save
// path on HDFS. NotFoundError for an unknown task id names the registry record
// it looked for.
PersistedModel load_model_from_task(const std::string& task_id, const std::string& name = "model",
                                    std::optional<int64_t> step = std::nullopt,
                                    const std::string& registry_dir = {}, const HdfsOptions& hdfs = {});

}  // namespace persistence
