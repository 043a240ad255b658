// Crash tests: real save jobs killed with SIGKILL, then checked by a fresh job.
//
// RandomKillLeavesNewestCompletedSave kills a random rank of a save job at a
// random moment. It waits for a random occurrence of a random save phase in the
// job's phase trace, then for a random delay shorter than that occurrence took
// in an uninterrupted run (at most kMaxDelayMicroseconds), and kills. A phase
// that no random kill hit gets one job whose rank stops itself in it.
// RetentionKeepsNewestCommittedStep stops a rank at every trace point of a
// save whose commit removes old steps, the removals included: the library's
// PERSISTENCE_TRACE_KILL hook makes the rank send itself SIGKILL there. Each
// kill directory is then checked by one verify job that took no part in any
// save (crash_saver verify).
//
// This program does not use MPI itself. It launches crash_saver under mpiexec,
// and for random kills it kills ranks from outside, as a node failure or the
// OOM killer would.
//
// Arguments after the GoogleTest ones: --ranks=N (world size of the jobs).
// PERSISTENCE_CRASH_SEED overrides the seed of the random kills.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
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
using std::chrono::microseconds;
using std::chrono::milliseconds;

int g_ranks = 2;

constexpr int kRandomKills = 50;
constexpr int kRandomSteps = 2;
constexpr uint64_t kDefaultSeed = 20261204;
constexpr int kMaxDelayMicroseconds = 20000;

// Phases of the save path, as the library's phase trace names them. A kill
// after "committed" and before the next "plan" falls between two saves.
const std::vector<std::string> kSavePhases = {"plan", "copy", "create", "write", "close", "rename", "committed"};
const std::vector<std::string> kRequiredPhases = {"plan", "copy", "create", "write", "close", "rename"};
const std::vector<std::string> kRetentionPhases = {"retention", "remove", "pruned"};

constexpr milliseconds kJobTimeout{120000};
constexpr milliseconds kExitAfterKillTimeout{30000};
constexpr milliseconds kOrphanTimeout{10000};

// A job started in its own process group, so that cleanup reaches mpiexec and
// every rank it started.
struct Job {
  pid_t pid = -1;
  bool finished = false;
  int status = -1;  // exit status, or 128 + signal number
};

// One line of the library's phase trace:
// "<phase> rank <r> step <s> <group>/<name> <CLOCK_MONOTONIC in us>".
struct TraceLine {
  std::string phase;
  int rank = -1;
  std::string subject;  // <group>/<name>
  int64_t time_us = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<TraceLine> read_trace(const std::string& path) {
  std::vector<TraceLine> lines;
  std::istringstream in(read_file(path));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    TraceLine parsed;
    std::string rank_word;
    std::string step_word;
    int64_t step = 0;
    fields >> parsed.phase >> rank_word >> parsed.rank >> step_word >> step >> parsed.subject >> parsed.time_us;
    if (!parsed.phase.empty()) lines.push_back(parsed);
  }
  return lines;
}

std::vector<std::string> saver_command(const std::vector<std::string>& arguments) {
  std::vector<std::string> command = {PERSISTENCE_MPIEXEC, "-n", std::to_string(g_ranks)};
  if (::getuid() == 0) command.push_back("--allow-run-as-root");
  command.push_back("--oversubscribe");
  command.push_back(PERSISTENCE_CRASH_SAVER);
  command.insert(command.end(), arguments.begin(), arguments.end());
  return command;
}

// Starts command in a new process group with the extra environment variables,
// output to log.
Job start(const std::vector<std::string>& command, const std::string& log,
          const std::vector<std::pair<std::string, std::string>>& environment = {}) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);
    for (const auto& [name, value] : environment) ::setenv(name.c_str(), value.c_str(), 1);
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

