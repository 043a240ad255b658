// Helpers shared by the MPI test suites: rank accessors, a temporary directory
// that every rank agrees on, directory listings, shell commands, and checks
// that name the key, rank and step of a failure.
//
// Every function marked collective uses MPI_COMM_WORLD and must be called by
// all ranks in the same order.
#pragma once

#include <persistence/errors.h>

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

namespace persistence::testing {

int world_rank();
int world_size();

// Collective. True on every rank when `local` is true on every rank.
bool all_ranks(bool local);

// Collective. Waits for every rank of MPI_COMM_WORLD.
void barrier();

// A directory that exists for the lifetime of the object and has the same path
// on every rank. The constructor and destructor are collective. Rank 0 creates
// the directory with mkdtemp under $TMPDIR (or /tmp) and broadcasts the path.
// The destructor waits for every rank, then rank 0 removes the tree.
class SharedTempDir {
 public:
  explicit SharedTempDir(const std::string& label = "test");
  ~SharedTempDir();

  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;

  const std::string& path() const noexcept { return path_; }

  // Returns path() + "/" + relative.
  std::string join(const std::string& relative) const;

 private:
  std::string path_;
};

// Exit status and combined stdout and stderr of a shell command.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};

// Runs command through /bin/sh on the calling rank only.
CommandResult run_command(const std::string& command);

// Returns text quoted for /bin/sh.
std::string shell_quote(const std::string& text);

// Returns "<relative path> <size in bytes>" for every entry under dir, hidden
// names included, sorted; directories show "dir". A missing dir lists as empty.
std::vector<std::string> list_tree(const std::string& dir);

// Returns the file name of a step inside a save root: step_<12 digits>.h5.
std::string step_file_name(int64_t step);

// Returns "key '<key>', rank <r>, step <s>" for failure messages.
std::string where(const std::string& key, int64_t step);

// Returns "rank <r>, step <s>" for failure messages about a whole step.
std::string where(int64_t step);

// Returns "key '<key>', rank <r>" for failure messages outside any step.
std::string where(const std::string& key);

// Returns "rank <r>" for failure messages outside any step.
std::string where();

// Returns a tensor of the given shape and dtype whose values depend only on
// seed, so every rank builds the same copy. Element i is sin(0.37 i + seed)
// for floating dtypes, i + seed (wrapping) for integers, and (i + seed) odd for bool.
at::Tensor deterministic_tensor(const std::vector<int64_t>& shape, c10::ScalarType dtype, double seed);

// Succeeds when both tensors have the same dtype, shape and bytes; otherwise
// describes the first difference. Non-contiguous tensors are compared by value.
::testing::AssertionResult bitwise_equal(const at::Tensor& expected, const at::Tensor& actual);

// Returns the demangled form of a type name from std::type_info::name().
std::string demangle(const char* mangled);

// Returns the demangled name of the dynamic type of error.
std::string type_name(const std::exception& error);

// Runs fn and succeeds when it throws ExceptionT whose what() contains every
// fragment. Describes any other outcome: no exception, another type, or a
// message that lacks a fragment.
template <typename ExceptionT, typename Fn>
::testing::AssertionResult throws_error(Fn&& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const ExceptionT& error) {
    const std::string message = error.what();
    for (const auto& fragment : fragments) {
      if (message.find(fragment) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "the message does not contain '" << fragment << "': " << message;
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "expected a " << demangle(typeid(ExceptionT).name())
                                         << ", but got " << type_name(error) << ": " << error.what();
  }
  return ::testing::AssertionFailure() << "expected an exception, but nothing was thrown";
}

}  // namespace persistence::testing
