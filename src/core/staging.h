// Host staging memory for asynchronous saves. Each save name keeps one arena
// that is allocated once, grows when a save needs more, and is reused by the
// next save of that name once the background write of the previous one ends.
#pragma once

#include <ATen/core/Tensor.h>

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <memory>
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

}  // namespace persistence::detail
