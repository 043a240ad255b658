#include "storage/webhdfs_storage.h"
#include "storage_test_support.h"

#include <persistence/errors.h>

#include <gtest/gtest.h>

#include <chrono>

namespace persistence::detail {
namespace {

using nlohmann::json;
using test::read_file;
using test::ScratchDir;
using test::WebHdfsServer;
using test::write_test_file;

WebHdfsStorage make_storage(const WebHdfsServer& server) {
  return WebHdfsStorage({"http://" + server.namenode_address()}, server.config());
}

// Runs function, which must throw StorageError, and returns the error.
template <typename Function>
StorageError expect_storage_error(Function&& function) {
  try {
    function();
  } catch (const StorageError& error) {
    return error;
  }
  throw std::runtime_error("expected a StorageError, but nothing was thrown");
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(WebHdfsStorage, RoundTripOfEveryOperation) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  std::string content = write_test_file(scratch / "local.bin", 300000);

  storage.mkdirs("/ckpt/run");
  storage.upload(scratch / "local.bin", "/ckpt/run/a b%.bin");
  EXPECT_TRUE(test::same_bytes(read_file(server.local_path("/ckpt/run/a b%.bin")), content));

  auto entry = storage.stat("/ckpt/run/a b%.bin");
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->name, "a b%.bin");
  EXPECT_EQ(entry->size, content.size());
  EXPECT_FALSE(entry->is_dir);
  EXPECT_FALSE(storage.stat("/ckpt/run/missing").has_value());

  auto entries = storage.list("/ckpt");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].name, "run");
  EXPECT_TRUE(entries[0].is_dir);
  EXPECT_TRUE(storage.list("/nowhere").empty());

  EXPECT_EQ(storage.download("/ckpt/run/a b%.bin", scratch / "copy.bin", 0), content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "copy.bin"), content));

  EXPECT_TRUE(storage.rename("/ckpt/run/a b%.bin", "/ckpt/run/b.bin"));
  EXPECT_FALSE(storage.stat("/ckpt/run/a b%.bin").has_value());
  EXPECT_TRUE(storage.remove("/ckpt/run/b.bin"));
  EXPECT_FALSE(storage.remove("/ckpt/run/b.bin"));
  EXPECT_TRUE(storage.list("/ckpt/run").empty());
}

TEST(WebHdfsStorage, UploadTakesTwoSteps) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  write_test_file(scratch / "local.bin", 2 << 20);
  storage.upload(scratch / "local.bin", "/two/steps.bin");

  auto namenode = server.requests("namenode", "CREATE");
  ASSERT_EQ(namenode.size(), 1u);
  EXPECT_EQ(namenode[0]["status"], 307);
  EXPECT_EQ(namenode[0]["bytes"], 0) << "the NameNode request must carry no data";
  EXPECT_EQ(namenode[0]["query"]["overwrite"], "true");
  EXPECT_EQ(namenode[0]["query"]["user.name"], "alice");
  EXPECT_EQ(namenode[0]["method"], "PUT");

  auto datanode = server.requests("datanode", "CREATE");
  ASSERT_EQ(datanode.size(), 1u);
  EXPECT_EQ(datanode[0]["status"], 201);
  EXPECT_EQ(datanode[0]["bytes"], 2 << 20);
  EXPECT_EQ(datanode[0]["path"], "/two/steps.bin");
  EXPECT_TRUE(datanode[0]["csrf"].get<bool>());
}

TEST(WebHdfsStorage, DownloadFromOffsetAppends) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  std::string content = write_test_file(server.local_path("/data/file.bin"), 100000);
  test::write_bytes(scratch / "partial.bin", content.substr(0, 40000) + "stale tail");

  EXPECT_EQ(storage.download("/data/file.bin", scratch / "partial.bin", 40000), content.size());
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "partial.bin"), content));
  auto opens = server.requests("namenode", "OPEN");
  ASSERT_EQ(opens.size(), 1u);
  EXPECT_EQ(opens[0]["query"]["offset"], "40000");

  EXPECT_EQ(storage.download("/data/file.bin", scratch / "partial.bin", content.size()), content.size());
  EXPECT_THROW(storage.download("/data/file.bin", scratch / "short.bin", 10), StorageError);
}

