#include "shard/flat_layout.h"

#include "format/dtype.h"
#include "shard/regions.h"

#include <persistence/errors.h>
#include <persistence/module_states.h>

#include <c10/core/GradMode.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <climits>
#include <unordered_map>

namespace persistence::detail {
namespace {

ErrorContext key_context(const std::string& key) { return ErrorContext{{}, key, std::nullopt, std::nullopt}; }

// Names get_model_states gives each tensor, so saved keys match the plain
// model; the first name in sorted order wins for a tensor registered twice.
std::unordered_map<const c10::TensorImpl*, std::string> stripped_names(const StateDict& states) {
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  for (const auto& [name, value] : states) {
    names.emplace(std::get<at::Tensor>(value).unsafeGetTensorImpl(), name);
  }
  return names;
}

void check_parameter(const FlatEntry& entry, c10::ScalarType dtype, const std::string& user) {
  const at::Tensor& parameter = entry.parameter;
  if (!parameter.device().is_cpu()) {
    throw InvalidArgumentError(user + " needs CPU parameters, but the parameter is on " + parameter.device().str(),
                               key_context(entry.name), "Move the module to the CPU before sharding it");
  }
  if (!parameter.is_contiguous()) {
    throw InvalidArgumentError(user + " needs contiguous parameters, but the parameter is not contiguous",
                               key_context(entry.name), "Make the parameter contiguous before sharding the module");
  }
  if (!c10::isFloatingType(parameter.scalar_type())) {
    throw InvalidArgumentError(user + " needs floating parameters, but the parameter is " +
                                   dtype_name(parameter.scalar_type()),
                               key_context(entry.name));
  }
  if (parameter.scalar_type() != dtype) {
    throw InvalidArgumentError(user + " needs one dtype for all parameters, but the first parameter is " +
                                   dtype_name(dtype) + " and this one is " + dtype_name(parameter.scalar_type()),
                               key_context(entry.name), "Convert the module to one dtype before sharding it");
  }
}

FlatLayout describe_module(torch::nn::Module& module, const std::string& user) {
  StateDict named = get_model_states(module);
  auto names = stripped_names(named);

  FlatLayout layout;
  std::unordered_map<const c10::TensorImpl*, std::string> seen;
  for (const auto& item : module.named_parameters(true)) {
    const at::Tensor& parameter = item.value();
    const c10::TensorImpl* impl = parameter.unsafeGetTensorImpl();
    FlatEntry entry;
    entry.name = names.at(impl);
    auto [previous, inserted] = seen.emplace(impl, item.key());
    if (!inserted) {
      throw InvalidArgumentError(user + " cannot flatten a parameter registered twice, as '" + previous->second +
                                     "' and '" + item.key() + "'",
                                 key_context(entry.name), "Untie the parameters or shard the module without them");
    }
    entry.parameter = parameter;
    entry.shape = parameter.sizes().vec();
    entry.offset = layout.numel;
    entry.numel = parameter.numel();
    if (layout.entries.empty()) layout.dtype = parameter.scalar_type();
    check_parameter(entry, layout.dtype, user);
    layout.numel += entry.numel;
    layout.entries.push_back(std::move(entry));
  }
  if (layout.entries.empty()) {
    throw InvalidArgumentError(user + " needs a module with parameters, but the module has none", {});
  }

  for (auto& [name, value] : named) {
    if (seen.count(std::get<at::Tensor>(value).unsafeGetTensorImpl()) == 0) layout.buffers.emplace(name, value);
  }
  return layout;
}

std::vector<std::string> describe_entries(const FlatLayout& layout) {
  std::vector<std::string> lines;
  for (const auto& entry : layout.entries) {
    lines.push_back("'" + entry.name + "' of shape " + describe_shape(entry.shape) + " and dtype " +
                    dtype_name(layout.dtype));
  }
  return lines;
}

std::string encode_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& line : lines) text += line + '\n';
  return text;
}

