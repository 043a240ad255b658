#include "core/staging.h"

#include <ATen/ops/from_blob.h>

namespace persistence::detail {

namespace {
constexpr std::size_t kAlignment = 64;
}

std::size_t StagingArena::footprint(int64_t numel, c10::ScalarType dtype) {
  std::size_t bytes = static_cast<std::size_t>(numel) * c10::elementSize(dtype);
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

void StagingArena::reset(std::size_t bytes) {
  if (bytes > capacity_) {
    memory_.reset();  // free first, so the old and new arena never coexist
    memory_.reset(new unsigned char[bytes + kAlignment]);
    capacity_ = bytes;
  }
  used_ = 0;
}

at::Tensor StagingArena::take(c10::IntArrayRef shape, c10::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t size : shape) numel *= size;
  auto address = reinterpret_cast<std::uintptr_t>(memory_.get());
  address = (address + kAlignment - 1) / kAlignment * kAlignment + used_;
  used_ += footprint(numel, dtype);
  return at::from_blob(reinterpret_cast<void*>(address), shape, at::TensorOptions().dtype(dtype));
}

}  // namespace persistence::detail
