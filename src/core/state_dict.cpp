#include <persistence/errors.h>
#include <persistence/state_dict.h>

#include <string>

namespace persistence {

ShardedTensor::ShardedTensor(std::vector<int64_t> global_shape, c10::ScalarType dtype)
    : global_shape_(std::move(global_shape)), dtype_(dtype) {
  for (int64_t size : global_shape_) {
    if (size < 0) {
      throw InvalidArgumentError("Sharded tensor global shape has a negative dimension", {},
                                 "Pass sizes of zero or more");
    }
  }
}

ShardedTensor& ShardedTensor::add_flat(at::Tensor data, int64_t begin) {
  int64_t end = begin + data.numel();
  if (begin < 0 || end > global_numel()) {
    throw InvalidArgumentError("Flat shard [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   ") lies outside the global tensor of " +
                                   std::to_string(global_numel()) + " elements",
                               {});
  }
  shards_.push_back(Shard{std::move(data), FlatRange{begin, end}});
  return *this;
}

ShardedTensor& ShardedTensor::add_box(at::Tensor data, std::vector<int64_t> offsets) {
  if (static_cast<size_t>(data.dim()) != global_shape_.size() ||
      offsets.size() != global_shape_.size()) {
    throw InvalidArgumentError("Box shard has " + std::to_string(data.dim()) +
                                   " dimensions and " + std::to_string(offsets.size()) +
                                   " offsets, but the global tensor has " +
                                   std::to_string(global_shape_.size()) + " dimensions",
                               {});
  }
  std::vector<int64_t> sizes(data.sizes().begin(), data.sizes().end());
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (offsets[d] < 0 || offsets[d] + sizes[d] > global_shape_[d]) {
      throw InvalidArgumentError("Box shard exceeds the global tensor in dimension " +
                                     std::to_string(d),
                                 {});
    }
  }
  shards_.push_back(Shard{std::move(data), Box{std::move(offsets), std::move(sizes)}});
  return *this;
}

int64_t ShardedTensor::global_numel() const noexcept {
  int64_t count = 1;
  for (int64_t size : global_shape_) count *= size;
  return count;
}

}  // namespace persistence
