// The library's spdlog logger. Messages carry the rank in their prefix; by
// default rank 0 logs at info level and other ranks only warnings and errors.
// PERSISTENCE_LOG_LEVEL (trace, debug, info, warn, error, off) sets the level
// of every rank.
#pragma once

#include <spdlog/logger.h>

#include <memory>

namespace persistence::detail {

// Returns the shared logger; configure_logging sets its rank prefix and level.
spdlog::logger& logger();

// Sets the rank shown in every message and the level that follows from it.
void configure_logging(int rank);

}  // namespace persistence::detail
