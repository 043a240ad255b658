#include "text_corpus.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace char_lm {
namespace {

namespace fs = std::filesystem;

// SplitMix64 finaliser: a fixed, platform-independent mixing of 64 bits, unlike
// the standard distributions whose output the library implementation chooses.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t hash3(uint64_t a, uint64_t b, uint64_t c) { return mix(mix(mix(a) ^ b) ^ c); }

bool is_fortune_text(const fs::directory_entry& entry) {
  if (entry.is_directory()) {
    return false;
  }
  const std::string ext = entry.path().extension().string();
  return ext != ".dat" && ext != ".u8" && entry.is_regular_file();
}

// Appends the lines of file to text, leaving out the lone '%' separator lines.
void append_without_separators(const fs::path& file, std::vector<uint8_t>& text) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw std::runtime_error("failed to open fortune file '" + file.string() +
                             "'; check its permissions or pass --data");
  }
  std::string line;
  while (std::getline(in, line)) {
    if (line == "%") {
      continue;
    }
    text.insert(text.end(), line.begin(), line.end());
    text.push_back('\n');
  }
}

}  // namespace

std::vector<uint8_t> load_fortunes(const std::string& dir) {
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (is_fortune_text(entry)) {
      files.push_back(entry.path());
    }
  }
  if (ec) {
    throw std::runtime_error("failed to list the text directory '" + dir + "': " + ec.message() +
                             "; install the fortunes package or pass --data");
  }

  // Directory order differs between file systems; the corpus must not.
  std::sort(files.begin(), files.end());
  std::vector<uint8_t> text;
  for (const auto& file : files) {
    append_without_separators(file, text);
  }
  if (text.empty()) {
    throw std::runtime_error("the text directory '" + dir + "' contains no fortune text; pass --data");
  }
  return text;
}

TextCorpus::TextCorpus(std::vector<uint8_t> text, int64_t context, double holdout_fraction) : context_(context) {
  const auto holdout_size = static_cast<size_t>(static_cast<double>(text.size()) * holdout_fraction);
  const size_t split = text.size() - holdout_size;
  holdout_.assign(text.begin() + static_cast<std::ptrdiff_t>(split), text.end());
  text.resize(split);
  train_ = std::move(text);

  const auto needed = static_cast<size_t>(context_) + 1;
  if (train_.size() < needed || holdout_.size() < needed) {
    throw std::invalid_argument("the text is too short for context " + std::to_string(context_) + ": " +
                                std::to_string(train_.size()) + " training and " + std::to_string(holdout_.size()) +
                                " held-out bytes, each needs at least " + std::to_string(needed));
  }
}

Batch TextCorpus::training_batch(uint64_t seed, int64_t step, int rank, int64_t batch) const {
  std::vector<uint64_t> hashes;
  hashes.reserve(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t sample = static_cast<int64_t>(rank) * batch + i;
    hashes.push_back(hash3(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(sample)));
  }
  return windows(train_, hashes);
}

Batch TextCorpus::holdout_batch(uint64_t seed, int64_t batch) const {
  // A step number no training step uses keeps these windows apart from the training stream.
  constexpr uint64_t kHoldoutStream = ~uint64_t{0};
  std::vector<uint64_t> hashes;
  for (int64_t i = 0; i < batch; ++i) {
    hashes.push_back(hash3(seed, kHoldoutStream, static_cast<uint64_t>(i)));
  }
  return windows(holdout_, hashes);
}

Batch TextCorpus::windows(const std::vector<uint8_t>& text, const std::vector<uint64_t>& hashes) const {
  const auto rows = static_cast<int64_t>(hashes.size());
  Batch batch{at::empty({rows, context_}, at::kLong), at::empty({rows, context_}, at::kLong)};
  int64_t* inputs = batch.inputs.data_ptr<int64_t>();
  int64_t* targets = batch.targets.data_ptr<int64_t>();

  // Offsets leave room for the target one byte past each window.
  const uint64_t starts = text.size() - static_cast<uint64_t>(context_);
  for (int64_t row = 0; row < rows; ++row) {
    const uint64_t offset = hashes[static_cast<size_t>(row)] % starts;
    for (int64_t t = 0; t < context_; ++t) {
      inputs[row * context_ + t] = text[offset + static_cast<uint64_t>(t)];
      targets[row * context_ + t] = text[offset + static_cast<uint64_t>(t) + 1];
    }
  }
  return batch;
}

}  // namespace char_lm
