#include "shard/slot_states.h"

#include "format/dtype.h"
#include "io/step_reader.h"
#include "shard/regions.h"

#include <persistence/errors.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstring>
#include <iomanip>
#include <map>
#include <set>
#include <sstream>

namespace persistence::detail {
namespace {

ErrorContext key_context(const std::string& key) { return ErrorContext{{}, key, std::nullopt, std::nullopt}; }

// A module whose parameters are the slots, so that the optimizer-state
// conversions of module_states, which name tensors through a module, apply.
std::shared_ptr<torch::nn::Module> slot_module(const std::vector<Slot>& slots) {
  auto holder = std::make_shared<torch::nn::Module>("SlotModule");
  for (const auto& slot : slots) holder->register_parameter(slot.name, slot.tensor, slot.tensor.requires_grad());
  return holder;
}

std::string emit_yaml(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return out.c_str();
}

// The name of a state key's parameter and the state key itself.
std::pair<std::string, std::string> split_key(const std::string& key) {
  size_t slash = key.rfind('/');
  if (slash == std::string::npos) return {key, {}};
  return {key.substr(0, slash), key.substr(slash + 1)};
}

// One state of one parameter on this rank.
struct LocalState {
  bool scalar = false;
  c10::ScalarType dtype = c10::ScalarType::Float;
  at::Tensor value;                                     // scalar states
  std::vector<std::pair<at::Tensor, int64_t>> pieces;  // flat states: data and begin inside the parameter
};

using StateId = std::pair<size_t, std::string>;  // parameter index and state key

std::string state_key(const FlatLayout& layout, const StateId& id) {
  return layout.entries[id.first].name + "/" + id.second;
}

void check_groups(torch::optim::Optimizer& optimizer, const std::vector<Slot>& slots) {
  auto& groups = optimizer.param_groups();
  if (groups.size() != 1 || groups[0].params().size() != slots.size()) {
    throw InvalidArgumentError("The sharded optimizer must have one parameter group holding exactly the " +
                                   std::to_string(slots.size()) + " tensors it shards, but it has " +
                                   std::to_string(groups.size()) + " groups",
                               {}, "Build the optimizer over the sharded tensors only, in one group");
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!groups[0].params()[i].is_same(slots[i].tensor)) {
      throw InvalidArgumentError("Parameter " + std::to_string(i) +
                                     " of the sharded optimizer is not the tensor of this rank's shard",
                                 {},
                                 "Build the optimizer over the tensors that the sharding helper provides, in their "
                                 "order");
    }
  }
}

// Splits each state of a slot into the parts of the parameters that the slot covers.
std::map<StateId, LocalState> split_slot_states(const FlatLayout& layout, const std::vector<Slot>& slots,
                                                const StateDict& slot_states) {
  std::map<std::string, size_t> slot_index;
  for (size_t i = 0; i < slots.size(); ++i) slot_index.emplace(slots[i].name, i);

  std::map<StateId, LocalState> local;
  for (const auto& [key, value] : slot_states) {
    auto [slot_name, state] = split_key(key);
    const Slot& slot = slots.at(slot_index.at(slot_name));
    const at::Tensor& tensor = std::get<at::Tensor>(value);
    int64_t end = slot.begin + slot.tensor.numel();

    if (tensor.dim() == 0) {
      for (const Overlap& overlap : overlaps(layout, slot.begin, end)) {
        LocalState& entry = local[{overlap.entry, state}];
        entry.scalar = true;
        entry.dtype = tensor.scalar_type();
        entry.value = tensor;
      }
      continue;
    }
    if (tensor.numel() != slot.tensor.numel()) {
      throw InvalidArgumentError("Optimizer state '" + state + "' has " + std::to_string(tensor.numel()) +
                                     " elements, but the tensor it belongs to has " +
                                     std::to_string(slot.tensor.numel()),
                                 {}, "Only per-element and scalar optimizer states can be sharded");
    }
    at::Tensor flat = tensor.detach().reshape({-1});
    for (const Overlap& overlap : overlaps(layout, slot.begin, end)) {
      LocalState& entry = local[{overlap.entry, state}];
      entry.dtype = tensor.scalar_type();
      entry.pieces.emplace_back(flat.slice(0, overlap.begin - slot.begin, overlap.end - slot.begin),
                                overlap.begin - layout.entries[overlap.entry].offset);
    }
  }
  return local;
}

// The description of one state that each rank sends to the others: its kind
// and dtype, and the bytes of a scalar.
struct StateSummary {
  bool scalar = false;
  int dtype = 0;
  std::string bytes;
};

std::string encode_summaries(const std::map<StateId, LocalState>& local) {
  std::ostringstream out;
  for (const auto& [id, state] : local) {
    std::string bytes;
    if (state.scalar) {
      at::Tensor value = state.value.contiguous();
      bytes.assign(static_cast<const char*>(value.data_ptr()), static_cast<size_t>(value.element_size()));
    }
    out << id.first << ' ' << std::quoted(id.second) << ' ' << state.scalar << ' ' << static_cast<int>(state.dtype)
        << ' ' << bytes.size() << ' ';
    for (unsigned char byte : bytes) out << std::hex << std::setw(2) << std::setfill('0') << int{byte};
    out << std::dec << '\n';
  }
  return out.str();
}

std::map<StateId, StateSummary> decode_summaries(const std::string& text) {
  std::map<StateId, StateSummary> summaries;
  std::istringstream in(text);
  size_t entry = 0;
  while (in >> entry) {
    std::string state;
    StateSummary summary;
    size_t length = 0;
    in >> std::quoted(state) >> summary.scalar >> summary.dtype >> length;
    std::string hex;
    if (length > 0) in >> hex;
    for (size_t i = 0; i < length; ++i) {
      summary.bytes.push_back(static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16)));
    }
    summaries.emplace(StateId{entry, state}, std::move(summary));
  }
  return summaries;
}