// Sends SIGKILL to every rank whose pid file exists in markers, and to the
// job's process group, then reaps mpiexec. Ranks write their pid files first
// thing, so none is missed once a trace line exists.
void kill_everything(Job& job, const std::string& markers) {
  for (int rank = 0; rank < g_ranks; ++rank) {
    const std::string pid_text = read_file(markers + "/pid." + std::to_string(rank));
    if (!pid_text.empty()) ::kill(std::stoi(pid_text), SIGKILL);
  }
  ::kill(-job.pid, SIGKILL);
  if (!job.finished) {
    int status = 0;
    ::waitpid(job.pid, &status, 0);
    job.finished = true;
    job.status = 128 + SIGKILL;
  }
}

// Runs a job to its end; kills it after timeout. Returns its exit status, or -1 on timeout.
int run_job(const std::vector<std::string>& command, const std::string& log, const std::string& markers,
            const std::vector<std::pair<std::string, std::string>>& environment = {}) {
  Job job = start(command, log, environment);
  const bool ended = wait_for(job, kJobTimeout);
  kill_everything(job, markers);
  return ended ? job.status : -1;
}

// Returns whether a process with this pid is alive; a zombie counts as gone.
bool process_alive(pid_t pid) {
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return false;
  const size_t close_paren = stat.rfind(')');
  return close_paren == std::string::npos || stat.size() < close_paren + 3 || stat[close_paren + 2] != 'Z';
}

// Fails when a rank of a finished job still runs kOrphanTimeout after cleanup.
// The wait is there because a process takes a moment to exit after SIGKILL on a busy machine.
void expect_no_orphans(const std::string& markers, const std::string& label) {
  for (int rank = 0; rank < g_ranks; ++rank) {
    const std::string pid_text = read_file(markers + "/pid." + std::to_string(rank));
    if (pid_text.empty()) continue;
    const pid_t pid = std::stoi(pid_text);
    const auto deadline = Clock::now() + kOrphanTimeout;
    while (process_alive(pid) && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(10));
    EXPECT_FALSE(process_alive(pid)) << label << ": rank " << rank << " (pid " << pid_text
                                     << ") still runs " << kOrphanTimeout.count() << " ms after cleanup";
  }
}

class CrashTest : public ::testing::Test {
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

  // Runs one verify job over dirs; expects it to pass and prints its output.
  void verify_all(const std::string& kind, const std::vector<std::string>& dirs) {
    std::vector<std::string> arguments = {"verify", kind};
    arguments.insert(arguments.end(), dirs.begin(), dirs.end());
    const std::string log = base_ + "/verify-" + kind + ".log";
    const int status = run_job(saver_command(arguments), log, base_);
    const std::string output = read_file(log);
    std::cout << "verify output:\n" << output;
    EXPECT_EQ(status, 0) << "the verify job of " << dirs.size() << " " << kind
                         << " kill directories failed (exit status " << status << ", -1 is a timeout); "
                         << "see the FAILED lines above";
  }

  std::string base_;
};

// ---------------------------------------------------------------------------
// Random kills

uint64_t crash_seed() {
  const char* text = std::getenv("PERSISTENCE_CRASH_SEED");
  return text != nullptr && *text != '\0' ? std::stoull(text) : kDefaultSeed;
}

std::map<std::string, int> count_phases(const std::vector<TraceLine>& lines) {
  std::map<std::string, int> counts;
  for (const TraceLine& line : lines) ++counts[line.phase];
  return counts;
}

// Returns, for every occurrence of every phase in lines (in file order), how
// long the rank stayed in it: the time to the rank's next trace line, or
// kMaxDelayMicroseconds for its last line.
std::map<std::string, std::vector<int64_t>> phase_durations(const std::vector<TraceLine>& lines) {
  std::map<std::string, std::vector<int64_t>> durations;
  for (size_t i = 0; i < lines.size(); ++i) {
    int64_t duration = kMaxDelayMicroseconds;
    for (size_t next = i + 1; next < lines.size(); ++next) {
      if (lines[next].rank != lines[i].rank) continue;
      duration = std::max<int64_t>(1, lines[next].time_us - lines[i].time_us);
      break;
    }
    durations[lines[i].phase].push_back(duration);
  }
  return durations;
}

