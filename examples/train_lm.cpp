// train_lm: data-parallel training of a small character-level transformer on
// the Debian fortunes corpus, checkpointed with persistence.
//
//   mpiexec -n 2 build/bin/train_lm --save-dir /tmp/run --steps 120 --save-every 20
//
// Every rank computes gradients on its own batch; an MPI_Allreduce averages
// them, so the replicas stay identical. AdamW runs under ZeRO stage 1
// (persistence::ZeroRedundancyOptimizer): each rank keeps the moments of one
// range of the flattened parameters only, updates that range and all-gathers
// the result. Every --save-every steps the model, an EMA of its weights (as
// bfloat16) and the sharded AdamW state go into the step file, each rank
// writing its own range of every moment. A run may resume on another number
// of ranks: the moments are read back in the new ranges.
// Started again on the same directory, the run resumes from the newest complete
// step. With the same seed and world size, a resumed run prints the same
// losses, bit for bit, as a run that was never stopped. That is so because
// batches and the learning rate are functions of the step number, there is no
// dropout, and libtorch runs on one thread.
//
// Rank 0 prints `step N loss X` after each step and `final step N loss X` at
// the end, where X is the mean of the ranks' losses. Then it prints the held-out
// loss of the model and the EMA, a hash of the weights and a short greedy sample.

#include "char_lm.h"
#include "text_corpus.h"

#include <persistence/persistence.h>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>

#include <CLI/CLI.hpp>
#include <mpi.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <memory>
#include <numbers>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct TrainOptions {
  std::string data = "/usr/share/games/fortunes";
  std::string save_dir;
  int64_t steps = 120;
  int64_t save_every = 20;
  uint64_t seed = 1234;
  int64_t batch = 8;  // windows per rank per step
  double lr = 3e-3;
  int64_t warmup = 10;
  double weight_decay = 0.01;
  double ema_decay = 0.99;
  double holdout_fraction = 0.05;
  char_lm::ModelConfig model;
};

struct World {
  int rank = 0;
  int size = 1;
};

// Prints the error with the rank and ends every rank. Used instead of letting an
// exception unwind past the manager, whose destructor would wait in a
// collective call that the other ranks may never make.
[[noreturn]] void abort_run(const World& world, const std::string& what) {
  std::fprintf(stderr, "train_lm: rank %d: %s\n", world.rank, what.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

void check_mpi(int code, const char* call) {
  if (code != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(code, text, &length);
    throw std::runtime_error(std::string(call) + " failed: " + std::string(text, length));
  }
}

// Returns the exit code when the run should stop here (--help, bad options).
std::optional<int> parse_options(int argc, char** argv, const World& world, TrainOptions& options) {
  CLI::App app{"Data-parallel character-level transformer trainer with persistence checkpoints"};
  app.add_option("--data", options.data, "directory of fortune text files")->capture_default_str();
  app.add_option("--save-dir", options.save_dir, "checkpoint directory or hdfs:// URI; a run there is resumed")->required();
  app.add_option("--steps", options.steps, "train until this step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--save-every", options.save_every, "save every this many steps (and at the last step)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", options.seed, "seed of the weights and the batches")->capture_default_str();
  app.add_option("--batch", options.batch, "windows per rank per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", options.lr, "peak learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--warmup", options.warmup, "steps of linear learning-rate warmup")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--weight-decay", options.weight_decay, "AdamW weight decay")->capture_default_str();
  app.add_option("--ema-decay", options.ema_decay, "decay of the weight EMA")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--context", options.model.context, "tokens per window")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--d-model", options.model.d_model, "model width")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--heads", options.model.heads, "attention heads")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--layers", options.model.layers, "transformer blocks")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Every rank gets the same arguments; one copy of the message is enough.
    if (world.rank == 0) {
      return app.exit(e);
    }
    return e.get_exit_code();
  }
  if (options.model.d_model % options.model.heads != 0) {
    if (world.rank == 0) {
      std::fprintf(stderr, "train_lm: --d-model %lld is not divisible by --heads %lld\n",
                   static_cast<long long>(options.model.d_model), static_cast<long long>(options.model.heads));
    }
    return 2;
  }
  // A URI such as hdfs://namenode/run is passed on unchanged; only local paths are made absolute.
  if (options.save_dir.find("://") == std::string::npos) {
    options.save_dir = std::filesystem::absolute(options.save_dir).lexically_normal().string();
  }
  return std::nullopt;
}

