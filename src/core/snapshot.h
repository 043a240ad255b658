// Turning a state dict into the pieces of a SaveJob: contiguous CPU tensors in
// the dtype to store, with their regions.
#pragma once

#include "io/step_writer.h"

#include <persistence/state_dict.h>

#include <cstddef>
#include <functional>
#include <optional>

namespace persistence::detail {

// Produces the contiguous CPU tensor that a save writes for source, in dtype stored.
using Materializer = std::function<at::Tensor(const at::Tensor& source, c10::ScalarType stored)>;

// The rank and world size whose share of each full tensor a snapshot keeps.
// Which rank writes which elements of a full tensor follows from the key's
// position in the sorted key list, its shape and its stored dtype
// (full_tensor_share), so each rank can stage only what it will write.
struct StagedShare {
  int rank = 0;
  int world_size = 1;
};

// For synchronous saves: references source when it already is a contiguous CPU
// tensor of dtype stored, otherwise converts it.
at::Tensor reference_or_convert(const at::Tensor& source, c10::ScalarType stored);

// Staging bytes (StagingArena::footprint) that materializing states would take.
std::size_t staging_bytes(const StateDict& states, std::optional<c10::ScalarType> dtype,
                          std::optional<StagedShare> share = std::nullopt);

// Fills job.views, job.pieces, job.source_dtypes and job.full_offsets from
// states. Floating tensors are stored as dtype when it is given. With share,
// only that rank's share of each full tensor is materialized. Every tensor is
// validated before the first one is materialized. Throws InvalidArgumentError
// naming the key for undefined tensors, unsupported dtypes and shards whose
// data does not fit their region.
void add_states(SaveJob& job, const StateDict& states, std::optional<c10::ScalarType> dtype,
                const Materializer& materialize, std::optional<StagedShare> share = std::nullopt);

}  // namespace persistence::detail
