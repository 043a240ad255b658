#include "storage/storage.h"

#include <utility>

namespace persistence::detail {

StorageError::StorageError(const std::string& problem, ErrorContext context, bool transient, std::string advice,
                           int http_status, std::string remote_exception)
    : IoError(problem, std::move(context), advice),
      transient_(transient),
      http_status_(http_status),
      remote_exception_(std::move(remote_exception)) {}

std::string join_storage_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string storage_base_name(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  size_t slash = trimmed.rfind('/');
  return slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
}

}  // namespace persistence::detail
