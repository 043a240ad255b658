// Writes one save (a model or an optimizer) into the file of its step.
#pragma once

#include "mpi/communicator.h"
#include "shard/plan.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail {

// Everything one rank contributes to one save. The tensors are contiguous CPU
// tensors in the dtype to store; they must stay unchanged until the write ends.
struct SaveJob {
  int64_t step = 0;
  std::string group;        // "models" or "optimizers"
  std::string name;         // model or optimizer name
  std::string config_name;  // "config" or "param_groups"
  std::string config_text;  // YAML
  std::string training_config;  // YAML of save_config; empty when none was saved
  std::string task_id;

  std::vector<KeyView> views;                     // sorted by key
  std::vector<std::vector<at::Tensor>> pieces;    // per key: one per region, or the full tensor
  std::vector<std::optional<c10::ScalarType>> source_dtypes;  // per key: dtype before conversion

  // Per key: the flat index of the first element of a full tensor's piece. 0
  // unless the snapshot staged only this rank's share (full_tensor_share).
  // May be empty, meaning 0 for every key.
  std::vector<int64_t> full_offsets;

  // Add to the committed file of this step instead of starting a new one.
  bool extend_existing = false;

  // The previous plan of this save name; used and updated only by the writing thread.
  std::shared_ptr<PlanCache> plan_cache;
};

struct WriterSettings {
  int64_t max_bytes_per_call = int64_t{1} << 30;
  std::size_t alignment = std::size_t{1} << 20;
  std::size_t alignment_threshold = std::size_t{1} << 20;

  // Each rank writes its contiguous pieces of datasets of at least
  // alignment_threshold bytes itself, with O_DIRECT, instead of through
  // HDF5's collective MPI-IO transfers.
  bool direct_io = true;

  // Called before each key's checksum and each data transfer. A background
  // writer waits there while the trainer's thread copies a snapshot.
  std::function<void()> pause_point;
};

// Counts of data transfers by kind, for tests that check that writes stay
// collective or go direct.
struct TransferModeCounts {
  int64_t collective = 0;
  int64_t independent = 0;
  int64_t direct = 0;  // written by the rank itself (DirectFile)
};
TransferModeCounts transfer_mode_counts();

// Collective over comm. Plans, writes to a temporary file, flushes and syncs it,
// and renames it to <root>/step_<step>.h5. On any failure every rank throws the
// same error and the temporary file is removed; the committed file of the step,
// if any, is untouched.
void write_step(const Communicator& comm, const std::string& root, const SaveJob& job,
                const WriterSettings& settings);

}  // namespace persistence::detail
