#include "shard/regions.h"

#include <algorithm>
#include <optional>
#include <string>

namespace persistence::detail {
namespace {

int64_t product(const Shape& shape, size_t from) {
  int64_t count = 1;
  for (size_t d = from; d < shape.size(); ++d) count *= shape[d];
  return count;
}

// Boxes of elements [begin, end) of the sub-tensor at dims [dim, rank) whose
// leading indices are fixed by prefix.
void collect_boxes(const Shape& shape, size_t dim, Shape& prefix, int64_t begin, int64_t end,
                   std::vector<Box>& boxes) {
  if (begin >= end) return;
  int64_t inner = product(shape, dim + 1);

  auto push_rows = [&](int64_t first_row, int64_t row_count) {
    Box box;
    box.offsets = prefix;
    box.sizes.assign(prefix.size(), 1);
    box.offsets.push_back(first_row);
    box.sizes.push_back(row_count);
    for (size_t d = dim + 1; d < shape.size(); ++d) {
      box.offsets.push_back(0);
      box.sizes.push_back(shape[d]);
    }
    boxes.push_back(std::move(box));
  };
  auto recurse_into_row = [&](int64_t row, int64_t row_begin, int64_t row_end) {
    prefix.push_back(row);
    collect_boxes(shape, dim + 1, prefix, row_begin, row_end, boxes);
    prefix.pop_back();
  };

  int64_t first_row = begin / inner;
  int64_t last_row = (end - 1) / inner;
  if (first_row == last_row) {
    if (begin % inner == 0 && end - begin == inner) {
      push_rows(first_row, 1);
    } else {
      recurse_into_row(first_row, begin - first_row * inner, end - first_row * inner);
    }
    return;
  }

  // A partial head row, whole middle rows, a partial tail row.
  int64_t full_begin = first_row;
  if (begin % inner != 0) {
    recurse_into_row(first_row, begin % inner, inner);
    full_begin = first_row + 1;
  }
  int64_t full_end = end % inner == 0 ? last_row + 1 : last_row;
  if (full_end > full_begin) push_rows(full_begin, full_end - full_begin);
  if (end % inner != 0) recurse_into_row(last_row, 0, end - last_row * inner);
}

// Splits a box whose data is contiguous in its own row-major order.
void split_box(const Box& box, size_t dim, int64_t data_offset, int64_t max_elements,
               std::vector<Transfer>& transfers) {
  int64_t count = product(box.sizes, 0);
  if (count == 0) return;
  if (count <= max_elements || dim >= box.sizes.size()) {
    transfers.push_back(Transfer{.boxes = {box}, .data_offset = data_offset, .count = count});
    return;
  }
  int64_t inner = product(box.sizes, dim + 1);
  if (inner <= max_elements) {
    int64_t rows_per_transfer = std::max<int64_t>(1, max_elements / inner);
    for (int64_t row = 0; row < box.sizes[dim]; row += rows_per_transfer) {
      Box part = box;
      part.offsets[dim] = box.offsets[dim] + row;
      part.sizes[dim] = std::min(rows_per_transfer, box.sizes[dim] - row);
      transfers.push_back(
          Transfer{.boxes = {part}, .data_offset = data_offset + row * inner, .count = part.sizes[dim] * inner});
    }
    return;
  }
  for (int64_t row = 0; row < box.sizes[dim]; ++row) {
    Box part = box;
    part.offsets[dim] = box.offsets[dim] + row;
    part.sizes[dim] = 1;
    split_box(part, dim + 1, data_offset + row * inner, max_elements, transfers);
  }
}

}  // namespace

int64_t element_count(const Shape& shape) { return product(shape, 0); }

int64_t region_elements(const Region& region) {
  if (const auto* range = std::get_if<FlatRange>(&region)) return range->end - range->begin;
  return product(std::get<Box>(region).sizes, 0);
}

std::string describe_region(const Region& region) {
  if (const auto* range = std::get_if<FlatRange>(&region)) {
    return "elements [" + std::to_string(range->begin) + ", " + std::to_string(range->end) + ")";
  }
  const Box& box = std::get<Box>(region);
  std::string text = "box [";
  for (size_t d = 0; d < box.offsets.size(); ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(box.offsets[d]) + ":" + std::to_string(box.offsets[d] + box.sizes[d]);
  }
  return text + "]";
}

std::string describe_shape(const Shape& shape) {
  std::string text = "[";
  for (size_t d = 0; d < shape.size(); ++d) {
    if (d > 0) text += ", ";
    text += std::to_string(shape[d]);
  }
  return text + "]";
}

std::vector<Box> flat_range_to_boxes(const Shape& shape, int64_t begin, int64_t end) {
  std::vector<Box> boxes;
  if (begin >= end) return boxes;
  if (shape.empty()) {
    boxes.push_back(Box{});
    return boxes;
  }
  Shape prefix;
  collect_boxes(shape, 0, prefix, begin, end, boxes);
  return boxes;
}

void for_each_run(const Shape& shape, const Region& region,
                  const std::function<void(int64_t, int64_t)>& visit) {
  if (const auto* range = std::get_if<FlatRange>(&region)) {
    if (range->end > range->begin) visit(range->begin, range->end - range->begin);
    return;
  }
  const Box& box = std::get<Box>(region);
  if (shape.empty()) {
    visit(0, 1);
    return;
  }
  if (product(box.sizes, 0) == 0) return;

  // Merge trailing dimensions that the box spans completely into one run.
  size_t rank = shape.size();
  size_t merge_from = rank - 1;
  while (merge_from > 0 && box.offsets[merge_from] == 0 && box.sizes[merge_from] == shape[merge_from]) {
    --merge_from;
  }
  int64_t run = box.sizes[merge_from] * product(shape, merge_from + 1);

  // Walk the leading indices like an odometer.
  std::vector<int64_t> strides(rank, 1);
  for (size_t d = rank - 1; d > 0; --d) strides[d - 1] = strides[d] * shape[d];
  std::vector<int64_t> index(merge_from, 0);
  while (true) {
    int64_t flat = box.offsets[merge_from] * strides[merge_from];
    for (size_t d = 0; d < merge_from; ++d) flat += (box.offsets[d] + index[d]) * strides[d];
    visit(flat, run);

    size_t d = merge_from;
    while (d > 0) {
      --d;
      if (++index[d] < box.sizes[d]) break;
      index[d] = 0;
      if (d == 0) return;
    }
    if (merge_from == 0) return;
  }
}

std::optional<FlatRange> as_flat_range(const Shape& shape, const Region& region) {
  if (const auto* range = std::get_if<FlatRange>(&region)) return *range;
  std::optional<FlatRange> result;
  bool contiguous = true;
  for_each_run(shape, region, [&](int64_t begin, int64_t count) {
    if (!result) {
      result = FlatRange{begin, begin + count};
    } else if (result->end == begin) {
      result->end += count;
    } else {
      contiguous = false;
    }
  });
  if (!contiguous) return std::nullopt;
  if (!result) return FlatRange{0, 0};
  return result;
}

std::vector<Transfer> split_into_transfers(const Shape& shape, const Region& region, int64_t max_elements) {
  std::vector<Transfer> transfers;
  max_elements = std::max<int64_t>(max_elements, 1);
  if (const auto* range = std::get_if<FlatRange>(&region)) {
    for (int64_t begin = range->begin; begin < range->end; begin += max_elements) {
      int64_t end = std::min(range->end, begin + max_elements);
      transfers.push_back(Transfer{.boxes = flat_range_to_boxes(shape, begin, end),
                                   .data_offset = begin - range->begin,
                                   .count = end - begin});
    }
    return transfers;
  }
  const Box& box = std::get<Box>(region);
  if (shape.empty()) {
    transfers.push_back(Transfer{.boxes = {Box{}}, .data_offset = 0, .count = 1});
    return transfers;
  }
  split_box(box, 0, 0, max_elements, transfers);
  return transfers;
}

std::vector<std::pair<int64_t, int64_t>> transfer_runs(const Shape& shape, const Transfer& transfer) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  if (shape.empty()) {
    if (transfer.count > 0) runs.emplace_back(0, transfer.count);
    return runs;
  }
  for (const Box& box : transfer.boxes) {
    for_each_run(shape, Region(box), [&](int64_t flat_begin, int64_t count) {
      if (!runs.empty() && runs.back().first + runs.back().second == flat_begin) {
        runs.back().second += count;
      } else {
        runs.emplace_back(flat_begin, count);
      }
    });
  }
  return runs;
}

}  // namespace persistence::detail
