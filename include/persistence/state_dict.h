// State dicts as the library saves and loads them: full tensors, of which every
// rank has the same copy, and sharded tensors, which contain this rank's
// pieces of a larger global tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace persistence {

// Elements [begin, end) of the row-major flattened global tensor (ZeRO, FSDP flat parameters).
struct FlatRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// An N-d box of the global tensor: one offset and one size per dimension (row or column shards).
struct Box {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
};

// One piece of a sharded tensor held by this rank. For a FlatRange the data has
// end - begin elements in any shape; for a Box its shape equals the box sizes.
struct Shard {
  at::Tensor data;
  std::variant<FlatRange, Box> region;
};

// This rank's pieces of a global tensor. Pieces may be empty, unequal in size,
// or absent on a rank; together the pieces of all ranks must cover the global
// tensor exactly once when saved. As a load target, each piece is filled in place.
class ShardedTensor {
 public:
  ShardedTensor(std::vector<int64_t> global_shape, c10::ScalarType dtype);

  // Adds data as elements [begin, begin + data.numel()) of the flattened global tensor.
  ShardedTensor& add_flat(at::Tensor data, int64_t begin);

  // Adds data as the box that starts at offsets and has data's shape.
  ShardedTensor& add_box(at::Tensor data, std::vector<int64_t> offsets);

  const std::vector<int64_t>& global_shape() const noexcept { return global_shape_; }
  c10::ScalarType dtype() const noexcept { return dtype_; }
  const std::vector<Shard>& shards() const noexcept { return shards_; }
  std::vector<Shard>& shards() noexcept { return shards_; }
  int64_t global_numel() const noexcept;

 private:
  std::vector<int64_t> global_shape_;
  c10::ScalarType dtype_;
  std::vector<Shard> shards_;
};

// A state dict value: a full tensor or this rank's shards of one.
using StateValue = std::variant<at::Tensor, ShardedTensor>;

// Keys are fully qualified names (`layers.0.weight`); ordered so every rank walks them alike.
using StateDict = std::map<std::string, StateValue>;

// Full tensors by key, as `states.load(device)` returns them.
using TensorDict = std::map<std::string, at::Tensor>;

}  // namespace persistence
