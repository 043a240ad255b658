#include "core/snapshot.h"

#include "core/staging.h"
#include "format/dtype.h"

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

std::size_t staging_bytes(const StateDict& states, std::optional<c10::ScalarType> dtype) {
  std::size_t total = 0;
  for (const auto& [key, value] : states) {
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      if (tensor->defined()) total += StagingArena::footprint(tensor->numel(), stored_dtype(tensor->scalar_type(), dtype));
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
                const Materializer& materialize) {
  if (dtype && !c10::isFloatingType(*dtype)) {
    throw InvalidArgumentError("Save dtype " + std::string(c10::toString(*dtype)) + " is not a floating dtype", {},
                               "Pass a floating dtype such as torch::kBFloat16, or none");
  }
  for (const auto& [key, value] : states) check_value(key, value);

  for (const auto& [key, value] : states) {
    KeyView view;
    view.key = key;
    std::vector<at::Tensor> pieces;
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      view.dtype = stored_dtype(tensor->scalar_type(), dtype);
      view.shape.assign(tensor->sizes().begin(), tensor->sizes().end());
      pieces.push_back(materialize(*tensor, view.dtype));
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
  }
}

}  // namespace persistence::detail
