#include "io/step_writer.h"

#include "core/logging.h"
#include "format/checksum.h"
#include "format/dtype.h"
#include "format/keys.h"
#include "format/layout.h"
#include "io/direct_file.h"
#include "io/hdf5_file.h"
#include "io/phase_trace.h"
#include "io/step_files.h"

#include <persistence/errors.h>
#include <persistence/version.h>

#include <H5FDmpio.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <memory>
#include <random>
#include <set>

namespace persistence::detail {
namespace {

std::atomic<int64_t> g_collective_transfers{0};
std::atomic<int64_t> g_independent_transfers{0};
std::atomic<int64_t> g_direct_transfers{0};

std::string iso8601_now() {
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// HDF5 path of a key below the states group: optimizer keys
// "<parameter>/<state>" become a group per parameter.
std::vector<std::string> link_path(const std::string& group, const std::string& key) {
  if (group == layout::kOptimizers) {
    size_t slash = key.rfind('/');
    if (slash != std::string::npos && slash > 0 && slash + 1 < key.size()) {
      return {escape_key(key.substr(0, slash)), escape_key(key.substr(slash + 1))};
    }
  }
  return {escape_key(key)};
}

const char* data_pointer(const at::Tensor& tensor, int64_t element_offset) {
  return static_cast<const char*>(tensor.data_ptr()) + element_offset * static_cast<int64_t>(tensor.element_size());
}

int64_t full_offset(const SaveJob& job, size_t key_index) {
  return key_index < job.full_offsets.size() ? job.full_offsets[key_index] : 0;
}

// Checks that a full tensor staged in part covers what the plan makes this rank
// write. The snapshot computes the same share from the sorted keys, so a
// mismatch is a bug in the library, not in the caller's input.
void check_staged_share(const Plan& plan, const SaveJob& job, size_t key_index, int rank) {
  FlatRange share = full_tensor_share(plan, key_index, rank);
  int64_t first = full_offset(job, key_index);
  const at::Tensor& piece = job.pieces[key_index][0];
  if (share.end <= share.begin) return;
  if (share.begin < first || share.end - first > piece.numel()) {
    throw FormatError("Internal error: the staged part of a full tensor does not cover the elements this rank writes",
                      ErrorContext{{}, plan.keys[key_index].key, job.step, rank},
                      "Report this as a bug in persistence");
  }
}

// Allocates the first bytes of the file at path with fallocate(2), growing it,
// so that a full disk or a file-size limit fails here with ENOSPC or EFBIG.
// File systems without fallocate skip the reservation.
void reserve_file_space(const std::string& path, uint64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    throw IoError(std::string("Cannot open the step file to reserve space: ") + std::strerror(errno),
                  ErrorContext{path, {}, std::nullopt, std::nullopt});
  }
  int result = ::fallocate(fd, 0, 0, static_cast<off_t>(bytes));
  int error = result == 0 ? 0 : errno;
  ::close(fd);
  if (result != 0 && error != EOPNOTSUPP && error != ENOSYS) {
    throw IoError("Cannot reserve " + std::to_string(bytes) + " bytes for the step file: " + std::strerror(error),
                  ErrorContext{path, {}, std::nullopt, std::nullopt});
  }
}

// Writes a YAML text dataset with a checksum attribute. HDF5 checksums its
// metadata but not raw data, so without one a damaged byte would change the text silently.
void write_checked_text(hid_t parent, const std::string& name, const std::string& text, hid_t transfer,
                        bool is_writer, const std::string& path) {
  h5::write_text_dataset(parent, name, text, transfer, is_writer, path);
  h5::Handle dataset = h5::dataset_handle(
      h5::check_id(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), "H5Dopen2", path + " dataset '" + name + "'"));
  h5::write_attribute(dataset.get(), layout::kAttrChecksum, text_checksum(text));
}

h5::Handle file_selection(hid_t dataset, const Transfer* transfer, const std::string& subject) {
  h5::Handle space = h5::space_handle(h5::check_id(H5Dget_space(dataset), "H5Dget_space", subject));
  if (transfer == nullptr) {
    h5::check_status(H5Sselect_none(space.get()), "H5Sselect_none", subject);
    return space;
  }
  if (transfer->boxes.size() == 1 && transfer->boxes[0].offsets.empty()) {
    h5::check_status(H5Sselect_all(space.get()), "H5Sselect_all", subject);  // 0-d dataset
    return space;
  }
  bool first = true;
  for (const Box& box : transfer->boxes) {
    std::vector<hsize_t> start(box.offsets.begin(), box.offsets.end());
    std::vector<hsize_t> count(box.sizes.begin(), box.sizes.end());
    h5::check_status(H5Sselect_hyperslab(space.get(), first ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(),
                                         nullptr, count.data(), nullptr),
                     "H5Sselect_hyperslab", subject);
    first = false;
  }
  return space;
}

h5::Handle memory_selection(const Transfer* transfer, bool scalar, const std::string& subject) {
  if (scalar) {
    h5::Handle space = h5::space_handle(h5::check_id(H5Screate(H5S_SCALAR), "H5Screate", subject));
    if (transfer == nullptr) h5::check_status(H5Sselect_none(space.get()), "H5Sselect_none", subject);
    return space;
  }
  hsize_t count = transfer == nullptr ? 1 : static_cast<hsize_t>(transfer->count);
  h5::Handle space = h5::space_handle(h5::check_id(H5Screate_simple(1, &count, nullptr), "H5Screate_simple", subject));
  if (transfer == nullptr) h5::check_status(H5Sselect_none(space.get()), "H5Sselect_none", subject);
  return space;
}

void count_transfer_mode(hid_t dxpl) {
  H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
  if (H5Pget_mpio_actual_io_mode(dxpl, &mode) < 0) return;
  if (mode == H5D_MPIO_NO_COLLECTIVE) {
    ++g_independent_transfers;
  } else {
    ++g_collective_transfers;
  }
}

// A transfer with its contiguous runs in the dataset.
struct PlannedTransfer {
  Transfer transfer;
  std::vector<std::pair<int64_t, int64_t>> runs;  // (first element, element count), in data order
};

class StepWriter {
 public:
  StepWriter(const Communicator& comm, const std::string& root, const SaveJob& job, const WriterSettings& settings)
      : comm_(comm), root_(root), job_(job), settings_(settings) {
    final_path_ = root_ + "/" + step_file_name(job_.step);
  }

