// Fuzz test of the loader. It damages copies of one committed step file: cut
// at random lengths, or with random bytes overwritten in the superblock, the
// metadata at either end of the file, tensor data, or anywhere. Each copy is
// loaded four ways: load_last_step() on a directory that contains only the
// damaged step, load_model_from_path() with states.load(), states.load_into()
// with full targets, and the model and training configs. Every load must end in a
// persistence::Error, or in data equal bit for bit to the undamaged step when
// the damage fell in bytes no reader uses. A crash, a hang (the ctest TIMEOUT)
// or different data fails the test.
//
// PERSISTENCE_FUZZ_SEED and PERSISTENCE_FUZZ_CASES set the seed (printed) and
// the number of damaged files. Every rank builds the same files from the seed.

#include "fault_files.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/loading.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kStep = 1;

uint64_t environment_number(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

// The states of the reference step: several dtypes and ranks, a 0-d tensor, a
// dataset above the 1 MiB alignment threshold (so the file has an unused gap
// before it), and keys that need escaping.
StateDict reference_states() {
  return {{"encoder.layers.0.weight", deterministic_tensor({48, 32}, at::kFloat, 1)},
          {"encoder.layers.0.bias", deterministic_tensor({32}, at::kFloat, 2)},
          {"embedding.weight", deterministic_tensor({300, 1024}, at::kFloat, 3)},
          {"head/scale", deterministic_tensor({7}, at::kDouble, 4)},
          {"steps_seen", deterministic_tensor({}, at::kLong, 5)},
          {"mask", deterministic_tensor({5, 9}, at::kBool, 6)},
          {"tokens", deterministic_tensor({100}, at::kInt, 7)},
          {"half", deterministic_tensor({3, 11}, at::kBFloat16, 8)}};
}

enum class Damage { kTruncate, kOverwriteAnywhere, kOverwriteSuperblock, kOverwriteHeadMetadata,
                    kOverwriteTailMetadata, kOverwriteTensorData };
constexpr int kDamageKinds = 6;

const char* damage_name(Damage damage) {
  switch (damage) {
    case Damage::kTruncate: return "truncate";
    case Damage::kOverwriteAnywhere: return "overwrite anywhere";
    case Damage::kOverwriteSuperblock: return "overwrite superblock";
    case Damage::kOverwriteHeadMetadata: return "overwrite metadata near the start";
    case Damage::kOverwriteTailMetadata: return "overwrite metadata near the end";
    case Damage::kOverwriteTensorData: return "overwrite tensor data";
  }
  return "unknown";
}

// One damaged file: its bytes and a description that reproduces it.
struct DamagedFile {
  std::string bytes;
  std::string description;
};

class Damager {
 public:
  Damager(std::string pristine, std::vector<RawDataRange> ranges, uint64_t seed)
      : pristine_(std::move(pristine)), ranges_(std::move(ranges)), random_(seed) {
    std::sort(ranges_.begin(), ranges_.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
  }

  DamagedFile make(Damage damage) {
    DamagedFile file{pristine_, damage_name(damage)};
    const uint64_t size = pristine_.size();
    if (damage == Damage::kTruncate) {
      uint64_t length = uniform(0, size - 1);
      file.bytes.resize(length);
      file.description += " to " + std::to_string(length) + " of " + std::to_string(size) + " bytes";
      return file;
    }

    uint64_t offset = 0;
    switch (damage) {
      case Damage::kOverwriteSuperblock: offset = uniform(0, 95); break;
      case Damage::kOverwriteHeadMetadata: offset = metadata_offset(0, std::min<uint64_t>(size, 64 * 1024)); break;
      case Damage::kOverwriteTailMetadata: offset = metadata_offset(size > 64 * 1024 ? size - 64 * 1024 : 0, size); break;
      case Damage::kOverwriteTensorData: offset = tensor_offset(); break;
      default: offset = uniform(0, size - 1); break;
    }
    uint64_t count = std::min<uint64_t>(uniform(1, 8), size - offset);
    std::ostringstream changed;
    for (uint64_t i = 0; i < count; ++i) {
      auto old_byte = static_cast<unsigned char>(file.bytes[offset + i]);
      // XOR with a nonzero value, so every chosen byte really changes.
      auto new_byte = static_cast<unsigned char>(old_byte ^ static_cast<unsigned char>(uniform(1, 255)));
      file.bytes[offset + i] = static_cast<char>(new_byte);
      changed << (i ? " " : "") << std::hex << int(old_byte) << "->" << int(new_byte) << std::dec;
    }
    file.description += ": " + std::to_string(count) + " bytes at offset " + std::to_string(offset) + " (" +
                        changed.str() + ")" + describe_location(offset);
    return file;
  }

 private:
  uint64_t uniform(uint64_t low, uint64_t high) { return std::uniform_int_distribution<uint64_t>(low, high)(random_); }

  bool in_tensor_data(uint64_t offset) const {
    return std::any_of(ranges_.begin(), ranges_.end(),
                       [&](const auto& r) { return offset >= r.offset && offset < r.offset + r.size; });
  }

  // Returns a random offset in [begin, end) outside every dataset's raw data.
  // The unused alignment gap counts as metadata, because HDF5 may place
  // metadata blocks there.
  uint64_t metadata_offset(uint64_t begin, uint64_t end) {
    for (int attempt = 0; attempt < 1000; ++attempt) {
      uint64_t offset = uniform(begin, end - 1);
      if (!in_tensor_data(offset)) return offset;
    }
    return uniform(begin, end - 1);
  }

  uint64_t tensor_offset() {
    const RawDataRange& range = ranges_[uniform(0, ranges_.size() - 1)];
    return range.offset + uniform(0, range.size - 1);
  }

  std::string describe_location(uint64_t offset) const {
    for (const auto& range : ranges_) {
      if (offset >= range.offset && offset < range.offset + range.size) return " in the data of " + range.dataset;
    }
    return "";
  }

  std::string pristine_;
  std::vector<RawDataRange> ranges_;
  std::mt19937_64 random_;
};

// What one load of a damaged file ended in.
enum class Outcome { kError, kSkipped, kIntact, kWrongData, kForeignException };

struct Tally {
  std::map<std::string, int> counts;  // "<load>: <outcome>" -> cases

  void add(const std::string& load, const std::string& outcome) { ++counts[load + ": " + outcome]; }
};

class LoaderFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    {
      PersistenceManager manager(dir_.join("reference"), options);
      manager.save_config(YAML::Load("{trainer: {lr: 0.001, batch: 32}, note: a training config}"));
      manager.save_model({.step = kStep, .name = "model", .config = YAML::Load("{type: fuzz_net, hidden: 32}"),
                          .states = reference_states(), .blocking = true});
    }
    reference_path_ = dir_.join("reference/" + step_file_name(kStep));
    const PersistedModel model = load_model_from_path(dir_.join("reference"), "model", kStep);
    expected_ = model.states.load(at::kCPU);
    expected_model_config_ = YAML::Dump(model.config.load());
    expected_training_config_ =
        YAML::Dump(PersistedConfig{reference_path_, "/config"}.load());
  }

  // Compares loaded tensors with the undamaged step; returns a description of
  // the first difference, or an empty string.
  std::string difference(const TensorDict& loaded) const {
    if (loaded.size() != expected_.size()) {
      return "expected " + std::to_string(expected_.size()) + " keys, but got " + std::to_string(loaded.size());
    }
    for (const auto& [key, tensor] : expected_) {
      auto found = loaded.find(key);
      if (found == loaded.end()) return "key '" + key + "' is missing";
      auto equal = bitwise_equal(tensor, found->second);
      if (!equal) return "key '" + key + "': " + equal.message();
    }
    return {};
  }

  std::string config_difference(const PersistedConfig& model_config, const PersistedConfig& training_config) const {
    if (YAML::Dump(model_config.load()) != expected_model_config_) return "the model config differs";
    if (YAML::Dump(training_config.load()) != expected_training_config_) return "the training config differs";
    return {};
  }

  SharedTempDir dir_{"fuzz"};
  std::string reference_path_;
  TensorDict expected_;
  std::string expected_model_config_;
  std::string expected_training_config_;
};

