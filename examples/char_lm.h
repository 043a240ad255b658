// A small character-level transformer language model over bytes, used by the
// demo trainer. The model is a plain torch::nn::Module tree, so its state dict
// names (`blocks.0.qkv.weight`, ...) are the ones a checkpoint stores.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>

namespace char_lm {

// Name under which the model type is registered with persistence::register_model
// and written as `type` into the saved model config.
inline constexpr const char* kModelType = "char_transformer";

struct ModelConfig {
  int64_t vocab_size = 256;  // one token per byte
  int64_t context = 64;      // maximum sequence length of the position embedding
  int64_t d_model = 64;
  int64_t heads = 4;
  int64_t layers = 2;
  int64_t mlp_ratio = 4;  // hidden width of the MLP is mlp_ratio * d_model

  // The YAML form saved with each checkpoint, including `type: char_transformer`.
  YAML::Node to_yaml() const;

  // Parses the form to_yaml() writes. A missing key keeps its default; a wrong
  // type or an invalid value (d_model not divisible by heads) throws
  // std::invalid_argument naming the key.
  static ModelConfig from_yaml(const YAML::Node& node);
};

// Pre-norm block: x + attention(ln1(x)), then x + mlp(ln2(x)). No dropout, so a
// step is a pure function of weights, optimizer state and batch.
class Block : public torch::nn::Module {
 public:
  explicit Block(const ModelConfig& config);

  // x: (batch, time, d_model) float; causal_mask: (time, time) bool, true where
  // a position may attend.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& causal_mask);

 private:
  at::Tensor attention(const at::Tensor& x, const at::Tensor& causal_mask);

  int64_t heads_;
  torch::nn::LayerNorm ln1_{nullptr};
  torch::nn::Linear qkv_{nullptr};
  torch::nn::Linear proj_{nullptr};
  torch::nn::LayerNorm ln2_{nullptr};
  torch::nn::Linear fc_{nullptr};
  torch::nn::Linear fc_out_{nullptr};
};

// Token and position embeddings, `layers` blocks, a final LayerNorm and a
// linear head to vocabulary logits. Weights are drawn from the global torch
// generator, so torch::manual_seed before construction fixes them.
class CharTransformer : public torch::nn::Module {
 public:
  explicit CharTransformer(const ModelConfig& config);

  // tokens: (batch, time) int64 with time <= context. Returns (batch, time, vocab) logits.
  at::Tensor forward(const at::Tensor& tokens);

  const ModelConfig& config() const noexcept { return config_; }

 private:
  void init_weights();

  ModelConfig config_;
  at::Tensor causal_mask_;  // constant, derived from context; not part of the state dict
  torch::nn::Embedding token_embedding_{nullptr};
  torch::nn::Embedding position_embedding_{nullptr};
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm ln_final_{nullptr};
  torch::nn::Linear head_{nullptr};
};

// Registers CharTransformer with persistence::register_model under kModelType,
// so PersistedModel::create can rebuild it from a checkpoint.
void register_with_persistence();

}  // namespace char_lm
