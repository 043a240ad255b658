#include "storage/retry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

namespace persistence::detail {
namespace {

std::mt19937_64& random_engine() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return engine;
}

}  // namespace

Backoff::Backoff(const RetryPolicy& policy) : policy_(policy), start_(std::chrono::steady_clock::now()) {}

std::chrono::milliseconds Backoff::elapsed() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start_);
}

std::optional<std::chrono::milliseconds> Backoff::next_delay() {
  ++failures_;
  if (failures_ >= policy_.max_attempts) return std::nullopt;

  double base = static_cast<double>(policy_.initial_backoff.count()) *
                std::pow(std::max(policy_.multiplier, 1.0), failures_ - 1);
  double capped = std::min(base, static_cast<double>(policy_.max_backoff.count()));
  // Jitter spreads the retries of many ranks or jobs that failed together.
  std::uniform_real_distribution<double> jitter(capped / 2, capped);
  std::chrono::milliseconds delay(static_cast<int64_t>(jitter(random_engine())));

  if (elapsed() + delay > policy_.max_elapsed) return std::nullopt;
  ++attempts_;
  return delay;
}

std::string random_token() {
  char token[17];
  std::snprintf(token, sizeof(token), "%016llx", static_cast<unsigned long long>(random_engine()()));
  return token;
}

}  // namespace persistence::detail
