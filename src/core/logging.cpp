#include "core/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>
#include <string>

namespace persistence::detail {
namespace {

std::shared_ptr<spdlog::logger> make_logger() {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto created = std::make_shared<spdlog::logger>("persistence", sink);
  created->set_pattern("[persistence] [%l] %v");
  created->set_level(spdlog::level::info);
  return created;
}

}  // namespace

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> instance = make_logger();
  return *instance;
}

void configure_logging(int rank) {
  auto& log = logger();
  log.set_pattern("[persistence] [rank " + std::to_string(rank) + "] [%l] %v");

  const char* level = std::getenv("PERSISTENCE_LOG_LEVEL");
  if (level != nullptr && *level != '\0') {
    log.set_level(spdlog::level::from_str(level));
  } else {
    log.set_level(rank == 0 ? spdlog::level::info : spdlog::level::warn);
  }
}

}  // namespace persistence::detail