TEST(WebHdfsStorage, RenameReturnsFalseByHdfsRules) {
  WebHdfsServer server;
  WebHdfsStorage storage = make_storage(server);
  write_test_file(server.local_path("/r/a"), 10, 1);
  write_test_file(server.local_path("/r/b"), 20, 2);
  storage.mkdirs("/r/dir");

  EXPECT_FALSE(storage.rename("/r/a", "/r/b")) << "an existing destination file";
  EXPECT_EQ(read_file(server.local_path("/r/b")).size(), 20u);
  EXPECT_FALSE(storage.rename("/r/missing", "/r/c")) << "a missing source";
  EXPECT_FALSE(storage.rename("/r/a", "/nowhere/c")) << "a missing destination parent";
  EXPECT_TRUE(storage.rename("/r/a", "/r/dir"));
  EXPECT_TRUE(storage.stat("/r/dir/a").has_value()) << "a rename onto a directory moves into it";
}

TEST(WebHdfsStorage, RemoteExceptionNamesOperationAndPath) {
  WebHdfsServer server;
  WebHdfsStorage storage = make_storage(server);
  server.set_faults(json::array({{{"op", "LISTSTATUS"},
                                  {"action", "error"},
                                  {"status", 403},
                                  {"exception", "AccessControlException"},
                                  {"message", "Permission denied: user=alice, access=READ_EXECUTE"}}}));

  StorageError error = expect_storage_error([&] { storage.list("/secret/dir"); });
  std::string message = error.what();
  EXPECT_FALSE(error.transient());
  EXPECT_EQ(error.http_status(), 403);
  EXPECT_EQ(error.remote_exception(), "AccessControlException");
  EXPECT_TRUE(contains(message, "LISTSTATUS")) << message;
  EXPECT_TRUE(contains(message, "/secret/dir")) << message;
  EXPECT_TRUE(contains(message, "Permission denied: user=alice")) << message;
  EXPECT_TRUE(contains(message, "PERSISTENCE_HDFS_USER")) << message;
}

TEST(WebHdfsStorage, ClassifiesTransientErrors) {
  WebHdfsServer server;
  WebHdfsStorage storage = make_storage(server);
  write_test_file(server.local_path("/c/file"), 10);
  server.set_faults(json::array({
      {{"op", "GETFILESTATUS"}, {"action", "error"}, {"status", 500}},
      {{"op", "GETFILESTATUS"}, {"action", "error"}, {"status", 403}, {"exception", "StandbyException"}},
      {{"op", "GETFILESTATUS"}, {"action", "error"}, {"status", 403}, {"exception", "RetriableException"}},
      {{"op", "GETFILESTATUS"}, {"action", "error"}, {"status", 403}, {"exception", "AlreadyBeingCreatedException"}},
      {{"op", "GETFILESTATUS"}, {"action", "error"}, {"status", 400}, {"exception", "IllegalArgumentException"}},
  }));

  for (const char* expected : {"HTTP 500", "StandbyException", "RetriableException", "AlreadyBeingCreatedException"}) {
    StorageError error = expect_storage_error([&] { storage.stat("/c/file"); });
    EXPECT_TRUE(error.transient()) << error.what();
    EXPECT_TRUE(contains(error.what(), expected)) << error.what();
  }
  StorageError bad_request = expect_storage_error([&] { storage.stat("/c/file"); });
  EXPECT_FALSE(bad_request.transient()) << bad_request.what();
  EXPECT_TRUE(storage.stat("/c/file").has_value());
}