  void run() {
    trace(phase::kPlan);
    plan_ = agreed_plan();

    try {
      prepare_temporary();
      trace(phase::kCreate);
      run_agreed(comm_, [&] { open_file(); });
      run_agreed(comm_, [&] { with_free_space([&] { reserve_space(); }); });
      run_agreed(comm_, [&] { create_objects(); });
      trace(phase::kWrite);
      run_agreed(comm_, [&] { with_free_space([&] { write_data(); }); });
      // Each rank summed its bytes as it wrote them, so no separate pass reads them.
      comm_.allreduce_sum(checksums_);
      run_agreed(comm_, [&] { write_checksums(); });
      trace(phase::kClose);
      run_agreed(comm_, [&] { with_free_space([&] { flush_and_close(); }); });
      run_agreed(comm_, [&] { publish(); });
    } catch (...) {
      discard_temporary();
      throw;
    }
    trace(phase::kCommitted);
  }

 private:
  void trace(const char* name) const { trace_phase(name, comm_.rank(), job_.step, job_.group, job_.name); }

  ErrorContext context(const std::string& key = {}) const {
    return ErrorContext{final_path_, key, job_.step, comm_.rank()};
  }

  // Reuses the previous plan of this save name when no rank's views changed
  // (one allreduce instead of an allgather of every rank's keys).
  Plan agreed_plan() {
    PlanCache* cache = job_.plan_cache.get();
    uint64_t fingerprint = plan_fingerprint(job_.views);
    int64_t unchanged = cache != nullptr && cache->valid && cache->fingerprint == fingerprint ? 1 : 0;
    if (comm_.allreduce_min(unchanged) == 1) return cache->plan;

    if (cache != nullptr) cache->valid = false;
    Plan plan = exchange_plan(comm_, job_.views, PlanUse::kSave);
    if (cache != nullptr) *cache = PlanCache{true, fingerprint, plan};
    return plan;
  }

  // Runs work; an IoError gets the free space of the file system added, since
  // a full disk is the usual cause of a failed write or flush.
  template <typename Work>
  void with_free_space(Work&& work) {
    try {
      work();
    } catch (const IoError& error) {
      ErrorContext context = error.context();
      if (context.file.empty()) context.file = final_path_;
      context.step = job_.step;
      throw IoError(error.problem() + "; " + std::to_string(free_bytes(root_)) + " bytes are free on the file system of " +
                        root_,
                    context, "Free space or choose another directory; the step was not committed");
    }
  }

