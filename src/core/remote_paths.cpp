#include "core/remote_paths.h"

#include "storage/hdfs_config.h"

#include <cctype>
#include <cstdlib>

namespace persistence::detail {

std::string default_staging_dir(const std::string& uri) {
  HdfsUri parsed = parse_hdfs_uri(uri);
  std::string name = parsed.authority + parsed.path;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
  }
  const char* temporary = std::getenv("TMPDIR");
  std::string base = temporary != nullptr && *temporary != '\0' ? temporary : "/tmp";
  return base + "/persistence-staging/" + name;
}

}  // namespace persistence::detail
