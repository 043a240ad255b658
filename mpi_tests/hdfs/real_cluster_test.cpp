// Save and resume against a real HDFS cluster, named by PERSISTENCE_TEST_HDFS_URI
// (an hdfs:// directory that the test may write to). The cluster's settings come
// from the usual PERSISTENCE_WEBHDFS_ADDRESS and PERSISTENCE_HDFS_* variables.
// Without PERSISTENCE_TEST_HDFS_URI the test is skipped and contacts nothing.

#include "hdfs_test_support.h"
#include "mpi_test_support.h"

#include "storage/hdfs_config.h"
#include "storage/open_storage.h"
#include "storage/stage.h"

#include <persistence/manager.h>

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace persistence::testing {
namespace {

constexpr const char* kUriVariable = "PERSISTENCE_TEST_HDFS_URI";

// Returns a directory name that no earlier run used, the same on every rank.
std::string unique_run_name() {
  unsigned long long token = 0;
  if (world_rank() == 0) token = std::random_device{}() * 0x100000000ULL + std::random_device{}();
  MPI_Bcast(&token, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
  return "persistence-test-" + std::to_string(token);
}

// Removes the files of the test run and its directory; rank 0 only.
void remove_remote_run(const std::string& run_uri) {
  detail::StorageLocation location = detail::open_storage(run_uri, detail::HdfsConfig::from_environment());
  for (const auto& entry : location.storage->list(location.dir)) {
    location.storage->remove(detail::join_storage_path(location.dir, entry.name));
  }
  location.storage->remove(location.dir);
}

TEST(RealCluster, SaveAndResume) {
  const char* base = std::getenv(kUriVariable);
  if (base == nullptr || *base == '\0') {
    GTEST_SKIP() << "Set " << kUriVariable << " to a writable hdfs:// directory, and PERSISTENCE_WEBHDFS_ADDRESS "
                 << "or PERSISTENCE_HDFS_BACKEND=cli as that cluster needs, to run this test";
  }
  const std::string run_uri = std::string(base) + "/" + unique_run_name();
  SharedTempDir local("real-hdfs");

  {
    ManagerOptions options;
    options.registry_dir = local.join("registry");
    options.staging_dir = local.join("staging-save");
    PersistenceManager manager(run_uri, options);
    save_step(manager, 1);
    save_step(manager, 2);
    manager.close();
  }

  if (world_rank() == 0) [&] {
    detail::StorageLocation location = detail::open_storage(run_uri, detail::HdfsConfig::from_environment());
    EXPECT_EQ(detail::list_remote_steps(*location.storage, location.dir), (std::vector<int64_t>{1, 2}))
        << "remote steps in " << run_uri << " on " << where();
    for (const auto& entry : location.storage->list(location.dir)) {
      EXPECT_FALSE(is_stage_out_temporary(entry.name)) << "temporary file " << entry.name << " on " << where();
    }
  }();
  barrier();

  {
    ManagerOptions options;
    options.registry_dir = local.join("registry");
    options.staging_dir = local.join("staging-resume");
    PersistenceManager manager(run_uri, options);
    const auto resume = manager.load_last_step();
    ASSERT_TRUE(resume.has_value()) << "load_last_step() from " << run_uri << " on " << where();
    expect_step_restored(*resume, 2);
    manager.close();
  }

  if (world_rank() == 0) remove_remote_run(run_uri);
  barrier();
}

}  // namespace
}  // namespace persistence::testing
