// The save and load plans: which keys exist, their global shape and dtype, and
// which rank holds which pieces. Ranks exchange their local view with one
// allgather and validate the combined plan identically, so every rank reaches
// the same verdict and the same error message without further messages.
#pragma once

#include "mpi/communicator.h"
#include "shard/regions.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace persistence::detail {

// One key as one rank describes it.
struct KeyView {
  std::string key;
  c10::ScalarType dtype = c10::ScalarType::Float;
  Shape shape;
  bool sharded = false;
  std::vector<Region> regions;  // this rank's pieces; empty for full tensors
};

// A key as all ranks agree on it.
struct PlannedKey {
  std::string key;
  c10::ScalarType dtype = c10::ScalarType::Float;
  Shape shape;
  bool sharded = false;
  std::vector<std::vector<Region>> regions_by_rank;  // sharded keys only
  bool exact_cover = false;  // sharded pieces cover every element exactly once
};

struct Plan {
  std::vector<PlannedKey> keys;  // sorted by key
  int world_size = 1;
};

enum class PlanUse {
  kSave,  // sharded pieces must cover each tensor exactly once
  kLoad,  // sharded pieces may overlap or leave gaps
};

// A hash of one rank's views (XXH3 of their encoding).
uint64_t plan_fingerprint(const std::vector<KeyView>& views);

// The last validated save plan of one save name, reused while no rank's views change.
struct PlanCache {
  bool valid = false;
  uint64_t fingerprint = 0;
  Plan plan;
};

// Collective. Exchanges every rank's views and returns the validated plan.
// Throws CollectiveError, the same on every rank, naming the key and the ranks
// when key sets, kinds, shapes or dtypes disagree, or, for kSave, when sharded
// pieces overlap or leave a gap. views must be sorted by key.
Plan exchange_plan(const Communicator& comm, const std::vector<KeyView>& views, PlanUse use);

// Returns the transfers rank makes for key, in order. On save, full tensors
// are spread over ranks: large ones split evenly, small ones whole on one
// rank. On load, every rank reads the full tensor.
std::vector<Transfer> transfers_for(const Plan& plan, size_t key_index, int rank, PlanUse use,
                                    int64_t max_elements);

// The region of a full tensor that rank writes on save (possibly empty).
FlatRange full_tensor_share(const Plan& plan, size_t key_index, int rank);

// The same region, computed from what every rank has before the plan exchange: the
// key's position in the sorted key list, its shape and its stored dtype.
FlatRange full_tensor_share(const Shape& shape, c10::ScalarType dtype, size_t key_index, int world_size, int rank);

}  // namespace persistence::detail
