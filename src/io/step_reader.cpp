#include "io/step_reader.h"

#include "core/logging.h"
#include "format/checksum.h"
#include "format/dtype.h"
#include "format/keys.h"
#include "format/layout.h"
#include "io/direct_file.h"
#include "io/hdf5_file.h"
#include "shard/plan.h"

#include <persistence/errors.h>
#include <persistence/version.h>

#include <ATen/ops/empty.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>

namespace persistence::detail {
namespace {

ErrorContext file_context(const std::string& path, const std::string& key = {}) {
  return ErrorContext{path, key, std::nullopt, std::nullopt};
}

h5::Handle open_step_locally(const std::string& path) {
  // Loads without a manager must not print HDF5 error stacks either; failures become exceptions.
  h5::silence_errors();
  try {
    return open_local_file(path);
  } catch (const IoError& error) {
    throw FormatError("Cannot open the step file as HDF5; it may be truncated or not a checkpoint",
                      file_context(path), "Load an earlier step or check the file with h5dump");
  }
}

void check_format(hid_t file, const std::string& path) {
  auto format = h5::read_string_attribute(file, layout::kAttrFormat);
  if (!format || *format != layout::kFormatName) {
    throw FormatError("The file is HDF5 but not a persistence step file (its 'format' attribute is " +
                          (format ? "'" + *format + "'" : std::string("missing")) + ")",
                      file_context(path));
  }
  auto version = h5::read_string_attribute(file, layout::kAttrFormatVersion);
  if (!version) throw FormatError("The step file has no format_version attribute", file_context(path));
  int major = std::atoi(version->c_str());
  if (major > kFormatVersionMajor) {
    throw FormatError("The step file has format version " + *version + ", newer than the versions up to " +
                          std::to_string(kFormatVersionMajor) + ".x that this library reads",
                      file_context(path), "Load it with a newer persistence release");
  }
}

std::vector<std::string> children_or_empty(hid_t file, const std::string& group, const std::string& path) {
  if (!h5::link_exists(file, group)) return {};
  h5::Handle handle = h5::open_group(file, group, path);
  return h5::child_names(handle.get(), path);
}

StoredTensor describe_dataset(hid_t dataset, const std::string& hdf5_path, const std::string& link_key,
                              const std::string& path) {
  StoredTensor stored;
  stored.dataset = hdf5_path;
  stored.key = link_key;
  // The key attribute lives in HDF5's global heap, which has no checksum, while
  // the link name sits in checksummed metadata, so a damaged attribute must
  // not rename the tensor.
  auto key_attribute = h5::read_string_attribute(dataset, layout::kAttrKey);
  if (key_attribute && *key_attribute != link_key) {
    throw FormatError("Dataset's key attribute does not match its link name '" + link_key + "'",
                      file_context(path, link_key), "The file is damaged; load an earlier step");
  }
  auto dtype_text = h5::read_string_attribute(dataset, layout::kAttrTorchDtype);
  auto dtype = dtype_text ? dtype_from_name(*dtype_text) : std::nullopt;
  if (!dtype) {
    throw FormatError("Dataset has a missing or unknown torch_dtype attribute", file_context(path, stored.key));
  }
  stored.dtype = *dtype;
  if (auto source = h5::read_string_attribute(dataset, layout::kAttrSourceDtype)) {
    stored.source_dtype = dtype_from_name(*source);
  }
  stored.checksum = h5::read_uint64_attribute(dataset, layout::kAttrChecksum);

  h5::Handle space = h5::space_handle(h5::check_id(H5Dget_space(dataset), "H5Dget_space", hdf5_path));
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) throw FormatError("Dataset has an unreadable shape", file_context(path, stored.key));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  stored.shape.assign(dims.begin(), dims.end());