// One random kill: the moment is drawn as the occurrence-th trace line of
// phase (any rank), then delay; the victim is rank.
struct KillPlan {
  std::string phase;
  int occurrence = 1;
  int delay_us = 0;
  int rank = 0;
};

// The outcome of one kill: the phase of the newest trace line when SIGKILL was
// sent, or empty when the job ended before the kill.
struct KillOutcome {
  std::string phase_hit;
  std::string failure;
};

// Waits until the trace contains plan.occurrence lines of plan.phase, sleeps the
// delay, and kills the planned rank.
KillOutcome kill_once(const std::string& dir, const KillPlan& plan) {
  const std::string trace = dir + "/trace";
  const std::string markers = dir + "/markers";
  Job job = start(saver_command({"save", dir + "/root", markers, std::to_string(kRandomSteps)}), dir + "/save.log",
                  {{"PERSISTENCE_TRACE_PHASES", trace}});
  KillOutcome outcome;

  const auto deadline = Clock::now() + kJobTimeout;
  off_t seen_size = -1;
  bool reached = false;
  while (!reached && !poll(job) && Clock::now() < deadline) {
    struct stat info {};
    if (::stat(trace.c_str(), &info) == 0 && info.st_size != seen_size) {
      seen_size = info.st_size;
      reached = count_phases(read_trace(trace))[plan.phase] >= plan.occurrence;
    }
    if (!reached) std::this_thread::sleep_for(microseconds(200));
  }
  if (!reached) {
    outcome.failure = poll(job) ? "the job ended before the planned moment" : "timed out before the planned moment";
    kill_everything(job, markers);
    return outcome;
  }

  std::this_thread::sleep_for(microseconds(plan.delay_us));
  const std::vector<TraceLine> lines = read_trace(trace);
  const std::string pid_text = read_file(markers + "/pid." + std::to_string(plan.rank));
  if (!poll(job) && !pid_text.empty() && ::kill(std::stoi(pid_text), SIGKILL) == 0) {
    outcome.phase_hit = lines.back().phase;
  }
  if (!wait_for(job, kExitAfterKillTimeout)) {
    std::cout << dir << ": mpiexec did not end within " << kExitAfterKillTimeout.count()
              << " ms of the kill; killing its process group\n";
  }
  kill_everything(job, markers);
  return outcome;
}

