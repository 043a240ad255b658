// Position-dependent checksum of a tensor's bytes that any set of disjoint
// pieces can compute separately and add up. The bytes of the row-major tensor
// are read as little-endian 64-bit words w_j (the last one zero-padded), and
//
//   sum = (w_0 * A^0 + w_1 * A^1 + ... ) mod 2^64,   A odd,
//
// so a piece covering bytes [begin, end) contributes its words with the bytes
// outside the piece zeroed. The stored value mixes the sum with the byte count.
// Because A is odd, every single-bit error changes the sum. The value depends
// only on the tensor's bytes, never on how ranks split it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace persistence::detail {

// Returns the contribution of bytes [offset, offset + length) of a tensor, given
// those bytes at data.
uint64_t checksum_piece(const void* data, uint64_t offset, uint64_t length);

// Returns the stored checksum of a tensor of total_bytes bytes whose pieces sum to sum.
uint64_t checksum_finish(uint64_t sum, uint64_t total_bytes);

// Returns the stored checksum of a text dataset's bytes (the YAML configs).
uint64_t text_checksum(const std::string& text);

}  // namespace persistence::detail