  h5::Handle file_type = h5::type_handle(h5::check_id(H5Dget_type(dataset), "H5Dget_type", hdf5_path));
  h5::Handle expected = hdf5_type(stored.dtype);
  if (H5Tequal(file_type.get(), expected.get()) <= 0) {
    throw FormatError("Dataset's HDF5 type does not match its torch_dtype attribute '" + dtype_name(stored.dtype) + "'",
                      file_context(path, stored.key));
  }
  return stored;
}

void collect_tensors(hid_t group, const std::string& group_path, const std::string& key_prefix,
                     const std::string& path, std::vector<StoredTensor>& found) {
  for (const auto& name : h5::child_names(group, path)) {
    std::string child_path = group_path + "/" + name;
    H5O_info_t info;
    h5::check_status(H5Oget_info_by_name2(group, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT),
                     "H5Oget_info_by_name2", path + " object '" + child_path + "'");
    std::string key = key_prefix + unescape_key(name);
    if (info.type == H5O_TYPE_GROUP) {
      h5::Handle child = h5::open_group(group, name, path);
      collect_tensors(child.get(), child_path, key + "/", path, found);
    } else if (info.type == H5O_TYPE_DATASET) {
      h5::Handle dataset =
          h5::dataset_handle(h5::check_id(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "H5Dopen2", child_path));
      found.push_back(describe_dataset(dataset.get(), child_path, key, path));
    }
  }
}

std::vector<StoredTensor> list_in_file(hid_t file, const std::string& path, const std::string& group) {
  if (!h5::link_exists(file, group.substr(1)) && !h5::link_exists(file, group)) {
    throw NotFoundError("The step file has no group '" + group + "'", file_context(path));
  }
  h5::Handle handle = h5::open_group(file, group, path);
  std::vector<StoredTensor> found;
  collect_tensors(handle.get(), group, "", path, found);
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  return found;
}

uint64_t full_checksum(const at::Tensor& tensor) {
  auto bytes = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
  return checksum_finish(checksum_piece(tensor.data_ptr(), 0, bytes), bytes);
}

void require_checksum(const StoredTensor& stored, uint64_t computed, const std::string& path) {
  if (!stored.checksum) {
    throw IntegrityError("Dataset has no checksum attribute", file_context(path, stored.key),
                         "Load with checksum verification turned off to read it anyway");
  }
  if (*stored.checksum != computed) {
    throw IntegrityError("Checksum mismatch: the file stores " + std::to_string(*stored.checksum) +
                             " but the data read gives " + std::to_string(computed),
                         file_context(path, stored.key), "The file is damaged; load an earlier step");
  }
}

at::Tensor read_full(hid_t file, const StoredTensor& stored, const std::string& path) {
  at::Tensor tensor = at::empty(stored.shape, at::TensorOptions().dtype(stored.dtype));
  h5::Handle dataset =
      h5::dataset_handle(h5::check_id(H5Dopen2(file, stored.dataset.c_str(), H5P_DEFAULT), "H5Dopen2", path));
  h5::Handle type = hdf5_type(stored.dtype);
  if (tensor.numel() > 0) {
    h5::check_status(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.data_ptr()), "H5Dread",
                     path + " dataset '" + stored.key + "'");
  }
  return tensor;
}

// Reads a YAML text dataset and, when it has a checksum attribute (files
// written since text checksums were added), verifies it.
std::string read_checked_text(hid_t file, const std::string& dataset, const std::string& path) {
  std::string text = h5::read_text_dataset(file, dataset, H5P_DEFAULT, path);
  h5::Handle handle =
      h5::dataset_handle(h5::check_id(H5Dopen2(file, dataset.c_str(), H5P_DEFAULT), "H5Dopen2", path));
  auto stored = h5::read_uint64_attribute(handle.get(), layout::kAttrChecksum);
  if (stored && *stored != text_checksum(text)) {
    throw IntegrityError("Checksum mismatch in text dataset '" + dataset + "': the file stores " +
                             std::to_string(*stored) + " but the text read gives " + std::to_string(text_checksum(text)),
                         file_context(path), "The file is damaged; load an earlier step");
  }
  return text;
}

// Verifies the training config and the config of every saved model and optimizer.
void verify_texts(hid_t file, const std::string& path) {
  if (h5::link_exists(file, layout::kConfig)) read_checked_text(file, std::string("/") + layout::kConfig, path);
  for (const char* kind : {layout::kModels, layout::kOptimizers}) {
    const char* text_name = kind == layout::kModels ? layout::kConfig : layout::kParamGroups;
    for (const auto& name : children_or_empty(file, kind, path)) {
      std::string dataset = std::string("/") + kind + "/" + name + "/" + text_name;
      if (h5::link_exists(file, dataset)) read_checked_text(file, dataset, path);
    }
  }
}

}  // namespace

