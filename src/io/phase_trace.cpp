#include "io/phase_trace.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace persistence::detail {
namespace {

struct TraceSettings {
  int fd = -1;
  int kill_rank = -1;
  long kill_line = 0;
};

TraceSettings read_trace_settings() {
  TraceSettings settings;
  const char* path = std::getenv("PERSISTENCE_TRACE_PHASES");
  if (path == nullptr || *path == '\0') return settings;
  settings.fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);

  const char* kill = std::getenv("PERSISTENCE_TRACE_KILL");
  if (kill != nullptr && std::sscanf(kill, "%d:%ld", &settings.kill_rank, &settings.kill_line) != 2) {
    settings.kill_rank = -1;
  }
  return settings;
}

}  // namespace

void trace_phase(const char* phase, int rank, int64_t step, const std::string& group, const std::string& name) {
  static const TraceSettings settings = read_trace_settings();
  if (settings.fd < 0) return;

  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const long long microseconds = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
  char line[256];
  int length = std::snprintf(line, sizeof(line), "%s rank %d step %lld %s/%s %lld\n", phase, rank,
                             static_cast<long long>(step), group.c_str(), name.c_str(), microseconds);
  if (length > 0) {
    ssize_t ignored = ::write(settings.fd, line, static_cast<size_t>(std::min<int>(length, sizeof(line) - 1)));
    (void)ignored;
  }

  static std::atomic<long> lines_written{0};
  long written = ++lines_written;
  if (rank == settings.kill_rank && written == settings.kill_line) ::raise(SIGKILL);
}

}  // namespace persistence::detail
