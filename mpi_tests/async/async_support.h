// Helpers for the asynchronous-save suites: a hold on the library's HDF5 lock
// that keeps queued background writes from starting, and a capture of the
// messages of the library's logger.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace persistence::testing {

// Holds the library's process-wide HDF5 lock from construction until release()
// or destruction. The I/O thread takes this lock for a whole background write,
// so while a WriteGate holds it a queued write cannot start and has read
// nothing yet. A helper thread holds the lock, so a release can be timed to
// happen while the calling thread is blocked in a manager call. Local: each
// rank holds its own lock.
//
// Any manager call that waits for the I/O thread or reads HDF5 (wait, close,
// load_last_step, a blocking save, or a second save of a name whose write is
// queued) blocks until the gate is released. Declare the gate after the
// manager, so an early return releases it before the manager's destructor
// drains the queue.
class WriteGate {
 public:
  // Returns once the helper thread holds the lock.
  WriteGate();
  ~WriteGate();

  WriteGate(const WriteGate&) = delete;
  WriteGate& operator=(const WriteGate&) = delete;

  // Lets queued writes start, and returns once the lock is free.
  void release();

  // Returns at once; the helper thread frees the lock after delay.
  void release_after(std::chrono::milliseconds delay);

 private:
  void hold();

  std::mutex mutex_;
  std::condition_variable changed_;
  bool held_ = false;
  std::optional<std::chrono::steady_clock::time_point> release_at_;
  std::thread holder_;
};

// A message of the library's logger: its spdlog level name ("info", "warning",
// "error", ...) and its text without the pattern's prefix.
struct LogMessage {
  std::string level;
  std::string text;
};

class CapturingSink;

// Adds a sink to the library's logger for the lifetime of the object and keeps
// every message that passes the logger's level (by default info on rank 0 and
// warnings on other ranks). Local. Create and destroy it while no manager
// exists, because spdlog does not guard a logger's sink list against a
// background thread that logs at the same time.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();

  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  // Returns the messages captured so far, oldest first. Thread-safe.
  std::vector<LogMessage> messages() const;

  // Returns the captured messages of one level whose text contains fragment.
  std::vector<LogMessage> find(const std::string& level, const std::string& fragment) const;

 private:
  std::shared_ptr<CapturingSink> sink_;
};

}  // namespace persistence::testing