// Throws the same CollectiveError on every rank when a rank's parameters
// differ from rank 0's, naming the first parameter that differs.
void require_same_layout(const Communicator& comm, const FlatLayout& layout, const std::string& user) {
  std::vector<std::string> mine = describe_entries(layout);
  std::vector<std::string> gathered = comm.allgather(encode_lines(mine));
  for (size_t r = 1; r < gathered.size(); ++r) {
    if (gathered[r] == gathered[0]) continue;

    std::vector<std::vector<std::string>> sides(2);
    for (size_t side = 0; side < 2; ++side) {
      const std::string& text = gathered[side == 0 ? 0 : r];
      size_t start = 0;
      for (size_t end = text.find('\n'); end != std::string::npos; start = end + 1, end = text.find('\n', start)) {
        sides[side].push_back(text.substr(start, end - start));
      }
    }
    size_t index = 0;
    while (index < sides[0].size() && index < sides[1].size() && sides[0][index] == sides[1][index]) ++index;
    auto describe = [&](size_t side) {
      return index < sides[side].size() ? "parameter " + sides[side][index] : std::string("no parameter");
    };
    throw CollectiveError("Ranks pass different modules to " + user + ": parameter " + std::to_string(index) +
                              " is " + describe(0) + " on rank 0 but " + describe(1) + " on rank " + std::to_string(r),
                          {}, "Build the same module on every rank");
  }
}

}  // namespace

std::vector<std::string> FlatLayout::names() const {
  std::vector<std::string> result;
  for (const auto& entry : entries) result.push_back(entry.name);
  return result;
}

FlatLayout build_flat_layout(const Communicator& comm, torch::nn::Module& module, const std::string& user) {
  FlatLayout layout;
  run_agreed(comm, [&] { layout = describe_module(module, user); });
  require_same_layout(comm, layout, user);
  return layout;
}

std::vector<Overlap> overlaps(const FlatLayout& layout, int64_t begin, int64_t end) {
  std::vector<Overlap> result;
  for (size_t i = 0; i < layout.entries.size(); ++i) {
    const FlatEntry& entry = layout.entries[i];
    int64_t low = std::max(begin, entry.offset);
    int64_t high = std::min(end, entry.offset + entry.numel);
    if (low < high) result.push_back(Overlap{i, low, high});
  }
  return result;
}

at::Tensor flat_view(const at::Tensor& tensor) { return tensor.detach().view({-1}); }

void copy_parameters_out(const FlatLayout& layout, int64_t begin, at::Tensor out) {
  at::NoGradGuard no_grad;
  at::Tensor target = out.detach();
  int64_t end = begin + target.numel();
  for (const Overlap& overlap : overlaps(layout, begin, end)) {
    const FlatEntry& entry = layout.entries[overlap.entry];
    target.slice(0, overlap.begin - begin, overlap.end - begin)
        .copy_(flat_view(entry.parameter).slice(0, overlap.begin - entry.offset, overlap.end - entry.offset));
  }
  if (end > layout.numel) target.slice(0, std::max(begin, layout.numel) - begin, end - begin).zero_();
}

void copy_parameters_in(const FlatLayout& layout, int64_t begin, const at::Tensor& in) {
  at::NoGradGuard no_grad;
  int64_t end = begin + in.numel();
  for (const Overlap& overlap : overlaps(layout, begin, end)) {
    const FlatEntry& entry = layout.entries[overlap.entry];
    flat_view(entry.parameter)
        .slice(0, overlap.begin - entry.offset, overlap.end - entry.offset)
        .copy_(in.slice(0, overlap.begin - begin, overlap.end - begin));
  }
}

MPI_Datatype element_type(c10::ScalarType dtype) {
  switch (c10::elementSize(dtype)) {
    case 1: return MPI_UINT8_T;
    case 2: return MPI_UINT16_T;
    case 4: return MPI_UINT32_T;
    default: return MPI_UINT64_T;
  }
}

c10::ScalarType reduction_dtype(c10::ScalarType dtype) {
  return dtype == c10::ScalarType::Double ? c10::ScalarType::Double : c10::ScalarType::Float;
}

MPI_Datatype reduction_type(c10::ScalarType dtype) {
  return reduction_dtype(dtype) == c10::ScalarType::Double ? MPI_DOUBLE : MPI_FLOAT;
}

int mpi_count(int64_t count, const std::string& what) {
  // NOTE: MPI 3 counts are ints; larger exchanges would need derived datatypes.
  if (count > INT_MAX) {
    throw InvalidArgumentError(what + " has " + std::to_string(count) + " elements, more than the " +
                                   std::to_string(INT_MAX) + " that one MPI call can move",
                               {}, "Shard the module over more ranks");
  }
  return static_cast<int>(count);
}

}  // namespace persistence::detail
