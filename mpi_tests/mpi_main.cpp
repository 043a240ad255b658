// GoogleTest main for tests run under mpiexec. Rank 0 prints the usual output.
// A failure on any rank fails the test on every rank, and rank 0 prints the
// other ranks' failure messages in rank order, each prefixed with its rank.
// The exit status is nonzero on every rank when anything failed anywhere.
//
// A test that runs longer than PERSISTENCE_TEST_TIMEOUT_SECONDS (default 120)
// aborts the whole job with a message naming the test and the rank. Without
// this, a collective that one rank never reaches would hang until ctest kills
// the job, and the output would not say where it stopped.

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

// Aborts the MPI job when one test runs longer than its limit.
class Watchdog {
 public:
  explicit Watchdog(std::chrono::seconds limit) : limit_(limit), thread_([this] { run(); }) {}

  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  void start(const std::string& test_name) {
    std::lock_guard<std::mutex> lock(mutex_);
    test_name_ = test_name;
    deadline_ = std::chrono::steady_clock::now() + limit_;
    armed_ = true;
    wake_.notify_all();
  }

  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      if (!armed_) {
        wake_.wait(lock);
        continue;
      }
      if (wake_.wait_until(lock, deadline_) == std::cv_status::timeout && armed_ &&
          std::chrono::steady_clock::now() >= deadline_) {
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        std::fprintf(stderr, "[rank %d] test %s is still running after %lld s; aborting the MPI job\n", rank,
                     test_name_.c_str(), static_cast<long long>(limit_.count()));
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 3);
      }
    }
  }

  std::chrono::seconds limit_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::string test_name_;
  std::chrono::steady_clock::time_point deadline_;
  bool armed_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

// Wraps the default result printer (present on rank 0 only) and, at the end of
// each test, agrees across ranks on whether the test failed before the printer
// reports it.
class RankAgreementListener : public ::testing::TestEventListener {
 public:
  RankAgreementListener(std::unique_ptr<::testing::TestEventListener> printer, std::chrono::seconds limit)
      : printer_(std::move(printer)), watchdog_(limit) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }

  void OnTestProgramStart(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnTestProgramStart(unit_test);
  }
  void OnTestIterationStart(const ::testing::UnitTest& unit_test, int iteration) override {
    if (printer_) printer_->OnTestIterationStart(unit_test, iteration);
  }
  void OnEnvironmentsSetUpStart(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnEnvironmentsSetUpStart(unit_test);
  }
  void OnEnvironmentsSetUpEnd(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnEnvironmentsSetUpEnd(unit_test);
  }
  void OnTestSuiteStart(const ::testing::TestSuite& suite) override {
    if (printer_) printer_->OnTestSuiteStart(suite);
  }
#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
  void OnTestCaseStart(const ::testing::TestCase& test_case) override {
    if (printer_) printer_->OnTestCaseStart(test_case);
  }
#endif
  void OnTestDisabled(const ::testing::TestInfo& info) override {
    if (printer_) printer_->OnTestDisabled(info);
  }

  void OnTestStart(const ::testing::TestInfo& info) override {
    messages_.clear();
    watchdog_.start(std::string(info.test_suite_name()) + "." + info.name());
    if (printer_) printer_->OnTestStart(info);
  }

  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (result.failed() && !agreeing_) {
      std::ostringstream text;
      text << (result.file_name() ? result.file_name() : "unknown file") << ":" << result.line_number() << ": "
           << result.message() << "\n";
      messages_ += text.str();
    }
    if (printer_) printer_->OnTestPartResult(result);
  }

  void OnTestEnd(const ::testing::TestInfo& info) override {
    watchdog_.stop();
    agree_on_failure(info);
    if (printer_) printer_->OnTestEnd(info);
  }

  void OnTestSuiteEnd(const ::testing::TestSuite& suite) override {
    if (printer_) printer_->OnTestSuiteEnd(suite);
  }
