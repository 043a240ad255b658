#include "storage/command.h"

#include <persistence/errors.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

extern char** environ;

namespace persistence::detail {
namespace {

// Owns the two ends of a pipe; both are close-on-exec.
class Pipe {
 public:
  Pipe() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) {
      throw IoError(std::string("Cannot create a pipe for a child process: ") + std::strerror(errno), {});
    }
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    close_read();
    close_write();
  }
  int read_end() const { return fds_[0]; }
  int write_end() const { return fds_[1]; }
  void close_read() {
    if (fds_[0] >= 0) ::close(fds_[0]);
    fds_[0] = -1;
  }
  void close_write() {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }

 private:
  int fds_[2] = {-1, -1};
};

class SpawnActions {
 public:
  SpawnActions() { posix_spawn_file_actions_init(&actions_); }
  ~SpawnActions() { posix_spawn_file_actions_destroy(&actions_); }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
  posix_spawn_file_actions_t* get() { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
};

// Reads what is available on fd into text; returns false at end of file.
bool drain(int fd, std::string& text) {
  char buffer[4096];
  ssize_t n = ::read(fd, buffer, sizeof(buffer));
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  text.append(buffer, static_cast<size_t>(n));
  return true;
}

// Collects both outputs until the child closes them or the deadline passes.
// Returns false on timeout.
bool collect_output(Pipe& out, Pipe& err, CommandResult& result, std::chrono::steady_clock::time_point deadline) {
  bool out_open = true;
  bool err_open = true;
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;

    pollfd fds[2] = {{out_open ? out.read_end() : -1, POLLIN, 0}, {err_open ? err.read_end() : -1, POLLIN, 0}};
    int ready = ::poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) return false;
    if (ready <= 0) continue;
    if (out_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) out_open = drain(out.read_end(), result.output);
    if (err_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) err_open = drain(err.read_end(), result.error);
  }
  return true;
}

}  // namespace

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  if (argv.empty()) throw InvalidArgumentError("run_command needs a program to run", {});
  Pipe out;
  Pipe err;
  SpawnActions actions;
  posix_spawn_file_actions_addopen(actions.get(), STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(actions.get(), out.write_end(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(actions.get(), err.write_end(), STDERR_FILENO);

  std::vector<char*> arguments;
  for (const auto& argument : argv) arguments.push_back(const_cast<char*>(argument.c_str()));
  arguments.push_back(nullptr);

  // A process group of its own lets a timeout kill the command together with
  // any helper processes it started.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = 0;
  int spawn_error = ::posix_spawnp(&pid, argv[0].c_str(), actions.get(), &attributes, arguments.data(), environ);
  posix_spawnattr_destroy(&attributes);
  if (spawn_error != 0) {
    throw IoError("Cannot run '" + argv[0] + "': " + std::strerror(spawn_error), {},
                  "Check that the command exists and is executable");
  }
  out.close_write();
  err.close_write();

  CommandResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool finished = collect_output(out, err, result, deadline);

  int status = 0;
  bool reaped = false;
  while (finished && !reaped) {
    pid_t waited = ::waitpid(pid, &status, WNOHANG);
    reaped = waited == pid;
    if (waited < 0 && errno != EINTR) {
      throw IoError("Cannot wait for '" + argv[0] + "': " + std::strerror(errno), {});
    }
    if (reaped) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      finished = false;
    } else {
      ::usleep(10000);
    }
  }
  if (!finished) {
    // The group was created for this command above; nothing else runs in it.
    ::kill(-pid, SIGKILL);
    result.timed_out = true;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }

  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

}  // namespace persistence::detail