YAML::Node run_config(const TrainOptions& options, const World& world) {
  YAML::Node config;
  config["model"] = options.model.to_yaml();
  config["data"]["path"] = options.data;
  config["data"]["holdout_fraction"] = options.holdout_fraction;
  config["train"]["steps"] = options.steps;
  config["train"]["save_every"] = options.save_every;
  config["train"]["seed"] = options.seed;
  config["train"]["batch_per_rank"] = options.batch;
  config["train"]["lr"] = options.lr;
  config["train"]["warmup"] = options.warmup;
  config["train"]["weight_decay"] = options.weight_decay;
  config["train"]["ema_decay"] = options.ema_decay;
  config["world_size"] = world.size;
  return config;
}

// Linear warmup to the peak, then cosine decay to a tenth of it at the last
// step. A function of the step alone, so a resumed run continues the schedule.
double learning_rate(const TrainOptions& options, int64_t step) {
  if (step <= options.warmup) {
    return options.lr * static_cast<double>(step) / static_cast<double>(options.warmup);
  }
  const double span = static_cast<double>(std::max<int64_t>(options.steps - options.warmup, 1));
  const double progress = static_cast<double>(step - options.warmup) / span;
  const double floor = 0.1 * options.lr;
  return floor + (options.lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

double mean_over_ranks(double value, const World& world) {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce of the loss");
  return value / world.size;
}

at::Tensor batch_loss(char_lm::CharTransformer& model, const char_lm::Batch& batch) {
  const at::Tensor logits = model.forward(batch.inputs);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), batch.targets.reshape({-1}));
}

void copy_parameters(char_lm::CharTransformer& from, char_lm::CharTransformer& to) {
  torch::NoGradGuard no_grad;
  const auto source = from.parameters();
  auto target = to.parameters();
  for (size_t i = 0; i < source.size(); ++i) {
    target[i].copy_(source[i]);
  }
}

void update_ema(char_lm::CharTransformer& model, char_lm::CharTransformer& ema, double decay) {
  torch::NoGradGuard no_grad;
  const auto source = model.parameters();
  auto target = ema.parameters();
  for (size_t i = 0; i < source.size(); ++i) {
    target[i].mul_(decay).add_(source[i], 1.0 - decay);
  }
}

int64_t parameter_count(const torch::nn::Module& model) {
  int64_t count = 0;
  for (const auto& param : model.parameters()) {
    count += param.numel();
  }
  return count;
}

// FNV-1a over the bytes of every parameter, in state-dict order: equal hashes
// mean bit-identical weights.
uint64_t weights_hash(const torch::nn::Module& model) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (const auto& param : model.parameters()) {
    const at::Tensor data = param.detach().contiguous();
    const auto* bytes = static_cast<const uint8_t*>(data.data_ptr());
    const size_t size = static_cast<size_t>(data.numel()) * data.element_size();
    for (size_t i = 0; i < size; ++i) {
      hash = (hash ^ bytes[i]) * 0x100000001b3ULL;
    }
  }
  return hash;
}

// Greedy continuation of prompt; non-printable bytes show as '.'.
std::string sample_text(char_lm::CharTransformer& model, const std::string& prompt, int64_t length) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> tokens(prompt.begin(), prompt.end());
  const int64_t context = model.config().context;
  for (int64_t i = 0; i < length; ++i) {
    const auto begin = tokens.size() > static_cast<size_t>(context) ? tokens.end() - context : tokens.begin();
    at::Tensor input = at::empty({1, static_cast<int64_t>(tokens.end() - begin)}, at::kLong);
    std::copy(begin, tokens.end(), input.data_ptr<int64_t>());
    const at::Tensor logits = model.forward(input).select(1, input.size(1) - 1);
    tokens.push_back(logits.argmax(-1).item<int64_t>());
  }
  std::string text;
  for (int64_t token : tokens) {
    const auto c = static_cast<char>(token);
    text.push_back(c == '\n' ? ' ' : (std::isprint(static_cast<unsigned char>(c)) ? c : '.'));
  }
  return text;
}