#ifndef GTEST_REMOVE_LEGACY_TEST_CASEAPI_
  void OnTestCaseEnd(const ::testing::TestCase& test_case) override {
    if (printer_) printer_->OnTestCaseEnd(test_case);
  }
#endif
  void OnEnvironmentsTearDownStart(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnEnvironmentsTearDownStart(unit_test);
  }
  void OnEnvironmentsTearDownEnd(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnEnvironmentsTearDownEnd(unit_test);
  }
  void OnTestIterationEnd(const ::testing::UnitTest& unit_test, int iteration) override {
    if (printer_) printer_->OnTestIterationEnd(unit_test, iteration);
  }
  void OnTestProgramEnd(const ::testing::UnitTest& unit_test) override {
    if (printer_) printer_->OnTestProgramEnd(unit_test);
  }

 private:
  // Shares every rank's failed flag, prints the other ranks' messages on rank
  // 0, and adds a failure on each rank that passed while another failed.
  void agree_on_failure(const ::testing::TestInfo& info) {
    const int failed_here = info.result()->Failed() ? 1 : 0;
    std::vector<int> failed(size_, 0);
    MPI_Allgather(&failed_here, 1, MPI_INT, failed.data(), 1, MPI_INT, MPI_COMM_WORLD);

    std::string failed_ranks;
    for (int r = 0; r < size_; ++r) {
      if (failed[r]) failed_ranks += (failed_ranks.empty() ? "" : ", ") + std::to_string(r);
    }
    if (failed_ranks.empty()) {
      return;
    }

    print_other_ranks_messages();
    if (!failed_here) {
      agreeing_ = true;
      ADD_FAILURE() << "this test failed on rank(s) " << failed_ranks << ", whose messages are printed above";
      agreeing_ = false;
    }
  }

  // Collective: gathers every rank's failure text to rank 0 and prints ranks 1..n-1.
  void print_other_ranks_messages() {
    const int length = static_cast<int>(messages_.size());
    std::vector<int> lengths(size_, 0);
    MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);

    std::vector<int> offsets(size_, 0);
    int total = 0;
    for (int r = 0; r < size_; ++r) {
      offsets[r] = total;
      total += lengths[r];
    }
    std::string all(rank_ == 0 ? static_cast<size_t>(total) : 0, '\0');
    MPI_Gatherv(messages_.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR, 0,
                MPI_COMM_WORLD);
    if (rank_ != 0) {
      return;
    }

    for (int r = 1; r < size_; ++r) {
      std::istringstream lines(all.substr(offsets[r], lengths[r]));
      std::string line;
      while (std::getline(lines, line)) {
        std::printf("[rank %d] %s\n", r, line.c_str());
      }
    }
    std::fflush(stdout);
  }

  std::unique_ptr<::testing::TestEventListener> printer_;
  Watchdog watchdog_;
  int rank_ = 0;
  int size_ = 1;
  std::string messages_;
  bool agreeing_ = false;
};

std::chrono::seconds test_time_limit() {
  const char* value = std::getenv("PERSISTENCE_TEST_TIMEOUT_SECONDS");
  const long seconds = value ? std::strtol(value, nullptr, 10) : 0;
  return std::chrono::seconds(seconds > 0 ? seconds : 120);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (provided < MPI_THREAD_MULTIPLE) {
    std::fprintf(stderr, "[rank %d] MPI provides thread level %d, but the tests need MPI_THREAD_MULTIPLE\n", rank,
                 provided);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }

  ::testing::InitGoogleTest(&argc, argv);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  std::unique_ptr<::testing::TestEventListener> printer(listeners.Release(listeners.default_result_printer()));
  if (rank != 0) {
    // Only rank 0 prints and writes --gtest_output reports, so ranks do not
    // overwrite one another's files.
    printer.reset();
    delete listeners.Release(listeners.default_xml_generator());
  }
  listeners.Append(new RankAgreementListener(std::move(printer), test_time_limit()));

  const int local_status = RUN_ALL_TESTS();
  int status = 0;
  MPI_Allreduce(&local_status, &status, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return status;
}
