#include "reshard_layouts.h"

#include <algorithm>
#include <stdexcept>

namespace persistence::testing {
namespace {

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t size : shape) count *= size;
  return count;
}

PieceSpec flat_piece(int64_t begin, int64_t end) {
  PieceSpec piece;
  piece.begin = begin;
  piece.end = end;
  return piece;
}

std::vector<PieceSpec> flat_balanced(const std::vector<int64_t>& shape, int world, int rank) {
  int64_t n = numel_of(shape);
  return {flat_piece(n * rank / world, n * (rank + 1) / world)};
}

// Pieces of ceil(n / world) elements, so the last ranks may get less or nothing.
std::vector<PieceSpec> flat_chunked(const std::vector<int64_t>& shape, int world, int rank) {
  int64_t n = numel_of(shape);
  int64_t chunk = (n + world - 1) / world;
  return {flat_piece(std::min(n, chunk * rank), std::min(n, chunk * (rank + 1)))};
}

// Rank r gets 10^r elements and the last rank the rest, as far as they last.
std::vector<PieceSpec> flat_geometric(const std::vector<int64_t>& shape, int world, int rank) {
  int64_t n = numel_of(shape);
  int64_t begin = 0;
  int64_t size = 1;
  for (int r = 0; r < rank; ++r) {
    begin += size;
    size *= 10;
  }
  int64_t end = rank == world - 1 ? n : begin + size;
  return {flat_piece(std::min(n, begin), std::min(n, end))};
}

// 2 * world balanced chunks; rank r gets chunk r and chunk 2 * world - 1 - r.
std::vector<PieceSpec> flat_two_ranges(const std::vector<int64_t>& shape, int world, int rank) {
  int64_t n = numel_of(shape);
  int64_t chunks = 2 * world;
  auto chunk = [&](int64_t k) { return flat_piece(n * k / chunks, n * (k + 1) / chunks); };
  return {chunk(rank), chunk(chunks - 1 - rank)};
}

// A box of whole slices along dimension `dim`, chunked over the ranks.
std::vector<PieceSpec> boxes_along(const std::vector<int64_t>& shape, size_t dim, int world, int rank) {
  int64_t extent = shape[dim];
  int64_t chunk = (extent + world - 1) / world;
  int64_t begin = std::min(extent, chunk * rank);
  int64_t end = std::min(extent, chunk * (rank + 1));
  PieceSpec piece;
  piece.is_box = true;
  piece.offsets.assign(shape.size(), 0);
  piece.sizes = shape;
  piece.offsets[dim] = begin;
  piece.sizes[dim] = end - begin;
  return {piece};
}

std::vector<PieceSpec> rows(const std::vector<int64_t>& shape, int world, int rank) {
  if (shape.empty()) return flat_chunked(shape, world, rank);
  return boxes_along(shape, 0, world, rank);
}

std::vector<PieceSpec> columns(const std::vector<int64_t>& shape, int world, int rank) {
  if (shape.empty()) return flat_chunked(shape, world, rank);
  return boxes_along(shape, shape.size() - 1, world, rank);
}

std::string join(const std::vector<int64_t>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) text += (i > 0 ? ", " : "") + std::to_string(values[i]);
  return text + "]";
}

}  // namespace

std::string PieceSpec::describe() const {
  if (is_box) return "box at " + join(offsets) + " of size " + join(sizes);
  return "flat range [" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

const std::vector<ReshardTensor>& reshard_tensors() {
  static const std::vector<ReshardTensor> tensors = {
      {"vector6", {6}, at::kFloat, "flat_chunked"},
      {"matrix", {5, 7}, at::kDouble, "flat_balanced"},
      {"rows", {7, 3}, at::kInt, "rows"},
      {"first_dim_2", {2, 5}, at::kBFloat16, "rows"},
      {"scalar", {}, at::kLong, "flat_balanced"},
      {"empty_matrix", {3, 0}, at::kFloat, "rows"},
      {"empty_vector", {0}, at::kFloat, "flat_balanced"},
      {"uneven", {1111}, at::kFloat, "flat_geometric"},
      {"two_ranges", {40}, at::kShort, "flat_two_ranges"},
      {"mask", {9}, at::kBool, "flat_two_ranges"},
      {"columns", {6, 8}, at::kFloat, "columns"},
      {"columns_3d", {3, 4, 5}, at::kByte, "columns"},
      // Datasets of 1 MiB and more, which ranks write with O_DIRECT where
      // their pieces are contiguous in the file; the column boxes are not.
      {"large_geometric", {1031, 517}, at::kFloat, "flat_geometric"},
      {"large_rows", {769, 683}, at::kDouble, "rows"},
      {"large_two_ranges", {300007}, at::kFloat, "flat_two_ranges"},
      {"large_bf16", {1024, 1500}, at::kBFloat16, "flat_balanced"},
      {"large_columns", {513, 1027}, at::kFloat, "columns"},
  };
  return tensors;
}

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all = {
      {"flat_balanced", flat_balanced},   {"flat_chunked", flat_chunked}, {"flat_geometric", flat_geometric},
      {"flat_two_ranges", flat_two_ranges}, {"rows", rows},               {"columns", columns},
  };
  return all;
}

const Layout& layout_named(const std::string& name) {
  for (const auto& layout : layouts()) {
    if (layout.name == name) return layout;
  }
  throw std::invalid_argument("no layout named '" + name + "'");
}

at::Tensor global_tensor(const ReshardTensor& tensor) {
  // The seed depends on the key, so tensors of the same shape differ.
  double seed = 0;
  for (char c : tensor.key) seed += static_cast<unsigned char>(c);
  return deterministic_tensor(tensor.shape, tensor.dtype, seed);
}

at::Tensor slice_of(const at::Tensor& global, const PieceSpec& piece) {
  if (!piece.is_box) return global.reshape({-1}).slice(0, piece.begin, piece.end).clone();
  at::Tensor box = global;
  for (size_t d = 0; d < piece.offsets.size(); ++d) {
    box = box.narrow(static_cast<int64_t>(d), piece.offsets[d], piece.sizes[d]);
  }
  return box.contiguous().clone();
}

at::Tensor marker_of(const at::Tensor& expected) {
  if (expected.scalar_type() == at::kBool) return expected.logical_not();
  return expected.add(1);
}

ShardedTensor sharded_in(const ReshardTensor& tensor, const Layout& layout, int world, int rank, Fill fill) {
  const at::Tensor global = global_tensor(tensor);
  ShardedTensor sharded(tensor.shape, tensor.dtype);
  for (const PieceSpec& piece : layout.pieces(tensor.shape, world, rank)) {
    at::Tensor data = slice_of(global, piece);
    if (fill == Fill::kMarker) data = marker_of(data);
    if (piece.is_box) {
      sharded.add_box(data, piece.offsets);
    } else {
      sharded.add_flat(data, piece.begin);
    }
  }
  return sharded;
}

std::string save_root(const std::string& suite_root, int world) { return suite_root + "/np" + std::to_string(world); }

}  // namespace persistence::testing
