#include "io/direct_file.h"

#include <persistence/errors.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>
#include <new>

namespace persistence::detail {
namespace {

constexpr uint64_t kChunkBytes = uint64_t{4} << 20;        // the bounce buffer
constexpr uint64_t kLargestCallBytes = uint64_t{1} << 30;  // below the 2 GiB limit of one read or write call

uint64_t round_up(uint64_t value) { return (value + kDirectAlignment - 1) / kDirectAlignment * kDirectAlignment; }
uint64_t round_down(uint64_t value) { return value / kDirectAlignment * kDirectAlignment; }

bool aligned(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % kDirectAlignment == 0; }

[[noreturn]] void fail(const std::string& problem, const std::string& path, int error) {
  throw IoError(problem + ": " + std::strerror(error), ErrorContext{path, {}, std::nullopt, std::nullopt});
}

// Thrown when a file system accepts O_DIRECT at open but fails a transfer with EINVAL.
struct DirectUnsupported {};

// Moves bytes at offset with pread or pwrite, resuming after short calls.
void move_all(int fd, DirectFile::Mode mode, uint64_t offset, char* data, uint64_t bytes, const std::string& path,
              bool direct) {
  while (bytes > 0) {
    size_t request = static_cast<size_t>(std::min(bytes, kLargestCallBytes));
    ssize_t moved = mode == DirectFile::Mode::kWrite ? ::pwrite(fd, data, request, static_cast<off_t>(offset))
                                                     : ::pread(fd, data, request, static_cast<off_t>(offset));
    if (moved < 0) {
      if (errno == EINTR) continue;
      if (direct && errno == EINVAL) throw DirectUnsupported{};
      fail(mode == DirectFile::Mode::kWrite ? "Cannot write the step file" : "Cannot read the step file", path,
           errno);
    }
    if (moved == 0) {
      if (mode == DirectFile::Mode::kRead) {
        throw IoError("The step file ends before byte " + std::to_string(offset + bytes) +
                          "; it was cut short after it was written",
                      ErrorContext{path, {}, std::nullopt, std::nullopt});
      }
      fail("Cannot write the step file", path, EIO);
    }
    auto count = static_cast<uint64_t>(moved);
    offset += count;
    data += count;
    bytes -= count;
  }
}

// One aligned chunk, allocated and touched once per process and reused: new
// pages cost the most on this kind of machine.
struct BounceBuffer {
  std::mutex mutex;
  char* chunk = nullptr;

