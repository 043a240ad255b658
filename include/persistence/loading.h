// Loading a saved model outside a training job, by save path or by task id.
// Both calls are local: any single process can make them, with or without MPI.
#pragma once

#include <persistence/persisted.h>

#include <cstdint>
#include <optional>
#include <string>

namespace persistence {

// Returns model `name` from the newest step under path that contains it, or from
// `step` when given. Path forms: "/abs/dir", "file:///abs/dir", and
// "hdfs://namenode:port/dir" or "hdfs:///dir", whose step files are staged in
// to the default local staging directory first (HDFS settings come from the
// PERSISTENCE_HDFS_* environment variables). NotFoundError when no such step
// or model exists.
PersistedModel load_model_from_path(const std::string& path, const std::string& name = "model",
                                    std::optional<int64_t> step = std::nullopt);

// Resolves task_id to its save path through the task registry, then behaves
// like load_model_from_path. registry_dir empty: the default registry.
PersistedModel load_model_from_task(const std::string& task_id, const std::string& name = "model",
                                    std::optional<int64_t> step = std::nullopt,
                                    const std::string& registry_dir = {});

}  // namespace persistence
