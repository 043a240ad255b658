#include "storage/hdfs_config.h"
#include "storage/open_storage.h"

#include <persistence/errors.h>

#include <gtest/gtest.h>

#include <cstdlib>

namespace persistence::detail {
namespace {

// Sets environment variables for one test and unsets them afterwards.
class ScopedEnvironment {
 public:
  ScopedEnvironment(std::initializer_list<std::pair<const char*, const char*>> variables) {
    for (const auto& [name, value] : variables) {
      ::setenv(name, value, 1);
      names_.push_back(name);
    }
  }
  ~ScopedEnvironment() {
    for (const char* name : names_) ::unsetenv(name);
  }

 private:
  std::vector<const char*> names_;
};

TEST(HdfsUri, ParsesHostRpcPortAndPath) {
  HdfsUri uri = parse_hdfs_uri("hdfs://nn.example.com:8020/user/alice//run1/");
  EXPECT_EQ(uri.authority, "nn.example.com:8020");
  EXPECT_EQ(uri.host, "nn.example.com");
  ASSERT_TRUE(uri.rpc_port.has_value());
  EXPECT_EQ(*uri.rpc_port, 8020);
  EXPECT_EQ(uri.path, "/user/alice/run1");
}

TEST(HdfsUri, ParsesEmptyAuthority) {
  HdfsUri uri = parse_hdfs_uri("hdfs:///data/./run");
  EXPECT_EQ(uri.authority, "");
  EXPECT_EQ(uri.host, "");
  EXPECT_FALSE(uri.rpc_port.has_value());
  EXPECT_EQ(uri.path, "/data/run");
}

TEST(HdfsUri, ParsesNameserviceAndBracketedHost) {
  HdfsUri nameservice = parse_hdfs_uri("hdfs://mycluster/ckpt");
  EXPECT_EQ(nameservice.host, "mycluster");
  EXPECT_FALSE(nameservice.rpc_port.has_value());
  EXPECT_EQ(nameservice.path, "/ckpt");

  HdfsUri ipv6 = parse_hdfs_uri("hdfs://[::1]:9000/ckpt");
  EXPECT_EQ(ipv6.host, "[::1]");
  ASSERT_TRUE(ipv6.rpc_port.has_value());
  EXPECT_EQ(*ipv6.rpc_port, 9000);

  EXPECT_EQ(parse_hdfs_uri("hdfs://nn").path, "/");
}

TEST(HdfsUri, RejectsInvalidUris) {
  EXPECT_THROW(parse_hdfs_uri("/local/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("webhdfs://nn:9870/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://nn:port/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://nn:70000/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://nn:/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://:8020/dir"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://nn/a/../b"), InvalidArgumentError);
  EXPECT_THROW(parse_hdfs_uri("hdfs://nn/a?op=OPEN"), InvalidArgumentError);
}

TEST(WebHdfsUrls, UseHttpPortInsteadOfRpcPort) {
  HdfsConfig config;
  auto urls = webhdfs_base_urls(parse_hdfs_uri("hdfs://nn:8020/ckpt"), config);
  ASSERT_EQ(urls.size(), 1u);
  EXPECT_EQ(urls[0], "http://nn:9870");
}

TEST(WebHdfsUrls, ComeFromConfiguredAddresses) {
  HdfsConfig config;
  config.webhdfs_addresses = {"nn1", "nn2:50070", "http://nn3:14000/", "https://nn4", "[::1]:9870"};
  auto urls = webhdfs_base_urls(parse_hdfs_uri("hdfs:///ckpt"), config);
  std::vector<std::string> expected = {"http://nn1:9870", "http://nn2:50070", "http://nn3:14000",
                                       "https://nn4:9871", "http://[::1]:9870"};
  EXPECT_EQ(urls, expected);
}

TEST(WebHdfsUrls, EmptyAuthorityNeedsAddress) {
  HdfsConfig config;
  try {
    webhdfs_base_urls(parse_hdfs_uri("hdfs:///ckpt"), config);
    FAIL() << "expected InvalidArgumentError";
  } catch (const InvalidArgumentError& error) {
    EXPECT_NE(std::string(error.what()).find("PERSISTENCE_WEBHDFS_ADDRESS"), std::string::npos) << error.what();
  }
}

TEST(WebHdfsUrls, RejectInvalidAddress) {
  HdfsConfig config;
  config.webhdfs_addresses = {"nn:notaport"};
  EXPECT_THROW(webhdfs_base_urls(parse_hdfs_uri("hdfs:///ckpt"), config), InvalidArgumentError);
  config.webhdfs_addresses = {"http://nn:9870/webhdfs/v1"};
  EXPECT_THROW(webhdfs_base_urls(parse_hdfs_uri("hdfs:///ckpt"), config), InvalidArgumentError);
}

TEST(HdfsConfig, DefaultsWithoutEnvironment) {
  HdfsConfig config = HdfsConfig::from_environment();
  EXPECT_EQ(config.backend, HdfsBackend::kWebHdfs);
  EXPECT_TRUE(config.webhdfs_addresses.empty());
  EXPECT_FALSE(config.kerberos);
  EXPECT_TRUE(config.csrf_header);
  EXPECT_EQ(config.cli_command, "hdfs");
}

TEST(HdfsConfig, ReadsEveryVariable) {
  ScopedEnvironment environment({{"PERSISTENCE_HDFS_BACKEND", "cli"},
                                 {"PERSISTENCE_WEBHDFS_ADDRESS", "nn1:9870, nn2:9870"},
                                 {"PERSISTENCE_HDFS_USER", "alice"},
                                 {"HADOOP_USER_NAME", "bob"},
                                 {"PERSISTENCE_HDFS_DELEGATION_TOKEN", "token123"},
                                 {"PERSISTENCE_HDFS_KERBEROS", "yes"},
                                 {"PERSISTENCE_HDFS_CSRF_HEADER", "off"},
                                 {"PERSISTENCE_HDFS_COMMAND", "/opt/hadoop/bin/hdfs"},
                                 {"PERSISTENCE_HDFS_CONNECT_TIMEOUT", "2.5"},
                                 {"PERSISTENCE_HDFS_REQUEST_TIMEOUT", "7"},
                                 {"PERSISTENCE_HDFS_STALL_TIMEOUT", "11"},
                                 {"PERSISTENCE_HDFS_COMMAND_TIMEOUT", "600"},
                                 {"PERSISTENCE_HDFS_RETRY_ATTEMPTS", "3"},
                                 {"PERSISTENCE_HDFS_RETRY_MAX_ELAPSED", "90"}});
  HdfsConfig config = HdfsConfig::from_environment();
  EXPECT_EQ(config.backend, HdfsBackend::kCli);
  EXPECT_EQ(config.webhdfs_addresses, (std::vector<std::string>{"nn1:9870", "nn2:9870"}));
  EXPECT_EQ(config.user, "alice");
  EXPECT_EQ(config.delegation_token, "token123");
  EXPECT_TRUE(config.kerberos);
  EXPECT_FALSE(config.csrf_header);
  EXPECT_EQ(config.cli_command, "/opt/hadoop/bin/hdfs");
  EXPECT_EQ(config.connect_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(config.request_timeout, std::chrono::seconds(7));
  EXPECT_EQ(config.stall_timeout, std::chrono::seconds(11));
  EXPECT_EQ(config.command_timeout, std::chrono::seconds(600));
  EXPECT_EQ(config.retry.max_attempts, 3);
  EXPECT_EQ(config.retry.max_elapsed, std::chrono::seconds(90));
}

TEST(HdfsConfig, FallsBackToHadoopUserName) {
  ScopedEnvironment environment({{"HADOOP_USER_NAME", "bob"}});
  EXPECT_EQ(HdfsConfig::from_environment().user, "bob");
}

TEST(HdfsConfig, RejectsInvalidValuesNamingVariable) {
  const std::pair<const char*, const char*> cases[] = {{"PERSISTENCE_HDFS_BACKEND", "libhdfs"},
                                                       {"PERSISTENCE_HDFS_KERBEROS", "maybe"},
                                                       {"PERSISTENCE_HDFS_STALL_TIMEOUT", "-1"},
                                                       {"PERSISTENCE_HDFS_REQUEST_TIMEOUT", "10s"},
                                                       {"PERSISTENCE_HDFS_RETRY_ATTEMPTS", "0"},
                                                       {"PERSISTENCE_WEBHDFS_ADDRESS", "nn:99999"}};
  for (const auto& [name, value] : cases) {
    ScopedEnvironment environment({{name, value}});
    try {
      HdfsConfig::from_environment();
      ADD_FAILURE() << name << "=" << value << " was accepted";
    } catch (const InvalidArgumentError& error) {
      if (std::string(name) != "PERSISTENCE_WEBHDFS_ADDRESS") {
        EXPECT_NE(std::string(error.what()).find(name), std::string::npos) << error.what();
      }
    }
  }
}

TEST(OpenStorage, ChoosesBackendByUriAndConfig) {
  HdfsConfig config;
  StorageLocation web = open_storage("hdfs://nn:8020/ckpt/run", config);
  EXPECT_EQ(web.dir, "/ckpt/run");
  EXPECT_EQ(web.storage->describe(), "webhdfs http://nn:9870");

  config.backend = HdfsBackend::kCli;
  StorageLocation cli = open_storage("hdfs://nn:8020/ckpt/run", config);
  EXPECT_EQ(cli.dir, "/ckpt/run");
  EXPECT_EQ(cli.storage->describe(), "hdfs-cli hdfs hdfs://nn:8020");

  StorageLocation local = open_storage("file:///tmp/ckpt/", config);
  EXPECT_EQ(local.dir, "/tmp/ckpt");
  EXPECT_EQ(local.storage->describe(), "posix");

  EXPECT_THROW(open_storage("s3://bucket/ckpt", config), InvalidArgumentError);
}

}  // namespace
}  // namespace persistence::detail
