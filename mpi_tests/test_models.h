// Small libtorch modules shared by the MPI suites. Their values are set from a
// seed, never from the global random generator, so every rank has the same
// copy, as data-parallel training keeps them.
#pragma once

#include "mpi_test_support.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace persistence::testing {

// Sets every parameter and floating buffer of module to deterministic values;
// the i-th tensor in named order uses seed + i.
inline void fill_deterministic(torch::nn::Module& module, double seed) {
  at::NoGradGuard no_grad;
  double offset = 0;
  for (auto& item : module.named_parameters()) {
    at::Tensor& tensor = item.value();
    tensor.copy_(deterministic_tensor(tensor.sizes().vec(), tensor.scalar_type(), seed + offset));
    offset += 1;
  }
  for (auto& item : module.named_buffers()) {
    at::Tensor& tensor = item.value();
    if (at::isFloatingType(tensor.scalar_type())) {
      tensor.copy_(deterministic_tensor(tensor.sizes().vec(), tensor.scalar_type(), seed + offset));
    }
    offset += 1;
  }
}

// Sets the gradient of the i-th parameter to sin(3 p + iteration + i), a
// stand-in for a backward pass that is the same on every rank.
inline void apply_gradients(torch::nn::Module& module, int iteration) {
  at::NoGradGuard no_grad;
  int index = 0;
  for (at::Tensor parameter : module.parameters()) {
    parameter.mutable_grad() = parameter.detach().mul(3.0).add(iteration + index).sin();
    ++index;
  }
}

// Two linear layers, an int64 buffer and a float buffer: parameters fc1.weight,
// fc1.bias, fc2.weight, fc2.bias; buffers steps_seen (0-d int64) and running_mean.
class TinyNet : public torch::nn::Module {
 public:
  TinyNet(int64_t inputs, int64_t hidden, int64_t outputs, double seed = 1.0) {
    fc1 = register_module("fc1", torch::nn::Linear(inputs, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, outputs));
    steps_seen = register_buffer("steps_seen", at::scalar_tensor(int64_t{1234567890123}, at::kLong));
    running_mean = register_buffer("running_mean", at::zeros({hidden}, at::kFloat));
    fill_deterministic(*this, seed);
  }

  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};
  at::Tensor steps_seen;
  at::Tensor running_mean;
};

// Parameters of fc1 and of fc2, for optimizers with two parameter groups.
inline std::vector<at::Tensor> fc1_parameters(TinyNet& net) { return net.fc1->parameters(); }
inline std::vector<at::Tensor> fc2_parameters(TinyNet& net) { return net.fc2->parameters(); }

}  // namespace persistence::testing