TEST(WebHdfsStorage, DroppedConnectionIsTransient) {
  WebHdfsServer server;
  WebHdfsStorage storage = make_storage(server);
  // libcurl resends a request once when a reused connection turns out dead,
  // so the fault stays armed for every attempt.
  server.set_faults(json::array({{{"op", "GETFILESTATUS"}, {"action", "drop"}, {"times", -1}}}));

  StorageError error = expect_storage_error([&] { storage.stat("/d/file"); });
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_EQ(error.http_status(), 0);
  EXPECT_TRUE(contains(error.what(), "WebHDFS GETFILESTATUS failed")) << error.what();
  EXPECT_TRUE(contains(error.what(), "/d/file")) << error.what();
}

TEST(WebHdfsStorage, MissingFileOpenIsPermanent) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  StorageError error = expect_storage_error([&] { storage.download("/no/such/file", scratch / "out", 0); });
  EXPECT_FALSE(error.transient());
  EXPECT_EQ(error.http_status(), 404);
  EXPECT_EQ(error.remote_exception(), "FileNotFoundException");
  EXPECT_TRUE(contains(error.what(), "OPEN")) << error.what();
  EXPECT_TRUE(contains(error.what(), "/no/such/file")) << error.what();
}

TEST(WebHdfsStorage, DroppedUploadIsTransientFailure) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  write_test_file(scratch / "local.bin", 500000);
  server.set_faults(json::array({{{"op", "CREATE"}, {"action", "drop_after_bytes"}, {"bytes", 100000}}}));

  StorageError error = expect_storage_error([&] { storage.upload(scratch / "local.bin", "/up/file.bin"); });
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_TRUE(contains(error.what(), "CREATE")) << error.what();
  // Like HDFS, the server shows the partial file under its name, and keeps it under lease.
  auto entry = storage.stat("/up/file.bin");
  ASSERT_TRUE(entry.has_value());
  EXPECT_EQ(entry->size, 100000u);
  StorageError lease = expect_storage_error([&] { storage.upload(scratch / "local.bin", "/up/file.bin"); });
  EXPECT_EQ(lease.remote_exception(), "AlreadyBeingCreatedException") << lease.what();
}

TEST(WebHdfsStorage, DroppedDownloadKeepsReceivedBytes) {
  WebHdfsServer server;
  ScratchDir scratch;
  WebHdfsStorage storage = make_storage(server);
  std::string content = write_test_file(server.local_path("/down/file.bin"), 400000);
  server.set_faults(json::array({{{"op", "OPEN"}, {"action", "drop_after_bytes"}, {"bytes", 150000}}}));

  StorageError error = expect_storage_error([&] { storage.download("/down/file.bin", scratch / "out.bin", 0); });
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_TRUE(test::same_bytes(read_file(scratch / "out.bin"), content.substr(0, 150000)));
}

TEST(WebHdfsStorage, StalledDownloadTimesOut) {
  WebHdfsServer server;
  ScratchDir scratch;
  HdfsConfig config = server.config();
  config.stall_timeout = std::chrono::seconds(1);
  WebHdfsStorage storage({"http://" + server.namenode_address()}, config);
  write_test_file(server.local_path("/slow/file.bin"), 200000);
  server.set_faults(json::array(
      {{{"op", "OPEN"}, {"action", "stall_after_bytes"}, {"bytes", 1000}, {"seconds", 6}}}));

  auto start = std::chrono::steady_clock::now();
  StorageError error = expect_storage_error([&] { storage.download("/slow/file.bin", scratch / "out.bin", 0); });
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_LT(elapsed, std::chrono::seconds(5)) << "the stall timeout did not cut the transfer";
}

TEST(WebHdfsStorage, SlowMetadataRequestTimesOut) {
  WebHdfsServer server;
  HdfsConfig config = server.config();
  config.request_timeout = std::chrono::milliseconds(300);
  WebHdfsStorage storage({"http://" + server.namenode_address()}, config);
  server.set_faults(json::array({{{"op", "MKDIRS"}, {"action", "delay"}, {"seconds", 2}}}));

  StorageError error = expect_storage_error([&] { storage.mkdirs("/slow"); });
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_TRUE(contains(error.what(), "MKDIRS")) << error.what();
}