StepInfo read_step_info(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_step_locally(path);
  check_format(file.get(), path);
  StepInfo info;
  auto step = h5::read_int_attribute(file.get(), layout::kAttrStep);
  if (!step) throw FormatError("The step file has no step attribute", file_context(path));
  info.step = *step;
  info.world_size = h5::read_int_attribute(file.get(), layout::kAttrWorldSize).value_or(0);
  info.task_id = h5::read_string_attribute(file.get(), layout::kAttrTaskId).value_or("");
  info.models = children_or_empty(file.get(), layout::kModels, path);
  info.optimizers = children_or_empty(file.get(), layout::kOptimizers, path);
  return info;
}

std::vector<StoredTensor> list_tensors(const std::string& path, const std::string& group) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_step_locally(path);
  return list_in_file(file.get(), path, group);
}

std::string read_text(const std::string& path, const std::string& dataset) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_step_locally(path);
  if (!h5::link_exists(file.get(), dataset)) {
    throw NotFoundError("The step file has no dataset '" + dataset + "'", file_context(path));
  }
  return read_checked_text(file.get(), dataset, path);
}

TensorDict read_tensors(const std::string& path, const std::string& group, bool verify) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_step_locally(path);
  TensorDict tensors;
  for (const auto& stored : list_in_file(file.get(), path, group)) {
    at::Tensor tensor = read_full(file.get(), stored, path);
    if (verify) require_checksum(stored, full_checksum(tensor), path);
    tensors.emplace(stored.key, std::move(tensor));
  }
  return tensors;
}

void verify_step(const Communicator& comm, const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  run_agreed(comm, [&] {
    h5::Handle file = open_step_locally(path);
    check_format(file.get(), path);
    verify_texts(file.get(), path);
    size_t index = 0;
    for (const char* kind : {layout::kModels, layout::kOptimizers}) {
      for (const auto& name : children_or_empty(file.get(), kind, path)) {
        std::string group = std::string("/") + kind + "/" + name + "/" + layout::kStates;
        for (const auto& stored : list_in_file(file.get(), path, group)) {
          if (index++ % static_cast<size_t>(comm.size()) != static_cast<size_t>(comm.rank())) continue;
          require_checksum(stored, full_checksum(read_full(file.get(), stored, path)), path);
        }
      }
    }
  });
}

namespace {

// One target piece and the buffer it is read into: the piece itself when it is
// a contiguous CPU tensor of the stored dtype, otherwise a temporary.
struct ReadBuffer {
  at::Tensor target;
  at::Tensor buffer;
};

std::vector<KeyView> target_views(const StateDict& target) {
  std::vector<KeyView> views;
  for (const auto& [key, value] : target) {
    KeyView view;
    view.key = key;
    if (const auto* tensor = std::get_if<at::Tensor>(&value)) {
      view.dtype = tensor->scalar_type();
      view.shape.assign(tensor->sizes().begin(), tensor->sizes().end());
    } else {
      const auto& sharded = std::get<ShardedTensor>(value);
      view.dtype = sharded.dtype();
      view.shape = sharded.global_shape();
      view.sharded = true;
      for (const auto& shard : sharded.shards()) view.regions.push_back(shard.region);
    }
    views.push_back(std::move(view));
  }
  return views;
}

std::vector<ReadBuffer> make_buffers(StateValue& value, c10::ScalarType stored_dtype) {
  std::vector<at::Tensor> targets;
  if (auto* tensor = std::get_if<at::Tensor>(&value)) {
    targets.push_back(*tensor);
  } else {
    for (auto& shard : std::get<ShardedTensor>(value).shards()) targets.push_back(shard.data);
  }
  std::vector<ReadBuffer> buffers;
  for (auto& target : targets) {
    bool direct = target.is_contiguous() && target.device().is_cpu() && target.scalar_type() == stored_dtype;
    at::Tensor buffer = direct ? target : at::empty({target.numel()}, at::TensorOptions().dtype(stored_dtype));
    buffers.push_back({target, buffer});
  }
  return buffers;
}

}  // namespace

