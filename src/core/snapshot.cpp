#include "core/snapshot.h"

#include "core/staging.h"
#include "format/dtype.h"
#include "shard/plan.h"

#include <persistence/errors.h>

namespace persistence::detail {
namespace {

ErrorContext key_context(const std::string& key) { return ErrorContext{{}, key, std::nullopt, std::nullopt}; }

c10::ScalarType stored_dtype(c10::ScalarType dtype, std::optional<c10::ScalarType> conversion) {
  if (conversion && c10::isFloatingType(dtype)) return *conversion;
  return dtype;
}

void check_dtype(c10::ScalarType dtype, const std::string& key) {
  if (!is_supported_dtype(dtype)) {
    throw InvalidArgumentError("Tensors of dtype " + std::string(c10::toString(dtype)) + " cannot be saved",
                               key_context(key),
                               "Supported dtypes: float32, float64, float16, bfloat16, int8, int16, int32, int64, "
                               "uint8, bool");
  }
}

void check_value(const std::string& key, const StateValue& value) {
  if (key.empty()) throw InvalidArgumentError("State dict has an empty key", {}, "Give every tensor a name");
  if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
    if (!tensor->defined()) throw InvalidArgumentError("State dict value is an undefined tensor", key_context(key));
    check_dtype(tensor->scalar_type(), key);
    return;
  }
  const auto& sharded = std::get<ShardedTensor>(value);
  check_dtype(sharded.dtype(), key);
  for (const auto& shard : sharded.shards()) {
    if (shard.data.defined() && shard.data.scalar_type() != sharded.dtype()) {
      throw InvalidArgumentError("Shard data has dtype " + std::string(c10::toString(shard.data.scalar_type())) +
                                     " but the sharded tensor declares " + c10::toString(sharded.dtype()),
                                 key_context(key));
    }
    int64_t expected = region_elements(shard.region);
    int64_t actual = shard.data.defined() ? shard.data.numel() : 0;
    if (expected != actual) {
      throw InvalidArgumentError("Shard data has " + std::to_string(actual) + " elements but its " +
                                     describe_region(shard.region) + " has " + std::to_string(expected),
                                 key_context(key));
    }
  }
}

}  // namespace

at::Tensor reference_or_convert(const at::Tensor& source, c10::ScalarType stored) {
  at::Tensor result = source.detach();
  if (!result.device().is_cpu()) result = result.to(c10::Device(c10::kCPU));
  if (result.scalar_type() != stored) result = result.to(stored);
  return result.contiguous();
}

namespace {

// The elements of the full tensor at key_index that share keeps, or all of them without one.
FlatRange staged_range(const at::Tensor& tensor, c10::ScalarType stored, size_t key_index,
                       const std::optional<StagedShare>& share) {
  if (!share) return FlatRange{0, tensor.numel()};
  Shape shape(tensor.sizes().begin(), tensor.sizes().end());
  return full_tensor_share(shape, stored, key_index, share->world_size, share->rank);
}

}  // namespace

std::size_t staging_bytes(const StateDict& states, std::optional<c10::ScalarType> dtype,
                          std::optional<StagedShare> share) {
  std::size_t total = 0;
  size_t index = 0;
  for (const auto& [key, value] : states) {
    size_t key_index = index++;
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      if (!tensor->defined()) continue;
      c10::ScalarType stored = stored_dtype(tensor->scalar_type(), dtype);
      FlatRange range = staged_range(*tensor, stored, key_index, share);
      total += StagingArena::footprint(range.end - range.begin, stored);
      continue;
    }
    const auto& sharded = std::get<ShardedTensor>(value);
    for (const auto& shard : sharded.shards()) {
      if (shard.data.defined()) total += StagingArena::footprint(shard.data.numel(), stored_dtype(sharded.dtype(), dtype));
    }
  }
  return total;
}

void add_states(SaveJob& job, const StateDict& states, std::optional<c10::ScalarType> dtype,
                const Materializer& materialize, std::optional<StagedShare> share) {
  if (dtype && !c10::isFloatingType(*dtype)) {
    throw InvalidArgumentError("Save dtype " + std::string(c10::toString(*dtype)) + " is not a floating dtype", {},
                               "Pass a floating dtype such as torch::kBFloat16, or none");
  }
  for (const auto& [key, value] : states) check_value(key, value);

  for (const auto& [key, value] : states) {
    KeyView view;
    view.key = key;
    std::vector<at::Tensor> pieces;
    int64_t first_element = 0;
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      view.dtype = stored_dtype(tensor->scalar_type(), dtype);
      view.shape.assign(tensor->sizes().begin(), tensor->sizes().end());
      FlatRange range = staged_range(*tensor, view.dtype, job.views.size(), share);
      if (range.begin == 0 && range.end == tensor->numel()) {
        pieces.push_back(materialize(*tensor, view.dtype));
      } else {
        pieces.push_back(materialize(tensor->detach().reshape({-1}).slice(0, range.begin, range.end), view.dtype));
        first_element = range.begin;
      }
      job.source_dtypes.push_back(tensor->scalar_type());
    } else {
      const auto& sharded = std::get<ShardedTensor>(value);
      view.sharded = true;
      view.dtype = stored_dtype(sharded.dtype(), dtype);
      view.shape = sharded.global_shape();
      for (const auto& shard : sharded.shards()) {
        view.regions.push_back(shard.region);
        pieces.push_back(shard.data.defined() ? materialize(shard.data, view.dtype) : at::Tensor());
      }
      job.source_dtypes.push_back(sharded.dtype());
    }
    job.views.push_back(std::move(view));
    job.pieces.push_back(std::move(pieces));
    job.full_offsets.push_back(first_element);
  }
}

}  // namespace persistence::detail
