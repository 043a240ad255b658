#include "char_lm.h"

#include <persistence/model_registry.h>

#include <ATen/ops/arange.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tril.h>
#include <torch/nn/init.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace char_lm {
namespace {

// Reads node[key] into value when the key is present. A value of the wrong
// type raises std::invalid_argument naming the key.
void read_int(const YAML::Node& node, const char* key, int64_t& value) {
  const YAML::Node field = node[key];
  if (!field) {
    return;
  }
  try {
    value = field.as<int64_t>();
  } catch (const YAML::Exception&) {
    throw std::invalid_argument(std::string("model config key '") + key + "': expected an integer, but got '" +
                                YAML::Dump(field) + "'");
  }
}

void require_positive(const char* key, int64_t value) {
  if (value <= 0) {
    throw std::invalid_argument(std::string("model config key '") + key + "': expected a positive integer, but got " +
                                std::to_string(value));
  }
}

}  // namespace

YAML::Node ModelConfig::to_yaml() const {
  YAML::Node node;
  node["type"] = kModelType;
  node["vocab_size"] = vocab_size;
  node["context"] = context;
  node["d_model"] = d_model;
  node["heads"] = heads;
  node["layers"] = layers;
  node["mlp_ratio"] = mlp_ratio;
  return node;
}

ModelConfig ModelConfig::from_yaml(const YAML::Node& node) {
  ModelConfig config;
  read_int(node, "vocab_size", config.vocab_size);
  read_int(node, "context", config.context);
  read_int(node, "d_model", config.d_model);
  read_int(node, "heads", config.heads);
  read_int(node, "layers", config.layers);
  read_int(node, "mlp_ratio", config.mlp_ratio);

  require_positive("vocab_size", config.vocab_size);
  require_positive("context", config.context);
  require_positive("d_model", config.d_model);
  require_positive("heads", config.heads);
  require_positive("layers", config.layers);
  require_positive("mlp_ratio", config.mlp_ratio);
  if (config.d_model % config.heads != 0) {
    throw std::invalid_argument("model config key 'heads': d_model " + std::to_string(config.d_model) +
                                " is not divisible by " + std::to_string(config.heads) + " heads");
  }
  return config;
}

Block::Block(const ModelConfig& config) : heads_(config.heads) {
  const int64_t d = config.d_model;
  ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  qkv_ = register_module("qkv", torch::nn::Linear(d, 3 * d));
  proj_ = register_module("proj", torch::nn::Linear(d, d));
  ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  fc_ = register_module("fc", torch::nn::Linear(d, config.mlp_ratio * d));
  fc_out_ = register_module("fc_out", torch::nn::Linear(config.mlp_ratio * d, d));
}

at::Tensor Block::attention(const at::Tensor& x, const at::Tensor& causal_mask) {
  const int64_t batch = x.size(0);
  const int64_t time = x.size(1);
  const int64_t d = x.size(2);
  const int64_t head_dim = d / heads_;

  // (batch, time, 3d) -> three (batch, heads, time, head_dim) tensors.
  auto qkv = qkv_->forward(x).view({batch, time, 3, heads_, head_dim}).permute({2, 0, 3, 1, 4});
  const at::Tensor q = qkv[0];
  const at::Tensor k = qkv[1];
  const at::Tensor v = qkv[2];

  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul(scale);
  scores = scores.masked_fill(causal_mask.logical_not(), -std::numeric_limits<float>::infinity());
  const at::Tensor weights = at::softmax(scores, -1);

  const at::Tensor out = at::matmul(weights, v).transpose(1, 2).reshape({batch, time, d});
  return proj_->forward(out);
}

at::Tensor Block::forward(const at::Tensor& x, const at::Tensor& causal_mask) {
  const at::Tensor h = x + attention(ln1_->forward(x), causal_mask);
  return h + fc_out_->forward(at::gelu(fc_->forward(ln2_->forward(h))));
}

CharTransformer::CharTransformer(const ModelConfig& config) : config_(config) {
  token_embedding_ = register_module("token_embedding", torch::nn::Embedding(config.vocab_size, config.d_model));
  position_embedding_ = register_module("position_embedding", torch::nn::Embedding(config.context, config.d_model));
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i) {
    blocks_->push_back(std::make_shared<Block>(config));
  }
  ln_final_ = register_module("ln_final", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config.d_model})));
  head_ = register_module("head", torch::nn::Linear(config.d_model, config.vocab_size));

  causal_mask_ = at::ones({config.context, config.context}, at::kBool).tril();
  init_weights();
}

// GPT-style initialisation: small normal weights and zero biases for linear
// layers and embeddings. LayerNorms keep their default ones and zeros.
void CharTransformer::init_weights() {
  torch::NoGradGuard no_grad;
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* linear = module->as<torch::nn::LinearImpl>()) {
      torch::nn::init::normal_(linear->weight, 0.0, 0.02);
      torch::nn::init::zeros_(linear->bias);
    } else if (auto* embedding = module->as<torch::nn::EmbeddingImpl>()) {
      torch::nn::init::normal_(embedding->weight, 0.0, 0.02);
    }
  }
}

at::Tensor CharTransformer::forward(const at::Tensor& tokens) {
  const int64_t time = tokens.size(1);
  if (time > config_.context) {
    throw std::invalid_argument("CharTransformer::forward: sequence length " + std::to_string(time) +
                                " exceeds the model context " + std::to_string(config_.context));
  }

  const at::Tensor positions = at::arange(time, tokens.options());
  at::Tensor x = token_embedding_->forward(tokens) + position_embedding_->forward(positions);

  const at::Tensor mask = causal_mask_.slice(0, 0, time).slice(1, 0, time);
  for (const auto& block : *blocks_) {
    x = block->as<Block>()->forward(x, mask);
  }
  return head_->forward(ln_final_->forward(x));
}

void register_with_persistence() {
  persistence::register_model(kModelType, [](const YAML::Node& node) -> std::shared_ptr<torch::nn::Module> {
    return std::make_shared<CharTransformer>(ModelConfig::from_yaml(node));
  });
}

}  // namespace char_lm
