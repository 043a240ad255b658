#include "async_support.h"

#include "core/logging.h"
#include "h5/handle.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace persistence::testing {

WriteGate::WriteGate() : holder_([this] { hold(); }) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return held_; });
}

WriteGate::~WriteGate() { release(); }

void WriteGate::release() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!release_at_ || *release_at_ > std::chrono::steady_clock::now()) {
      release_at_ = std::chrono::steady_clock::now();
    }
  }
  changed_.notify_all();
  if (holder_.joinable()) holder_.join();
}

void WriteGate::release_after(std::chrono::milliseconds delay) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    release_at_ = std::chrono::steady_clock::now() + delay;
  }
  changed_.notify_all();
}

void WriteGate::hold() {
  std::lock_guard<std::recursive_mutex> library_lock(detail::h5::library_mutex());
  std::unique_lock<std::mutex> lock(mutex_);
  held_ = true;
  changed_.notify_all();
  changed_.wait(lock, [this] { return release_at_.has_value(); });
  changed_.wait_until(lock, *release_at_, [this] { return std::chrono::steady_clock::now() >= *release_at_; });
}

// Keeps each message's level and payload; base_sink serializes sink_it_ calls
// with its mutex_, which messages() takes as well.
class CapturingSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<LogMessage> messages() {
    std::lock_guard<std::mutex> lock(mutex_);
    return messages_;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& message) override {
    const auto level = spdlog::level::to_string_view(message.level);
    messages_.push_back(LogMessage{std::string(level.data(), level.size()),
                                   std::string(message.payload.data(), message.payload.size())});
  }

  void flush_() override {}

 private:
  std::vector<LogMessage> messages_;
};

LogCapture::LogCapture() : sink_(std::make_shared<CapturingSink>()) {
  detail::logger().sinks().push_back(sink_);
}

LogCapture::~LogCapture() {
  auto& sinks = detail::logger().sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
}

std::vector<LogMessage> LogCapture::messages() const { return sink_->messages(); }

std::vector<LogMessage> LogCapture::find(const std::string& level, const std::string& fragment) const {
  std::vector<LogMessage> found;
  for (auto& message : messages()) {
    if (message.level == level && message.text.find(fragment) != std::string::npos) found.push_back(message);
  }
  return found;
}

}  // namespace persistence::testing
