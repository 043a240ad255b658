// A file system that fills up during a save. Two ways to make it full: a
// 4 MiB tmpfs that the test mounts (needs CAP_SYS_ADMIN; skipped with the
// reason when mount(2) fails), and a file-size limit (RLIMIT_FSIZE, with
// SIGXFSZ ignored so write(2) fails with EFBIG) that works everywhere. In both
// the save throws an IoError on every rank naming the step file and the free
// space, no temporary file is left behind, and a fresh manager still loads the
// previous step.

#include "fault_files.h"
#include "mpi_test_support.h"

#include <persistence/errors.h>
#include <persistence/manager.h>
#include <persistence/persisted.h>

#include <ATen/ops/full.h>
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kBigElements = int64_t{2} << 20;  // 8 MiB of float32, twice the space the tests leave

StateDict small_states(double value) {
  return {{"weight", at::full({8, 4}, value, at::kFloat)}, {"steps_seen", at::full({}, 11, at::kLong)}};
}

StateDict big_states() { return {{"weight", at::full({kBigElements}, 2.5, at::kFloat)}}; }

SaveModelRequest model_request(int64_t step, const std::string& name, StateDict states, bool blocking = true) {
  return {.step = step, .name = name, .config = YAML::Load("{type: none}"), .states = std::move(states),
          .blocking = blocking};
}

// Lowers the soft file-size limit of this process for its lifetime and
// ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of
// killing the rank.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    active_ = setrlimit(RLIMIT_FSIZE, &lowered) == 0;
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

  bool active() const { return active_; }

 private:
  rlimit saved_{};
  void (*previous_handler_)(int) = SIG_DFL;
  bool active_ = false;
};

// Collective: rank 0 mounts a tmpfs of the given size at dir, and unmounts it
// when the object goes. mounted() and reason() are the same on every rank.
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, uint64_t bytes) : dir_(dir) {
    int error = 0;
    if (world_rank() == 0) {
      fs::create_directories(dir_);
      std::string data = "size=" + std::to_string(bytes) + ",mode=0755";
      if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, data.c_str()) != 0) error = errno;
    }
    MPI_Bcast(&error, 1, MPI_INT, 0, MPI_COMM_WORLD);
    mounted_ = error == 0;
    if (!mounted_) reason_ = "mount -t tmpfs on " + dir_ + " failed: " + std::strerror(error);
  }
  ~TmpfsMount() {
    barrier();
    if (mounted_ && world_rank() == 0) ::umount2(dir_.c_str(), MNT_DETACH);
    barrier();
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string reason_;
};

class FullFileSystem : public ::testing::Test {
 protected:
  ManagerOptions options() const {
    ManagerOptions options;
    options.registry_dir = dir_.join("registry");
    return options;
  }

  // Checks that root contains exactly the step files of steps, and no temporary file.
  void expect_only_steps(const std::string& root, const std::vector<int64_t>& steps, const std::string& after) {
    barrier();
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(root)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    std::vector<std::string> expected;
    for (int64_t step : steps) expected.push_back(step_file_name(step));
    EXPECT_EQ(names, expected) << "files in " << root << " after " << after << " on " << where();
  }

  // Collective: a fresh manager resumes at step with model `name` holding `states`.
  void expect_resume(const std::string& root, int64_t step, const std::string& name, const StateDict& states,
                     const std::string& after) {
    PersistenceManager manager(root, options());
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "no step loads after " << after << ", " << where(step);
    EXPECT_EQ(resume->step, step) << "load_last_step after " << after << ", " << where(step);
    ASSERT_EQ(resume->models.count(name), 1u) << "model '" << name << "' after " << after << ", " << where(step);
    const TensorDict loaded = resume->models.at(name).states.load(at::kCPU);
    for (const auto& [key, value] : states) {
      EXPECT_TRUE(bitwise_equal(std::get<at::Tensor>(value), loaded.at(key)))
          << "data after " << after << ", " << where(key, step);
    }
  }

  SharedTempDir dir_{"disk_full"};
};

TEST_F(FullFileSystem, FileSizeLimitDuringSave) {
  const std::string root = dir_.join("checkpoints");
  const std::string step_2 = root + "/" + step_file_name(2);
  PersistenceManager manager(root, options());
  manager.save_model(model_request(1, "model", small_states(1.0)));

  {
    FileSizeLimit limit(4 << 20);
    ASSERT_TRUE(all_ranks(limit.active())) << "setrlimit(RLIMIT_FSIZE) failed on " << where();
    EXPECT_TRUE(throws_error<IoError>([&] { manager.save_model(model_request(2, "model", big_states())); },
                                      {step_file_name(2), "File too large", "bytes are free", "step 2"}))
        << "a blocking save over the file-size limit, " << where(2);
  }
  expect_only_steps(root, {1}, "a blocking save over the file-size limit");
  expect_resume(root, 1, "model", small_states(1.0), "a blocking save over the file-size limit");

  // A background save reports the failure at the next call, on every rank.
  {
    FileSizeLimit limit(4 << 20);
    manager.save_model(model_request(3, "model", big_states(), false));
    EXPECT_TRUE(throws_error<IoError>([&] { manager.wait(); }, {"model 'model'", step_file_name(3), "File too large", "bytes are free"}))
        << "a background save over the file-size limit, " << where(3);
  }
  expect_only_steps(root, {1}, "a background save over the file-size limit");
  expect_resume(root, 1, "model", small_states(1.0), "a background save over the file-size limit");

  // A later save of the same step fails: the earlier save of that step stays loadable.
  manager.save_model(model_request(4, "model", small_states(4.0)));
  {
    FileSizeLimit limit(4 << 20);
    EXPECT_TRUE(throws_error<IoError>([&] { manager.save_model(model_request(4, "ema", big_states())); },
                                      {step_file_name(4), "File too large", "bytes are free"}))
        << "a second save of step 4 over the file-size limit, " << where(4);
  }
  expect_only_steps(root, {1, 4}, "a failed second save of step 4");
  expect_resume(root, 4, "model", small_states(4.0), "a failed second save of step 4");

  // Without the limit the manager saves again.
  manager.save_model(model_request(5, "model", small_states(5.0)));
  expect_resume(root, 5, "model", small_states(5.0), "a save after the failures");
}

TEST_F(FullFileSystem, TmpfsFillsDuringSave) {
  const std::string root = dir_.join("tmpfs");
  TmpfsMount mount(root, 4 << 20);
  if (!mount.mounted()) GTEST_SKIP() << mount.reason() << "; FileSizeLimitDuringSave covers the full disk";

  {
    PersistenceManager manager(root, options());
    manager.save_model(model_request(1, "model", small_states(1.0)));
    EXPECT_TRUE(throws_error<IoError>([&] { manager.save_model(model_request(2, "model", big_states())); },
                                      {step_file_name(2), "No space left on device", "bytes are free", "step 2"}))
        << "a save that fills a 4 MiB tmpfs, " << where(2);
    expect_only_steps(root, {1}, "a save that fills a 4 MiB tmpfs");
  }
  expect_resume(root, 1, "model", small_states(1.0), "a save that fills a 4 MiB tmpfs");
}

}  // namespace
}  // namespace persistence::testing