TEST_F(CrashTest, RandomKillLeavesNewestCompletedSave) {
  const uint64_t seed = crash_seed();
  std::cout << "seed " << seed << " (set PERSISTENCE_CRASH_SEED to change it), " << g_ranks << " ranks\n";
  std::mt19937_64 generator(seed);

  // An uninterrupted run lists each phase occurrence and how long it lasted.
  const std::string calibration = make_run("calibration");
  const int calibration_status =
      run_job(saver_command({"save", calibration + "/root", calibration + "/markers", std::to_string(kRandomSteps)}),
              calibration + "/save.log", calibration + "/markers",
              {{"PERSISTENCE_TRACE_PHASES", calibration + "/trace"}});
  ASSERT_EQ(calibration_status, 0) << "uninterrupted save failed:\n" << read_file(calibration + "/save.log");
  std::map<std::string, std::vector<int64_t>> durations = phase_durations(read_trace(calibration + "/trace"));
  for (const std::string& phase : kSavePhases) {
    ASSERT_FALSE(durations[phase].empty()) << "the uninterrupted save traced no '" << phase << "' phase";
  }

  std::vector<std::string> dirs = {calibration};
  std::map<std::string, int> hits;
  int kills = 0;
  int attempts = 0;
  // Runs one planned kill and counts it; returns false when the test must stop.
  auto kill_and_count = [&](const KillPlan& plan) {
    const std::string label = "kill" + std::to_string(attempts++);
    const std::string dir = make_run(label);
    const KillOutcome outcome = kill_once(dir, plan);
    expect_no_orphans(dir + "/markers", label);
    EXPECT_TRUE(outcome.failure.empty()) << label << " (" << plan.phase << " #" << plan.occurrence << "): "
                                         << outcome.failure << "\nsave log:\n" << read_file(dir + "/save.log");
    if (!outcome.failure.empty()) return false;
    if (outcome.phase_hit.empty()) {
      std::cout << label << ": the job ended before the kill; not counted\n";
      return true;
    }
    ++kills;
    ++hits[outcome.phase_hit];
    dirs.push_back(dir);
    std::cout << label << ": waited for " << plan.phase << " #" << plan.occurrence << " + " << plan.delay_us
              << " us, killed rank " << plan.rank << " during " << outcome.phase_hit << "\n";
    return true;
  };

  while (kills < kRandomKills && attempts < 2 * kRandomKills) {
    KillPlan plan;
    plan.phase = kSavePhases[generator() % kSavePhases.size()];
    // The delay stays within the calibration run's time in that phase, so the
    // kill lands in it unless this run is faster or the kill comes late.
    const std::vector<int64_t>& phase_times = durations[plan.phase];
    plan.occurrence = 1 + static_cast<int>(generator() % phase_times.size());
    const int64_t longest = std::min<int64_t>(phase_times[plan.occurrence - 1], kMaxDelayMicroseconds);
    plan.delay_us = static_cast<int>(generator() % static_cast<uint64_t>(longest));
    plan.rank = static_cast<int>(generator() % static_cast<uint64_t>(g_ranks));
    if (!kill_and_count(plan)) return;
  }
  ASSERT_EQ(kills, kRandomKills) << "only " << kills << " of " << attempts << " jobs were killed before they ended";

  // Timing decides which phase a delayed kill lands in, so a short phase can
  // go without a hit. The plan of a save whose plan is cached takes about a
  // millisecond. For each such phase one more job stops a rank right after
  // it traces that phase (PERSISTENCE_TRACE_KILL). The line is drawn from the
  // uninterrupted run, since every rank traces the same lines in every run.
  std::map<std::string, std::vector<std::pair<int, int>>> phase_lines;  // phase: (rank, line of that rank)
  std::map<int, int> lines_of_rank;
  for (const TraceLine& line : read_trace(calibration + "/trace")) {
    phase_lines[line.phase].emplace_back(line.rank, ++lines_of_rank[line.rank]);
  }
  for (const std::string& phase : kRequiredPhases) {
    if (hits[phase] > 0) continue;
    const std::vector<std::pair<int, int>>& candidates = phase_lines[phase];
    ASSERT_FALSE(candidates.empty()) << "the uninterrupted save traced no '" << phase << "' phase";
    const auto [rank, line] = candidates[generator() % candidates.size()];
    const std::string label = "kill" + std::to_string(attempts++);
    const std::string dir = make_run(label);
    std::cout << "no kill hit '" << phase << "'; " << label << " stops rank " << rank << " after its trace line "
              << line << "\n";
    const int status =
        run_job(saver_command({"save", dir + "/root", dir + "/markers", std::to_string(kRandomSteps)}),
                dir + "/save.log", dir + "/markers",
                {{"PERSISTENCE_TRACE_PHASES", dir + "/trace"},
                 {"PERSISTENCE_TRACE_KILL", std::to_string(rank) + ":" + std::to_string(line)}});
    expect_no_orphans(dir + "/markers", label);
    EXPECT_NE(status, 0) << label << ": rank " << rank << " was to stop during " << phase
                         << ", but the job exited with 0";
    ++hits[phase];
    dirs.push_back(dir);
  }

  std::cout << "kills per phase at " << g_ranks << " ranks:";
  for (const auto& [phase, count] : hits) std::cout << " " << phase << "=" << count;
  std::cout << " (committed: between two saves)\n";
  for (const std::string& phase : kRequiredPhases) {
    EXPECT_GT(hits[phase], 0) << "no kill hit the '" << phase << "' phase with seed " << seed;
  }

  verify_all("random", dirs);
}

