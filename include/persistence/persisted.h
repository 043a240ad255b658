// Handles to what a step file holds: the training config, each saved model and
// each saved optimizer. A handle is a path plus a location inside the file;
// nothing is read until a load call. Handles are cheap to copy and thread-compatible.
#pragma once

#include <persistence/state_dict.h>

#include <c10/core/Device.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace torch::nn {
class Module;
}

namespace persistence {

// A YAML document stored as a string dataset.
struct PersistedConfig {
  std::string path;     // step file
  std::string dataset;  // HDF5 path of the string dataset, e.g. /models/model/config

  // Reads and parses the YAML text. Local: no other rank takes part.
  YAML::Node load() const;
};

// The tensors of one model or optimizer inside a step file.
struct PersistedStates {
  std::string path;   // step file
  std::string group;  // HDF5 group of the tensors, e.g. /models/model/states
  bool verify_checksums = true;
  MPI_Comm comm = MPI_COMM_WORLD;  // communicator of load_into
  bool direct_io = true;           // load_into reads large contiguous pieces with O_DIRECT (see ManagerOptions)

  // Reads every tensor in full onto device, verifying checksums. Local: each
  // calling process opens the file on its own.
  TensorDict load(c10::Device device) const;

  // Collective over comm. Fills target in place: full tensors are read whole,
  // sharded tensors read only their pieces, whatever layout or world size
  // saved them. Every key of target must exist in the file with the same
  // global shape; dtypes must equal the saved dtype or the dtype before a
  // conversion on save. Extra keys in the file are ignored.
  void load_into(StateDict& target) const;

  // Keys stored in the group, in sorted order. Local.
  std::vector<std::string> keys() const;
};

// A model saved at one step.
struct PersistedModel {
  std::string name;
  int64_t step = 0;
  PersistedConfig config;
  PersistedStates states;

  // Builds the module through the model registry from config (its `type` key
  // names the factory), then loads the states strictly: a missing or unexpected
  // key, or a shape or dtype mismatch, is a StateMismatchError naming the key.
  std::shared_ptr<torch::nn::Module> create(c10::Device device) const;
};

// An optimizer saved at one step. States are keyed "<parameter name>/<state key>".
struct PersistedOptimizer {
  std::string name;
  int64_t step = 0;
  PersistedConfig param_groups;  // YAML list of groups: options and parameter names
  PersistedStates states;
};

// The newest usable step, as load_last_step() returns it.
struct ResumeState {
  int64_t step = 0;
  std::string path;  // step file
  PersistedConfig config;
  std::map<std::string, PersistedModel> models;
  std::map<std::string, PersistedOptimizer> optimizers;
};

}  // namespace persistence
