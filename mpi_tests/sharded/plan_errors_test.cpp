// Invalid sharded save plans fail on every rank, together and with the same
// message that names the key and the ranks involved, instead of hanging or
// writing a file. After the failure the manager still saves a valid plan.

#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>

#include <ATen/ops/arange.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kStep = 11;
constexpr int64_t kElements = 12;

at::Tensor global_vector(c10::ScalarType dtype = at::kFloat) {
  return at::arange(kElements, at::TensorOptions().dtype(at::kLong)).to(dtype);
}

// Rank r's balanced range of the kElements-element vector.
std::pair<int64_t, int64_t> balanced_range(int rank) {
  return {kElements * rank / world_size(), kElements * (rank + 1) / world_size()};
}

ShardedTensor vector_piece(int64_t begin, int64_t end, c10::ScalarType dtype = at::kFloat,
                           std::vector<int64_t> shape = {kElements}) {
  ShardedTensor sharded(std::move(shape), dtype);
  sharded.add_flat(global_vector(dtype).slice(0, begin, end).clone(), begin);
  return sharded;
}

StateDict valid_states() {
  auto [begin, end] = balanced_range(world_rank());
  StateDict states;
  states.emplace("a", vector_piece(begin, end));
  states.emplace("b", vector_piece(begin, end));
  return states;
}

// Returns "rank 1" or "ranks 1, 2, 3" for ranks [first, world size).
std::string ranks_from(int first) {
  std::string text = world_size() - first == 1 ? "rank " : "ranks ";
  for (int r = first; r < world_size(); ++r) text += (r > first ? ", " : "") + std::to_string(r);
  return text;
}

// Collective. True when rank 0's text equals this rank's on every rank.
bool same_on_all_ranks(const std::string& text) {
  std::vector<char> buffer(text.begin(), text.end());
  int length = static_cast<int>(buffer.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  buffer.resize(static_cast<size_t>(length));
  MPI_Bcast(buffer.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  return all_ranks(std::string(buffer.begin(), buffer.end()) == text);
}

class PlanErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    if (world_size() < 2) GTEST_SKIP() << "invalid plans need ranks that disagree, so at least 2 ranks";
  }

  // Saves states, expects an error whose message contains every fragment on
  // every rank, then checks that no step file appeared and that a
  // valid save still works.
  void expect_rejected(const StateDict& states, const std::vector<std::string>& fragments) {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    PersistenceManager manager(dir_.join("checkpoints"), options);
    const std::string path = dir_.join("checkpoints/" + step_file_name(kStep));

    std::string message;
    auto save = [&] {
      try {
        manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: plan}"), .states = states,
                            .dtype = std::nullopt, .blocking = true});
      } catch (const std::exception& error) {
        message = error.what();
        throw;
      }
    };
    // NOTE: the manager rethrows failures of its I/O thread as IoError ("The save of ... failed: <plan error>"),
    // so this checks the base class and the message rather than CollectiveError.
    EXPECT_TRUE(throws_error<Error>(save, fragments)) << where(kStep);
    EXPECT_TRUE(same_on_all_ranks(message)) << where(kStep) << ": ranks report different messages; this rank: "
                                            << message;
    EXPECT_FALSE(fs::exists(path)) << where(kStep) << ": the rejected save left " << path;

    EXPECT_NO_THROW(manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: plan}"),
                                        .states = valid_states(), .dtype = std::nullopt, .blocking = true}))
        << where(kStep) << ": a valid save after the rejected one";
    EXPECT_TRUE(fs::exists(path)) << where(kStep) << ": the valid save wrote no file";
  }

  SharedTempDir dir_{"plan-errors"};
};

TEST_F(PlanErrors, RankDependentKeySets) {
  StateDict states = valid_states();
  if (world_rank() > 0) states.erase("b");
  expect_rejected(states, {"'b'", "missing on " + ranks_from(1)});
}

TEST_F(PlanErrors, OverlappingPieces) {
  // Rank 1 starts one element before its range, inside rank 0's piece.
  auto [begin, end] = balanced_range(world_rank());
  if (world_rank() == 1) begin -= 1;
  StateDict states = valid_states();
  states.insert_or_assign("a", vector_piece(begin, end));
  expect_rejected(states, {"'a'", "overlap", "rank 0", "rank 1"});
}

TEST_F(PlanErrors, GapBetweenPieces) {
  // Rank 0 stops one element short, so no rank has the last element of its range.
  auto [begin, end] = balanced_range(world_rank());
  const int64_t missing = balanced_range(0).second - 1;
  if (world_rank() == 0) end -= 1;
  StateDict states = valid_states();
  states.insert_or_assign("a", vector_piece(begin, end));
  expect_rejected(states, {"'a'", "[" + std::to_string(missing) + ", " + std::to_string(missing + 1) + ")",
                           "uncovered"});
}

TEST_F(PlanErrors, DisagreeingGlobalShapes) {
  // Rank 1 declares one more element; every rank's piece still fits its own declaration.
  auto [begin, end] = balanced_range(world_rank());
  std::vector<int64_t> shape = {world_rank() == 1 ? kElements + 1 : kElements};
  StateDict states = valid_states();
  states.insert_or_assign("a", vector_piece(begin, end, at::kFloat, shape));
  expect_rejected(states, {"'a'", "global shape", "[" + std::to_string(kElements + 1) + "] on rank 1"});
}

TEST_F(PlanErrors, DisagreeingDtypes) {
  auto [begin, end] = balanced_range(world_rank());
  StateDict states = valid_states();
  states.insert_or_assign("a", vector_piece(begin, end, world_rank() == 1 ? at::kDouble : at::kFloat));
  expect_rejected(states, {"'a'", "dtype", "float64 on rank 1"});
}

}  // namespace
}  // namespace persistence::testing
