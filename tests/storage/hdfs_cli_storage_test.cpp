// The `hdfs dfs` backend against scripts/fake_hdfs.
#include "storage/hdfs_cli_storage.h"
#include "storage/stage.h"
#include "storage_test_support.h"

#include <persistence/errors.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <sstream>

namespace persistence::detail {
namespace {

using test::directory_names;
using test::read_file;
using test::ScratchDir;
using test::write_test_file;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Points scripts/fake_hdfs at a scratch namespace through its environment
// variables, which the storage's child processes inherit.
class HdfsCli : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("FAKE_HDFS_ROOT", (scratch_ / "root").c_str(), 1);
    ::setenv("FAKE_HDFS_LOG", (scratch_ / "invocations.jsonl").c_str(), 1);
    ::setenv("FAKE_HDFS_STATE", (scratch_ / "fault_state.json").c_str(), 1);
    for (const char* name : {"FAKE_HDFS_FAIL", "FAKE_HDFS_FAIL_MESSAGE", "FAKE_HDFS_HANG"}) ::unsetenv(name);
    config_.cli_command = PERSISTENCE_FAKE_HDFS;
    config_.command_timeout = std::chrono::seconds(20);
    config_.retry = test::fast_retry_policy();
  }

  void TearDown() override {
    for (const char* name : {"FAKE_HDFS_ROOT", "FAKE_HDFS_LOG", "FAKE_HDFS_STATE", "FAKE_HDFS_FAIL",
                             "FAKE_HDFS_FAIL_MESSAGE", "FAKE_HDFS_HANG", "FAKE_HDFS_HANG_SECONDS"}) {
      ::unsetenv(name);
    }
  }

  std::string local_path(const std::string& hdfs_path) { return scratch_ / ("root" + hdfs_path); }

  // Each invocation's arguments after "dfs", joined by spaces.
  std::vector<std::string> invocations() {
    std::vector<std::string> lines;
    std::istringstream log(read_file(scratch_ / "invocations.jsonl"));
    std::string line;
    while (std::getline(log, line)) {
      auto entry = nlohmann::json::parse(line);
      std::string joined;
      for (size_t i = 1; i < entry["argv"].size(); ++i) joined += (i > 1 ? " " : "") + entry["argv"][i].get<std::string>();
      lines.push_back(joined);
    }
    return lines;
  }

  ScratchDir scratch_;
  HdfsConfig config_;
};

TEST(HdfsLsParser, ReadsHadoopListing) {
  std::string output =
      "Found 4 items\n"
      "drwxr-xr-x   - alice supergroup          0 2024-03-01 10:15 hdfs://nn:8020/ckpt/run/old\n"
      "-rw-r--r--+  3 alice supergroup  123456789 2024-03-01 10:16 hdfs://nn:8020/ckpt/run/step_000000000001.h5\n"
      "-rw-r--r--   3 alice supergroup          7 2024-03-01 10:17 /ckpt/run/name with spaces.h5\n"
      "lrwxrwxrwx   1 alice supergroup         12 2024-03-01 10:18 /ckpt/run/link\n"
      "WARN util.NativeCodeLoader: Unable to load native-hadoop library\n";
  auto entries = parse_hdfs_ls(output);
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].name, "link");
  EXPECT_EQ(entries[1].name, "name with spaces.h5");
  EXPECT_EQ(entries[1].size, 7u);
  EXPECT_EQ(entries[2].name, "old");
  EXPECT_TRUE(entries[2].is_dir);
  EXPECT_EQ(entries[2].size, 0u);
  EXPECT_EQ(entries[3].name, "step_000000000001.h5");
  EXPECT_EQ(entries[3].size, 123456789u);
  EXPECT_FALSE(entries[3].is_dir);
  EXPECT_TRUE(parse_hdfs_ls("").empty());
}

TEST_F(HdfsCli, RoundTripOfEveryOperation) {
  HdfsCliStorage storage("hdfs://nn:8020", config_);
  std::string content = write_test_file(scratch_ / "local.bin", 50000);

  storage.mkdirs("/ckpt/run");
  storage.upload(scratch_ / "local.bin", "/ckpt/run/file.bin");
  EXPECT_TRUE(test::same_bytes(read_file(local_path("/ckpt/run/file.bin")), content));
  storage.upload(scratch_ / "local.bin", "/ckpt/new/parent/file.bin");
  EXPECT_TRUE(test::same_bytes(read_file(local_path("/ckpt/new/parent/file.bin")), content))
      << "upload creates missing parents";

  auto entry = storage.stat("/ckpt/run/file.bin");
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->name, "file.bin");
  EXPECT_EQ(entry->size, content.size());
  EXPECT_FALSE(storage.stat("/ckpt/run/missing").has_value());

  auto entries = storage.list("/ckpt");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].name, "new");
  EXPECT_EQ(entries[1].name, "run");
  EXPECT_TRUE(entries[1].is_dir);
  EXPECT_TRUE(storage.list("/nowhere").empty());

  EXPECT_EQ(storage.download("/ckpt/run/file.bin", scratch_ / "copy.bin", 0), content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch_ / "copy.bin"), content));

  write_test_file(local_path("/ckpt/run/other.bin"), 10);
  EXPECT_FALSE(storage.rename("/ckpt/run/file.bin", "/ckpt/run/other.bin")) << "an existing destination";
  EXPECT_FALSE(storage.rename("/ckpt/run/missing", "/ckpt/run/x")) << "a missing source";
  EXPECT_TRUE(storage.rename("/ckpt/run/file.bin", "/ckpt/run/renamed.bin"));
  EXPECT_TRUE(storage.remove("/ckpt/run/renamed.bin"));
  EXPECT_FALSE(storage.remove("/ckpt/run/renamed.bin"));
  EXPECT_TRUE(storage.remove("/ckpt/new/parent/file.bin"));
  EXPECT_TRUE(storage.remove("/ckpt/new/parent")) << "an empty directory";

  for (const auto& line : invocations()) {
    EXPECT_TRUE(contains(line, "hdfs://nn:8020/")) << "every path carries the URI prefix: " << line;
  }
}

