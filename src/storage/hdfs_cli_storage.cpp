#include "storage/hdfs_cli_storage.h"

#include "core/logging.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace persistence::detail {
namespace {

namespace fs = std::filesystem;

// Standard error text of causes that a retry cannot fix.
constexpr const char* kPermanentMarkers[] = {
    "No such file or directory", "Permission denied", "AccessControlException", "File exists",
    "FileAlreadyExistsException", "Is a directory", "Not a directory", "ParentNotDirectoryException",
    "QuotaExceededException", "Illegal option", "Unknown command", "Usage:", "InvalidPathException"};

bool mentions(const CommandResult& result, const char* text) {
  return result.error.find(text) != std::string::npos;
}

bool path_missing(const CommandResult& result) { return mentions(result, "No such file or directory"); }

// The last few non-empty lines of standard error, joined. The JVM often
// prints warnings before the line that matters.
std::string error_tail(const std::string& error) {
  std::vector<std::string> lines;
  std::stringstream stream(error);
  std::string line;
  while (std::getline(stream, line)) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  }
  std::string tail;
  size_t first = lines.size() > 3 ? lines.size() - 3 : 0;
  for (size_t i = first; i < lines.size(); ++i) tail += (tail.empty() ? "" : " | ") + lines[i];
  if (tail.size() > 600) tail = tail.substr(tail.size() - 600);
  return tail;
}

// Parses one -ls line; false when the line has another shape.
bool parse_ls_line(const std::string& line, StorageEntry& entry) {
  std::istringstream stream(line);
  std::string permissions, replication, owner, group, size, date, time;
  if (!(stream >> permissions >> replication >> owner >> group >> size >> date >> time)) return false;
  if (permissions.size() < 10 || std::string("-dl").find(permissions[0]) == std::string::npos) return false;
  if (size.empty() || size.find_first_not_of("0123456789") != std::string::npos) return false;

  // The path is the rest of the line and may contain spaces.
  std::string path;
  std::getline(stream, path);
  path.erase(0, path.find_first_not_of(' '));
  if (path.empty()) return false;

  entry.name = storage_base_name(path);
  entry.is_dir = permissions[0] == 'd';
  entry.size = entry.is_dir ? 0 : std::stoull(size);
  return true;
}

}  // namespace