void read_into(const Communicator& comm, const std::string& path, const std::string& group, StateDict& target,
               bool verify, int64_t max_bytes_per_call, bool direct_io) {
  h5::LibraryLock lock(h5::library_mutex());
  std::vector<KeyView> views = target_views(target);
  Plan plan = exchange_plan(comm, views, PlanUse::kLoad);

  // Every key must exist with the same shape and a compatible dtype.
  std::map<std::string, StoredTensor> stored_by_key;
  run_agreed(comm, [&] {
    for (auto& stored : list_tensors(path, group)) stored_by_key.emplace(stored.key, std::move(stored));
    for (const auto& planned : plan.keys) {
      auto found = stored_by_key.find(planned.key);
      if (found == stored_by_key.end()) {
        throw StateMismatchError("Key is not in the saved states of '" + group + "'", file_context(path, planned.key),
                                 "Check the state dict keys against the saved ones (h5ls -r)");
      }
      const StoredTensor& stored = found->second;
      if (stored.shape != planned.shape) {
        throw StateMismatchError("Shape mismatch: the file has shape " + describe_shape(stored.shape) +
                                     " but the target's global shape is " + describe_shape(planned.shape),
                                 file_context(path, planned.key));
      }
      bool dtype_ok = planned.dtype == stored.dtype || (stored.source_dtype && planned.dtype == *stored.source_dtype);
      if (!dtype_ok) {
        throw StateMismatchError("Dtype mismatch: the file stores " + dtype_name(stored.dtype) + " but the target is " +
                                     dtype_name(planned.dtype),
                                 file_context(path, planned.key));
      }
    }
  });

  h5::Handle file;
  run_agreed(comm, [&] { file = open_parallel_file(path, comm, false); });
  h5::Handle transfer = collective_transfer();

  std::vector<uint64_t> partial_sums(plan.keys.size(), 0);
  std::exception_ptr local_failure;
  std::unique_ptr<DirectFile> direct_file;
  bool warned_partial = false;
  for (size_t k = 0; k < plan.keys.size(); ++k) {
    const PlannedKey& planned = plan.keys[k];
    const StoredTensor& stored = stored_by_key.at(planned.key);
    auto element_size = static_cast<int64_t>(c10::elementSize(stored.dtype));
    int64_t max_elements = std::max<int64_t>(1, max_bytes_per_call / element_size);
    std::vector<ReadBuffer> buffers = make_buffers(target.at(planned.key), stored.dtype);

    std::string subject = path + " dataset '" + planned.key + "'";
    h5::Handle dataset = h5::dataset_handle(
        h5::check_id(H5Dopen2(file.get(), stored.dataset.c_str(), H5P_DEFAULT), "H5Dopen2", subject));
    h5::Handle type = hdf5_type(stored.dtype);

    // Large contiguous pieces are read here with O_DIRECT. The rest go through
    // collective H5Dread rounds, which every rank joins the same number of
    // times, since the choice depends only on the plan and the file.
    std::optional<uint64_t> offset;
    auto dataset_bytes = static_cast<uint64_t>(element_count(planned.shape) * element_size);
    if (direct_io && !planned.shape.empty() && dataset_bytes >= kSmallestDirectDataset) {
      haddr_t address = H5Dget_offset(dataset.get());
      if (address != HADDR_UNDEF) offset = static_cast<uint64_t>(address);
    }
    size_t rounds = 0;
    std::vector<Transfer> mine;
    std::vector<std::pair<Transfer, std::vector<std::pair<int64_t, int64_t>>>> direct;
    for (int r = 0; r < comm.size(); ++r) {
      size_t through_hdf5 = 0;
      for (Transfer& transfer : transfers_for(plan, k, r, PlanUse::kLoad, max_elements)) {
        std::vector<std::pair<int64_t, int64_t>> runs;
        if (offset) runs = transfer_runs(planned.shape, transfer);
        bool directly = offset && worth_moving_directly(runs, transfer.count, element_size);
        if (!directly) ++through_hdf5;
        if (r != comm.rank()) continue;
        if (directly) {
          direct.emplace_back(std::move(transfer), std::move(runs));
        } else {
          mine.push_back(std::move(transfer));
        }
      }
      rounds = std::max(rounds, through_hdf5);
    }
    for (const auto& [piece, runs] : direct) {
      if (local_failure) break;
      try {
        if (!direct_file) direct_file = std::make_unique<DirectFile>(path, DirectFile::Mode::kRead);
        char* destination =
            static_cast<char*>(buffers[piece.piece].buffer.data_ptr()) + piece.data_offset * element_size;
        for (const auto& [flat_begin, count] : runs) {
          direct_file->read(*offset + static_cast<uint64_t>(flat_begin * element_size), destination,
                            static_cast<uint64_t>(count * element_size));
          destination += count * element_size;
        }
      } catch (...) {
        local_failure = std::current_exception();
      }
    }
    for (size_t round = 0; round < rounds; ++round) {
      const Transfer* piece = round < mine.size() ? &mine[round] : nullptr;
      h5::Handle file_space = h5::space_handle(h5::check_id(H5Dget_space(dataset.get()), "H5Dget_space", subject));
      h5::Handle memory_space;
      if (piece == nullptr) {
        h5::check_status(H5Sselect_none(file_space.get()), "H5Sselect_none", subject);
      } else if (piece->boxes.size() == 1 && piece->boxes[0].offsets.empty()) {
        h5::check_status(H5Sselect_all(file_space.get()), "H5Sselect_all", subject);
      } else {
        bool first = true;
        for (const Box& box : piece->boxes) {
          std::vector<hsize_t> start(box.offsets.begin(), box.offsets.end());
          std::vector<hsize_t> count(box.sizes.begin(), box.sizes.end());
          h5::check_status(H5Sselect_hyperslab(file_space.get(), first ? H5S_SELECT_SET : H5S_SELECT_OR,
                                               start.data(), nullptr, count.data(), nullptr),
                           "H5Sselect_hyperslab", subject);
          first = false;
        }
      }
      if (planned.shape.empty()) {
        memory_space = h5::space_handle(h5::check_id(H5Screate(H5S_SCALAR), "H5Screate", subject));
      } else {
        hsize_t count = piece == nullptr ? 1 : static_cast<hsize_t>(piece->count);
        memory_space = h5::space_handle(h5::check_id(H5Screate_simple(1, &count, nullptr), "H5Screate_simple", subject));
      }
      if (piece == nullptr) h5::check_status(H5Sselect_none(memory_space.get()), "H5Sselect_none", subject);

      static char scratch = 0;
      void* destination = &scratch;
      if (piece != nullptr) {
        destination = static_cast<char*>(buffers[piece->piece].buffer.data_ptr()) + piece->data_offset * element_size;
      }
      h5::check_status(
          H5Dread(dataset.get(), type.get(), memory_space.get(), file_space.get(), transfer.get(), destination),
          "H5Dread", subject);
    }

    // Checksums: a full target is checked on its own; sharded targets that
    // cover the tensor exactly add up their pieces across ranks.
    try {
      if (verify && !planned.sharded) {
        require_checksum(stored, full_checksum(buffers[0].buffer), path);
      } else if (verify && planned.exact_cover) {
        const auto& regions = planned.regions_by_rank[static_cast<size_t>(comm.rank())];
        for (size_t p = 0; p < regions.size(); ++p) {
          int64_t cursor = 0;
          for_each_run(planned.shape, regions[p], [&](int64_t flat_begin, int64_t count) {
            partial_sums[k] += checksum_piece(static_cast<const char*>(buffers[p].buffer.data_ptr()) + cursor * element_size,
                                              static_cast<uint64_t>(flat_begin * element_size),
                                              static_cast<uint64_t>(count * element_size));
            cursor += count;
          });
        }
      } else if (verify && !warned_partial) {
        // NOTE: pieces that overlap or leave gaps cannot be checked without reading more than requested.
        logger().warn("Key '{}' of {} is loaded into shards that do not cover it exactly once; its checksum is "
                      "not verified",
                      planned.key, path);
        warned_partial = true;
      }
    } catch (...) {
      if (!local_failure) local_failure = std::current_exception();
    }

    for (auto& buffer : buffers) {
      if (!buffer.buffer.is_same(buffer.target)) buffer.target.copy_(buffer.buffer.view(buffer.target.sizes()));
    }
  }
  direct_file.reset();
  transfer.reset();
  file.reset();
  agree(comm, local_failure);

  if (!verify) return;
  comm.allreduce_sum(partial_sums);
  run_agreed(comm, [&] {
    for (size_t k = 0; k < plan.keys.size(); ++k) {
      const PlannedKey& planned = plan.keys[k];
      if (!planned.sharded || !planned.exact_cover) continue;
      const StoredTensor& stored = stored_by_key.at(planned.key);
      auto bytes = static_cast<uint64_t>(element_count(planned.shape) * static_cast<int64_t>(c10::elementSize(stored.dtype)));
      require_checksum(stored, checksum_finish(partial_sums[k], bytes), path);
    }
  });
}

}  // namespace persistence::detail