at::Tensor scalar_from_bytes(const StateSummary& summary) {
  at::Tensor value = at::empty({}, at::TensorOptions().dtype(static_cast<c10::ScalarType>(summary.dtype)));
  std::memcpy(value.data_ptr(), summary.bytes.data(), summary.bytes.size());
  return value;
}

std::string describe_scalar(const StateSummary& summary) {
  at::Tensor value = scalar_from_bytes(summary);
  std::ostringstream text;
  if (c10::isFloatingType(value.scalar_type())) {
    text << std::setprecision(17) << value.item<double>();
  } else {
    text << value.item<int64_t>();
  }
  return text.str();
}

std::string list_ranks(const std::vector<int>& ranks) {
  std::string text = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) text += (i > 0 ? ", " : "") + std::to_string(ranks[i]);
  return text;
}

// Merges every rank's summaries. Each state must have one kind and dtype on
// all ranks that have it, and a scalar state one value. Every rank receives
// the same summaries, so every rank throws the same error.
std::map<StateId, StateSummary> merge_summaries(const FlatLayout& layout, const std::vector<std::string>& gathered) {
  std::map<StateId, std::map<std::string, std::vector<int>>> variants;
  std::map<StateId, StateSummary> merged;
  for (size_t r = 0; r < gathered.size(); ++r) {
    for (auto& [id, summary] : decode_summaries(gathered[r])) {
      std::string text = summary.scalar ? "scalar " + dtype_name(static_cast<c10::ScalarType>(summary.dtype)) + " " +
                                              describe_scalar(summary)
                                        : "per-element " + dtype_name(static_cast<c10::ScalarType>(summary.dtype));
      variants[id][text].push_back(static_cast<int>(r));
      merged.emplace(id, std::move(summary));
    }
  }
  for (const auto& [id, texts] : variants) {
    if (texts.size() <= 1) continue;
    std::string problem = "Ranks disagree on the optimizer state '" + state_key(layout, id) + "':";
    const char* separator = " ";
    for (const auto& [text, ranks] : texts) {
      problem += separator + text + " on " + list_ranks(ranks);
      separator = "; ";
    }
    throw CollectiveError(problem, key_context(state_key(layout, id)),
                          "Step the sharded optimizer on every rank the same number of times");
  }
  return merged;
}

// Throws the same CollectiveError on every rank unless all ranks use the same group options.
YAML::Node agreed_options(const Communicator& comm, const YAML::Node& options) {
  std::vector<std::string> gathered = comm.allgather(emit_yaml(options));
  for (size_t r = 1; r < gathered.size(); ++r) {
    if (gathered[r] != gathered[0]) {
      throw CollectiveError("Ranks use different optimizer options: rank 0 has {" + gathered[0] + "} but rank " +
                                std::to_string(r) + " has {" + gathered[r] + "}",
                            {}, "Build the sharded optimizer with the same options on every rank");
    }
  }
  return options;
}

}  // namespace

