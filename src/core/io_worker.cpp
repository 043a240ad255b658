#include "core/io_worker.h"

#include "core/logging.h"

namespace persistence::detail {

IoWorker::IoWorker() : thread_([this] { run(); }) {}

IoWorker::~IoWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void IoWorker::submit(JobLabel label, std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.emplace_back(std::move(label), std::move(work));
  }
  changed_.notify_all();
}

void IoWorker::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return queue_.empty() && !running_job_; });
}

void IoWorker::wait_for(uint64_t sequence) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return finished_through_ >= sequence; });
}

std::optional<std::pair<JobLabel, std::exception_ptr>> IoWorker::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

void IoWorker::abandon() {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_.clear();
}

void IoWorker::clear_failure() {
  std::lock_guard<std::mutex> lock(mutex_);
  failure_.reset();
}

void IoWorker::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    changed_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping with nothing left

    auto [label, work] = std::move(queue_.front());
    queue_.pop_front();
    if (failure_) {
      logger().warn("Skipping the save of {} at step {} because an earlier save failed", label.description,
                    label.step);
      finished_through_ = label.sequence;
      changed_.notify_all();
      continue;
    }
    running_job_ = true;
    lock.unlock();

    std::exception_ptr error;
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }

    lock.lock();
    running_job_ = false;
    finished_through_ = label.sequence;
    if (error && !failure_) failure_ = std::make_pair(label, error);
    changed_.notify_all();
  }
}

}  // namespace persistence::detail
