// Reversible escaping of state dict keys into HDF5 link names. Keys keep their
// dots so h5dump and h5py show them as written; '%' and '/' become %25 and %2F,
// and a key that is exactly "." or ".." has its dots written as %2E.
#pragma once

#include <string>

namespace persistence::detail {

std::string escape_key(const std::string& key);
std::string unescape_key(const std::string& link_name);

}  // namespace persistence::detail