OptimizerStates export_slot_states(const Communicator& comm, const FlatLayout& layout,
                                   const std::vector<Slot>& slots, torch::optim::Optimizer& optimizer) {
  OptimizerStates slot_states;
  std::map<StateId, LocalState> local;
  run_agreed(comm, [&] {
    check_groups(optimizer, slots);
    slot_states = get_optimizer_states(optimizer, *slot_module(slots));
    local = split_slot_states(layout, slots, slot_states.states);
  });
  YAML::Node options = agreed_options(comm, slot_states.param_groups[0]["options"]);
  std::map<StateId, StateSummary> merged = merge_summaries(layout, comm.allgather(encode_summaries(local)));

  OptimizerStates result;
  for (const auto& [id, summary] : merged) {
    const FlatEntry& entry = layout.entries[id.first];
    if (summary.scalar) {
      result.states.emplace(state_key(layout, id), scalar_from_bytes(summary));
      continue;
    }
    ShardedTensor sharded(entry.shape, static_cast<c10::ScalarType>(summary.dtype));
    auto found = local.find(id);
    if (found != local.end()) {
      for (const auto& [data, begin] : found->second.pieces) sharded.add_flat(data, begin);
    }
    result.states.emplace(state_key(layout, id), std::move(sharded));
  }

  YAML::Node group;
  group["options"] = options;
  group["params"] = YAML::Node(YAML::NodeType::Sequence);
  for (const auto& name : layout.names()) group["params"].push_back(name);
  result.param_groups = YAML::Node(YAML::NodeType::Sequence);
  result.param_groups.push_back(group);
  return result;
}

