// Optimizer state of a sharded flat parameter space, converted to and from
// the per-parameter form that checkpoints store. A rank's optimizer updates
// "slots": 1-D tensors that each cover a contiguous range of the flat space
// (ZeRO: one slot per parameter overlap; FSDP: the whole shard, padding
// included). Saved keys are "<parameter name>/<state key>" with the
// parameter's global shape, so any world size and any unsharded optimizer
// over the same module read the same checkpoint.
#pragma once

#include "mpi/communicator.h"
#include "shard/flat_layout.h"

#include <persistence/module_states.h>
#include <persistence/persisted.h>

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace persistence::detail {

// One tensor the optimizer updates: flat elements [begin, begin + tensor.numel()).
struct Slot {
  std::string name;  // unique name without '.', used only inside this conversion
  int64_t begin = 0;
  at::Tensor tensor;
};

// Collective over comm. Returns the optimizer's state split per parameter.
// The optimizer must have one parameter group holding exactly the slots.
// Scalar states must agree across the ranks that hold them; a disagreement
// is a CollectiveError naming the key and ranks on every rank.
OptimizerStates export_slot_states(const Communicator& comm, const FlatLayout& layout,
                                   const std::vector<Slot>& slots, torch::optim::Optimizer& optimizer);

// Collective over comm. Reads each slot's part of every saved state from
// states and restores it, with the saved group options, into the optimizer.
void import_slot_states(const Communicator& comm, const FlatLayout& layout, const std::vector<Slot>& slots,
                        torch::optim::Optimizer& optimizer, const PersistedStates& states,
                        const YAML::Node& param_groups);

}  // namespace persistence::detail
