// The flat parameter space that ZeRO and FSDP shard: a module's parameters in
// registration order, flattened row-major and concatenated, and the MPI
// helpers that move pieces of it between ranks.
#pragma once

#include "mpi/communicator.h"

#include <persistence/state_dict.h>

#include <ATen/core/Tensor.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace persistence::detail {

// One parameter's place in the flat space: elements [offset, offset + numel).
struct FlatEntry {
  std::string name;  // as get_model_states names it
  at::Tensor parameter;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
};

struct FlatLayout {
  std::vector<FlatEntry> entries;  // registration order
  int64_t numel = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  StateDict buffers;  // the module's buffers by name, full tensors

  // Parameter names in flattening order.
  std::vector<std::string> names() const;
};

// Collective over comm. Builds the layout of module's parameters and checks
// that every rank has the same names, shapes and dtype. `user` names the
// caller in messages ("ZeroRedundancyOptimizer"). Throws InvalidArgumentError
// (no parameters, mixed dtypes, a non-CPU, non-contiguous or shared
// parameter) or CollectiveError (ranks disagree), the same on every rank.
FlatLayout build_flat_layout(const Communicator& comm, torch::nn::Module& module, const std::string& user);

// The overlap of [begin, end) with one parameter, in flat coordinates.
struct Overlap {
  size_t entry = 0;
  int64_t begin = 0;
  int64_t end = 0;
};

// Parameters that meet flat elements [begin, end), in order, with the overlaps.
std::vector<Overlap> overlaps(const FlatLayout& layout, int64_t begin, int64_t end);

// A flat 1-D view of a contiguous tensor, detached from autograd.
at::Tensor flat_view(const at::Tensor& tensor);

// Copies the parameters' values for flat elements [begin, begin + out.numel())
// into out; elements past the last parameter (padding) become zero.
void copy_parameters_out(const FlatLayout& layout, int64_t begin, at::Tensor out);

// Copies flat elements of a buffer that contains [begin, begin + in.numel()) of
// the flat space back into the parameters; padding is skipped.
void copy_parameters_in(const FlatLayout& layout, int64_t begin, const at::Tensor& in);

// An MPI type of the tensor's element size, for moving raw elements.
MPI_Datatype element_type(c10::ScalarType dtype);

// The dtype and MPI type gradients are summed in: float64 stays float64,
// every other floating dtype is summed in float32.
c10::ScalarType reduction_dtype(c10::ScalarType dtype);
MPI_Datatype reduction_type(c10::ScalarType dtype);

// Converts an element count to the int that MPI calls take, or throws
// InvalidArgumentError naming what the count is.
int mpi_count(int64_t count, const std::string& what);

}  // namespace persistence::detail