namespace {

// A saved state of one parameter.
struct SavedState {
  std::string key;
  bool scalar = false;
  c10::ScalarType dtype = c10::ScalarType::Float;  // dtype to read into
};

using SavedStates = std::map<size_t, std::map<std::string, SavedState>>;  // by parameter index, then state key

void check_param_groups(const FlatLayout& layout, const YAML::Node& param_groups, const std::string& path) {
  ErrorContext context{path, {}, std::nullopt, std::nullopt};
  if (!param_groups.IsSequence() || param_groups.size() != 1) {
    throw StateMismatchError("The sharded optimizer has one parameter group, but " +
                                 std::to_string(param_groups.IsSequence() ? param_groups.size() : 0) +
                                 " were saved",
                             context, "Load a checkpoint of an optimizer with one group over the whole module");
  }
  const YAML::Node params = param_groups[0]["params"];
  std::vector<std::string> names = layout.names();
  size_t saved_count = params.IsSequence() ? params.size() : 0;
  for (size_t i = 0; i < std::max(names.size(), saved_count); ++i) {
    std::string expected = i < names.size() ? "'" + names[i] + "'" : "nothing";
    std::string saved = i < saved_count ? "'" + params[i].as<std::string>() + "'" : "nothing";
    if (expected != saved) {
      throw StateMismatchError("Parameter " + std::to_string(i) + " of the module is " + expected + " but " + saved +
                                   " was saved there",
                               ErrorContext{path, i < names.size() ? names[i] : std::string(), std::nullopt,
                                            std::nullopt},
                               "Load a checkpoint of the same module");
    }
  }
  if (!param_groups[0]["options"].IsMap()) {
    throw StateMismatchError("The saved parameter group has no options", context);
  }
}

SavedStates classify_saved(const FlatLayout& layout, const std::vector<StoredTensor>& stored, const std::string& path) {
  std::map<std::string, size_t> entry_index;
  for (size_t i = 0; i < layout.entries.size(); ++i) entry_index.emplace(layout.entries[i].name, i);

  SavedStates saved;
  for (const auto& tensor : stored) {
    auto [name, state] = split_key(tensor.key);
    auto found = entry_index.find(name);
    if (state.empty() || found == entry_index.end()) {
      throw StateMismatchError("The saved optimizer state belongs to no parameter of the module",
                               ErrorContext{path, tensor.key, std::nullopt, std::nullopt},
                               "Load a checkpoint of the same module");
    }
    const FlatEntry& entry = layout.entries[found->second];
    SavedState item;
    item.key = tensor.key;
    item.dtype = tensor.source_dtype.value_or(tensor.dtype);
    // A 0-d state of a parameter with dimensions is a scalar such as step. For
    // a 0-d parameter, floating 0-d states are per-element and integer ones
    // are scalars.
    item.scalar = tensor.shape.empty() && (!entry.shape.empty() || !c10::isFloatingType(tensor.dtype));
    if (!item.scalar && tensor.shape != entry.shape) {
      throw StateMismatchError("The saved optimizer state has shape " + describe_shape(tensor.shape) +
                                   " but the parameter has shape " + describe_shape(entry.shape),
                               ErrorContext{path, tensor.key, std::nullopt, std::nullopt},
                               "Load a checkpoint of the same module");
    }
    saved[found->second].emplace(state, item);
  }
  return saved;
}

// Read targets for every saved state: full scalars, and per-element states
// sharded into zero-filled buffers, one per slot and state key.
struct ReadPlan {
  StateDict target;
  std::map<std::pair<size_t, std::string>, at::Tensor> buffers;  // by slot index and state key
};

ReadPlan plan_reads(const FlatLayout& layout, const std::vector<Slot>& slots, const SavedStates& saved) {
  ReadPlan plan;
  for (const auto& [index, states] : saved) {
    const FlatEntry& entry = layout.entries[index];
    for (const auto& [state, item] : states) {
      if (item.scalar) {
        plan.target.emplace(item.key, at::empty({}, at::TensorOptions().dtype(item.dtype)));
        continue;
      }
      ShardedTensor sharded(entry.shape, item.dtype);
      for (size_t s = 0; s < slots.size(); ++s) {
        int64_t begin = slots[s].begin;
        for (const Overlap& overlap : overlaps(layout, begin, begin + slots[s].tensor.numel())) {
          if (overlap.entry != index) continue;
          at::Tensor& buffer = plan.buffers[{s, state}];
          if (!buffer.defined()) buffer = at::zeros({slots[s].tensor.numel()}, at::TensorOptions().dtype(item.dtype));
          sharded.add_flat(buffer.slice(0, overlap.begin - begin, overlap.end - begin), overlap.begin - entry.offset);
        }
      }
      plan.target.emplace(item.key, std::move(sharded));
    }
  }
  return plan;
}

// The states of one slot, keyed "<slot name>/<state key>", for set_optimizer_states.
void add_slot_states(const FlatLayout& layout, const std::vector<Slot>& slots, size_t s, const SavedStates& saved,
                     ReadPlan& plan, TensorDict& states) {
  const Slot& slot = slots[s];
  std::vector<size_t> covered;
  for (const Overlap& overlap : overlaps(layout, slot.begin, slot.begin + slot.tensor.numel())) {
    covered.push_back(overlap.entry);
  }
  // A slot of padding only (FSDP) takes the states every parameter has, so it
  // steps like the rest of the shard.
  std::vector<size_t> sources = covered;
  if (sources.empty()) {
    for (const auto& [index, unused] : saved) sources.push_back(index);
  }

  std::set<std::string> names;
  for (size_t index : sources) {
    auto found = saved.find(index);
    if (found == saved.end()) continue;
    for (const auto& [state, unused] : found->second) names.insert(state);
  }

  for (const auto& state : names) {
    const SavedState* first = nullptr;
    for (size_t index : sources) {
      auto found = saved.find(index);
      const SavedState* item = nullptr;
      if (found != saved.end() && found->second.count(state) != 0) item = &found->second.at(state);
      if (item == nullptr && !covered.empty()) {
        throw StateMismatchError("Optimizer state '" + state + "' is missing for this parameter, but other "
                                 "parameters that share its shard have it",
                                 key_context(layout.entries[index].name + "/" + state),
                                 "Load a checkpoint whose parameters were all stepped together");
      }
      if (item == nullptr) continue;
      if (first == nullptr) {
        first = item;
      } else if (item->scalar && !std::get<at::Tensor>(plan.target.at(item->key)).equal(
                                     std::get<at::Tensor>(plan.target.at(first->key)))) {
        throw StateMismatchError("Scalar optimizer state differs between parameters that share one shard: '" +
                                     first->key + "' and '" + item->key + "'",
                                 key_context(item->key),
                                 "Load a checkpoint whose parameters were all stepped together");
      }
    }
    std::string key = slot.name + "/" + state;
    if (first->scalar) {
      states.emplace(key, std::get<at::Tensor>(plan.target.at(first->key)));
    } else {
      at::Tensor& buffer = plan.buffers[{s, state}];
      if (!buffer.defined()) buffer = at::zeros({slot.tensor.numel()}, at::TensorOptions().dtype(first->dtype));
      states.emplace(key, buffer);
    }
  }
}

YAML::Node slot_param_groups(const std::vector<Slot>& slots, const YAML::Node& param_groups) {
  YAML::Node group;
  group["options"] = param_groups[0]["options"];
  group["params"] = YAML::Node(YAML::NodeType::Sequence);
  for (const auto& slot : slots) group["params"].push_back(slot.name);
  YAML::Node groups(YAML::NodeType::Sequence);
  groups.push_back(group);
  return groups;
}

}  // namespace

void import_slot_states(const Communicator& comm, const FlatLayout& layout, const std::vector<Slot>& slots,
                        torch::optim::Optimizer& optimizer, const PersistedStates& states,
                        const YAML::Node& param_groups) {
  SavedStates saved;
  run_agreed(comm, [&] {
    check_groups(optimizer, slots);
    check_param_groups(layout, param_groups, states.path);
    saved = classify_saved(layout, list_tensors(states.path, states.group), states.path);
  });

  ReadPlan plan = plan_reads(layout, slots, saved);
  PersistedStates reader = states;
  reader.comm = comm.get();
  reader.load_into(plan.target);

  run_agreed(comm, [&] {
    TensorDict slot_states;
    for (size_t s = 0; s < slots.size(); ++s) add_slot_states(layout, slots, s, saved, plan, slot_states);
    set_optimizer_states(optimizer, *slot_module(slots), slot_states, slot_param_groups(slots, param_groups));
  });
}

}  // namespace persistence::detail
