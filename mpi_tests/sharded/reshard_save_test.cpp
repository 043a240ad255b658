// The save half of the resharding suite. At P ranks it writes every tensor of
// reshard_layouts.h, sharded in its own layout for P, into the checkpoint
// directory of P below PERSISTENCE_RESHARD_ROOT; reshard_load_test reads those
// directories at other world sizes. It also checks that sharded writes stay
// collective and that h5py, a serial reader, reads the gathered global tensors.

#include "io/step_writer.h"
#include "mpi_test_support.h"
#include "reshard_layouts.h"

#include <persistence/manager.h>
#include <persistence/module_states.h>

#include <ATen/ops/empty.h>
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#ifndef PERSISTENCE_RESHARD_ROOT
#error "PERSISTENCE_RESHARD_ROOT must name the directory shared by the save and load suites"
#endif
#ifndef PERSISTENCE_CHECK_GATHERED_SCRIPT
#error "PERSISTENCE_CHECK_GATHERED_SCRIPT must name check_gathered.py"
#endif

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

StateDict reshard_states(int world, int rank) {
  StateDict states;
  for (const auto& tensor : reshard_tensors()) {
    states.emplace(tensor.key, sharded_in(tensor, layout_named(tensor.save_layout), world, rank, Fill::kExpected));
  }
  return states;
}

void save(const std::string& root, const std::string& registry, const StateDict& states, bool direct_io = true) {
  ManagerOptions options;
  options.registry_dir = registry;
  options.direct_io = direct_io;
  PersistenceManager manager(root, options);
  manager.save_model({.step = kReshardStep, .name = kReshardModel, .config = YAML::Load("{type: reshard}"),
                      .states = states, .dtype = std::nullopt, .blocking = true});
  manager.close();
}

// NumPy dtype that h5py returns for a dataset of this torch dtype, or empty
// when the raw bytes of the torch tensor are not comparable.
std::string numpy_dtype(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    default: return "";
  }
}

std::string shape_argument(const std::vector<int64_t>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i > 0 ? "," : "") + std::to_string(shape[i]);
  return text;
}

void write_raw(const at::Tensor& tensor, const std::string& path) {
  at::Tensor data = tensor.contiguous();
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data.data_ptr()), data.numel() * data.element_size());
}

// Writes the expected global tensors and returns the arguments of check_gathered.py.
std::string gathered_check_arguments(const std::string& expected_dir) {
  fs::create_directories(expected_dir);
  std::string arguments;
  for (const auto& tensor : reshard_tensors()) {
    std::string dtype = numpy_dtype(tensor.dtype);
    at::Tensor expected = global_tensor(tensor);
    if (dtype.empty()) {
      // bfloat16 has no NumPy dtype; the library stores it so that h5py reads
      // float32 values, which hold every bfloat16 value exactly.
      dtype = "float32";
      expected = expected.to(at::kFloat);
    }
    std::string raw = expected_dir + "/" + tensor.key + ".bin";
    write_raw(expected, raw);
    arguments += " " + shell_quote("/models/" + std::string(kReshardModel) + "/states/" + tensor.key) + " " + dtype +
                 " " + shell_quote(shape_argument(tensor.shape)) + " " + shell_quote(raw);
  }
  return arguments;
}

