#include <persistence/options.h>

#include <cstdlib>
#include <string>

namespace persistence {
namespace {

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

std::string default_registry_dir() {
  std::string cache = environment("XDG_CACHE_HOME");
  if (cache.empty()) {
    std::string home = environment("HOME");
    cache = (home.empty() ? std::string("/tmp") : home) + "/.cache";
  }
  return cache + "/persistence/tasks";
}

}  // namespace

// The one place where the library reads its environment variables:
// PERSISTENCE_TASK_ID, PERSISTENCE_REGISTRY, PERSISTENCE_COLLECTIVE_TIMEOUT,
// PERSISTENCE_STAGING_DIR, PERSISTENCE_DIRECT_IO, TMPDIR, XDG_CACHE_HOME and HOME. The HDFS settings
// fall back to environment variables in HdfsConfig::resolve (src/storage), only
// for hdfs:// paths.
ManagerOptions ManagerOptions::resolved() const {
  ManagerOptions result = *this;
  if (result.task_id.empty()) result.task_id = environment("PERSISTENCE_TASK_ID");
  if (result.registry_dir.empty()) result.registry_dir = environment("PERSISTENCE_REGISTRY");
  if (result.registry_dir.empty()) result.registry_dir = default_registry_dir();
  if (result.max_bytes_per_call == 0) result.max_bytes_per_call = std::size_t{1} << 30;
  if (result.alignment == 0) result.alignment = 1;
  if (result.staging_dir.empty()) result.staging_dir = environment("PERSISTENCE_STAGING_DIR");
  if (result.local_steps_kept < 1) result.local_steps_kept = 1;
  // direct_io has no unset state, so the variable can only turn it off.
  std::string direct = environment("PERSISTENCE_DIRECT_IO");
  if (direct == "0" || direct == "false" || direct == "no" || direct == "off") result.direct_io = false;
  if (result.collective_timeout.count() <= 0) {
    std::string seconds = environment("PERSISTENCE_COLLECTIVE_TIMEOUT");
    double value = seconds.empty() ? 0.0 : std::atof(seconds.c_str());
    result.collective_timeout = value > 0 ? std::chrono::milliseconds(static_cast<int64_t>(value * 1000))
                                          : std::chrono::milliseconds(30 * 60 * 1000);
  }
  return result;
}

}  // namespace persistence
