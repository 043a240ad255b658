// Host staging memory for asynchronous saves. Each save name keeps one arena
// that is allocated once, grows when a save needs more, and is reused by the
// next save of that name once the background write of the previous one ends.
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/core/ScalarType.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace persistence::detail {

class StagingArena {
 public:
  // Prepares the arena for a snapshot of bytes bytes, growing it if needed.
  void reset(std::size_t bytes);

  // Returns a tensor of shape and dtype placed in the arena, valid until the next reset.
  at::Tensor take(c10::IntArrayRef shape, c10::ScalarType dtype);

  std::size_t capacity() const noexcept { return capacity_; }

  // Bytes a tensor of numel elements and dtype occupies, aligned for any dtype.
  static std::size_t footprint(int64_t numel, c10::ScalarType dtype);

 private:
  std::unique_ptr<unsigned char[]> memory_;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

// Copies source into target, which has its shape and the stored dtype. A
// contiguous CPU source of the same dtype is copied with memcpy in 2 MiB
// chunks spread over ATen's intra-op threads, so tensors of a few MiB already
// use every thread. Anything else goes through copy_, which also converts.
void copy_snapshot(const at::Tensor& target, const at::Tensor& source);

// Lets the I/O thread pause while the trainer's thread copies a snapshot, so
// the two do not compete for cores and memory bandwidth during the stall.
// The copy sends no messages and waits for no other thread, so a paused
// writer always resumes.
class SnapshotGate {
 public:
  // Closes the gate for the lifetime of the object.
  class Closed {
   public:
    explicit Closed(SnapshotGate& gate);
    ~Closed();
    Closed(const Closed&) = delete;
    Closed& operator=(const Closed&) = delete;

   private:
    SnapshotGate& gate_;
  };

  // Returns at once unless a snapshot is being copied, else when it ends.
  void wait_until_open();

 private:
  std::mutex mutex_;
  std::condition_variable opened_;
  int copies_ = 0;
};

}  // namespace persistence::detail