  void ensure() {
    if (chunk != nullptr) return;
    chunk = static_cast<char*>(std::aligned_alloc(kDirectAlignment, kChunkBytes));
    if (chunk == nullptr) throw std::bad_alloc();
    std::memset(chunk, 0, kChunkBytes);
  }
};

BounceBuffer& bounce_buffer() {
  static BounceBuffer* buffer = new BounceBuffer();  // never freed: threads may use it until exit
  return *buffer;
}

// The buffer of copy_file_directly: larger, so that each call keeps many
// requests in flight, and also allocated once per process.
constexpr uint64_t kCopyChunkBytes = uint64_t{32} << 20;

char* copy_buffer() {
  static char* buffer = [] {
    auto* chunk = static_cast<char*>(std::aligned_alloc(kDirectAlignment, kCopyChunkBytes));
    if (chunk == nullptr) throw std::bad_alloc();
    std::memset(chunk, 0, kCopyChunkBytes);
    return chunk;
  }();
  return buffer;
}

}  // namespace

DirectFile::DirectFile(const std::string& path, Mode mode)
    : path_(path),
      mode_(mode),
      plain_(::open(path.c_str(), (mode == Mode::kWrite ? O_WRONLY : O_RDONLY) | O_CLOEXEC)),
      direct_(::open(path.c_str(), (mode == Mode::kWrite ? O_WRONLY : O_RDONLY) | O_CLOEXEC | O_DIRECT)) {
  if (plain_.get() < 0) fail("Cannot open the step file", path, errno);
}

void DirectFile::write(uint64_t offset, const void* data, uint64_t bytes, const Visitor& visit) {
  // The caller's bytes are only read; the shared code path takes a mutable pointer.
  transfer(offset, const_cast<char*>(static_cast<const char*>(data)), bytes, visit);
}

void DirectFile::read(uint64_t offset, void* data, uint64_t bytes) {
  transfer(offset, static_cast<char*>(data), bytes, {});
}

void DirectFile::transfer(uint64_t offset, char* data, uint64_t bytes, const Visitor& visit) {
  uint64_t middle_begin = round_up(offset);
  uint64_t middle_end = round_down(offset + bytes);
  if (!direct() || middle_end <= middle_begin) {
    transfer_plain(offset, data, bytes);
    if (visit) visit(data, 0, bytes);
    return;
  }

  uint64_t head = middle_begin - offset;
  transfer_plain(offset, data, head);
  if (visit && head > 0) visit(data, 0, head);

  transfer_direct(middle_begin, data + head, middle_end - middle_begin, visit, head);

  uint64_t tail_index = middle_end - offset;
  transfer_plain(middle_end, data + tail_index, bytes - tail_index);
  if (visit && bytes > tail_index) visit(data + tail_index, tail_index, bytes - tail_index);
}

void DirectFile::sync() {
  if (::fdatasync(plain_.get()) != 0) fail("fdatasync of the step file failed", path_, errno);
}

void DirectFile::transfer_plain(uint64_t offset, char* data, uint64_t bytes) {
  if (bytes > 0) move_all(plain_.get(), mode_, offset, data, bytes, path_, false);
}

void DirectFile::transfer_direct(uint64_t offset, char* data, uint64_t bytes, const Visitor& visit,
                                 uint64_t first_index) {
  int fd = direct_.get();
  uint64_t visited = 0;  // bytes already shown to visit
  try {
    if (aligned(data)) {
      move_all(fd, mode_, offset, data, bytes, path_, true);
      if (visit) visit(data, first_index, bytes);
      visited = bytes;
      return;
    }
    // Copying a chunk and then moving it, one after the other, measured
    // faster here than overlapping the two in threads: 2.2 to 3.0 GB/s
    // against 1.3 to 1.8 GB/s (docs/design.md, "Direct transfers").
    BounceBuffer& buffer = bounce_buffer();
    std::lock_guard<std::mutex> lock(buffer.mutex);
    buffer.ensure();
    for (uint64_t begin = 0; begin < bytes; begin += kChunkBytes) {
      uint64_t length = std::min(bytes - begin, kChunkBytes);
      if (mode_ == Mode::kWrite) {
        std::memcpy(buffer.chunk, data + begin, length);
        if (visit) visit(buffer.chunk, first_index + begin, length);
        visited = begin + length;
        move_all(fd, mode_, offset + begin, buffer.chunk, length, path_, true);
      } else {
        move_all(fd, mode_, offset + begin, buffer.chunk, length, path_, true);
        std::memcpy(data + begin, buffer.chunk, length);
      }
    }
  } catch (const DirectUnsupported&) {
    // The file system takes O_DIRECT at open but not for this transfer; the
    // page cache moves the whole range again, which is idempotent.
    transfer_plain(offset, data, bytes);
    if (visit && bytes > visited) visit(data + visited, first_index + visited, bytes - visited);
  }
}

void copy_file_directly(const std::string& from, const std::string& to) {
  struct stat info {};
  if (::stat(from.c_str(), &info) != 0) fail("Cannot stat the file to copy", from, errno);
  {
    FileDescriptor created(::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (created.get() < 0) fail("Cannot create", to, errno);
  }
  auto size = static_cast<uint64_t>(info.st_size);
  DirectFile in(from, DirectFile::Mode::kRead);
  DirectFile out(to, DirectFile::Mode::kWrite);
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  char* buffer = copy_buffer();
  for (uint64_t offset = 0; offset < size; offset += kCopyChunkBytes) {
    uint64_t length = std::min(size - offset, kCopyChunkBytes);
    in.read(offset, buffer, length);
    out.write(offset, buffer, length);
  }
}

}  // namespace persistence::detail
