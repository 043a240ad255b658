// Crash test: kills a 2-rank save with SIGKILL at points spread across the
// save of step 2. A fresh job then checks that load_last_step returns step 1
// or a step 2 whose completed saves are whole, never a partial one.
//
// This program does not use MPI itself. It launches crash_saver under mpiexec
// and kills the ranks from outside, as a node failure or the OOM killer would.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef PERSISTENCE_MPIEXEC
#error "PERSISTENCE_MPIEXEC must name the mpiexec executable"
#endif
#ifndef PERSISTENCE_CRASH_SAVER
#error "PERSISTENCE_CRASH_SAVER must name the crash_saver executable"
#endif

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kRanks = 2;
constexpr int kKillPoints = 10;

// A job started in its own process group, so that cleanup can reach every
// process it started.
struct Job {
  pid_t pid = -1;
  bool finished = false;
  int status = -1;  // exit status, or 128 + signal number
};

std::vector<std::string> mpiexec_command(const std::string& mode, const std::string& root, const std::string& markers) {
  std::vector<std::string> command = {PERSISTENCE_MPIEXEC, "-n", std::to_string(kRanks)};
  if (::getuid() == 0) command.push_back("--allow-run-as-root");
  command.push_back("--oversubscribe");
  for (const std::string& argument : {std::string(PERSISTENCE_CRASH_SAVER), mode, root, markers}) {
    command.push_back(argument);
  }
  return command;
}

Job start(const std::vector<std::string>& command, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    std::vector<char*> argv;
    for (const std::string& argument : command) argv.push_back(const_cast<char*>(argument.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::_Exit(127);
  }
  ::setpgid(pid, pid);  // also here, so the group exists before the child runs
  Job job;
  job.pid = pid;
  return job;
}

// Reaps the job if it has ended; returns whether it has.
bool poll(Job& job) {
  if (job.finished) return true;
  int status = 0;
  if (::waitpid(job.pid, &status, WNOHANG) != job.pid) return false;
  job.finished = true;
  job.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

// Waits for the job to end; returns false on timeout.
bool wait_for(Job& job, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!poll(job)) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

// Kills whatever is left of the job's process group and reaps mpiexec.
void kill_job(Job& job) {
  ::kill(-job.pid, SIGKILL);
  if (!job.finished) {
    int status = 0;
    ::waitpid(job.pid, &status, 0);
    job.finished = true;
    job.status = 128 + SIGKILL;
  }
}

// Waits until path exists; returns false on timeout or when the job ends first.
bool wait_for_file(const std::string& path, Job& job, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (fs::exists(path)) return true;
    if (poll(job)) return fs::exists(path);
    std::this_thread::sleep_for(milliseconds(1));
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Returns the "loaded step ..." line of verify output, or "no outcome line".
std::string outcome_line(const std::string& output) {
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("loaded ", 0) == 0) return line;
  }
  return "no outcome line";
}

class CrashDuringSave : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/persistence-crash-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr) << "mkdtemp " << pattern << ": " << std::strerror(errno);
    base_ = pattern;
  }

  void TearDown() override {
    if (HasFailure()) {
      std::cout << "kept " << base_ << " for inspection\n";
    } else {
      fs::remove_all(base_);
    }
  }

  // Creates <base>/<label>/{root,markers} and returns the label's directory.
  std::string make_run(const std::string& label) {
    const std::string dir = base_ + "/" + label;
    fs::create_directories(dir + "/root");
    fs::create_directories(dir + "/markers");
    return dir;
  }

  // Runs the verify job on dir and returns its exit status (-1 on timeout) and output.
  std::pair<int, std::string> verify(const std::string& dir) {
    Job job = start(mpiexec_command("verify", dir + "/root", dir + "/markers"), dir + "/verify.log");
    if (!wait_for(job, milliseconds(120000))) {
      kill_job(job);
      return {-1, read_file(dir + "/verify.log") + "\n(verify timed out after 120 s)"};
    }
    return {job.status, read_file(dir + "/verify.log")};
  }

  std::string base_;
};

TEST_F(CrashDuringSave, EveryKillPointLeavesLoadableStep) {
  // An uninterrupted run measures how long the save of step 2 takes.
  const std::string calibration = make_run("calibration");
  Job full = start(mpiexec_command("save", calibration + "/root", calibration + "/markers"),
                   calibration + "/save.log");
  if (!wait_for(full, milliseconds(180000))) kill_job(full);
  ASSERT_EQ(full.status, 0) << "uninterrupted save failed:\n" << read_file(calibration + "/save.log");
  const auto [calibration_status, calibration_output] = verify(calibration);
  ASSERT_EQ(calibration_status, 0) << "verify after an uninterrupted save:\n" << calibration_output;
  ASSERT_NE(calibration_output.find("loaded step 2 with ema model optimizer"), std::string::npos)
      << calibration_output;
  const int save_ms = std::max(1, std::stoi(read_file(calibration + "/markers/step2_committed")));

  std::string summary;
  for (int point = 0; point < kKillPoints; ++point) {
    // Kill points run from the start of step 2 to a little past its end. Odd
    // points kill rank 1 only, so mpiexec's cleanup ends rank 0.
    const int delay_ms = save_ms * point * 9 / (8 * (kKillPoints - 1));
    const bool all_ranks = point % 2 == 0;
    const std::string label = "kill" + std::to_string(point);
    const std::string dir = make_run(label);

    Job job = start(mpiexec_command("save", dir + "/root", dir + "/markers"), dir + "/save.log");
    const bool started = wait_for_file(dir + "/markers/step2_started", job, milliseconds(180000));
    if (!started) kill_job(job);
    ASSERT_TRUE(started) << "kill point " << point << ": step 2 never started:\n" << read_file(dir + "/save.log");

    std::this_thread::sleep_for(milliseconds(delay_ms));
    for (int rank = all_ranks ? 0 : 1; rank < kRanks; ++rank) {
      const pid_t pid = std::stoi(read_file(dir + "/markers/pid." + std::to_string(rank)));
      ::kill(pid, SIGKILL);
    }
    if (!wait_for(job, milliseconds(30000))) kill_job(job);
    ::kill(-job.pid, SIGKILL);  // any rank mpiexec left behind

    const auto [status, output] = verify(dir);
    EXPECT_EQ(status, 0) << "kill point " << point << " (" << delay_ms << " ms into step 2, "
                         << (all_ranks ? "all ranks" : "rank 1") << "): verify failed:\n"
                         << output << "\nsave log:\n" << read_file(dir + "/save.log");
    summary += "  " + std::to_string(delay_ms) + " ms, " + (all_ranks ? "all ranks" : "rank 1") + ": " +
               outcome_line(output) + "\n";
  }
  std::cout << "step 2 took " << save_ms << " ms uninterrupted; outcomes by kill point:\n" << summary;
}

}  // namespace