  // Rank 0 picks the temporary name and, when extending, copies the committed file there.
  void prepare_temporary() {
    std::string token;
    if (comm_.rank() == 0) token = std::to_string(std::random_device{}()) + std::to_string(std::random_device{}());
    token = comm_.broadcast(token);
    temporary_path_ = temporary_step_path(root_, job_.step, token);

    // An earlier save of this step that failed left no file to extend.
    extend_ = job_.extend_existing && comm_.rank() == 0 && std::filesystem::exists(final_path_);
    extend_ = comm_.broadcast(static_cast<int64_t>(extend_)) != 0;
    run_agreed(comm_, [&] {
      if (comm_.rank() != 0 || !extend_) return;
      trace(phase::kCopy);
      if (settings_.direct_io) {
        copy_file_directly(final_path_, temporary_path_);
      } else {
        copy_file(final_path_, temporary_path_);
      }
    });
  }

  // Rank 0 grows the nearly empty file to its expected size before any
  // dataset exists. A full disk then fails while every rank agrees, instead of
  // inside HDF5's collective writes and close, where one rank's failed flush
  // leaves the others waiting in a barrier and a failed H5Fclose leaks the file.
  void reserve_space() {
    if (comm_.rank() != 0) return;
    reserve_file_space(temporary_path_, expected_file_bytes());
  }

  // NOTE: an estimate: the copied file's bytes when extending, 64 KiB plus
  // 4 KiB per key for metadata, then every dataset's bytes, aligned as the file
  // aligns them. A save that outgrows it can still fail inside HDF5.
  uint64_t expected_file_bytes() const {
    uint64_t total = extend_ ? std::filesystem::file_size(temporary_path_) : 0;
    total += (uint64_t{64} << 10) + (uint64_t{4} << 10) * plan_.keys.size();
    for (const PlannedKey& planned : plan_.keys) {
      auto bytes = static_cast<uint64_t>(element_count(planned.shape)) * c10::elementSize(planned.dtype);
      if (bytes >= settings_.alignment_threshold && settings_.alignment > 1) {
        total = (total + settings_.alignment - 1) / settings_.alignment * settings_.alignment;
      }
      total += bytes;
    }
    return total;
  }

  void open_file() {
    FileSettings file_settings{settings_.alignment, settings_.alignment_threshold};
    if (extend_) {
      file_ = open_parallel_file(temporary_path_, comm_, true);
    } else {
      file_ = create_parallel_file(temporary_path_, comm_, file_settings);
    }
    transfer_ = collective_transfer();
  }

  void create_objects() {
    hid_t file = file_.get();
    if (!extend_) write_root();

    h5::Handle kind = h5::open_group(file, job_.group, temporary_path_);
    if (h5::link_exists(kind.get(), job_.name)) {
      throw InvalidArgumentError("The step file already holds " + job_.group + " '" + job_.name + "'", context(),
                                 "Save each name at most once per step");
    }
    h5::Handle entry = h5::create_group(kind.get(), job_.name, temporary_path_);
    write_checked_text(entry.get(), job_.config_name, job_.config_text, transfer_.get(), comm_.rank() == 0,
                       temporary_path_);
    h5::Handle states = h5::create_group(entry.get(), layout::kStates, temporary_path_);

    h5::Handle dcpl = tensor_dataset_creation();
    std::set<std::string> parameter_groups;
    datasets_.clear();
    for (size_t k = 0; k < plan_.keys.size(); ++k) {
      const PlannedKey& planned = plan_.keys[k];
      std::vector<std::string> path = link_path(job_.group, planned.key);
      hid_t parent = states.get();
      h5::Handle parameter;
      if (path.size() == 2) {
        parameter = parameter_groups.insert(path[0]).second ? h5::create_group(states.get(), path[0], temporary_path_)
                                                            : h5::open_group(states.get(), path[0], temporary_path_);
        parent = parameter.get();
      }
      datasets_.push_back(create_dataset(parent, path.back(), k, dcpl.get()));
    }
  }

  void write_root() {
    hid_t file = file_.get();
    h5::write_attribute(file, layout::kAttrFormat, std::string(layout::kFormatName));
    h5::write_attribute(file, layout::kAttrFormatVersion,
                        std::to_string(kFormatVersionMajor) + "." + std::to_string(kFormatVersionMinor));
    h5::write_attribute(file, layout::kAttrStep, job_.step);
    h5::write_attribute(file, layout::kAttrWorldSize, static_cast<int64_t>(comm_.size()));
    h5::write_attribute(file, layout::kAttrCreated, iso8601_now());
    h5::write_attribute(file, layout::kAttrLibraryVersion, std::string(kLibraryVersion));
    h5::write_attribute(file, layout::kAttrTaskId, job_.task_id);
    h5::write_attribute(file, layout::kAttrChecksumAlgorithm, std::string(layout::kChecksumAlgorithm));
    write_checked_text(file, layout::kConfig, job_.training_config, transfer_.get(), comm_.rank() == 0,
                       temporary_path_);
    h5::create_group(file, layout::kModels, temporary_path_);
    h5::create_group(file, layout::kOptimizers, temporary_path_);
  }