// Runs load and classifies its end: a persistence::Error, another exception,
// or a return; check returns the difference from the expected data.
template <typename Load>
Outcome run_load(Load&& load, std::string& detail) {
  try {
    detail = load();
    return detail.empty() ? Outcome::kIntact : Outcome::kWrongData;
  } catch (const Error& error) {
    detail = std::string(error.kind()) + ": " + error.what();
    return Outcome::kError;
  } catch (const std::exception& error) {
    detail = type_name(error) + ": " + error.what();
    return Outcome::kForeignException;
  }
}

std::string outcome_name(Outcome outcome, const std::string& detail) {
  switch (outcome) {
    case Outcome::kError: return detail.substr(0, detail.find(':'));
    case Outcome::kSkipped: return "skipped";
    case Outcome::kIntact: return "intact data";
    case Outcome::kWrongData: return "WRONG DATA";
    case Outcome::kForeignException: return "EXCEPTION OUTSIDE persistence::Error";
  }
  return "unknown";
}

TEST_F(LoaderFuzz, DamagedStepFiles) {
  const uint64_t seed = environment_number("PERSISTENCE_FUZZ_SEED", 20261204);
  const uint64_t cases = environment_number("PERSISTENCE_FUZZ_CASES", 240);
  const std::string pristine = read_file_bytes(reference_path_);
  const std::vector<RawDataRange> ranges = raw_data_ranges(reference_path_);
  ASSERT_FALSE(ranges.empty()) << "no contiguous dataset found in " << reference_path_;
  if (world_rank() == 0) {
    std::printf("fuzz seed %llu, %llu damaged files, reference file %zu bytes with %zu contiguous datasets\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(cases), pristine.size(),
                ranges.size());
  }

  Damager damager(pristine, ranges, seed);
  ManagerOptions options;
  options.registry_dir = dir_.join("registry");
  const std::string case_dir = dir_.join("case");
  const std::string case_path = case_dir + "/" + step_file_name(kStep);
  Tally tally;

  for (uint64_t index = 0; index < cases; ++index) {
    const auto damage = static_cast<Damage>(index % kDamageKinds);
    const DamagedFile damaged = damager.make(damage);
    barrier();
    if (world_rank() == 0) {
      fs::remove_all(case_dir);
      fs::create_directories(case_dir);
      write_file_bytes(case_path, damaged.bytes);
      std::printf("case %llu: %s\n", static_cast<unsigned long long>(index), damaged.description.c_str());
      std::fflush(stdout);
    }
    barrier();
    const std::string label = "case " + std::to_string(index) + " (" + damaged.description + ")";

    // 1. load_last_step on a directory that holds only the damaged step:
    //    nothing (the step is skipped), or the step with the right data.
    std::string detail;
    bool skipped = false;
    Outcome outcome = run_load(
        [&]() -> std::string {
          PersistenceManager manager(case_dir, options);
          auto resume = manager.load_last_step();
          if (!resume) {
            skipped = true;
            return {};
          }
          if (resume->step != kStep) return "resumed at step " + std::to_string(resume->step);
          std::string data = difference(resume->models.at("model").states.load(at::kCPU));
          return data.empty() ? config_difference(resume->models.at("model").config, resume->config) : data;
        },
        detail);
    if (skipped) outcome = Outcome::kSkipped;
    tally.add("load_last_step", outcome_name(outcome, detail));
    EXPECT_NE(outcome, Outcome::kWrongData) << "load_last_step, " << label << ": " << detail << ", " << where(kStep);
    EXPECT_NE(outcome, Outcome::kForeignException)
        << "load_last_step, " << label << ": " << detail << ", " << where(kStep);

    // 2. load_model_from_path with the step, then states.load and the configs.
    outcome = run_load(
        [&] {
          const PersistedModel model = load_model_from_path(case_dir, "model", kStep);
          std::string data = difference(model.states.load(at::kCPU));
          return data.empty() ? config_difference(model.config, PersistedConfig{case_path, "/config"}) : data;
        },
        detail);
    tally.add("load", outcome_name(outcome, detail));
    EXPECT_NE(outcome, Outcome::kWrongData)
        << "load_model_from_path and load, " << label << ": " << detail << ", " << where(kStep);
    EXPECT_NE(outcome, Outcome::kForeignException)
        << "load_model_from_path and load, " << label << ": " << detail << ", " << where(kStep);

    // 3. load_into full targets, collective over MPI_COMM_WORLD.
    outcome = run_load(
        [&] {
          StateDict target;
          for (const auto& [key, tensor] : expected_) target.emplace(key, at::zeros(tensor.sizes(), tensor.options()));
          PersistedStates{case_path, "/models/model/states", true, MPI_COMM_WORLD}.load_into(target);
          TensorDict loaded;
          for (const auto& [key, value] : target) loaded.emplace(key, std::get<at::Tensor>(value));
          return difference(loaded);
        },
        detail);
    tally.add("load_into", outcome_name(outcome, detail));
    EXPECT_NE(outcome, Outcome::kWrongData) << "load_into, " << label << ": " << detail << ", " << where(kStep);
    EXPECT_NE(outcome, Outcome::kForeignException) << "load_into, " << label << ": " << detail << ", " << where(kStep);
  }

  if (world_rank() == 0) {
    std::printf("fuzz outcomes over %llu damaged files (seed %llu):\n", static_cast<unsigned long long>(cases),
                static_cast<unsigned long long>(seed));
    for (const auto& [name, count] : tally.counts) std::printf("  %-60s %d\n", name.c_str(), count);
    std::fflush(stdout);
  }
}

}  // namespace
}  // namespace persistence::testing