// ---------------------------------------------------------------------------
// Kills at every point of a save that triggers retention

TEST_F(CrashTest, RetentionKeepsNewestCommittedStep) {
  // Steps 1..4 without retention, copied into every run.
  const std::string setup = make_run("setup");
  ASSERT_EQ(run_job(saver_command({"retention-setup", setup + "/root", setup + "/markers"}), setup + "/save.log",
                    setup + "/markers"),
            0)
      << "saving steps 1 to 4 failed:\n" << read_file(setup + "/save.log");
  auto make_retention_run = [&](const std::string& label) {
    const std::string dir = make_run(label);
    fs::copy(setup + "/root", dir + "/root", fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    fs::copy_file(setup + "/markers/completed", dir + "/markers/completed");
    return dir;
  };

  // An uninterrupted run lists the crash points: every trace line of each rank.
  const std::string calibration = make_retention_run("calibration");
  const int calibration_status =
      run_job(saver_command({"retention", calibration + "/root", calibration + "/markers"}),
              calibration + "/save.log", calibration + "/markers",
              {{"PERSISTENCE_TRACE_PHASES", calibration + "/trace"}});
  ASSERT_EQ(calibration_status, 0) << "uninterrupted retention save failed:\n" << read_file(calibration + "/save.log");
  const std::vector<TraceLine> points = read_trace(calibration + "/trace");
  const std::map<std::string, int> phases = count_phases(points);
  for (const std::string& phase : kRetentionPhases) {
    ASSERT_GT(phases.count(phase), 0u) << "the uninterrupted retention save traced no '" << phase << "' phase";
  }
  ASSERT_EQ(phases.at("remove"), 2) << "retention should remove steps 1 and 3";

  // Kill rank 0 right after each of its trace lines, and rank 1 after each of
  // its lines in the last save before the removals. Rank 1 runs the same
  // collective phases as rank 0 in every save, and none of the retention.
  std::vector<std::string> dirs = {calibration};
  std::map<int, int> lines_of_rank;
  std::map<std::string, int> hits;
  for (const TraceLine& point : points) {
    const int line = ++lines_of_rank[point.rank];
    if (point.rank != 0 && point.subject != "optimizers/optimizer") continue;
    const std::string label = "rank" + std::to_string(point.rank) + "-line" + std::to_string(line);
    const std::string dir = make_retention_run(label);
    const std::string kill_at = std::to_string(point.rank) + ":" + std::to_string(line);
    const int status = run_job(saver_command({"retention", dir + "/root", dir + "/markers"}), dir + "/save.log",
                               dir + "/markers",
                               {{"PERSISTENCE_TRACE_PHASES", dir + "/trace"}, {"PERSISTENCE_TRACE_KILL", kill_at}});
    expect_no_orphans(dir + "/markers", label);
    EXPECT_NE(status, 0) << label << ": the job was to be killed after " << point.phase << ", but it exited with 0";
    ++hits[point.phase];
    dirs.push_back(dir);
  }

  std::cout << "retention crash points killed:";
  for (const auto& [phase, count] : hits) std::cout << " " << phase << "=" << count;
  std::cout << "\n";
  verify_all("retention", dirs);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument.rfind("--ranks=", 0) == 0) {
      g_ranks = std::stoi(argument.substr(8));
    } else {
      std::cerr << "unknown argument '" << argument << "'; expected --ranks=N\n";
      return 2;
    }
  }
  return RUN_ALL_TESTS();
}