  h5::Handle create_dataset(hid_t parent, const std::string& link_name, size_t k, hid_t dcpl) {
    const PlannedKey& planned = plan_.keys[k];
    std::string subject = temporary_path_ + " dataset '" + planned.key + "'";
    h5::Handle type = hdf5_type(planned.dtype);
    h5::Handle space;
    if (planned.shape.empty()) {
      space = h5::space_handle(h5::check_id(H5Screate(H5S_SCALAR), "H5Screate", subject));
    } else {
      std::vector<hsize_t> dims(planned.shape.begin(), planned.shape.end());
      space = h5::space_handle(h5::check_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                                            "H5Screate_simple", subject));
    }
    h5::Handle dataset = h5::dataset_handle(h5::check_id(
        H5Dcreate2(parent, link_name.c_str(), type.get(), space.get(), H5P_DEFAULT, dcpl, H5P_DEFAULT), "H5Dcreate2",
        subject));

    h5::write_attribute(dataset.get(), layout::kAttrKey, planned.key);
    h5::write_attribute(dataset.get(), layout::kAttrTorchDtype, dtype_name(planned.dtype));
    if (job_.source_dtypes[k] && *job_.source_dtypes[k] != planned.dtype) {
      h5::write_attribute(dataset.get(), layout::kAttrSourceDtype, dtype_name(*job_.source_dtypes[k]));
    }
    return dataset;
  }

  // The file offset of each dataset's data when this rank may write it
  // itself: direct transfers are on, the dataset is contiguous and at least
  // alignment_threshold bytes (so aligned). The
  // result is the same on every rank.
  std::optional<uint64_t> direct_offset(size_t k) const {
    const PlannedKey& planned = plan_.keys[k];
    auto bytes = static_cast<uint64_t>(element_count(planned.shape)) * c10::elementSize(planned.dtype);
    if (!settings_.direct_io || planned.shape.empty() || bytes == 0 || bytes < settings_.alignment_threshold) {
      return std::nullopt;
    }
    haddr_t offset = H5Dget_offset(datasets_[k].get());
    if (offset == HADDR_UNDEF) return std::nullopt;
    return static_cast<uint64_t>(offset);
  }

