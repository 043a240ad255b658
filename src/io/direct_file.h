// Moves large byte ranges between memory and a file with O_DIRECT, so that
// tensor data skips the page cache. On this kind of virtual machine a write
// into new page-cache pages can run eight times slower than the disk (see
// docs/design.md, "Direct transfers"), and a checkpoint is read once, so
// caching it buys nothing.
#pragma once

#include "io/file_descriptor.h"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace persistence::detail {

// Offsets and lengths that O_DIRECT transfers are aligned to. 4 KiB covers the
// logical block size of the usual disks and the memory alignment they need.
inline constexpr uint64_t kDirectAlignment = 4096;

// Datasets smaller than this are read through HDF5. Writes use the manager's
// alignment_threshold instead, which also places the data on a boundary.
inline constexpr uint64_t kSmallestDirectDataset = uint64_t{1} << 20;

// Whether a rank moves a transfer with these runs (transfer_runs) itself
// rather than through HDF5: only when the runs average at least 64 KiB, since
// many short direct calls cost more than one collective transfer.
inline bool worth_moving_directly(const std::vector<std::pair<int64_t, int64_t>>& runs, int64_t count,
                                  int64_t element_size) {
  constexpr int64_t kSmallestAverageRunBytes = int64_t{64} << 10;
  return !runs.empty() && count * element_size / static_cast<int64_t>(runs.size()) >= kSmallestAverageRunBytes;
}

// One open file. Each range is split into an aligned middle, moved with
// O_DIRECT, and unaligned ends, moved through the page cache. Memory that is
// not aligned like the file offset goes through a reused, aligned bounce
// buffer in 4 MiB chunks.
//
// Where the file system refuses O_DIRECT (tmpfs), every byte uses the page
// cache. Different objects may be used from different threads.
//
// NOTE: ranks whose ranges meet inside a page both write that page through
// the page cache. Tested on one node only; across nodes this relies on the
// file system writing back only the bytes each client wrote.
class DirectFile {
 public:
  enum class Mode { kRead, kWrite };

  // Throws IoError when path cannot be opened.
  DirectFile(const std::string& path, Mode mode);

  // Callback that receives every byte of a write once, in pieces. data contains
  // bytes [index, index + length) of the range. Bytes copied to the bounce
  // buffer are passed from there, while they are still in the processor cache.
  using Visitor = std::function<void(const char* data, uint64_t index, uint64_t length)>;

  // Writes bytes at offset, showing them to visit when it is set. Throws
  // IoError on failure (ENOSPC, EFBIG, EIO).
  void write(uint64_t offset, const void* data, uint64_t bytes, const Visitor& visit = {});

  // Reads exactly bytes at offset. Throws IoError on failure or a short file.
  void read(uint64_t offset, void* data, uint64_t bytes);

  // fdatasync: written data and the device cache reach the disk.
  void sync();

  // Whether O_DIRECT was available.
  bool direct() const { return direct_.get() >= 0; }

 private:
  // Splits a range into unaligned ends and an aligned middle and moves each part.
  void transfer(uint64_t offset, char* data, uint64_t bytes, const Visitor& visit);
  void transfer_plain(uint64_t offset, char* data, uint64_t bytes);
  // Moves an aligned range; visit gets indexes from first_index on.
  void transfer_direct(uint64_t offset, char* data, uint64_t bytes, const Visitor& visit, uint64_t first_index);

  std::string path_;
  Mode mode_;
  FileDescriptor plain_;
  FileDescriptor direct_;
};

// Copies the file from to to (created or truncated) with O_DIRECT reads and
// writes in 32 MiB chunks, without a sync. Copying parts on every rank at
// once measured no faster on one disk. Throws IoError.
void copy_file_directly(const std::string& from, const std::string& to);

}  // namespace persistence::detail
