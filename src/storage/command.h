// Runs an external program without a shell and collects its output.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace persistence::detail {

struct CommandResult {
  int exit_code = -1;      // exit status, or -1 when killed by a signal
  int signal = 0;          // terminating signal, or 0
  bool timed_out = false;  // killed with SIGKILL after the timeout
  std::string output;      // standard output
  std::string error;       // standard error
};

// Starts argv[0] (looked up in PATH when it has no '/') with argv as its
// arguments and standard input from /dev/null, and waits until it exits or
// timeout passes, in which case it is killed. The environment is inherited.
// Throws IoError when the program cannot be started.
CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

}  // namespace persistence::detail
