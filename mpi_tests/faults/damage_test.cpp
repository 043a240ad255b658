// Damaged and bad step files. A flipped byte in a tensor's data and a
// truncated file are reported with the key or the file, and load_last_step()
// falls back to the previous step with a warning. Files that are not HDF5,
// HDF5 files that are not step files, newer format versions, and targets of
// the wrong shape or dtype each raise their own exception class and never
// change the target.

#include "fault_files.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

// The states saved at step: every value depends on the step, so a fallback to
// the wrong step shows in the data.
StateDict step_states(int64_t step) {
  return {{"layers.0.weight", deterministic_tensor({64, 16}, at::kFloat, static_cast<double>(step))},
          {"layers.0.bias", deterministic_tensor({16}, at::kFloat, 10.0 + static_cast<double>(step))},
          {"steps_seen", at::full({}, step, at::kLong)}};
}

class DamagedStep : public ::testing::Test {
 protected:
  // Saves steps 1 and 2 of model "model".
  void SetUp() override {
    PersistenceManager manager(root(), options());
    for (int64_t step : {1, 2}) {
      manager.save_model({.step = step, .name = "model", .config = YAML::Load("{type: none}"),
                          .states = step_states(step), .blocking = true});
    }
  }

  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  std::string root() const { return dir_.join("checkpoints"); }
  std::string step_path(int64_t step) const { return root() + "/" + step_file_name(step); }

  // Collective: runs edit on rank 0 only, then waits for every rank.
  template <typename Edit>
  void edit_on_rank_0(Edit&& edit) {
    barrier();
    if (world_rank() == 0) edit();
    barrier();
  }

  // Collective: a fresh manager's load_last_step() must resume at expected_step
  // with that step's data, and rank 0 must log a warning that names skipped_file.
  void expect_fallback(int64_t expected_step, const std::string& skipped_file, const std::string& damage) {
    std::optional<ResumeState> resume;
    std::string log;
    {
      CapturedStderr captured;
      PersistenceManager manager(root(), options());
      resume = manager.load_last_step();
      log = captured.text();
    }
    ASSERT_TRUE(resume.has_value()) << "no step loads after " << damage << ", " << where(expected_step);
    EXPECT_EQ(resume->step, expected_step) << "load_last_step after " << damage << ", " << where(expected_step);
    const TensorDict loaded = resume->models.at("model").states.load(at::kCPU);
    for (const auto& [key, value] : step_states(expected_step)) {
      EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), loaded.at(key)))
          << "fallback data after " << damage << ", " << where(key, expected_step);
    }
    if (world_rank() == 0) {
      EXPECT_NE(log.find("Skipping step"), std::string::npos)
          << "no warning about the skipped step after " << damage << ", " << where(expected_step)
          << "; standard error was: " << log;
      EXPECT_NE(log.find(skipped_file), std::string::npos)
          << "the warning does not name " << skipped_file << " after " << damage << ", " << where(expected_step)
          << "; standard error was: " << log;
    }
  }

  SharedTempDir dir_{"damage"};
};

TEST_F(DamagedStep, FlippedByteInTensorData) {
  const std::string file = step_path(2);
  const std::string dataset = "/models/model/states/layers.0.weight";
  edit_on_rank_0([&] {
    const RawDataRange range = raw_data_range(file, dataset);
    ASSERT_GT(range.size, 0u) << "no raw data offset for " << dataset << " in " << file;
    std::string bytes = read_file_bytes(file);
    bytes[range.offset + range.size / 2] ^= 0x01;
    write_file_bytes(file, bytes);
  });

  const PersistedModel model = load_model_from_path(root(), "model", 2);
  EXPECT_TRUE(throws_error<IntegrityError>([&] { model.states.load(at::kCPU); },
                                           {"layers.0.weight", file, "Checksum mismatch"}))
      << "states.load of a flipped byte, " << where("layers.0.weight", 2);

  StateDict target;
  for (const auto& [key, value] : step_states(2)) target.emplace(key, at::zeros_like(std::get<at::Tensor>(value)));
  EXPECT_TRUE(throws_error<IntegrityError>([&] { model.states.load_into(target); }, {"layers.0.weight", file}))
      << "states.load_into of a flipped byte, " << where("layers.0.weight", 2);

  expect_fallback(1, step_file_name(2), "a flipped byte in step 2");
}

TEST_F(DamagedStep, FlippedByteWithVerificationOff) {
  const std::string file = step_path(2);
  edit_on_rank_0([&] {
    const RawDataRange range = raw_data_range(file, "/models/model/states/layers.0.bias");
    std::string bytes = read_file_bytes(file);
    bytes[range.offset] ^= 0x40;
    write_file_bytes(file, bytes);
  });

  // verify_checksums = false trades the check for speed: the damaged step loads.
  ManagerOptions unchecked = options();
  unchecked.verify_checksums = false;
  PersistenceManager manager(root(), unchecked);
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(2);
  EXPECT_EQ(resume->step, 2) << "with verification off the damaged newest step is used, " << where(2);
  const TensorDict loaded = resume->models.at("model").states.load(at::kCPU);
  EXPECT_FALSE(bitwise_equal(std::get<at::Tensor>(step_states(2).at("layers.0.bias")), loaded.at("layers.0.bias")))
      << "the flipped byte must show when verification is off, " << where("layers.0.bias", 2);
}

