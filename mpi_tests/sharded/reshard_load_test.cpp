// The load half of the resharding suite. At Q ranks it reads the checkpoints
// that reshard_save_test wrote at P = 1..4 ranks, every tensor in every layout
// for Q and as a full tensor, and compares every loaded piece bit for bit with
// its slice of the global tensor.

#include "mpi_test_support.h"
#include "reshard_layouts.h"

#include <persistence/persisted.h>

#include <ATen/ops/empty.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#ifndef PERSISTENCE_RESHARD_ROOT
#error "PERSISTENCE_RESHARD_ROOT must name the directory shared by the save and load suites"
#endif

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

class ReshardLoad : public ::testing::TestWithParam<int> {
 protected:
  // The states of the checkpoint saved at GetParam() ranks.
  PersistedStates saved_states() const {
    std::string path = save_root(PERSISTENCE_RESHARD_ROOT, GetParam()) + "/" + step_file_name(kReshardStep);
    return PersistedStates{path, "/models/" + std::string(kReshardModel) + "/states", true, MPI_COMM_WORLD};
  }

  std::string context(const std::string& key, const std::string& layout) const {
    return where(key, kReshardStep) + ", saved at " + std::to_string(GetParam()) + " ranks, loaded at " +
           std::to_string(world_size()) + " ranks into layout " + layout;
  }
};

TEST_P(ReshardLoad, EveryLayoutMatchesGlobalSlices) {
  const PersistedStates states = saved_states();
  ASSERT_TRUE(fs::exists(states.path)) << where(kReshardStep) << ": " << states.path
                                       << " is missing; the ReshardSave tests write it";
  const int world = world_size();
  const int rank = world_rank();

  for (const Layout& layout : layouts()) {
    StateDict target;
    for (const auto& tensor : reshard_tensors()) {
      target.emplace(tensor.key, sharded_in(tensor, layout, world, rank, Fill::kMarker));
    }
    ASSERT_NO_THROW(states.load_into(target)) << context("(all keys)", layout.name);

    for (const auto& tensor : reshard_tensors()) {
      const at::Tensor global = global_tensor(tensor);
      const std::vector<PieceSpec> pieces = layout.pieces(tensor.shape, world, rank);
      const auto& shards = std::get<ShardedTensor>(target.at(tensor.key)).shards();
      ASSERT_EQ(shards.size(), pieces.size()) << context(tensor.key, layout.name);
      for (size_t i = 0; i < pieces.size(); ++i) {
        EXPECT_TRUE(bitwise_equal(slice_of(global, pieces[i]), shards[i].data))
            << context(tensor.key, layout.name) << ", piece " << pieces[i].describe();
      }
    }
  }
}

TEST_P(ReshardLoad, FullTensorsMatchGlobal) {
  const PersistedStates states = saved_states();
  ASSERT_TRUE(fs::exists(states.path)) << where(kReshardStep) << ": " << states.path
                                       << " is missing; the ReshardSave tests write it";
  StateDict target;
  for (const auto& tensor : reshard_tensors()) {
    target.emplace(tensor.key, marker_of(global_tensor(tensor)));
  }
  ASSERT_NO_THROW(states.load_into(target)) << context("(all keys)", "full");

  for (const auto& tensor : reshard_tensors()) {
    EXPECT_TRUE(bitwise_equal(global_tensor(tensor), std::get<at::Tensor>(target.at(tensor.key))))
        << context(tensor.key, "full");
  }
}

INSTANTIATE_TEST_SUITE_P(SavedAt, ReshardLoad, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) { return "np" + std::to_string(info.param); });

}  // namespace
}  // namespace persistence::testing
