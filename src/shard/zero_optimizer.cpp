#include <persistence/zero.h>

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

namespace {

constexpr const char* kUser = "ZeroRedundancyOptimizer";

std::vector<int64_t> balanced_partition(int64_t numel, int world_size) {
  std::vector<int64_t> partition;
  for (int r = 0; r <= world_size; ++r) partition.push_back(numel * r / world_size);
  return partition;
}

void check_partition(const std::vector<int64_t>& partition, int64_t numel, int world_size) {
  bool valid = partition.size() == static_cast<size_t>(world_size) + 1 && partition.front() == 0 &&
               partition.back() == numel && std::is_sorted(partition.begin(), partition.end());
  if (!valid) {
    std::string text;
    for (int64_t offset : partition) text += (text.empty() ? "" : ", ") + std::to_string(offset);
    throw InvalidArgumentError("The partition [" + text + "] is invalid for " + std::to_string(numel) +
                                   " parameter elements over " + std::to_string(world_size) + " ranks",
                               {},
                               "Pass world size + 1 non-decreasing offsets from 0 to the parameter element count, "
                               "or none for a balanced split");
  }
}

// Throws the same CollectiveError on every rank unless all ranks pass the same partition.
void require_same_partition(const Communicator& comm, const std::vector<int64_t>& partition) {
  std::string mine;
  for (int64_t offset : partition) mine += std::to_string(offset) + " ";
  std::vector<std::string> gathered = comm.allgather(mine);
  for (size_t r = 1; r < gathered.size(); ++r) {
    if (gathered[r] != gathered[0]) {
      throw CollectiveError("Ranks pass different partitions to ZeroRedundancyOptimizer: [" + gathered[0] +
                                "] on rank 0 but [" + gathered[r] + "] on rank " + std::to_string(r),
                            {}, "Pass the same partition on every rank");
    }
  }
}

}  // namespace

class ZeroRedundancyOptimizer::Impl {
 public:
  Impl(torch::nn::Module& module, const OptimizerFactory& factory, const ZeroOptions& options)
      : comm_(Communicator::duplicate(options.comm)) {
    layout_ = detail::build_flat_layout(comm_, module, kUser);

    partition_ = options.partition.empty() ? balanced_partition(layout_.numel, comm_.size()) : options.partition;
    run_agreed(comm_, [&] {
      check_partition(partition_, layout_.numel, comm_.size());
      detail::mpi_count(layout_.numel, "The flat parameter space of ZeroRedundancyOptimizer");
    });
    require_same_partition(comm_, partition_);

    run_agreed(comm_, [&] { build_inner(factory); });
  }

