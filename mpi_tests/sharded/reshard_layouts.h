// Tensors and layouts shared by the resharding save and load suites. The save
// suite runs at P ranks and writes every tensor in its own layout for P; the
// load suite runs at Q ranks and reads every tensor saved at each P = 1..4 in
// every layout for Q. Values depend only on the key, so both sides know the
// expected global tensor.
#pragma once

#include "mpi_test_support.h"

#include <persistence/state_dict.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace persistence::testing {

// One piece of a layout: a flat range [begin, end) or a box.
struct PieceSpec {
  bool is_box = false;
  int64_t begin = 0;
  int64_t end = 0;
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;

  std::string describe() const;
};

// A way to split any global shape over `world` ranks; returns rank's pieces.
struct Layout {
  std::string name;
  std::vector<PieceSpec> (*pieces)(const std::vector<int64_t>& shape, int world, int rank);
};

// The tensors every checkpoint of the resharding suites holds.
struct ReshardTensor {
  std::string key;
  std::vector<int64_t> shape;
  c10::ScalarType dtype;
  std::string save_layout;  // name of the layout the save suite uses
};

const std::vector<ReshardTensor>& reshard_tensors();

// Layouts by name: "flat_balanced", "flat_chunked" (ceil-sized pieces, so 6
// elements over 4 ranks give 2, 2, 2, 0), "flat_geometric" (sizes 1, 10, 100,
// ...), "flat_two_ranges" (two separate ranges per rank), "rows" (boxes of
// whole rows, chunked), "columns" (boxes of whole columns of the last
// dimension, chunked; not contiguous).
const std::vector<Layout>& layouts();
const Layout& layout_named(const std::string& name);

// The expected global tensor of a key.
at::Tensor global_tensor(const ReshardTensor& tensor);

// A copy of piece's elements of global: flat for a range, box-shaped for a box.
at::Tensor slice_of(const at::Tensor& global, const PieceSpec& piece);

// Values a load target starts with: every element differs from the expected
// one (x + 1, or not x for bool), so a piece that is never read fails the check.
at::Tensor marker_of(const at::Tensor& expected);

enum class Fill {
  kExpected,  // each piece is a copy of its slice of the global tensor (to save)
  kMarker,    // each piece contains marker_of its slice (a load target)
};

// A sharded tensor with rank's pieces of tensor in layout.
ShardedTensor sharded_in(const ReshardTensor& tensor, const Layout& layout, int world, int rank, Fill fill);

// Directory of the checkpoint written at `world` ranks below the suite root.
std::string save_root(const std::string& suite_root, int world);

constexpr int64_t kReshardStep = 7;
constexpr const char* kReshardModel = "model";

}  // namespace persistence::testing
