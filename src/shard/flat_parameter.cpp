#include <persistence/fsdp.h>

#include "mpi/communicator.h"
#include "shard/flat_layout.h"
#include "shard/slot_states.h"

#include <persistence/errors.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <algorithm>

namespace persistence {

using detail::Communicator;
using detail::run_agreed;

class FlatParameter::Impl {
 public:
  Impl(torch::nn::Module& module, MPI_Comm comm) : comm_(Communicator::duplicate(comm)) {
    layout_ = detail::build_flat_layout(comm_, module, "FlatParameter");
    shard_size_ = (layout_.numel + comm_.size() - 1) / comm_.size();
    run_agreed(comm_, [&] { detail::mpi_count(padded_numel(), "The padded flat parameter of FlatParameter"); });

    shard_ = at::zeros({shard_size_}, at::TensorOptions().dtype(layout_.dtype));
    copy_from_module();
    shard_.set_requires_grad(true);
  }

  void gather() {
    at::Tensor full = at::empty({padded_numel()}, at::TensorOptions().dtype(layout_.dtype));
    MPI_Datatype type = detail::element_type(layout_.dtype);
    int count = static_cast<int>(shard_size_);
    detail::check_mpi(MPI_Allgather(shard_.data_ptr(), count, type, full.data_ptr(), count, type, comm_.get()),
                      "MPI_Allgather");
    detail::copy_parameters_in(layout_, 0, full);
  }

  void reduce_scatter_gradients() {
    const c10::ScalarType dtype = detail::reduction_dtype(layout_.dtype);
    at::Tensor sums = at::zeros({padded_numel()}, at::TensorOptions().dtype(dtype));
    for (const auto& entry : layout_.entries) {
      const at::Tensor& grad = entry.parameter.grad();
      if (grad.defined()) sums.slice(0, entry.offset, entry.offset + entry.numel).copy_(grad.detach().reshape({-1}));
    }
    at::Tensor mine = at::empty({shard_size_}, at::TensorOptions().dtype(dtype));
    detail::check_mpi(MPI_Reduce_scatter_block(sums.data_ptr(), mine.data_ptr(), static_cast<int>(shard_size_),
                                               detail::reduction_type(layout_.dtype), MPI_SUM, comm_.get()),
                      "MPI_Reduce_scatter_block");
    mine.div_(comm_.size());
    shard_.mutable_grad() = mine.to(layout_.dtype);
  }

  void copy_from_module() { detail::copy_parameters_out(layout_, shard_range().begin, shard_); }

  // The parameters' parts of this rank's shard as sharded tensors whose
  // pieces are views of the shard, plus the buffers.
  StateDict states() {
    StateDict result = layout_.buffers;
    const FlatRange mine = shard_range();
    std::vector<ShardedTensor> sharded;
    for (const auto& entry : layout_.entries) sharded.emplace_back(entry.shape, layout_.dtype);
    at::Tensor data = shard_.detach();
    for (const detail::Overlap& overlap : detail::overlaps(layout_, mine.begin, mine.end)) {
      sharded[overlap.entry].add_flat(data.slice(0, overlap.begin - mine.begin, overlap.end - mine.begin),
                                      overlap.begin - layout_.entries[overlap.entry].offset);
    }
    for (size_t i = 0; i < layout_.entries.size(); ++i) result.emplace(layout_.entries[i].name, std::move(sharded[i]));
    return result;
  }

  void load(const PersistedStates& states) {
    StateDict target = this->states();
    PersistedStates reader = states;
    reader.comm = comm_.get();
    reader.load_into(target);

    // Padding is not in the checkpoint; keep it zero so its gradient and update stay zero.
    const FlatRange mine = shard_range();
    int64_t padding_begin = std::clamp<int64_t>(layout_.numel - mine.begin, 0, shard_size_);
    shard_.detach().slice(0, padding_begin, shard_size_).zero_();
    gather();
  }

  std::vector<detail::Slot> slots() const { return {detail::Slot{"shard", shard_range().begin, shard_}}; }

  int64_t padded_numel() const { return shard_size_ * comm_.size(); }
  FlatRange shard_range() const { return FlatRange{shard_size_ * comm_.rank(), shard_size_ * (comm_.rank() + 1)}; }
  const at::Tensor& shard() const { return shard_; }
  const detail::FlatLayout& layout() const { return layout_; }
  const Communicator& comm() const { return comm_; }

 private:
  Communicator comm_;
  detail::FlatLayout layout_;
  int64_t shard_size_ = 0;
  at::Tensor shard_;
};

FlatParameter::FlatParameter(torch::nn::Module& module, MPI_Comm comm) : impl_(std::make_unique<Impl>(module, comm)) {}
FlatParameter::~FlatParameter() = default;
FlatParameter::FlatParameter(FlatParameter&&) noexcept = default;
FlatParameter& FlatParameter::operator=(FlatParameter&&) noexcept = default;

at::Tensor FlatParameter::shard() const { return impl_->shard(); }
void FlatParameter::gather() { impl_->gather(); }
void FlatParameter::reduce_scatter_gradients() { impl_->reduce_scatter_gradients(); }
void FlatParameter::copy_from_module() { impl_->copy_from_module(); }
int64_t FlatParameter::numel() const { return impl_->layout().numel; }
int64_t FlatParameter::padded_numel() const { return impl_->padded_numel(); }
FlatRange FlatParameter::shard_range() const { return impl_->shard_range(); }
std::vector<std::string> FlatParameter::parameter_names() const { return impl_->layout().names(); }

StateDict get_model_states(FlatParameter& flat) { return flat.impl_->states(); }

void set_model_states(FlatParameter& flat, const PersistedStates& states) { flat.impl_->load(states); }

OptimizerStates get_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat) {
  auto& impl = *flat.impl_;
  return detail::export_slot_states(impl.comm(), impl.layout(), impl.slots(), optimizer);
}

void set_fsdp_optimizer_states(torch::optim::Optimizer& optimizer, FlatParameter& flat, const PersistedStates& states,
                               const YAML::Node& param_groups) {
  auto& impl = *flat.impl_;
  detail::import_slot_states(impl.comm(), impl.layout(), impl.slots(), optimizer, states, param_groups);
}

}  // namespace persistence