struct Trainer {
  TrainOptions options;
  World world;
  char_lm::TextCorpus corpus;
  std::shared_ptr<char_lm::CharTransformer> model;
  std::shared_ptr<char_lm::CharTransformer> ema;
  std::unique_ptr<persistence::ZeroRedundancyOptimizer> optimizer;
  YAML::Node model_config;
};

Trainer make_trainer(const TrainOptions& options, const World& world) {
  char_lm::TextCorpus corpus(char_lm::load_fortunes(options.data), options.model.context, options.holdout_fraction);

  // Same seed on every rank: the replicas start identical without a broadcast.
  torch::manual_seed(options.seed);
  auto model = std::make_shared<char_lm::CharTransformer>(options.model);
  auto ema = std::make_shared<char_lm::CharTransformer>(options.model);
  copy_parameters(*model, *ema);
  const double lr = options.lr;
  const double weight_decay = options.weight_decay;
  auto optimizer = std::make_unique<persistence::ZeroRedundancyOptimizer>(
      *model, [lr, weight_decay](std::vector<at::Tensor> shard) -> std::unique_ptr<torch::optim::Optimizer> {
        return std::make_unique<torch::optim::AdamW>(
            std::move(shard), torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(weight_decay));
      });
  return Trainer{options, world, std::move(corpus), model, ema, std::move(optimizer), options.model.to_yaml()};
}

// Restores model, EMA and optimizer from the newest complete step and returns
// that step, or 0 for a fresh run.
int64_t resume(persistence::PersistenceManager& manager, Trainer& trainer) {
  const auto state = manager.load_last_step(persistence::StepRequirements{{"model", "ema"}, {"optimizer"}});
  if (!state) {
    return 0;
  }

  const YAML::Node saved_config = state->models.at("model").config.load();
  if (YAML::Dump(saved_config) != YAML::Dump(trainer.model_config)) {
    throw std::runtime_error("invalid model config in checkpoint " + state->path + ": expected\n" +
                             YAML::Dump(trainer.model_config) + "\nbut the checkpoint has\n" +
                             YAML::Dump(saved_config) +
                             "\nPass the model options of the saved run, or use another --save-dir.");
  }

  persistence::set_model_states(*trainer.model, state->models.at("model").states.load(torch::kCPU));
  // The EMA was saved as bfloat16; it continues from those rounded values.
  persistence::set_model_states(*trainer.ema, state->models.at("ema").states.load(torch::kCPU));
  const auto& optimizer = state->optimizers.at("optimizer");
  // Each rank reads only its range of every moment, whatever the world size of the saving run.
  persistence::set_optimizer_states(*trainer.optimizer, optimizer.states, optimizer.param_groups.load());
  return state->step;
}

// One data-parallel step; returns the mean loss over the ranks.
double train_step(Trainer& trainer, int64_t step) {
  const TrainOptions& options = trainer.options;
  for (auto& group : trainer.optimizer->inner().param_groups()) {
    group.options().set_lr(learning_rate(options, step));
  }

  const char_lm::Batch batch = trainer.corpus.training_batch(options.seed, step, trainer.world.rank, options.batch);
  trainer.optimizer->zero_grad();
  const at::Tensor loss = batch_loss(*trainer.model, batch);
  loss.backward();
  trainer.optimizer->average_gradients();
  trainer.optimizer->step();
  update_ema(*trainer.model, *trainer.ema, options.ema_decay);

  return mean_over_ranks(loss.item<double>(), trainer.world);
}

void save_step(persistence::PersistenceManager& manager, Trainer& trainer, int64_t step) {
  manager.save_model({.step = step,
                      .name = "model",
                      .config = trainer.model_config,
                      .states = persistence::get_model_states(*trainer.model),
                      .dtype = std::nullopt,
                      .blocking = false});
  manager.save_model({.step = step,
                      .name = "ema",
                      .config = trainer.model_config,
                      .states = persistence::get_model_states(*trainer.ema),
                      .dtype = torch::kBFloat16,
                      .blocking = false});
  manager.save_optimizer({.step = step,
                          .name = "optimizer",
                          .states = persistence::get_optimizer_states(*trainer.optimizer),
                          .dtype = std::nullopt,
                          .blocking = false});
}

