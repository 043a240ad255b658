#include "shard/plan.h"

#include "format/dtype.h"

#include <persistence/errors.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include <xxhash.h>

namespace persistence::detail {
namespace {

constexpr int64_t kSmallTensorBytes = int64_t{4} << 20;

// Length-prefixed binary encoding of the views of one rank.
class Encoder {
 public:
  void put(int64_t value) { text_.append(reinterpret_cast<const char*>(&value), sizeof(value)); }
  void put(const std::string& value) {
    put(static_cast<int64_t>(value.size()));
    text_ += value;
  }
  void put(const Shape& shape) {
    put(static_cast<int64_t>(shape.size()));
    for (int64_t size : shape) put(size);
  }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

class Decoder {
 public:
  explicit Decoder(const std::string& text) : text_(text) {}
  int64_t get_int() {
    int64_t value = 0;
    std::memcpy(&value, text_.data() + position_, sizeof(value));
    position_ += sizeof(value);
    return value;
  }
  std::string get_string() {
    auto length = static_cast<size_t>(get_int());
    std::string value = text_.substr(position_, length);
    position_ += length;
    return value;
  }
  Shape get_shape() {
    Shape shape(static_cast<size_t>(get_int()));
    for (auto& size : shape) size = get_int();
    return shape;
  }
  bool done() const { return position_ >= text_.size(); }

 private:
  const std::string& text_;
  size_t position_ = 0;
};

std::string encode(const std::vector<KeyView>& views) {
  Encoder out;
  for (const auto& view : views) {
    out.put(view.key);
    out.put(static_cast<int64_t>(view.dtype));
    out.put(view.shape);
    out.put(static_cast<int64_t>(view.sharded));
    out.put(static_cast<int64_t>(view.regions.size()));
    for (const auto& region : view.regions) {
      if (const auto* range = std::get_if<FlatRange>(&region)) {
        out.put(int64_t{0});
        out.put(range->begin);
        out.put(range->end);
      } else {
        const Box& box = std::get<Box>(region);
        out.put(int64_t{1});
        out.put(box.offsets);
        out.put(box.sizes);
      }
    }
  }
  return out.take();
}

std::vector<KeyView> decode(const std::string& text) {
  std::vector<KeyView> views;
  Decoder in(text);
  while (!in.done()) {
    KeyView view;
    view.key = in.get_string();
    view.dtype = static_cast<c10::ScalarType>(in.get_int());
    view.shape = in.get_shape();
    view.sharded = in.get_int() != 0;
    auto count = in.get_int();
    for (int64_t i = 0; i < count; ++i) {
      if (in.get_int() == 0) {
        int64_t begin = in.get_int();
        int64_t end = in.get_int();
        view.regions.emplace_back(FlatRange{begin, end});
      } else {
        Box box;
        box.offsets = in.get_shape();
        box.sizes = in.get_shape();
        view.regions.emplace_back(std::move(box));
      }
    }
    views.push_back(std::move(view));
  }
  return views;
}

std::string list_ranks(const std::vector<int>& ranks) {
  std::string text = ranks.size() == 1 ? "rank " : "ranks ";
  size_t shown = std::min<size_t>(ranks.size(), 8);
  for (size_t i = 0; i < shown; ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(ranks[i]);
  }
  if (ranks.size() > shown) text += " and " + std::to_string(ranks.size() - shown) + " more";
  return text;
}


[[noreturn]] void disagree(const std::string& key, const std::string& problem) {
  throw CollectiveError(problem, ErrorContext{{}, key, std::nullopt, std::nullopt},
                        "Every rank must pass the same keys with the same global shapes and dtypes");
}

// Groups ranks by a per-rank description and throws when there is more than one group.
void require_agreement(const std::string& key, const std::string& what,
                       const std::vector<std::string>& value_by_rank) {
  std::map<std::string, std::vector<int>> groups;
  for (size_t r = 0; r < value_by_rank.size(); ++r) groups[value_by_rank[r]].push_back(static_cast<int>(r));
  if (groups.size() <= 1) return;
  std::string problem = "Ranks disagree on the " + what + " of key '" + key + "':";
  const char* separator = " ";
  for (const auto& [value, ranks] : groups) {
    problem += separator + value + " on " + list_ranks(ranks);
    separator = "; ";
  }
  disagree(key, problem);
}

void check_key_sets(const std::vector<std::vector<KeyView>>& by_rank) {
  std::set<std::string> all_keys;
  for (const auto& views : by_rank) {
    for (const auto& view : views) all_keys.insert(view.key);
  }
  size_t differing = 0;
  std::string first_problem;
  std::string first_key;
  for (const auto& key : all_keys) {
    std::vector<int> missing;
    for (size_t r = 0; r < by_rank.size(); ++r) {
      bool found = std::binary_search(by_rank[r].begin(), by_rank[r].end(), key,
                                      [](const auto& a, const auto& b) {
                                        if constexpr (std::is_same_v<std::decay_t<decltype(a)>, KeyView>) {
                                          return a.key < b;
                                        } else {
                                          return a < b.key;
                                        }
                                      });
      if (!found) missing.push_back(static_cast<int>(r));
    }
    if (missing.empty()) continue;
    if (differing++ == 0) {
      first_key = key;
      first_problem = "Ranks pass different key sets: key '" + key + "' is missing on " + list_ranks(missing);
    }
  }
  if (differing == 0) return;
  if (differing > 1) first_problem += " (" + std::to_string(differing - 1) + " more keys differ)";
  disagree(first_key, first_problem);
}

struct OwnedRegion {
  int rank;
  Region region;
};

bool boxes_intersect(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offsets.size(); ++d) {
    if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d]) return false;
  }
  return true;
}