TEST_F(DamagedStep, TruncatedFile) {
  const std::string file = step_path(2);
  std::string pristine;
  edit_on_rank_0([&] { pristine = read_file_bytes(file); });
  int64_t size = static_cast<int64_t>(pristine.size());
  MPI_Bcast(&size, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
  ASSERT_GT(size, 4096) << file;

  // Inside the superblock, inside the metadata, in the middle, and one byte short.
  for (int64_t length : {int64_t{0}, int64_t{40}, int64_t{1500}, size / 2, size - 1}) {
    edit_on_rank_0([&] { write_file_bytes(file, pristine.substr(0, static_cast<size_t>(length))); });
    const std::string damage = "step 2 cut to " + std::to_string(length) + " of " + std::to_string(size) + " bytes";

    EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 2).states.load(at::kCPU); },
                                          {file}))
        << "loading " << damage << ", " << where(2);
    StateDict target = {{"layers.0.bias", at::zeros({16}, at::kFloat)}};
    EXPECT_TRUE(throws_error<Error>(
        [&] { PersistedStates{file, "/models/model/states", true, MPI_COMM_WORLD}.load_into(target); }, {file}))
        << "load_into from " << damage << ", " << where("layers.0.bias", 2);
    EXPECT_TRUE(bitwise_equal(at::zeros({16}, at::kFloat), std::get<at::Tensor>(target.at("layers.0.bias"))))
        << "a failed load_into must leave its target unchanged, " << damage << ", " << where("layers.0.bias", 2);
    expect_fallback(1, step_file_name(2), damage);
  }
}

TEST_F(DamagedStep, NotAnHdf5File) {
  const std::string file = step_path(3);
  for (const std::string& content : {std::string("this is a text file, not a checkpoint\n"), std::string()}) {
    edit_on_rank_0([&] { write_file_bytes(file, content); });
    const std::string damage = "a step 3 file of " + std::to_string(content.size()) + " bytes of text";
    EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 3); }, {file, "HDF5"}))
        << damage << ", " << where(3);
    expect_fallback(2, step_file_name(3), damage);
  }
}

TEST_F(DamagedStep, ForeignHdf5File) {
  const std::string file = step_path(3);
  edit_on_rank_0([&] { write_foreign_hdf5_file(file); });
  EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 3); },
                                        {file, "not a persistence step file"}))
      << "an HDF5 file without the format attribute, " << where(3);
  expect_fallback(2, step_file_name(3), "an HDF5 file that is not a step file");
}

TEST_F(DamagedStep, NewerFormatVersion) {
  const std::string file = step_path(2);
  edit_on_rank_0([&] { set_string_attribute(file, "/", "format_version", "2.0"); });
  EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 2); }, {file, "2.0"}))
      << "format version 2.0, " << where(2);
  expect_fallback(1, step_file_name(2), "format version 2.0");

  // A newer minor version of the same major version stays readable.
  edit_on_rank_0([&] { set_string_attribute(file, "/", "format_version", "1.9"); });
  PersistenceManager manager(root(), options());
  const auto resume = manager.load_last_step();
  ASSERT_TRUE(resume.has_value()) << where(2);
  EXPECT_EQ(resume->step, 2) << "format version 1.9 must load, " << where(2);
}

TEST_F(DamagedStep, DatasetTypeDisagreesWithDtypeAttribute) {
  const std::string file = step_path(2);
  edit_on_rank_0(
      [&] { set_string_attribute(file, "/models/model/states/layers.0.weight", "torch_dtype", "float64"); });
  EXPECT_TRUE(throws_error<FormatError>([&] { load_model_from_path(root(), "model", 2).states.load(at::kCPU); },
                                        {file, "layers.0.weight", "float64"}))
      << "a float32 dataset labelled float64, " << where("layers.0.weight", 2);
  expect_fallback(1, step_file_name(2), "a dataset whose torch_dtype disagrees with its HDF5 type");
}

TEST_F(DamagedStep, TargetOfWrongShapeOrDtype) {
  const PersistedModel model = load_model_from_path(root(), "model", 2);
  const at::Tensor sentinel = at::full({16, 64}, 5.0, at::kFloat);

  StateDict wrong_shape = {{"layers.0.weight", sentinel.clone()}};
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { model.states.load_into(wrong_shape); },
                                               {"layers.0.weight", "[64, 16]", "[16, 64]"}))
      << "full target of shape [16, 64], " << where("layers.0.weight", 2);
  EXPECT_TRUE(bitwise_equal(sentinel, std::get<at::Tensor>(wrong_shape.at("layers.0.weight"))))
      << "the target must stay unchanged, " << where("layers.0.weight", 2);

  StateDict wrong_dtype = {{"layers.0.bias", at::full({16}, 5, at::kInt)}};
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { model.states.load_into(wrong_dtype); },
                                               {"layers.0.bias", "float32", "int32"}))
      << "int32 target of a float32 dataset, " << where("layers.0.bias", 2);
  EXPECT_TRUE(bitwise_equal(at::full({16}, 5, at::kInt), std::get<at::Tensor>(wrong_dtype.at("layers.0.bias"))))
      << "the target must stay unchanged, " << where("layers.0.bias", 2);

  // A sharded target whose global shape differs: each rank has one row.
  ShardedTensor rows({world_size(), 16}, at::kFloat);
  rows.add_box(at::full({1, 16}, 5.0, at::kFloat), {world_rank(), 0});
  StateDict wrong_global = {{"layers.0.weight", rows}};
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { model.states.load_into(wrong_global); },
                                               {"layers.0.weight", "[64, 16]"}))
      << "sharded target of global shape [" << world_size() << ", 16], " << where("layers.0.weight", 2);

  StateDict scalar_as_vector = {{"steps_seen", at::zeros({1}, at::kLong)}};
  EXPECT_TRUE(throws_error<StateMismatchError>([&] { model.states.load_into(scalar_as_vector); }, {"steps_seen"}))
      << "a 1-element target for a 0-d dataset, " << where("steps_seen", 2);
}

}  // namespace
}  // namespace persistence::testing