// Prints, on rank 0, the last loss, the held-out losses of the model and the
// EMA, a hash of the weights and a short greedy sample.
void report_end(Trainer& trainer, int64_t step, std::optional<double> last_loss) {
  if (trainer.world.rank != 0) {
    return;
  }
  torch::NoGradGuard no_grad;
  const char_lm::Batch holdout = trainer.corpus.holdout_batch(trainer.options.seed, 64);
  const double model_loss = batch_loss(*trainer.model, holdout).item<double>();
  const double ema_loss = batch_loss(*trainer.ema, holdout).item<double>();
  const std::string sample = sample_text(*trainer.model, "The ", 60);

  if (last_loss) {
    std::printf("final step %lld loss %.9f\n", static_cast<long long>(step), *last_loss);
  } else {
    std::printf("final step %lld reached already; nothing to train\n", static_cast<long long>(step));
  }
  std::printf("held-out loss: model %.6f, ema %.6f\n", model_loss, ema_loss);
  std::printf("weights hash %016llx\n", static_cast<unsigned long long>(weights_hash(*trainer.model)));
  std::printf("sample: %s\n", sample.c_str());
  std::fflush(stdout);
}

void train(persistence::PersistenceManager& manager, Trainer& trainer) {
  const World& world = trainer.world;
  manager.save_config(run_config(trainer.options, world));

  const int64_t start = resume(manager, trainer);
  if (world.rank == 0) {
    if (start > 0) {
      std::printf("resumed from step %lld\n", static_cast<long long>(start));
    } else {
      std::printf("no checkpoint in %s; starting at step 0\n", manager.root().c_str());
    }
    std::fflush(stdout);
  }

  std::optional<double> last_loss;
  for (int64_t step = start + 1; step <= trainer.options.steps; ++step) {
    last_loss = train_step(trainer, step);
    if (world.rank == 0) {
      std::printf("step %lld loss %.9f\n", static_cast<long long>(step), *last_loss);
      std::fflush(stdout);
    }
    if (step % trainer.options.save_every == 0 || step == trainer.options.steps) {
      save_step(manager, trainer, step);
    }
  }

  manager.close();
  report_end(trainer, std::max(start, trainer.options.steps), last_loss);
}

int run(const TrainOptions& options, const World& world) {
  // One intra-op thread makes every reduction order fixed, so losses repeat bit for bit.
  at::set_num_threads(1);
  at::set_num_interop_threads(1);
  at::globalContext().setDeterministicAlgorithms(true, false);
  char_lm::register_with_persistence();

  Trainer trainer = make_trainer(options, world);
  if (world.rank == 0) {
    std::printf("train_lm: %d ranks, %lld parameters, %lld training bytes, %lld windows of %lld per step\n", world.size,
                static_cast<long long>(parameter_count(*trainer.model)),
                static_cast<long long>(trainer.corpus.training_bytes()),
                static_cast<long long>(options.batch * world.size), static_cast<long long>(options.model.context));
    std::fflush(stdout);
  }

  persistence::PersistenceManager manager(options.save_dir);
  // Errors from here on end the job at once instead of unwinding past the manager.
  try {
    train(manager, trainer);
  } catch (const std::exception& e) {
    abort_run(world, e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  World world;
  MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world.size);
  if (provided < MPI_THREAD_MULTIPLE) {
    abort_run(world, "MPI provides thread level " + std::to_string(provided) +
                         ", but persistence needs MPI_THREAD_MULTIPLE; use an MPI built with thread support");
  }

  TrainOptions options;
  const std::optional<int> exit_code = parse_options(argc, argv, world, options);
  int code = 0;
  if (exit_code) {
    code = *exit_code;
  } else {
    try {
      code = run(options, world);
    } catch (const std::exception& e) {
      abort_run(world, e.what());
    }
  }
  MPI_Finalize();
  return code;
}