  // Writes each rank's pieces: contiguous pieces of large datasets with
  // DirectFile, the rest with collective HDF5 calls. Every rank makes the same
  // number of collective calls per key, joining extra rounds with an empty
  // selection. A failed direct write is rethrown after those calls, so no
  // rank is left waiting.
  void write_data() {
    std::unique_ptr<DirectFile> direct_file;
    std::exception_ptr direct_error;
    checksums_.assign(plan_.keys.size(), 0);
    for (size_t k = 0; k < plan_.keys.size(); ++k) {
      const PlannedKey& planned = plan_.keys[k];
      if (!planned.sharded) check_staged_share(plan_, job_, k, comm_.rank());
      auto element_size = static_cast<int64_t>(c10::elementSize(planned.dtype));
      int64_t max_elements = std::max<int64_t>(1, settings_.max_bytes_per_call / element_size);
      std::optional<uint64_t> offset = direct_offset(k);
      size_t rounds = 0;
      std::vector<PlannedTransfer> mine;    // through HDF5
      std::vector<PlannedTransfer> direct;  // written here
      for (int r = 0; r < comm_.size(); ++r) {
        std::vector<Transfer> transfers = transfers_for(plan_, k, r, PlanUse::kSave, max_elements);
        size_t through_hdf5 = 0;
        for (Transfer& transfer : transfers) {
          std::vector<std::pair<int64_t, int64_t>> runs;
          if (offset || r == comm_.rank()) runs = transfer_runs(planned.shape, transfer);
          bool directly = offset && worth_moving_directly(runs, transfer.count, element_size);
          if (!directly) ++through_hdf5;
          if (r == comm_.rank()) {
            (directly ? direct : mine).push_back(PlannedTransfer{transfer, std::move(runs)});
          }
        }
        rounds = std::max(rounds, through_hdf5);
      }

      int64_t first = planned.sharded ? 0 : full_offset(job_, k);
      for (const auto& [transfer, runs] : direct) {
        if (direct_error) break;
        if (settings_.pause_point) settings_.pause_point();
        try {
          if (!direct_file) direct_file = std::make_unique<DirectFile>(temporary_path_, DirectFile::Mode::kWrite);
          const char* data = data_pointer(job_.pieces[k][transfer.piece], transfer.data_offset - first);
          for (const auto& [flat_begin, count] : runs) {
            auto tensor_offset = static_cast<uint64_t>(flat_begin * element_size);
            direct_file->write(*offset + tensor_offset, data, static_cast<uint64_t>(count * element_size),
                               [&](const char* bytes, uint64_t index, uint64_t length) {
                                 checksums_[k] += checksum_piece(bytes, tensor_offset + index, length);
                               });
            data += count * element_size;
          }
          ++g_direct_transfers;
        } catch (...) {
          direct_error = std::current_exception();
        }
      }

      std::string subject = temporary_path_ + " dataset '" + planned.key + "'";
      h5::Handle type = hdf5_type(planned.dtype);
      bool scalar = planned.shape.empty();
      for (size_t round = 0; round < rounds; ++round) {
        const Transfer* transfer = round < mine.size() ? &mine[round].transfer : nullptr;
        if (settings_.pause_point) settings_.pause_point();
        h5::Handle file_space = file_selection(datasets_[k].get(), transfer, subject);
        h5::Handle memory_space = memory_selection(transfer, scalar, subject);
        static const char empty = 0;
        const void* buffer = &empty;
        if (transfer != nullptr) {
          buffer = data_pointer(job_.pieces[k][transfer->piece], transfer->data_offset - first);
          const char* data = static_cast<const char*>(buffer);
          for (const auto& [flat_begin, count] : mine[round].runs) {
            checksums_[k] += checksum_piece(data, static_cast<uint64_t>(flat_begin * element_size),
                                            static_cast<uint64_t>(count * element_size));
            data += count * element_size;
          }
        }
        h5::check_status(
            H5Dwrite(datasets_[k].get(), type.get(), memory_space.get(), file_space.get(), transfer_.get(), buffer),
            "H5Dwrite", subject);
        count_transfer_mode(transfer_.get());
      }
    }
    if (direct_error) std::rethrow_exception(direct_error);
    if (direct_file) direct_file->sync();
  }

  // Collective: every rank writes the same attributes.
  void write_checksums() {
    for (size_t k = 0; k < plan_.keys.size(); ++k) {
      const PlannedKey& planned = plan_.keys[k];
      auto total_bytes = static_cast<uint64_t>(element_count(planned.shape)) * c10::elementSize(planned.dtype);
      h5::write_attribute(datasets_[k].get(), layout::kAttrChecksum, checksum_finish(checksums_[k], total_bytes));
    }
  }

  void flush_and_close() {
    for (auto& dataset : datasets_) dataset.close(temporary_path_);
    datasets_.clear();
    // H5Fclose does not fsync; the global flush syncs every rank's writes.
    h5::check_status(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL), "H5Fflush", temporary_path_);
    transfer_.reset();
    file_.close(temporary_path_);
  }

  void publish() {
    if (comm_.rank() != 0) return;
    trace(phase::kRename);
    // Close may write metadata after the flush, so sync once more before the rename.
    sync_path(temporary_path_);
    rename_durably(temporary_path_, final_path_);
  }

  void discard_temporary() {
    datasets_.clear();
    transfer_.reset();
    file_.reset();
    if (comm_.rank() == 0 && !temporary_path_.empty()) {
      std::error_code ignored;
      std::filesystem::remove(temporary_path_, ignored);
    }
  }

  const Communicator& comm_;
  std::string root_;
  const SaveJob& job_;
  WriterSettings settings_;
  std::string final_path_;
  std::string temporary_path_;
  bool extend_ = false;
  Plan plan_;
  std::vector<uint64_t> checksums_;
  h5::Handle file_;
  h5::Handle transfer_;
  std::vector<h5::Handle> datasets_;
};

}  // namespace

TransferModeCounts transfer_mode_counts() {
  return {g_collective_transfers.load(), g_independent_transfers.load(), g_direct_transfers.load()};
}

void write_step(const Communicator& comm, const std::string& root, const SaveJob& job,
                const WriterSettings& settings) {
  h5::LibraryLock lock(h5::library_mutex());
  StepWriter(comm, root, job, settings).run();
}

}  // namespace persistence::detail
