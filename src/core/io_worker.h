// The background I/O thread of a manager. Parallel HDF5 is not thread-safe,
// so this thread owns every HDF5 and MPI-IO call of background saves. Jobs run
// one at a time in submission order, which is the same on every rank.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace persistence::detail {

// A job's identity, used in logs and in the error the next manager call throws.
struct JobLabel {
  uint64_t sequence = 0;
  int64_t step = 0;
  std::string description;  // e.g. "model 'ema'"
};

class IoWorker {
 public:
  IoWorker();
  ~IoWorker();  // stops after the queued jobs; never throws
  IoWorker(const IoWorker&) = delete;
  IoWorker& operator=(const IoWorker&) = delete;

  // Queues work. Once a job has failed, later jobs are skipped, because they
  // may depend on the failed one (a later save of the same step extends its file).
  void submit(JobLabel label, std::function<void()> work);

  // Blocks until every submitted job has finished or been skipped.
  void drain();

  // Blocks until the job with this sequence number (and every earlier one) has finished.
  void wait_for(uint64_t sequence);

  // The first failure, if any: its label and exception.
  std::optional<std::pair<JobLabel, std::exception_ptr>> failure() const;

  // Drops every queued job that has not started; the running one finishes.
  void abandon();

  // Forgets the failure, so later jobs run again.
  void clear_failure();

 private:
  void run();

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::pair<JobLabel, std::function<void()>>> queue_;
  bool running_job_ = false;
  uint64_t finished_through_ = 0;  // jobs finish in submission order
  bool stopping_ = false;
  std::optional<std::pair<JobLabel, std::exception_ptr>> failure_;
  std::thread thread_;
};

}  // namespace persistence::detail
