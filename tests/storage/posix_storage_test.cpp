#include "storage/posix_storage.h"
#include "storage/stage.h"
#include "storage_test_support.h"

#include <persistence/errors.h>

#include <gtest/gtest.h>

#include <filesystem>

namespace persistence::detail {
namespace {

using test::directory_names;
using test::read_file;
using test::ScratchDir;
using test::write_test_file;

TEST(PosixStorage, UploadStatListDownload) {
  ScratchDir scratch;
  PosixStorage storage;
  std::string content = write_test_file(scratch / "local.bin", 100000);

  storage.upload(scratch / "local.bin", scratch / "remote/deep/file.bin");
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "remote/deep/file.bin"), content));

  auto entry = storage.stat(scratch / "remote/deep/file.bin");
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->name, "file.bin");
  EXPECT_EQ(entry->size, content.size());
  EXPECT_FALSE(entry->is_dir);
  EXPECT_FALSE(storage.stat(scratch / "remote/missing").has_value());

  auto entries = storage.list(scratch / "remote");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].name, "deep");
  EXPECT_TRUE(entries[0].is_dir);
  EXPECT_TRUE(storage.list(scratch / "nowhere").empty());

  EXPECT_EQ(storage.download(scratch / "remote/deep/file.bin", scratch / "copy.bin", 0), content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "copy.bin"), content));
}

TEST(PosixStorage, DownloadResumesAtOffset) {
  ScratchDir scratch;
  PosixStorage storage;
  std::string content = write_test_file(scratch / "remote.bin", 5000);
  // A partial copy whose tail is garbage: the bytes from the offset on are replaced.
  test::write_bytes(scratch / "partial.bin", content.substr(0, 3000) + "garbage");
  EXPECT_EQ(storage.download(scratch / "remote.bin", scratch / "partial.bin", 3000), content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "partial.bin"), content));

  EXPECT_THROW(storage.download(scratch / "remote.bin", scratch / "partial.bin", 9000), StorageError);
}

TEST(PosixStorage, RenameFollowsHdfsRules) {
  ScratchDir scratch;
  PosixStorage storage;
  write_test_file(scratch / "a", 10, 1);
  write_test_file(scratch / "b", 20, 2);
  std::filesystem::create_directories(scratch / "dir");

  EXPECT_FALSE(storage.rename(scratch / "a", scratch / "b")) << "an existing file must not be replaced";
  EXPECT_EQ(read_file(scratch / "b").size(), 20u);
  EXPECT_FALSE(storage.rename(scratch / "missing", scratch / "c"));
  EXPECT_TRUE(storage.rename(scratch / "a", scratch / "c"));
  EXPECT_TRUE(storage.rename(scratch / "c", scratch / "dir"));
  EXPECT_EQ(directory_names(scratch / "dir"), std::vector<std::string>{"c"});
}

TEST(PosixStorage, RemoveFilesAndEmptyDirectories) {
  ScratchDir scratch;
  PosixStorage storage;
  write_test_file(scratch / "dir/file", 10);
  EXPECT_THROW(storage.remove(scratch / "dir"), StorageError);
  EXPECT_TRUE(storage.remove(scratch / "dir/file"));
  EXPECT_FALSE(storage.remove(scratch / "dir/file"));
  EXPECT_TRUE(storage.remove(scratch / "dir"));
}

TEST(PosixStage, OutAndInRoundTrip) {
  ScratchDir scratch;
  PosixStorage storage;
  std::string content = write_test_file(scratch / "local/step_000000000007.h5", 200000);

  stage_out(storage, scratch / "local/step_000000000007.h5", scratch / "remote", "step_000000000007.h5",
            test::fast_retry_policy());
  EXPECT_EQ(directory_names(scratch / "remote"), std::vector<std::string>{"step_000000000007.h5"});
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "remote/step_000000000007.h5"), content));
  EXPECT_EQ(list_remote_steps(storage, scratch / "remote"), std::vector<int64_t>{7});

  uint64_t size = stage_in(storage, scratch / "remote/step_000000000007.h5", scratch / "restored/step.h5",
                           std::nullopt, test::fast_retry_policy());
  EXPECT_EQ(size, content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "restored/step.h5"), content));
  EXPECT_EQ(directory_names(scratch / "restored"), std::vector<std::string>{"step.h5"});
}

TEST(PosixStage, OutRejectsExistingStepUnlessReplacing) {
  ScratchDir scratch;
  PosixStorage storage;
  std::string old_content = write_test_file(scratch / "remote/step_000000000001.h5", 100, 1);
  std::string new_content = write_test_file(scratch / "local.h5", 300, 2);

  EXPECT_THROW(stage_out(storage, scratch / "local.h5", scratch / "remote", "step_000000000001.h5",
                         test::fast_retry_policy()),
               IoError);
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "remote/step_000000000001.h5"), old_content));
  EXPECT_EQ(directory_names(scratch / "remote"), std::vector<std::string>{"step_000000000001.h5"});

  stage_out(storage, scratch / "local.h5", scratch / "remote", "step_000000000001.h5", test::fast_retry_policy(),
            /*replace_existing=*/true);
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "remote/step_000000000001.h5"), new_content));
  EXPECT_EQ(directory_names(scratch / "remote"), std::vector<std::string>{"step_000000000001.h5"});
}

TEST(PosixStage, OutOfMissingLocalFileIsNotFound) {
  ScratchDir scratch;
  PosixStorage storage;
  EXPECT_THROW(stage_out(storage, scratch / "missing.h5", scratch / "remote", "step_000000000001.h5",
                         test::fast_retry_policy()),
               NotFoundError);
}

TEST(PosixStage, ListIgnoresTemporariesAndDirectories) {
  ScratchDir scratch;
  PosixStorage storage;
  write_test_file(scratch / "remote/step_000000000020.h5", 1);
  write_test_file(scratch / "remote/step_000000000003.h5", 1);
  write_test_file(scratch / "remote/.step_000000000030.h5.tmp-0123456789abcdef", 1);
  write_test_file(scratch / "remote/step_000000000040.h5/inner", 1);
  write_test_file(scratch / "remote/notes.txt", 1);
  EXPECT_EQ(list_remote_steps(storage, scratch / "remote"), (std::vector<int64_t>{3, 20}));
  EXPECT_TRUE(list_remote_steps(storage, scratch / "nowhere").empty());

  EXPECT_EQ(remove_remote_temporaries(storage, scratch / "remote"), 1);
  EXPECT_EQ(directory_names(scratch / "remote"),
            (std::vector<std::string>{"notes.txt", "step_000000000003.h5", "step_000000000020.h5",
                                      "step_000000000040.h5"}));
}

}  // namespace
}  // namespace persistence::detail
