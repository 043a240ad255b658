// Attempt counting and backoff delays for retried storage operations.
#pragma once

#include "storage/hdfs_config.h"

#include <chrono>
#include <optional>
#include <string>

namespace persistence::detail {

// Tracks the failed attempts of one operation under a RetryPolicy.
// Not thread-safe.
class Backoff {
 public:
  explicit Backoff(const RetryPolicy& policy);

  // Counts a failed attempt and returns how long to wait before the next
  // one, or nullopt when the policy allows no more attempts.
  std::optional<std::chrono::milliseconds> next_delay();

  // Forgets earlier failures but not the elapsed time, for operations that
  // made progress before failing (a resumed download).
  void reset_failures() { failures_ = 0; }

  // Attempts made so far, the current one included.
  int attempts() const { return attempts_; }

  std::chrono::milliseconds elapsed() const;

 private:
  RetryPolicy policy_;
  std::chrono::steady_clock::time_point start_;
  int failures_ = 0;
  int attempts_ = 1;
};

// Returns 16 random hexadecimal digits, for names that must not repeat.
std::string random_token();

}  // namespace persistence::detail
