// Geometry of tensor pieces: flat element ranges and N-d boxes of a row-major
// global tensor, their decomposition into hyperslab boxes, and the split of a
// piece into transfers that each move at most a given number of elements.
#pragma once

#include <persistence/state_dict.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace persistence::detail {

using Shape = std::vector<int64_t>;
using Region = std::variant<FlatRange, Box>;

int64_t element_count(const Shape& shape);
int64_t region_elements(const Region& region);
std::string describe_region(const Region& region);

// Returns a shape as "[2, 3]".
std::string describe_shape(const Shape& shape);

// The boxes whose row-major union is elements [begin, end) of a tensor of
// shape, in increasing order; at most 2 * rank - 1 boxes. A 0-d tensor maps to
// one box with no dimensions.
std::vector<Box> flat_range_to_boxes(const Shape& shape, int64_t begin, int64_t end);

// Calls visit(flat_begin, count) for each contiguous run of the region in the
// global row-major order, in that order. Runs of a box follow its own
// row-major order, which is also the order of its data.
void for_each_run(const Shape& shape, const Region& region,
                  const std::function<void(int64_t flat_begin, int64_t count)>& visit);

// When the region is one contiguous run, returns it as a FlatRange.
std::optional<FlatRange> as_flat_range(const Shape& shape, const Region& region);

// One HDF5 transfer: elements [data_offset, data_offset + count) of a piece's
// flattened data map to the row-major union of boxes in the dataset.
struct Transfer {
  std::vector<Box> boxes;
  size_t piece = 0;  // index of the piece among the rank's pieces of the key
  int64_t data_offset = 0;
  int64_t count = 0;
};

// The contiguous runs of a transfer in the row-major global tensor, as (first
// element, element count) pairs in the order of its data. A 0-d tensor gives
// (0, 1).
std::vector<std::pair<int64_t, int64_t>> transfer_runs(const Shape& shape, const Transfer& transfer);

// Splits a region into transfers of at most max_elements elements each (one
// transfer when it fits). Empty regions give no transfer.
std::vector<Transfer> split_into_transfers(const Shape& shape, const Region& region, int64_t max_elements);

}  // namespace persistence::detail