TEST(WebHdfsStorage, DelegationTokenAndCsrfHeader) {
  WebHdfsServer server({"--delegation-token", "secret-token", "--require-csrf"});
  ScratchDir scratch;
  std::string content = write_test_file(scratch / "local.bin", 1000);

  HdfsConfig config = server.config();
  config.delegation_token = "secret-token";
  WebHdfsStorage storage({"http://" + server.namenode_address()}, config);
  storage.upload(scratch / "local.bin", "/secure/file.bin");
  EXPECT_TRUE(test::same_bytes(read_file(server.local_path("/secure/file.bin")), content));
  for (const auto& request : server.requests()) {
    EXPECT_EQ(request["query"]["delegation"], "<redacted>") << request.dump();
    EXPECT_FALSE(request["query"].contains("user.name")) << "a token replaces user.name: " << request.dump();
  }

  config.csrf_header = false;
  WebHdfsStorage without_csrf({"http://" + server.namenode_address()}, config);
  StorageError csrf = expect_storage_error([&] { without_csrf.mkdirs("/secure/other"); });
  EXPECT_EQ(csrf.http_status(), 400);
  EXPECT_TRUE(contains(csrf.what(), "CSRF")) << csrf.what();

  config.csrf_header = true;
  config.delegation_token = "wrong-token";
  WebHdfsStorage wrong_token({"http://" + server.namenode_address()}, config);
  StorageError denied = expect_storage_error([&] { wrong_token.list("/secure"); });
  EXPECT_FALSE(denied.transient());
  EXPECT_EQ(denied.http_status(), 403);
  EXPECT_EQ(denied.remote_exception(), "InvalidToken");
}

TEST(WebHdfsStorage, UserNameIsRequiredWhenConfigured) {
  WebHdfsServer server({"--require-user"});
  HdfsConfig config = server.config();
  config.user.clear();
  WebHdfsStorage anonymous({"http://" + server.namenode_address()}, config);
  StorageError error = expect_storage_error([&] { anonymous.mkdirs("/u"); });
  EXPECT_EQ(error.http_status(), 401);
  EXPECT_FALSE(error.transient());

  WebHdfsStorage alice = make_storage(server);
  alice.mkdirs("/u");
  EXPECT_TRUE(alice.stat("/u").has_value());
}

TEST(WebHdfsStorage, FailsOverFromStandbyNameNode) {
  WebHdfsServer server({"--standby"});
  ScratchDir scratch;
  std::string content = write_test_file(scratch / "local.bin", 5000);
  HdfsConfig config = server.config();
  config.webhdfs_addresses = {"127.0.0.1:" + std::to_string(server.standby_port()), server.namenode_address()};
  WebHdfsStorage storage(webhdfs_base_urls(parse_hdfs_uri("hdfs:///x"), config), config);

  storage.upload(scratch / "local.bin", "/ha/file.bin");
  EXPECT_TRUE(test::same_bytes(read_file(server.local_path("/ha/file.bin")), content));
  EXPECT_TRUE(storage.stat("/ha/file.bin").has_value());

  int standby_requests = 0;
  for (const auto& request : server.requests()) standby_requests += request["role"] == "standby";
  EXPECT_EQ(standby_requests, 1) << "after one StandbyException the active NameNode is used first";
}

TEST(WebHdfsStorage, UnreachableNameNodeIsTransient) {
  ScratchDir scratch;
  HdfsConfig config;
  config.connect_timeout = std::chrono::seconds(2);
  // Port 1 on loopback has no listener, so the connection is refused at once.
  WebHdfsStorage storage({"http://127.0.0.1:1"}, config);
  StorageError error = expect_storage_error([&] { storage.stat("/x"); });
  EXPECT_TRUE(error.transient()) << error.what();
  EXPECT_EQ(error.http_status(), 0);
}

}  // namespace
}  // namespace persistence::detail
