// Stage-out and stage-in over WebHDFS against the test server, with faults.
#include "storage/stage.h"
#include "storage/webhdfs_storage.h"
#include "storage_test_support.h"

#include <persistence/errors.h>

#include <gtest/gtest.h>

#include <set>

namespace persistence::detail {
namespace {

using nlohmann::json;
using test::directory_names;
using test::read_file;
using test::ScratchDir;
using test::WebHdfsServer;
using test::write_test_file;

constexpr const char* kStepName = "step_000000000042.h5";
constexpr const char* kRemoteDir = "/ckpt/run";
constexpr const char* kFinalPath = "/ckpt/run/step_000000000042.h5";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

bool is_temporary_path(const std::string& path) {
  return path.rfind(std::string(kRemoteDir) + "/." + kStepName + ".tmp-", 0) == 0;
}

// Stage-out over WebHDFS with a local step file of known content.
class StageOut : public ::testing::Test {
 protected:
  void SetUp() override { content_ = write_test_file(scratch_ / kStepName, 700000); }

  void run_stage_out(const HdfsConfig& config) {
    WebHdfsStorage storage({"http://" + server_.namenode_address()}, config);
    stage_out(storage, scratch_ / kStepName, kRemoteDir, kStepName, config.retry);
  }
  void run_stage_out() { run_stage_out(server_.config()); }

  // The remote directory contains exactly the final file, with the local bytes.
  void expect_committed() {
    EXPECT_EQ(directory_names(server_.local_path(kRemoteDir)), std::vector<std::string>{kStepName});
    EXPECT_TRUE(test::same_bytes(read_file(server_.local_path(kFinalPath)), content_));
  }

  // Nothing but directories or temporary files that a later stage-out can collect.
  void expect_no_final_file() {
    for (const auto& name : directory_names(server_.local_path(kRemoteDir))) {
      EXPECT_NE(name, kStepName) << "a failed stage-out left a file under the final name";
    }
  }

  // Datanode CREATE requests never target the final name, and each attempt uses a new name.
  void expect_creates_only_on_temporaries(size_t expected_creates) {
    auto creates = server_.requests("namenode", "CREATE");
    EXPECT_EQ(creates.size(), expected_creates);
    std::set<std::string> names;
    for (const auto& create : creates) {
      std::string path = create["path"];
      EXPECT_TRUE(is_temporary_path(path)) << path;
      EXPECT_NE(path, kFinalPath);
      names.insert(path);
    }
    EXPECT_EQ(names.size(), creates.size()) << "a retry reused a temporary name";
    for (const auto& create : server_.requests("datanode", "CREATE")) EXPECT_NE(create["path"], kFinalPath);
  }