TEST_F(HdfsCli, StageOutAndInRoundTrip) {
  HdfsCliStorage storage("hdfs://", config_);
  std::string content = write_test_file(scratch_ / "step_000000000005.h5", 120000);

  stage_out(storage, scratch_ / "step_000000000005.h5", "/ckpt", "step_000000000005.h5", config_.retry);
  EXPECT_EQ(directory_names(local_path("/ckpt")), std::vector<std::string>{"step_000000000005.h5"});
  EXPECT_TRUE(test::same_bytes(read_file(local_path("/ckpt/step_000000000005.h5")), content));
  EXPECT_EQ(list_remote_steps(storage, "/ckpt"), std::vector<int64_t>{5});

  std::vector<std::string> puts;
  std::vector<std::string> moves;
  for (const auto& line : invocations()) {
    if (line.rfind("-put", 0) == 0) puts.push_back(line);
    if (line.rfind("-mv", 0) == 0) moves.push_back(line);
  }
  ASSERT_EQ(puts.size(), 1u);
  EXPECT_TRUE(contains(puts[0], "hdfs:///ckpt/.step_000000000005.h5.tmp-")) << puts[0];
  ASSERT_EQ(moves.size(), 1u);
  EXPECT_TRUE(contains(moves[0], " hdfs:///ckpt/step_000000000005.h5")) << moves[0];

  EXPECT_EQ(stage_in(storage, "/ckpt/step_000000000005.h5", scratch_ / "in/step.h5", std::nullopt, config_.retry),
            content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch_ / "in/step.h5"), content));
}

TEST_F(HdfsCli, StageOutRetriesFailedPut) {
  ::setenv("FAKE_HDFS_FAIL", "put:2", 1);
  HdfsCliStorage storage("hdfs://nn:8020", config_);
  std::string content = write_test_file(scratch_ / "step.h5", 40000);

  stage_out(storage, scratch_ / "step.h5", "/ckpt", "step_000000000009.h5", config_.retry);
  EXPECT_TRUE(test::same_bytes(read_file(local_path("/ckpt/step_000000000009.h5")), content));
  EXPECT_EQ(list_remote_steps(storage, "/ckpt"), std::vector<int64_t>{9});

  // Interrupted -put runs leave hidden ._COPYING_ files, which the cleanup collects.
  EXPECT_EQ(remove_remote_temporaries(storage, "/ckpt"), 2);
  EXPECT_EQ(directory_names(local_path("/ckpt")), std::vector<std::string>{"step_000000000009.h5"});
}

TEST_F(HdfsCli, PermanentErrorFailsAtOnce) {
  ::setenv("FAKE_HDFS_FAIL", "put:5", 1);
  ::setenv("FAKE_HDFS_FAIL_MESSAGE",
           "Permission denied: user=alice, access=WRITE, inode=\"/ckpt\":hdfs:supergroup:drwxr-xr-x", 1);
  HdfsCliStorage storage("hdfs://nn:8020", config_);
  write_test_file(scratch_ / "step.h5", 1000);
  try {
    stage_out(storage, scratch_ / "step.h5", "/ckpt", "step_000000000009.h5", config_.retry);
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_TRUE(contains(error.what(), "-put")) << error.what();
    EXPECT_TRUE(contains(error.what(), "Permission denied")) << error.what();
    EXPECT_TRUE(contains(error.what(), "/ckpt/.step_000000000009.h5.tmp-")) << error.what();
  }
  int puts = 0;
  for (const auto& line : invocations()) puts += line.rfind("-put", 0) == 0;
  EXPECT_EQ(puts, 1) << "a permanent error must not be retried";
  EXPECT_FALSE(storage.stat("/ckpt/step_000000000009.h5").has_value());
}

TEST_F(HdfsCli, HangingCommandTimesOut) {
  ::setenv("FAKE_HDFS_HANG", "ls", 1);
  ::setenv("FAKE_HDFS_HANG_SECONDS", "20", 1);
  config_.command_timeout = std::chrono::milliseconds(500);
  HdfsCliStorage storage("hdfs://nn:8020", config_);

  auto start = std::chrono::steady_clock::now();
  try {
    storage.list("/ckpt");
    FAIL() << "expected StorageError";
  } catch (const StorageError& error) {
    EXPECT_TRUE(error.transient());
    EXPECT_TRUE(contains(error.what(), "timed out")) << error.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(HdfsCli, MissingCommandIsClearError) {
  config_.cli_command = scratch_ / "no-such-hdfs";
  HdfsCliStorage storage("hdfs://nn:8020", config_);
  try {
    storage.list("/ckpt");
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_TRUE(contains(error.what(), "no-such-hdfs")) << error.what();
  }
}

}  // namespace
}  // namespace persistence::detail
