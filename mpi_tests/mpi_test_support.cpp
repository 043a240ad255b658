#include "mpi_test_support.h"

#include <ATen/ops/arange.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <filesystem>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>

namespace persistence::testing {

namespace fs = std::filesystem;

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

bool all_ranks(bool local) {
  int value = local ? 1 : 0;
  int result = 0;
  MPI_Allreduce(&value, &result, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  return result != 0;
}

void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

SharedTempDir::SharedTempDir(const std::string& label) {
  // Rank 0 creates the directory; an empty path signals the others that it failed,
  // so every rank throws together instead of waiting for a broadcast.
  std::vector<char> buffer(4096, '\0');
  if (world_rank() == 0) {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/persistence-" + label + "-XXXXXX";
    if (pattern.size() < buffer.size() && ::mkdtemp(std::strcpy(buffer.data(), pattern.c_str())) == nullptr) {
      buffer[0] = '\0';
    }
  }
  MPI_Bcast(buffer.data(), static_cast<int>(buffer.size()), MPI_CHAR, 0, MPI_COMM_WORLD);
  path_ = buffer.data();
  if (path_.empty()) {
    throw std::runtime_error("rank 0 could not create a temporary directory for '" + label +
                             "'; check that $TMPDIR or /tmp is writable");
  }
}

SharedTempDir::~SharedTempDir() {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
}

std::string SharedTempDir::join(const std::string& relative) const { return path_ + "/" + relative; }

CommandResult run_command(const std::string& command) {
  CommandResult result;
  const std::string full = "( " + command + " ) 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) {
    result.output = "popen failed for: " + command;
    return result;
  }
  char chunk[4096];
  size_t count = 0;
  while ((count = std::fread(chunk, 1, sizeof chunk, pipe)) > 0) {
    result.output.append(chunk, count);
  }
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

std::vector<std::string> list_tree(const std::string& dir) {
  std::vector<std::string> entries;
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return entries;
  }
  for (const auto& entry : fs::recursive_directory_iterator(dir, error)) {
    const std::string relative = fs::relative(entry.path(), dir).string();
    if (entry.is_directory()) {
      entries.push_back(relative + " dir");
    } else {
      entries.push_back(relative + " " + std::to_string(entry.file_size(error)));
    }
  }
  std::sort(entries.begin(), entries.end());
  return entries;
}

std::string step_file_name(int64_t step) {
  std::ostringstream name;
  name << "step_" << std::setw(12) << std::setfill('0') << step << ".h5";
  return name.str();
}

std::string where(const std::string& key, int64_t step) {
  return "key '" + key + "', rank " + std::to_string(world_rank()) + ", step " + std::to_string(step);
}

std::string where(int64_t step) {
  return "rank " + std::to_string(world_rank()) + ", step " + std::to_string(step);
}

std::string where(const std::string& key) { return "key '" + key + "', rank " + std::to_string(world_rank()); }

std::string where() { return "rank " + std::to_string(world_rank()); }

at::Tensor deterministic_tensor(const std::vector<int64_t>& shape, c10::ScalarType dtype, double seed) {
  int64_t numel = 1;
  for (int64_t size : shape) numel *= size;
  const at::Tensor index = at::arange(numel, at::TensorOptions().dtype(at::kLong));
  at::Tensor values;
  if (at::isFloatingType(dtype)) {
    values = index.to(at::kDouble).mul(0.37).add(seed).sin().to(dtype);
  } else if (dtype == at::kBool) {
    values = index.add(static_cast<int64_t>(seed)).remainder(2).to(at::kBool);
  } else {
    values = index.add(static_cast<int64_t>(seed)).to(dtype);
  }
  return values.reshape(shape);
}

namespace {

std::string shape_text(const at::Tensor& tensor) {
  std::ostringstream text;
  text << tensor.sizes();
  return text.str();
}

// Returns the flat index of the first element whose bytes differ, or -1.
int64_t first_differing_element(const at::Tensor& expected, const at::Tensor& actual) {
  const auto element_size = static_cast<size_t>(expected.element_size());
  const auto* left = static_cast<const unsigned char*>(expected.data_ptr());
  const auto* right = static_cast<const unsigned char*>(actual.data_ptr());
  for (int64_t i = 0; i < expected.numel(); ++i) {
    if (std::memcmp(left + i * element_size, right + i * element_size, element_size) != 0) {
      return i;
    }
  }
  return -1;
}

// Returns an element's value and its bytes in hex, e.g. "-0 (0x0080)" for a bfloat16.
std::string element_text(const at::Tensor& flat, int64_t index) {
  std::ostringstream text;
  const c10::Scalar value = flat[index].item();
  if (value.isFloatingPoint()) {
    text << std::setprecision(17) << value.toDouble();
  } else if (value.isBoolean()) {
    text << (value.toBool() ? "true" : "false");
  } else {
    text << value.toLong();
  }
  text << " (0x";
  const auto* bytes = static_cast<const unsigned char*>(flat.data_ptr()) + index * flat.element_size();
  for (int64_t i = flat.element_size() - 1; i >= 0; --i) {
    text << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(bytes[i]);
  }
  text << ")";
  return text.str();
}

}  // namespace

::testing::AssertionResult bitwise_equal(const at::Tensor& expected, const at::Tensor& actual) {
  if (!expected.defined() || !actual.defined()) {
    return ::testing::AssertionFailure() << "expected a defined tensor on both sides, but got "
                                         << (expected.defined() ? "defined" : "undefined") << " and "
                                         << (actual.defined() ? "defined" : "undefined");
  }
  if (expected.scalar_type() != actual.scalar_type()) {
    return ::testing::AssertionFailure() << "expected dtype " << expected.scalar_type() << ", but got "
                                         << actual.scalar_type();
  }
  if (!expected.sizes().equals(actual.sizes())) {
    return ::testing::AssertionFailure() << "expected shape " << shape_text(expected) << ", but got "
                                         << shape_text(actual);
  }
  if (!actual.device().is_cpu()) {
    return ::testing::AssertionFailure() << "expected a CPU tensor, but got one on " << actual.device();
  }

  const at::Tensor left = expected.contiguous();
  const at::Tensor right = actual.contiguous();
  const int64_t index = first_differing_element(left, right);
  if (index < 0) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "bytes differ first at flat element " << index << " of "
                                       << left.numel() << ": expected " << element_text(left.reshape({-1}), index)
                                       << ", but got " << element_text(right.reshape({-1}), index);
}

std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, decltype(&std::free)> name(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                                   &std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(mangled);
}

std::string type_name(const std::exception& error) { return demangle(typeid(error).name()); }

}  // namespace persistence::testing
