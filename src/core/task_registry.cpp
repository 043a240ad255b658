#include "core/task_registry.h"

#include "io/step_files.h"
#include "storage/hdfs_config.h"
#include "storage/open_storage.h"
#include "storage/retry.h"
#include "storage/stage.h"

#include <persistence/errors.h>

#include <yaml-cpp/yaml.h>

#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace persistence::detail {

namespace {

// A local file under the temporary directory (TMPDIR, else /tmp), removed when
// it goes out of scope; it carries registry records to and from HDFS.
class LocalScratchFile {
 public:
  explicit LocalScratchFile(const std::string& task_id)
      : path_((std::filesystem::temp_directory_path() / (".persistence-task-" + task_id + "-" + random_token() +
                                                          ".yaml"))
                  .string()) {}
  LocalScratchFile(const LocalScratchFile&) = delete;
  LocalScratchFile& operator=(const LocalScratchFile&) = delete;
  ~LocalScratchFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string record_file_name(const std::string& task_id) { return task_id + ".yaml"; }

std::string read_local_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

NotFoundError unknown_task(const std::string& task_id, const std::string& record) {
  return NotFoundError("Task '" + task_id + "' is not in the task registry (looked for '" + record + "')",
                       ErrorContext{record, {}, std::nullopt, std::nullopt},
                       "Check the id, or pass the registry_dir the task used (PERSISTENCE_REGISTRY when it was "
                       "not set in the options)");
}

void record_task_on_hdfs(const std::string& registry_dir, const std::string& task_id, const std::string& text,
                         const HdfsOptions& hdfs) {
  HdfsConfig config = HdfsConfig::resolve(hdfs);
  StorageLocation location = open_storage(registry_dir, config);
  LocalScratchFile local(task_id);
  write_file_atomically(local.path(), text);
  stage_out(*location.storage, local.path(), location.dir, record_file_name(task_id), config.retry,
            /*replace_existing=*/true);
}

// Returns the text of the record on HDFS; throws unknown_task when there is none.
std::string read_record_from_hdfs(const std::string& registry_dir, const std::string& task_id,
                                  const std::string& record, const HdfsOptions& hdfs) {
  HdfsConfig config = HdfsConfig::resolve(hdfs);
  StorageLocation location = open_storage(registry_dir, config);
  std::string remote = join_storage_path(location.dir, record_file_name(task_id));
  auto entry = location.storage->stat(remote);
  if (!entry || entry->is_dir) throw unknown_task(task_id, record);

  LocalScratchFile local(task_id);
  stage_in(*location.storage, remote, local.path(), entry->size, config.retry);
  return read_local_file(local.path());
}

}  // namespace

std::string generate_task_id() {
  std::random_device random;
  uint64_t value = (static_cast<uint64_t>(random()) << 32) ^ random();
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

void check_task_id(const std::string& id) {
  bool valid = !id.empty() && id.size() <= 128 && id != "." && id != ".." &&
               id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
                   std::string::npos;
  if (!valid) {
    throw InvalidArgumentError("Task id '" + id + "' is invalid", {},
                               "Use 1 to 128 characters from letters, digits, '.', '_' and '-'");
  }
}

void record_task(const std::string& registry_dir, const std::string& task_id, const std::string& save_path,
                 int world_size, const HdfsOptions& hdfs) {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char started[32];
  std::strftime(started, sizeof(started), "%Y-%m-%dT%H:%M:%SZ", &utc);

  YAML::Emitter out;
  out << YAML::BeginMap;
  out << YAML::Key << "task_id" << YAML::Value << task_id;
  out << YAML::Key << "save_path" << YAML::Value << save_path;
  out << YAML::Key << "world_size" << YAML::Value << world_size;
  out << YAML::Key << "started" << YAML::Value << started;
  out << YAML::Key << "host" << YAML::Value << host;
  out << YAML::EndMap;

  std::string text = std::string(out.c_str()) + "\n";
  if (is_hdfs_uri(registry_dir)) {
    record_task_on_hdfs(registry_dir, task_id, text, hdfs);
    return;
  }
  make_directories(registry_dir);
  write_file_atomically(registry_dir + "/" + record_file_name(task_id), text);
}

std::string resolve_task(const std::string& registry_dir, const std::string& task_id, const HdfsOptions& hdfs) {
  check_task_id(task_id);
  std::string record = registry_dir + "/" + record_file_name(task_id);
  std::string text;
  if (is_hdfs_uri(registry_dir)) {
    text = read_record_from_hdfs(registry_dir, task_id, record, hdfs);
  } else {
    if (!std::filesystem::exists(record)) throw unknown_task(task_id, record);
    text = read_local_file(record);
  }

  try {
    YAML::Node parsed = YAML::Load(text);
    if (!parsed["save_path"]) throw YAML::Exception(YAML::Mark::null_mark(), "no save_path key");
    return parsed["save_path"].as<std::string>();
  } catch (const YAML::Exception& error) {
    throw FormatError(std::string("Task registry record is unreadable: ") + error.what(),
                      ErrorContext{record, {}, std::nullopt, std::nullopt});
  }
}

}  // namespace persistence::detail
