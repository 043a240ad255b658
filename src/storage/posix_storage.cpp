#include "storage/posix_storage.h"

#include "io/file_descriptor.h"
#include "io/step_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

namespace persistence::detail {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& operation, const std::string& path, int error) {
  throw StorageError(operation + " failed: " + std::strerror(error), ErrorContext{path, {}, {}, {}},
                     /*transient=*/false);
}

std::string parent_of(const std::string& path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// Copies length bytes from in at in_offset to out at out_offset, with
// copy_file_range where the kernel supports it between the two file systems
// and pread/pwrite otherwise. Returns the bytes copied, fewer at end of input.
uint64_t copy_range(int in, uint64_t in_offset, int out, uint64_t out_offset, uint64_t length,
                    const std::string& out_path) {
  uint64_t copied = 0;
  bool use_copy_file_range = true;
  std::vector<char> buffer;
  while (copied < length) {
    uint64_t chunk = std::min<uint64_t>(length - copied, uint64_t{1} << 30);
    ssize_t n = -1;
    if (use_copy_file_range) {
      auto in_position = static_cast<loff_t>(in_offset + copied);
      auto out_position = static_cast<loff_t>(out_offset + copied);
      n = ::copy_file_range(in, &in_position, out, &out_position, chunk, 0);
      if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
        use_copy_file_range = false;
        continue;
      }
    } else {
      if (buffer.empty()) buffer.resize(std::size_t{1} << 20);
      n = ::pread(in, buffer.data(), std::min<uint64_t>(chunk, buffer.size()), static_cast<off_t>(in_offset + copied));
      if (n > 0) {
        ssize_t written = 0;
        while (written < n) {
          ssize_t w = ::pwrite(out, buffer.data() + written, static_cast<size_t>(n - written),
                               static_cast<off_t>(out_offset + copied + written));
          if (w < 0) fail("Write", out_path, errno);
          written += w;
        }
      }
    }
    if (n < 0) fail("Copy", out_path, errno);
    if (n == 0) break;
    copied += static_cast<uint64_t>(n);
  }
  return copied;
}

uint64_t file_size(int fd, const std::string& path) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) fail("Stat", path, errno);
  return static_cast<uint64_t>(info.st_size);
}

}  // namespace

std::vector<StorageEntry> PosixStorage::list(const std::string& dir) {
  std::vector<StorageEntry> entries;
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error == std::errc::no_such_file_or_directory) return entries;
  if (error) fail("Listing", dir, error.value());

  for (const auto& entry : it) {
    StorageEntry item;
    item.name = entry.path().filename().string();
    item.is_dir = entry.is_directory(error);
    if (!item.is_dir) item.size = entry.file_size(error);
    // An entry removed while listing is skipped rather than reported.
    if (error) continue;
    entries.push_back(item);
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return entries;
}

std::optional<StorageEntry> PosixStorage::stat(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    fail("Stat", path, errno);
  }
  StorageEntry entry;
  entry.name = storage_base_name(path);
  entry.is_dir = S_ISDIR(info.st_mode);
  entry.size = entry.is_dir ? 0 : static_cast<uint64_t>(info.st_size);
  return entry;
}

void PosixStorage::mkdirs(const std::string& dir) { make_directories(dir); }

void PosixStorage::upload(const std::string& local_file, const std::string& remote_path) {
  make_directories(parent_of(remote_path));
  FileDescriptor in(::open(local_file.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) fail("Opening the local file for upload", local_file, errno);
  FileDescriptor out(::open(remote_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out.get() < 0) fail("Creating the upload target", remote_path, errno);

  uint64_t size = file_size(in.get(), local_file);
  if (copy_range(in.get(), 0, out.get(), 0, size, remote_path) != size) {
    throw StorageError("Upload ended early because the local file shrank", ErrorContext{local_file, {}, {}, {}},
                       /*transient=*/false);
  }
  // Without this fsync a crash could keep the later rename but lose the data.
  if (::fsync(out.get()) != 0) fail("fsync", remote_path, errno);
}

uint64_t PosixStorage::download(const std::string& remote_path, const std::string& local_file, uint64_t offset) {
  FileDescriptor in(::open(remote_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.get() < 0) fail("Opening for download", remote_path, errno);
  FileDescriptor out(::open(local_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (out.get() < 0) fail("Creating the download target", local_file, errno);
  if (file_size(out.get(), local_file) < offset) {
    throw StorageError("Cannot resume the download at byte " + std::to_string(offset) +
                           " because the local file is shorter",
                       ErrorContext{local_file, {}, {}, {}}, /*transient=*/false);
  }
  if (::ftruncate(out.get(), static_cast<off_t>(offset)) != 0) fail("Truncate", local_file, errno);

  uint64_t size = file_size(in.get(), remote_path);
  if (offset > size) {
    throw StorageError("Download offset " + std::to_string(offset) + " is past the end of the " +
                           std::to_string(size) + "-byte file",
                       ErrorContext{remote_path, {}, {}, {}}, /*transient=*/false);
  }
  return offset + copy_range(in.get(), offset, out.get(), offset, size - offset, local_file);
}

bool PosixStorage::rename(const std::string& from, const std::string& to) {
  std::string target = to;
  if (fs::is_directory(to)) target = join_storage_path(to, storage_base_name(from));

  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST || errno == ENOENT) return false;
    if (errno != EINVAL && errno != ENOSYS) fail("Rename of '" + from + "'", target, errno);

    // NOTE: this fallback for file systems without RENAME_NOREPLACE (some NFS
    // and FUSE mounts) can replace a file created between the check and the rename.
    if (::access(target.c_str(), F_OK) == 0 || ::access(from.c_str(), F_OK) != 0) return false;
    if (std::rename(from.c_str(), target.c_str()) != 0) fail("Rename of '" + from + "'", target, errno);
  }

  // The new name lives in the directory entry; sync it so a crash keeps it.
  sync_path(parent_of(target));
  if (parent_of(from) != parent_of(target)) sync_path(parent_of(from));
  return true;
}

bool PosixStorage::remove(const std::string& path) {
  std::error_code error;
  bool removed = fs::remove(path, error);
  if (error) fail("Remove", path, error.value());
  return removed;
}

}  // namespace persistence::detail
