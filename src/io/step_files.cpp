#include "io/step_files.h"

#include "io/file_descriptor.h"

#include <persistence/errors.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

namespace persistence::detail {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTemporaryPrefix = ".step_";
constexpr const char* kTemporaryMarker = ".h5.tmp-";

[[noreturn]] void fail_errno(const std::string& problem, const std::string& path, int error) {
  throw IoError(problem + ": " + std::strerror(error), ErrorContext{path, {}, std::nullopt, std::nullopt});
}

std::string parent_of(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

std::string step_file_name(int64_t step) {
  char name[64];
  std::snprintf(name, sizeof(name), "step_%012lld.h5", static_cast<long long>(step));
  return name;
}

std::optional<int64_t> parse_step_file_name(const std::string& name) {
  // step_ + at least 12 digits + .h5; more digits are allowed for steps >= 10^12.
  if (name.size() < 20 || name.rfind("step_", 0) != 0 || name.substr(name.size() - 3) != ".h5") return std::nullopt;
  std::string digits = name.substr(5, name.size() - 8);
  if (digits.size() < 12 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  if (digits.size() > 18) return std::nullopt;
  return std::stoll(digits);
}

std::vector<int64_t> list_steps(const std::string& dir) {
  std::vector<int64_t> steps;
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error) {
    if (error == std::errc::no_such_file_or_directory) return steps;
    throw IoError("Cannot list the save directory: " + error.message(), ErrorContext{dir, {}, {}, {}});
  }
  for (const auto& entry : it) {
    auto step = parse_step_file_name(entry.path().filename().string());
    if (step) steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::vector<int64_t> steps_to_remove(const std::vector<int64_t>& committed, int64_t keep_last, int64_t keep_every) {
  std::vector<int64_t> removed;
  if (keep_last <= 0 || committed.size() <= static_cast<size_t>(keep_last)) return removed;
  size_t kept_from = committed.size() - static_cast<size_t>(keep_last);
  for (size_t i = 0; i < kept_from; ++i) {
    int64_t step = committed[i];
    if (keep_every > 0 && step % keep_every == 0) continue;
    removed.push_back(step);
  }
  return removed;
}

std::string temporary_step_path(const std::string& dir, int64_t step, const std::string& token) {
  std::string name = step_file_name(step);
  return dir + "/" + kTemporaryPrefix + name.substr(5, name.size() - 8) + kTemporaryMarker + token;
}

int remove_stale_temporaries(const std::string& dir) {
  int removed = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(kTemporaryPrefix, 0) == 0 && name.find(kTemporaryMarker) != std::string::npos) {
      if (fs::remove(entry.path(), error)) ++removed;
    }
  }
  return removed;
}

std::string local_root(const std::string& path) {
  std::string local = path;
  if (local.rfind("file://", 0) == 0) {
    local = local.substr(7);
  } else if (local.find("://") != std::string::npos) {
    throw InvalidArgumentError("Save path '" + path + "' has an unsupported scheme", {},
                               "Use an absolute directory path or a file:// URI");
  }
  if (local.empty()) throw InvalidArgumentError("Save path is empty", {}, "Pass the directory to save into");
  fs::path absolute = fs::absolute(fs::path(local)).lexically_normal();
  std::string text = absolute.string();
  while (text.size() > 1 && text.back() == '/') text.pop_back();
  return text;
}

void make_directories(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir)) {
    throw IoError("Cannot create the save directory: " + (error ? error.message() : "a file has that name"),
                  ErrorContext{dir, {}, {}, {}}, "Choose a path in a writable directory");
  }
}

void make_save_directory(const std::string& dir) {
  std::error_code error;
  if (fs::is_directory(dir, error)) return;
  if (fs::exists(dir, error)) {
    throw IoError("The save path exists but is not a directory", ErrorContext{dir, {}, {}, {}},
                  "Choose a directory path");
  }
  std::string parent = parent_of(dir);
  if (!fs::is_directory(parent, error)) {
    throw IoError("The parent directory '" + parent + "' of the save directory does not exist",
                  ErrorContext{dir, {}, {}, {}}, "Create it first, or check the path for typos");
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    fail_errno("Cannot create the save directory", dir, errno);
  }
}

void check_writable(const std::string& dir) {
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw IoError(std::string("The save directory is not writable: ") + std::strerror(errno),
                  ErrorContext{dir, {}, {}, {}}, "Fix its permissions or choose another directory");
  }
}

void sync_path(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail_errno("Cannot open for fsync", path, errno);
  if (::fsync(fd.get()) != 0) fail_errno("fsync failed", path, errno);
}

void rename_durably(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) fail_errno("Cannot rename '" + from + "'", to, errno);
  // The rename lives in the directory entry; without this sync a crash may undo it.
  sync_path(parent_of(to));
}

void copy_file(const std::string& from, const std::string& to) {
  FileDescriptor in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) fail_errno("Cannot open for copying", from, errno);
  FileDescriptor out(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out.get() < 0) fail_errno("Cannot create", to, errno);

  struct stat info {};
  if (::fstat(in.get(), &info) != 0) fail_errno("Cannot stat", from, errno);
  auto remaining = static_cast<uint64_t>(info.st_size);
  while (remaining > 0) {
    ssize_t copied = ::copy_file_range(in.get(), nullptr, out.get(), nullptr, remaining, 0);
    if (copied < 0) fail_errno("copy_file_range failed", to, errno);
    if (copied == 0) break;
    remaining -= static_cast<uint64_t>(copied);
  }
  if (remaining != 0) throw IoError("Copy ended early", ErrorContext{to, {}, {}, {}});
  // No fsync here: the copy is a temporary file, and the commit syncs the whole
  // file before renaming it, which covers these pages too.
}

void write_file_atomically(const std::string& path, const std::string& content) {
  std::random_device random;
  std::string temporary = parent_of(path) + "/." + fs::path(path).filename().string() + ".tmp-" +
                          std::to_string(random());
  {
    FileDescriptor fd(::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) fail_errno("Cannot create", temporary, errno);
    size_t written = 0;
    while (written < content.size()) {
      ssize_t n = ::write(fd.get(), content.data() + written, content.size() - written);
      if (n < 0) {
        int error = errno;
        ::unlink(temporary.c_str());
        fail_errno("Cannot write", temporary, error);
      }
      written += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      int error = errno;
      ::unlink(temporary.c_str());
      fail_errno("fsync failed", temporary, error);
    }
  }
  rename_durably(temporary, path);
}

uint64_t free_bytes(const std::string& dir) {
  struct statvfs info {};
  if (::statvfs(dir.c_str(), &info) != 0) return 0;
  return static_cast<uint64_t>(info.f_bavail) * info.f_frsize;
}

}  // namespace persistence::detail
