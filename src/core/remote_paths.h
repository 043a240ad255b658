// Local paths for hdfs:// save paths.
#pragma once

#include <string>

namespace persistence::detail {

// The default local staging directory of an hdfs:// URI:
// <TMPDIR or /tmp>/persistence-staging/<authority and path, '/' as '_'>.
std::string default_staging_dir(const std::string& uri);

}  // namespace persistence::detail
