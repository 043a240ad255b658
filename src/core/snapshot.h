// Turning a state dict into the pieces of a SaveJob: contiguous CPU tensors in
// the dtype to store, with their regions.
#pragma once

#include "io/step_writer.h"

#include <persistence/state_dict.h>

#include <optional>

namespace persistence::detail {

// Fills job.views, job.pieces and job.source_dtypes from states. Floating
// tensors are converted to dtype when it is given. Tensors that are already
// contiguous CPU tensors of the right dtype are referenced, not copied.
// Throws InvalidArgumentError naming the key for undefined tensors,
// unsupported dtypes and shards whose data does not fit their region.
void add_states(SaveJob& job, const StateDict& states, std::optional<c10::ScalarType> dtype);

}  // namespace persistence::detail
