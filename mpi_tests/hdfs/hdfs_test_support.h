// Helpers for the HDFS suites: the WebHDFS test server (scripts/webhdfs_server.py)
// run by rank 0, environment settings that the manager reads, request logs,
// and the training states that the save and resume jobs agree on.
//
// Every function marked collective uses MPI_COMM_WORLD and must be called by
// all ranks in the same order.
#pragma once

#include <persistence/manager.h>
#include <persistence/module_states.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace persistence::testing {

// The RPC port written into hdfs:// URIs. Nothing connects to it: WebHDFS
// requests go to the server's HTTP port, and the fake hdfs command ignores
// the authority.
inline constexpr const char* kRpcAuthority = "127.0.0.1:8020";

// Returns "hdfs://127.0.0.1:8020" + path.
std::string hdfs_uri(const std::string& path);

// Sets environment variables on the calling rank and restores their earlier
// values (or unsets them) on destruction.
class ScopedEnvironment {
 public:
  ScopedEnvironment() = default;
  explicit ScopedEnvironment(const std::map<std::string, std::string>& values);
  ~ScopedEnvironment();
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

  void set(const std::string& name, const std::string& value);

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

// The WebHDFS test server, started by rank 0 on 127.0.0.1 with ports that the
// kernel picks, over the backing directory root. Requests go to log (appended
// to). The constructor and destructor are collective. Rank 0 starts the server
// and broadcasts its NameNode address. With set_environment, every rank then
// points PERSISTENCE_WEBHDFS_ADDRESS at it until destruction. The destructor stops the
// server with SIGTERM, then SIGKILL; the server also stops by itself when rank
// 0's process exits or after ten minutes.
//
// The methods other than namenode_address() talk to the server and must be
// called on rank 0 only.
class WebHdfsTestServer {
 public:
  WebHdfsTestServer(const std::string& root, const std::string& log, bool set_environment = true);
  ~WebHdfsTestServer();
  WebHdfsTestServer(const WebHdfsTestServer&) = delete;
  WebHdfsTestServer& operator=(const WebHdfsTestServer&) = delete;

  const std::string& namenode_address() const { return address_; }
  const std::string& root() const { return root_; }

  // The backing file or directory of an HDFS path.
  std::string local_path(const std::string& hdfs_path) const { return root_ + hdfs_path; }

  // Replaces the armed fault rules (a JSON list, see scripts/webhdfs_server.py).
  void set_faults(const nlohmann::json& rules) const;

  // Returns the fault rules that have not fired their full count yet.
  nlohmann::json armed_faults() const;

  // Returns every request logged so far, after waiting until none is in progress.
  std::vector<nlohmann::json> requests() const;

 private:
  std::string control(const std::string& method, const std::string& path, const std::string& body) const;

  std::string root_;
  std::string log_;
  std::string address_;
  ScopedEnvironment environment_;
  pid_t pid_ = -1;
};

// Returns the JSON objects of a file with one object per line; empty when it does not exist.
std::vector<nlohmann::json> read_json_lines(const std::string& path);

// Names in a local directory, sorted; empty when it does not exist.
std::vector<std::string> directory_names(const std::string& dir);

// True for the hidden temporary names that stage-out uploads to:
// ".<final name>.tmp-<16 hex digits>", and the "._COPYING_" files of hdfs dfs -put.
bool is_stage_out_temporary(const std::string& name);

// Returns the bytes of a local file; an empty string when it does not exist.
std::string file_bytes(const std::string& path);

// Removes dir and everything below it on rank 0, then waits for every rank. Collective.
void reset_directory(const std::string& dir);

// The states saved at one step: two models and an optimizer, all different per step.
struct StepStates {
  StateDict model;
  StateDict ema;
  OptimizerStates optimizer;
};

// Returns the states of step; the same on every rank and in every job.
StepStates step_states(int64_t step);

// Saves the states of step without blocking: models "model" and "ema" and
// optimizer "optimizer". Collective.
void save_step(PersistenceManager& manager, int64_t step);

// Checks that resume contains the three names of save_step(step), bitwise
// equal. Loads every tensor on the calling rank.
void expect_step_restored(const ResumeState& resume, int64_t step);

// Checks that no CREATE of a WebHDFS request log names a final step file in remote_dir.
void expect_no_create_on_final_name(const std::vector<nlohmann::json>& requests, const std::string& remote_dir);

// Checks a WebHDFS request log of stage-outs into remote_dir. Each step must
// have exactly one NameNode CREATE, to a hidden temporary name, and exactly
// one RENAME, from that name to the step's final name. No CREATE may name a
// final step file.
void expect_one_commit_per_step(const std::vector<nlohmann::json>& requests, const std::string& remote_dir,
                                const std::vector<int64_t>& steps);

// Checks the same for a log of the fake hdfs command: per step one -put to a
// hidden temporary name and one -mv to the final name, and no -put to a final name.
void expect_one_cli_commit_per_step(const std::vector<nlohmann::json>& invocations, const std::string& remote_dir,
                                    const std::vector<int64_t>& steps);

// Checks that the tensors of a loaded model equal expected, bitwise.
void expect_same_tensors(const StateDict& expected, const TensorDict& actual, const std::string& name, int64_t step);

}  // namespace persistence::testing
