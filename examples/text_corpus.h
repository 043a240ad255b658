// The training text of the demo and its batches. Batches are a pure function of
// (seed, step, rank, batch size), never of how many steps this process has run,
// so a resumed run replays exactly the batches a straight run would have seen.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace char_lm {

// Reads every plain-text fortune file in dir (sorted by name, skipping
// directories and the *.dat and *.u8 companions), drops the '%' lines that
// separate fortunes, and returns the bytes. Throws std::runtime_error naming
// the directory when it cannot be read or contains no text.
std::vector<uint8_t> load_fortunes(const std::string& dir);

// Input tokens and next-token targets, both (batch, context) int64.
struct Batch {
  at::Tensor inputs;
  at::Tensor targets;
};

class TextCorpus {
 public:
  // Splits text into a training part and a held-out tail of holdout_fraction.
  // Throws std::invalid_argument when either part is shorter than context + 1.
  TextCorpus(std::vector<uint8_t> text, int64_t context, double holdout_fraction);

  // Returns rank's part of the step's global batch: samples [r * batch, (r + 1) * batch).
  // Sample i is the training window at an offset hashed from (seed, step, i),
  // so a rank's batch depends only on seed, step, rank and batch size.
  Batch training_batch(uint64_t seed, int64_t step, int rank, int64_t batch) const;

  // A fixed batch of held-out windows, the same on every rank and every run.
  Batch holdout_batch(uint64_t seed, int64_t batch) const;

  int64_t training_bytes() const noexcept { return static_cast<int64_t>(train_.size()); }
  int64_t holdout_bytes() const noexcept { return static_cast<int64_t>(holdout_.size()); }

 private:
  Batch windows(const std::vector<uint8_t>& text, const std::vector<uint64_t>& hashes) const;

  int64_t context_;
  std::vector<uint8_t> train_;
  std::vector<uint8_t> holdout_;
};

}  // namespace char_lm