std::vector<Box> region_boxes(const Shape& shape, const Region& region) {
  if (const auto* range = std::get_if<FlatRange>(&region)) return flat_range_to_boxes(shape, range->begin, range->end);
  return {std::get<Box>(region)};
}

// Checks that the pieces of a sharded key cover it exactly once. Returns
// whether they do; throws for kSave when they do not.
bool check_cover(const PlannedKey& planned, PlanUse use) {
  std::vector<OwnedRegion> pieces;
  for (size_t r = 0; r < planned.regions_by_rank.size(); ++r) {
    for (const auto& region : planned.regions_by_rank[r]) {
      if (region_elements(region) > 0) pieces.push_back({static_cast<int>(r), region});
    }
  }
  const bool strict = use == PlanUse::kSave;
  const int64_t total = element_count(planned.shape);
  auto overlap = [&](const OwnedRegion& a, const OwnedRegion& b) {
    if (!strict) return false;
    disagree(planned.key, "Shards of key '" + planned.key + "' overlap: rank " + std::to_string(a.rank) + " holds " +
                              describe_region(a.region) + " and rank " + std::to_string(b.rank) + " holds " +
                              describe_region(b.region));
  };

  // Fast path: every piece is one contiguous run, so sorting finds overlaps and gaps.
  std::vector<std::pair<FlatRange, size_t>> ranges;
  for (size_t i = 0; i < pieces.size(); ++i) {
    auto range = as_flat_range(planned.shape, pieces[i].region);
    if (!range) break;
    ranges.emplace_back(*range, i);
  }
  if (ranges.size() == pieces.size()) {
    std::sort(ranges.begin(), ranges.end(), [](const auto& a, const auto& b) { return a.first.begin < b.first.begin; });
    int64_t covered_to = 0;
    for (size_t i = 0; i < ranges.size(); ++i) {
      const FlatRange& range = ranges[i].first;
      if (i > 0 && range.begin < ranges[i - 1].first.end) {
        overlap(pieces[ranges[i - 1].second], pieces[ranges[i].second]);
        return false;
      }
      if (range.begin > covered_to) {
        if (strict) {
          disagree(planned.key, "Shards of key '" + planned.key + "' leave elements [" + std::to_string(covered_to) +
                                    ", " + std::to_string(range.begin) + ") uncovered by any rank");
        }
        return false;
      }
      covered_to = range.end;
    }
    if (covered_to < total) {
      if (strict) {
        disagree(planned.key, "Shards of key '" + planned.key + "' leave elements [" + std::to_string(covered_to) +
                                  ", " + std::to_string(total) + ") uncovered by any rank");
      }
      return false;
    }
    return true;
  }

  // General case: pairwise box intersection, then the element count.
  std::vector<std::vector<Box>> boxes;
  for (const auto& piece : pieces) boxes.push_back(region_boxes(planned.shape, piece.region));
  for (size_t i = 0; i < pieces.size(); ++i) {
    for (size_t j = i + 1; j < pieces.size(); ++j) {
      for (const auto& a : boxes[i]) {
        for (const auto& b : boxes[j]) {
          if (boxes_intersect(a, b)) {
            overlap(pieces[i], pieces[j]);
            return false;
          }
        }
      }
    }
  }
  int64_t held = 0;
  for (const auto& piece : pieces) held += region_elements(piece.region);
  if (held != total) {
    if (strict) {
      disagree(planned.key, "Shards of key '" + planned.key + "' hold " + std::to_string(held) + " of its " +
                                std::to_string(total) + " elements; the rest is uncovered by any rank");
    }
    return false;
  }
  return true;
}

}  // namespace