std::vector<StorageEntry> parse_hdfs_ls(const std::string& output) {
  std::vector<StorageEntry> entries;
  std::stringstream stream(output);
  std::string line;
  while (std::getline(stream, line)) {
    StorageEntry entry;
    if (parse_ls_line(line, entry)) entries.push_back(entry);
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return entries;
}

StorageError hdfs_cli_error(const std::string& operation, const std::string& path, const CommandResult& result) {
  ErrorContext context{path, {}, {}, {}};
  std::string command = "hdfs dfs " + operation;
  if (result.timed_out) return StorageError(command + " timed out and was killed", context, /*transient=*/true);
  if (result.signal != 0) {
    return StorageError(command + " was killed by signal " + std::to_string(result.signal), context,
                        /*transient=*/true);
  }

  std::string problem = command + " failed with exit status " + std::to_string(result.exit_code);
  std::string tail = error_tail(result.error);
  if (!tail.empty()) problem += ": " + tail;

  // FsShell exits with -1 (255) on usage errors and 1 when a path operation fails.
  bool permanent = result.exit_code == 255;
  for (const char* marker : kPermanentMarkers) permanent = permanent || mentions(result, marker);
  std::string advice;
  if (mentions(result, "Permission denied") || mentions(result, "AccessControlException")) {
    advice = "Check the HDFS user, the Kerberos ticket and the permissions of the path";
  }
  return StorageError(problem, context, !permanent, advice);
}

HdfsCliStorage::HdfsCliStorage(std::string uri_prefix, HdfsConfig config)
    : uri_prefix_(std::move(uri_prefix)), config_(std::move(config)) {}

std::string HdfsCliStorage::describe() const { return "hdfs-cli " + config_.cli_command + " " + uri_prefix_; }

std::string HdfsCliStorage::uri(const std::string& path) const { return uri_prefix_ + path; }

CommandResult HdfsCliStorage::run(const std::vector<std::string>& arguments) {
  std::vector<std::string> argv{config_.cli_command, "dfs"};
  argv.insert(argv.end(), arguments.begin(), arguments.end());
  CommandResult result = run_command(argv, config_.command_timeout);

  std::string line;
  for (const auto& argument : arguments) line += " " + argument;
  logger().debug("{} dfs{}: exit status {}", config_.cli_command, line, result.exit_code);
  return result;
}

std::vector<StorageEntry> HdfsCliStorage::list(const std::string& dir) {
  CommandResult result = run({"-ls", uri(dir)});
  if (result.exit_code == 0) return parse_hdfs_ls(result.output);
  if (path_missing(result)) return {};
  throw hdfs_cli_error("-ls", dir, result);
}

std::optional<StorageEntry> HdfsCliStorage::stat(const std::string& path) {
  CommandResult result = run({"-ls", "-d", uri(path)});
  if (result.exit_code != 0) {
    if (path_missing(result)) return std::nullopt;
    throw hdfs_cli_error("-ls -d", path, result);
  }
  std::vector<StorageEntry> entries = parse_hdfs_ls(result.output);
  if (entries.size() != 1) {
    throw StorageError("hdfs dfs -ls -d printed " + std::to_string(entries.size()) + " entries instead of one",
                       ErrorContext{path, {}, {}, {}}, /*transient=*/false);
  }
  entries[0].name = storage_base_name(path);
  return entries[0];
}

void HdfsCliStorage::mkdirs(const std::string& dir) {
  CommandResult result = run({"-mkdir", "-p", uri(dir)});
  if (result.exit_code != 0) throw hdfs_cli_error("-mkdir -p", dir, result);
}

void HdfsCliStorage::upload(const std::string& local_file, const std::string& remote_path) {
  CommandResult result = run({"-put", "-f", local_file, uri(remote_path)});
  if (result.exit_code != 0 && path_missing(result) && fs::exists(local_file)) {
    // -put does not create missing parent directories.
    std::string parent = remote_path.substr(0, remote_path.rfind('/'));
    mkdirs(parent.empty() ? "/" : parent);
    result = run({"-put", "-f", local_file, uri(remote_path)});
  }
  if (result.exit_code != 0) throw hdfs_cli_error("-put", remote_path, result);
}

uint64_t HdfsCliStorage::download(const std::string& remote_path, const std::string& local_file, uint64_t offset) {
  // -get refuses to replace a local file, and it cannot start at an offset.
  std::error_code error;
  fs::remove(local_file, error);
  if (error) {
    throw StorageError("Cannot remove the old download target: " + error.message(),
                       ErrorContext{local_file, {}, {}, {}}, /*transient=*/false);
  }
  if (offset > 0) logger().debug("hdfs dfs -get cannot resume at byte {}; fetching {} again", offset, remote_path);

  CommandResult result = run({"-get", uri(remote_path), local_file});
  if (result.exit_code != 0) throw hdfs_cli_error("-get", remote_path, result);
  auto size = fs::file_size(local_file, error);
  if (error) {
    throw StorageError("hdfs dfs -get reported success but left no file: " + error.message(),
                       ErrorContext{local_file, {}, {}, {}}, /*transient=*/true);
  }
  return size;
}

bool HdfsCliStorage::rename(const std::string& from, const std::string& to) {
  CommandResult result = run({"-mv", uri(from), uri(to)});
  if (result.exit_code == 0) return true;
  // The rename/2 cases: a missing source or parent, or an existing target.
  if (path_missing(result) || mentions(result, "File exists")) return false;
  throw hdfs_cli_error("-mv", from, result);
}

bool HdfsCliStorage::remove(const std::string& path) {
  CommandResult result = run({"-rm", "-skipTrash", uri(path)});
  if (result.exit_code == 0) return true;
  if (path_missing(result)) return false;
  if (mentions(result, "Is a directory")) {
    result = run({"-rmdir", uri(path)});
    if (result.exit_code == 0) return true;
    throw hdfs_cli_error("-rmdir", path, result);
  }
  throw hdfs_cli_error("-rm", path, result);
}

}  // namespace persistence::detail
