#include "core/staging.h"

#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>

#include <cstring>

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

void copy_snapshot(const at::Tensor& target, const at::Tensor& source) {
  bool plain = source.device().is_cpu() && source.scalar_type() == target.scalar_type() && source.is_contiguous() &&
               target.is_contiguous() && source.numel() == target.numel();
  if (!plain) {
    target.copy_(source);
    return;
  }
  const auto* from = static_cast<const unsigned char*>(source.data_ptr());
  auto* to = static_cast<unsigned char*>(target.data_ptr());
  const auto bytes = static_cast<int64_t>(source.nbytes());
  constexpr int64_t kChunk = int64_t{2} << 20;
  at::parallel_for(0, bytes, kChunk, [&](int64_t begin, int64_t end) {
    std::memcpy(to + begin, from + begin, static_cast<std::size_t>(end - begin));
  });
}

SnapshotGate::Closed::Closed(SnapshotGate& gate) : gate_(gate) {
  std::lock_guard lock(gate_.mutex_);
  ++gate_.copies_;
}

SnapshotGate::Closed::~Closed() {
  {
    std::lock_guard lock(gate_.mutex_);
    --gate_.copies_;
  }
  gate_.opened_.notify_all();
}

void SnapshotGate::wait_until_open() {
  std::unique_lock lock(mutex_);
  opened_.wait(lock, [this] { return copies_ == 0; });
}

}  // namespace persistence::detail
