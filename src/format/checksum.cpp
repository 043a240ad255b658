#include "format/checksum.h"

#include <algorithm>
#include <cstring>

namespace persistence::detail {
namespace {

constexpr uint64_t kBase = 0x9E3779B97F4A7C15ull;  // odd: every power is odd too

uint64_t power(uint64_t base, uint64_t exponent) {
  uint64_t result = 1;
  while (exponent > 0) {
    if (exponent & 1) result *= base;
    base *= base;
    exponent >>= 1;
  }
  return result;
}

uint64_t load_word(const unsigned char* bytes) {
  uint64_t word;
  std::memcpy(&word, bytes, sizeof(word));
  return word;  // little-endian hosts only; x86-64 and aarch64 are.
}

// Word holding bytes [first, first + count) of the 8-byte word at their positions, others zero.
uint64_t partial_word(const unsigned char* bytes, unsigned first, unsigned count) {
  unsigned char word[8] = {};
  std::memcpy(word + first, bytes, count);
  return load_word(word);
}

}  // namespace

uint64_t checksum_piece(const void* data, uint64_t offset, uint64_t length) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  uint64_t sum = 0;
  uint64_t word_index = offset / 8;
  uint64_t multiplier = power(kBase, word_index);

  // A head word that the piece covers only from byte offset % 8 on.
  unsigned head = static_cast<unsigned>(offset % 8);
  if (head != 0 && length > 0) {
    unsigned count = static_cast<unsigned>(std::min<uint64_t>(8 - head, length));
    sum += partial_word(bytes, head, count) * multiplier;
    bytes += count;
    length -= count;
    multiplier *= kBase;
  }

  // Whole words, four independent lanes so the multiplications overlap.
  const uint64_t base4 = power(kBase, 4);
  uint64_t m0 = multiplier;
  uint64_t m1 = m0 * kBase;
  uint64_t m2 = m1 * kBase;
  uint64_t m3 = m2 * kBase;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  while (length >= 32) {
    s0 += load_word(bytes) * m0;
    s1 += load_word(bytes + 8) * m1;
    s2 += load_word(bytes + 16) * m2;
    s3 += load_word(bytes + 24) * m3;
    m0 *= base4;
    m1 *= base4;
    m2 *= base4;
    m3 *= base4;
    bytes += 32;
    length -= 32;
  }
  sum += s0 + s1 + s2 + s3;
  multiplier = m0;
  while (length >= 8) {
    sum += load_word(bytes) * multiplier;
    multiplier *= kBase;
    bytes += 8;
    length -= 8;
  }

  // A tail word that the piece covers only up to its end.
  if (length > 0) sum += partial_word(bytes, 0, static_cast<unsigned>(length)) * multiplier;
  return sum;
}

uint64_t checksum_finish(uint64_t sum, uint64_t total_bytes) {
  // splitmix64 finaliser over the sum and the length.
  uint64_t z = sum + total_bytes * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t text_checksum(const std::string& text) {
  return checksum_finish(checksum_piece(text.data(), 0, text.size()), text.size());
}

}  // namespace persistence::detail