TEST(ReshardSave, WritesEveryTensorAndH5pyReadsItGathered) {
  const int world = world_size();
  const int rank = world_rank();
  const std::string root = save_root(PERSISTENCE_RESHARD_ROOT, world);

  // The directory of this world size is rebuilt on every run, so the load
  // suite never reads a checkpoint of an older build.
  if (rank == 0) {
    fs::remove_all(root);
    fs::create_directories(PERSISTENCE_RESHARD_ROOT);
  }
  barrier();

  ASSERT_NO_THROW(save(root, std::string(PERSISTENCE_RESHARD_ROOT) + "/registry", reshard_states(world, rank)))
      << where(kReshardStep) << ", saving at " << world << " ranks";

  const std::string path = root + "/" + step_file_name(kReshardStep);
  ASSERT_TRUE(fs::exists(path)) << where(kReshardStep) << ": " << path << " is missing after the save";
  if (rank != 0) return;

  // The Debian interpreter, which has h5py; a python3 earlier on PATH may not.
  std::string command = "HDF5_USE_FILE_LOCKING=FALSE /usr/bin/python3 " +
                        shell_quote(PERSISTENCE_CHECK_GATHERED_SCRIPT) + " " + shell_quote(path) +
                        gathered_check_arguments(root + "/expected");
  CommandResult result = run_command(command);
  EXPECT_EQ(result.exit_code, 0) << where(kReshardStep) << ", saved at " << world
                                 << " ranks: h5py does not read the gathered global tensors:\n"
                                 << result.output;
}

TEST(ReshardSave, ShardedWritesAreCollective) {
  SharedTempDir dir("collective");
  const detail::TransferModeCounts before = detail::transfer_mode_counts();
  ASSERT_NO_THROW(save(dir.join("checkpoints"), dir.join("registry"), reshard_states(world_size(), world_rank())))
      << where(kReshardStep);
  const detail::TransferModeCounts after = detail::transfer_mode_counts();

  EXPECT_EQ(after.independent, before.independent)
      << where(kReshardStep) << ": " << after.independent - before.independent
      << " HDF5 transfers of this process were independent";
  EXPECT_GT(after.collective, before.collective) << where(kReshardStep)
                                                 << ": the sharded save counts no collective transfer";
}

// Saves the resharding states into a new directory and returns how many
// transfers of each kind this process counts for it.
detail::TransferModeCounts transfers_of_save(const std::string& name, bool direct_io) {
  SharedTempDir dir(name);
  const detail::TransferModeCounts before = detail::transfer_mode_counts();
  EXPECT_NO_THROW(save(dir.join("checkpoints"), dir.join("registry"), reshard_states(world_size(), world_rank()),
                       direct_io))
      << where(kReshardStep);
  const detail::TransferModeCounts after = detail::transfer_mode_counts();
  return {after.collective - before.collective, after.independent - before.independent,
          after.direct - before.direct};
}

// large_rows gives every rank at every world size a contiguous piece of more
// than 64 KiB in a dataset of over 1 MiB, which the rank writes itself.
TEST(ReshardSave, LargeContiguousPiecesAreWrittenDirectly) {
  const detail::TransferModeCounts counts = transfers_of_save("direct", true);

  EXPECT_GT(counts.direct, 0) << where(kReshardStep) << ": no piece was written directly";
  EXPECT_EQ(counts.independent, 0) << where(kReshardStep) << ": " << counts.independent
                                 << " HDF5 transfers of this process were independent";
}

TEST(ReshardSave, DirectIoOffUsesHdf5Only) {
  const detail::TransferModeCounts counts = transfers_of_save("through_hdf5", false);

  EXPECT_EQ(counts.direct, 0) << where(kReshardStep) << ": " << counts.direct
                            << " pieces were written directly with direct_io off";
  EXPECT_EQ(counts.independent, 0) << where(kReshardStep) << ": " << counts.independent
                                 << " HDF5 transfers of this process were independent";
}

TEST(ReshardSave, DirectIoVariableTurnsItOff) {
  ::setenv("PERSISTENCE_DIRECT_IO", "0", 1);
  const detail::TransferModeCounts counts = transfers_of_save("direct_variable", true);
  ::unsetenv("PERSISTENCE_DIRECT_IO");

  EXPECT_EQ(counts.direct, 0) << where(kReshardStep) << ": " << counts.direct
                            << " pieces were written directly with PERSISTENCE_DIRECT_IO=0";
}

}  // namespace
}  // namespace persistence::testing