  void average_gradients() {
    const c10::ScalarType dtype = detail::reduction_dtype(layout_.dtype);
    at::Tensor sums = at::zeros({layout_.numel}, at::TensorOptions().dtype(dtype));
    std::vector<int> defined(layout_.entries.size(), 0);
    for (size_t i = 0; i < layout_.entries.size(); ++i) {
      const detail::FlatEntry& entry = layout_.entries[i];
      const at::Tensor& grad = entry.parameter.grad();
      if (!grad.defined()) continue;
      defined[i] = 1;
      sums.slice(0, entry.offset, entry.offset + entry.numel).copy_(grad.detach().reshape({-1}));
    }

    int count = static_cast<int>(defined.size());
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, defined.data(), count, MPI_INT, MPI_MAX, comm_.get()),
                      "MPI_Allreduce");
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, sums.data_ptr(), static_cast<int>(layout_.numel),
                                    detail::reduction_type(layout_.dtype), MPI_SUM, comm_.get()),
                      "MPI_Allreduce");
    sums.div_(comm_.size());

    at::NoGradGuard no_grad;
    for (size_t i = 0; i < layout_.entries.size(); ++i) {
      if (defined[i] == 0) continue;
      detail::FlatEntry& entry = layout_.entries[i];
      at::Tensor mean = sums.slice(0, entry.offset, entry.offset + entry.numel).view(entry.shape).to(layout_.dtype);
      if (entry.parameter.grad().defined()) {
        entry.parameter.mutable_grad().detach().copy_(mean);
      } else {
        entry.parameter.mutable_grad() = mean;
      }
    }
  }

  void step() {
    run_agreed(comm_, [&] { step_locally(); });
    all_gather();
  }

  void zero_grad() {
    for (auto& entry : layout_.entries) {
      at::Tensor& grad = entry.parameter.mutable_grad();
      if (!grad.defined()) continue;
      grad.detach_();
      grad.zero_();
    }
  }

  torch::optim::Optimizer& inner() { return *inner_; }
  FlatRange range() const { return FlatRange{partition_[comm_.rank()], partition_[comm_.rank() + 1]}; }
  const detail::FlatLayout& layout() const { return layout_; }
  const Communicator& comm() const { return comm_; }
  const std::vector<detail::Slot>& segments() const { return segments_; }

 private:
  // One segment per parameter that meets this rank's range: a tensor of its
  // own that the inner optimizer updates.
  void build_inner(const OptimizerFactory& factory) {
    FlatRange mine = range();
    std::vector<at::Tensor> tensors;
    for (const detail::Overlap& overlap : detail::overlaps(layout_, mine.begin, mine.end)) {
      detail::Slot segment;
      segment.name = "segment" + std::to_string(segments_.size());
      segment.begin = overlap.begin;
      segment.tensor = at::empty({overlap.end - overlap.begin}, at::TensorOptions().dtype(layout_.dtype));
      detail::copy_parameters_out(layout_, segment.begin, segment.tensor);
      tensors.push_back(segment.tensor);
      segments_.push_back(std::move(segment));
    }
    inner_ = factory(tensors);
    if (!inner_) {
      throw InvalidArgumentError("The optimizer factory of ZeroRedundancyOptimizer returned no optimizer", {},
                                 "Return a torch::optim optimizer over the tensors the factory receives");
    }
  }

  // Refreshes the segments from the parameters, so values loaded into the
  // module since the last step are used, then steps the inner optimizer.
  void step_locally() {
    for (auto& segment : segments_) {
      detail::copy_parameters_out(layout_, segment.begin, segment.tensor);
      const int64_t end = segment.begin + segment.tensor.numel();
      const detail::Overlap overlap = detail::overlaps(layout_, segment.begin, end).front();
      const detail::FlatEntry& entry = layout_.entries[overlap.entry];
      const at::Tensor& grad = entry.parameter.grad();
      if (grad.defined()) {
        // A copy, so an optimizer that changes its gradient in place leaves the parameter's alone.
        segment.tensor.mutable_grad() =
            grad.detach().reshape({-1}).slice(0, overlap.begin - entry.offset, overlap.end - entry.offset).clone();
      } else {
        segment.tensor.mutable_grad() = at::Tensor();
      }
    }
    inner_->step();
  }

  // Every rank contributes its range of the flat space and receives the rest.
  void all_gather() {
    at::Tensor flat = at::empty({layout_.numel}, at::TensorOptions().dtype(layout_.dtype));
    for (const auto& segment : segments_) {
      flat.slice(0, segment.begin, segment.begin + segment.tensor.numel()).copy_(segment.tensor.detach());
    }
    std::vector<int> counts;
    std::vector<int> displacements;
    for (int r = 0; r < comm_.size(); ++r) {
      counts.push_back(static_cast<int>(partition_[r + 1] - partition_[r]));
      displacements.push_back(static_cast<int>(partition_[r]));
    }
    MPI_Datatype type = detail::element_type(layout_.dtype);
    detail::check_mpi(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, flat.data_ptr(), counts.data(),
                                     displacements.data(), type, comm_.get()),
                      "MPI_Allgatherv");
    detail::copy_parameters_in(layout_, 0, flat);
  }

  Communicator comm_;
  detail::FlatLayout layout_;
  std::vector<int64_t> partition_;
  std::vector<detail::Slot> segments_;
  std::unique_ptr<torch::optim::Optimizer> inner_;
};

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(torch::nn::Module& module, OptimizerFactory factory,
                                                 ZeroOptions options)
    : impl_(std::make_unique<Impl>(module, factory, options)) {}

ZeroRedundancyOptimizer::~ZeroRedundancyOptimizer() = default;
ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(ZeroRedundancyOptimizer&&) noexcept = default;
ZeroRedundancyOptimizer& ZeroRedundancyOptimizer::operator=(ZeroRedundancyOptimizer&&) noexcept = default;

void ZeroRedundancyOptimizer::average_gradients() { impl_->average_gradients(); }
void ZeroRedundancyOptimizer::step() { impl_->step(); }
void ZeroRedundancyOptimizer::zero_grad() { impl_->zero_grad(); }
torch::optim::Optimizer& ZeroRedundancyOptimizer::inner() { return impl_->inner(); }
FlatRange ZeroRedundancyOptimizer::range() const { return impl_->range(); }
int64_t ZeroRedundancyOptimizer::numel() const { return impl_->layout().numel; }
std::vector<std::string> ZeroRedundancyOptimizer::parameter_names() const { return impl_->layout().names(); }

OptimizerStates get_optimizer_states(ZeroRedundancyOptimizer& optimizer) {
  auto& impl = *optimizer.impl_;
  return detail::export_slot_states(impl.comm(), impl.layout(), impl.segments(), impl.inner());
}

void set_optimizer_states(ZeroRedundancyOptimizer& optimizer, const PersistedStates& states,
                          const YAML::Node& param_groups) {
  auto& impl = *optimizer.impl_;
  detail::import_slot_states(impl.comm(), impl.layout(), impl.segments(), impl.inner(), states, param_groups);
}

}  // namespace persistence