  WebHdfsServer server_;
  ScratchDir scratch_;
  std::string content_;
};

TEST_F(StageOut, UploadsToTemporaryThenRenamesOnce) {
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(1);

  auto renames = server_.requests("namenode", "RENAME");
  ASSERT_EQ(renames.size(), 1u);
  EXPECT_TRUE(is_temporary_path(renames[0]["path"])) << renames[0].dump();
  EXPECT_EQ(renames[0]["query"]["destination"], kFinalPath);
  EXPECT_EQ(renames[0]["path"], server_.requests("namenode", "CREATE")[0]["path"]);
  EXPECT_TRUE(server_.requests("namenode", "DELETE").empty());
}

TEST_F(StageOut, RetriesDroppedUploadUnderNewName) {
  server_.set_faults(json::array({{{"op", "CREATE"}, {"action", "drop_after_bytes"}, {"bytes", 200000}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(2);

  // The partial first upload was removed, lease or not.
  auto deletes = server_.requests("namenode", "DELETE");
  ASSERT_EQ(deletes.size(), 1u);
  EXPECT_EQ(deletes[0]["path"], server_.requests("namenode", "CREATE")[0]["path"]);
}

TEST_F(StageOut, RetriesServerError) {
  server_.set_faults(json::array({{{"op", "CREATE"}, {"action", "error"}, {"status", 500}, {"times", 2}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(3);
}

TEST_F(StageOut, RetriesStandbyException) {
  server_.set_faults(json::array(
      {{{"op", "RENAME"}, {"action", "error"}, {"status", 403}, {"exception", "StandbyException"}, {"times", 2}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(1);
  EXPECT_EQ(server_.requests("namenode", "RENAME").size(), 3u) << "the upload is kept while the rename is retried";
}

TEST_F(StageOut, RetriesAlreadyBeingCreatedUnderNewName) {
  server_.set_faults(json::array({{{"op", "CREATE"},
                                   {"role", "datanode"},
                                   {"action", "error"},
                                   {"status", 403},
                                   {"exception", "AlreadyBeingCreatedException"}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(2);
}

TEST_F(StageOut, RetriesSlowResponse) {
  HdfsConfig config = server_.config();
  config.request_timeout = std::chrono::milliseconds(400);
  server_.set_faults(json::array({{{"op", "GETFILESTATUS"}, {"action", "delay"}, {"seconds", 1.5}}}));
  run_stage_out(config);
  expect_committed();
}

TEST_F(StageOut, ResolvesRenameFalseWhenRenameHappened) {
  server_.set_faults(json::array({{{"op", "RENAME"}, {"action", "rename_false"}, {"perform", true}}}));
  run_stage_out();
  expect_committed();
  EXPECT_EQ(server_.requests("namenode", "RENAME").size(), 1u);
}

TEST_F(StageOut, RetriesRenameFalseWhenRenameDidNotHappen) {
  server_.set_faults(json::array({{{"op", "RENAME"}, {"action", "rename_false"}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(1);
  EXPECT_EQ(server_.requests("namenode", "RENAME").size(), 2u);
}

TEST_F(StageOut, ResolvesLostRenameReply) {
  server_.set_faults(json::array({{{"op", "RENAME"}, {"action", "drop"}, {"perform", true}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(1);
}

TEST_F(StageOut, PermanentErrorFailsAtOnce) {
  server_.set_faults(json::array({{{"op", "CREATE"},
                                   {"action", "error"},
                                   {"status", 403},
                                   {"exception", "AccessControlException"},
                                   {"message", "Permission denied: user=alice, access=WRITE"},
                                   {"times", -1}}}));
  try {
    run_stage_out();
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    std::string message = error.what();
    EXPECT_TRUE(contains(message, "CREATE")) << message;
    EXPECT_TRUE(contains(message, kRemoteDir)) << message;
    EXPECT_TRUE(contains(message, "AccessControlException")) << message;
    EXPECT_TRUE(contains(message, "Permission denied")) << message;
  }
  EXPECT_EQ(server_.requests("namenode", "CREATE").size(), 1u) << "a permanent error must not be retried";
  expect_no_final_file();
}

TEST_F(StageOut, GivesUpAfterMaxAttempts) {
  HdfsConfig config = server_.config();
  config.retry = test::fast_retry_policy(3);
  server_.set_faults(json::array({{{"op", "CREATE"}, {"role", "datanode"}, {"action", "error"}, {"times", -1}}}));
  try {
    run_stage_out(config);
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_TRUE(contains(error.what(), "after 3 attempts")) << error.what();
    EXPECT_TRUE(contains(error.what(), "RuntimeException")) << error.what();
  }
  EXPECT_EQ(server_.requests("namenode", "CREATE").size(), 3u);
  expect_no_final_file();
  EXPECT_TRUE(directory_names(server_.local_path(kRemoteDir)).empty()) << "every temporary file must be removed";
}

TEST_F(StageOut, RetriesUploadWithLostReply) {
  // The first upload is cut after its whole body arrived, so the data is
  // complete but the 201 never comes. The retry must still commit exactly once.
  server_.set_faults(json::array({{{"op", "CREATE"}, {"action", "drop_after_bytes"}, {"bytes", 700000}}}));
  run_stage_out();
  expect_committed();
  expect_creates_only_on_temporaries(2);
  EXPECT_EQ(server_.requests("namenode", "RENAME").size(), 1u);
}

TEST_F(StageOut, RejectsExistingFinalFile) {
  std::string old_content = write_test_file(server_.local_path(kFinalPath), 1234, 9);
  try {
    run_stage_out();
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_TRUE(contains(error.what(), "already exists")) << error.what();
    EXPECT_TRUE(contains(error.what(), kFinalPath)) << error.what();
  }
  EXPECT_TRUE(test::same_bytes(read_file(server_.local_path(kFinalPath)), old_content));
  EXPECT_TRUE(server_.requests("namenode", "CREATE").empty());
}

TEST_F(StageOut, ReplacesExistingFinalFileWhenAsked) {
  write_test_file(server_.local_path(kFinalPath), 1234, 9);
  WebHdfsStorage storage({"http://" + server_.namenode_address()}, server_.config());
  stage_out(storage, scratch_ / kStepName, kRemoteDir, kStepName, test::fast_retry_policy(),
            /*replace_existing=*/true);
  expect_committed();
}

// Stage-in over WebHDFS.
class StageIn : public ::testing::Test {
 protected:
  void SetUp() override { content_ = write_test_file(server_.local_path(kFinalPath), 900000); }

  uint64_t run_stage_in(std::optional<uint64_t> expected_size) {
    WebHdfsStorage storage({"http://" + server_.namenode_address()}, server_.config());
    return stage_in(storage, kFinalPath, scratch_ / "local/step.h5", expected_size, test::fast_retry_policy());
  }

  WebHdfsServer server_;
  ScratchDir scratch_;
  std::string content_;
};

TEST_F(StageIn, DownloadsAndRenames) {
  EXPECT_EQ(run_stage_in(std::nullopt), content_.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch_ / "local/step.h5"), content_));
  EXPECT_EQ(directory_names(scratch_ / "local"), std::vector<std::string>{"step.h5"});
}

TEST_F(StageIn, ResumesAfterDroppedConnection) {
  server_.set_faults(json::array({{{"op", "OPEN"}, {"action", "drop_after_bytes"}, {"bytes", 300000}, {"times", 2}}}));
  EXPECT_EQ(run_stage_in(content_.size()), content_.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch_ / "local/step.h5"), content_));
  EXPECT_EQ(directory_names(scratch_ / "local"), std::vector<std::string>{"step.h5"});

  auto opens = server_.requests("namenode", "OPEN");
  ASSERT_EQ(opens.size(), 3u);
  EXPECT_EQ(opens[0]["query"]["offset"], "0");
  EXPECT_EQ(opens[1]["query"]["offset"], "300000");
  EXPECT_EQ(opens[2]["query"]["offset"], "600000");
}

TEST_F(StageIn, MissingRemoteIsNotFound) {
  WebHdfsStorage storage({"http://" + server_.namenode_address()}, server_.config());
  EXPECT_THROW(stage_in(storage, "/ckpt/run/step_000000000001.h5", scratch_ / "local/x.h5", std::nullopt,
                        test::fast_retry_policy()),
               NotFoundError);
  EXPECT_TRUE(directory_names(scratch_ / "local").empty());
}

TEST_F(StageIn, SizeMismatchIsError) {
  EXPECT_THROW(run_stage_in(content_.size() + 10), IoError);
  EXPECT_THROW(run_stage_in(content_.size() - 10), IoError);
  EXPECT_TRUE(directory_names(scratch_ / "local").empty()) << "a failed stage-in must leave no partial file";
}

TEST_F(StageIn, PermanentErrorLeavesNoPartialFile) {
  server_.set_faults(json::array({{{"op", "OPEN"},
                                   {"role", "datanode"},
                                   {"action", "error"},
                                   {"status", 403},
                                   {"exception", "AccessControlException"},
                                   {"times", -1}}}));
  try {
    run_stage_in(content_.size());
    FAIL() << "expected IoError";
  } catch (const IoError& error) {
    EXPECT_TRUE(contains(error.what(), "OPEN")) << error.what();
    EXPECT_TRUE(contains(error.what(), kFinalPath)) << error.what();
  }
  EXPECT_TRUE(directory_names(scratch_ / "local").empty());
}

TEST(RemoteSteps, ListsCommittedStepsOnly) {
  WebHdfsServer server;
  WebHdfsStorage storage({"http://" + server.namenode_address()}, server.config());
  write_test_file(server.local_path("/steps/step_000000000010.h5"), 1);
  write_test_file(server.local_path("/steps/step_000000000002.h5"), 1);
  write_test_file(server.local_path("/steps/.step_000000000011.h5.tmp-00112233aabbccdd"), 1);
  write_test_file(server.local_path("/steps/step_000000000012.h5/nested"), 1);
  write_test_file(server.local_path("/steps/step_12.h5"), 1);

  EXPECT_EQ(list_remote_steps(storage, "/steps"), (std::vector<int64_t>{2, 10}));
  EXPECT_TRUE(list_remote_steps(storage, "/missing").empty());
  EXPECT_EQ(remove_remote_temporaries(storage, "/steps"), 1);
  EXPECT_EQ(list_remote_steps(storage, "/steps"), (std::vector<int64_t>{2, 10}));
}

}  // namespace
}  // namespace persistence::detail