uint64_t plan_fingerprint(const std::vector<KeyView>& views) {
  std::string encoded = encode(views);
  return XXH3_64bits(encoded.data(), encoded.size());
}

Plan exchange_plan(const Communicator& comm, const std::vector<KeyView>& views, PlanUse use) {
  std::vector<std::string> gathered = comm.allgather(encode(views));
  std::vector<std::vector<KeyView>> by_rank;
  by_rank.reserve(gathered.size());
  for (const auto& text : gathered) by_rank.push_back(decode(text));

  check_key_sets(by_rank);

  Plan plan;
  plan.world_size = comm.size();
  const size_t ranks = by_rank.size();
  for (size_t k = 0; k < by_rank[0].size(); ++k) {
    const std::string& key = by_rank[0][k].key;
    std::vector<std::string> kinds(ranks), dtypes(ranks), shapes(ranks);
    for (size_t r = 0; r < ranks; ++r) {
      const KeyView& view = by_rank[r][k];
      kinds[r] = view.sharded ? "sharded tensor" : "full tensor";
      dtypes[r] = dtype_name(view.dtype);
      shapes[r] = describe_shape(view.shape);
    }
    require_agreement(key, "kind", kinds);
    require_agreement(key, "dtype", dtypes);
    require_agreement(key, "global shape", shapes);

    PlannedKey planned;
    planned.key = key;
    planned.dtype = by_rank[0][k].dtype;
    planned.shape = by_rank[0][k].shape;
    planned.sharded = by_rank[0][k].sharded;
    if (planned.sharded) {
      for (size_t r = 0; r < ranks; ++r) planned.regions_by_rank.push_back(by_rank[r][k].regions);
      planned.exact_cover = check_cover(planned, use);
    }
    plan.keys.push_back(std::move(planned));
  }
  return plan;
}

FlatRange full_tensor_share(const Shape& shape, c10::ScalarType dtype, size_t key_index, int world_size, int rank) {
  int64_t total = element_count(shape);
  int64_t bytes = total * static_cast<int64_t>(c10::elementSize(dtype));
  if (bytes < kSmallTensorBytes) {
    // Small tensors go whole to one rank, round-robin by key, so each costs one request.
    int owner = static_cast<int>(key_index % static_cast<size_t>(world_size));
    return rank == owner ? FlatRange{0, total} : FlatRange{0, 0};
  }
  int64_t begin = total * rank / world_size;
  int64_t end = total * (rank + 1) / world_size;
  return FlatRange{begin, end};
}

FlatRange full_tensor_share(const Plan& plan, size_t key_index, int rank) {
  const PlannedKey& planned = plan.keys[key_index];
  return full_tensor_share(planned.shape, planned.dtype, key_index, plan.world_size, rank);
}

std::vector<Transfer> transfers_for(const Plan& plan, size_t key_index, int rank, PlanUse use,
                                    int64_t max_elements) {
  const PlannedKey& planned = plan.keys[key_index];
  std::vector<Transfer> transfers;
  if (!planned.sharded) {
    FlatRange share = use == PlanUse::kSave ? full_tensor_share(plan, key_index, rank)
                                            : FlatRange{0, element_count(planned.shape)};
    if (share.end > share.begin) {
      transfers = split_into_transfers(planned.shape, share, max_elements);
    }
    // The piece of a full tensor is the whole tensor, so offsets count from its start.
    for (auto& transfer : transfers) transfer.data_offset += share.begin;
    return transfers;
  }
  const auto& regions = planned.regions_by_rank[static_cast<size_t>(rank)];
  for (size_t piece = 0; piece < regions.size(); ++piece) {
    for (auto& transfer : split_into_transfers(planned.shape, regions[piece], max_elements)) {
      transfer.piece = piece;
      transfers.push_back(std::move(transfer));
    }
  }
  return transfers;
}

}  // namespace persistence::detail
