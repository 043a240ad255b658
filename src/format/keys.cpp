#include "format/keys.h"

#include <persistence/errors.h>

namespace persistence::detail {

std::string escape_key(const std::string& key) {
  if (key == ".") return "%2E";
  if (key == "..") return "%2E%2E";
  std::string escaped;
  escaped.reserve(key.size());
  for (char c : key) {
    if (c == '%') {
      escaped += "%25";
    } else if (c == '/') {
      escaped += "%2F";
    } else {
      escaped.push_back(c);
    }
  }
  return escaped;
}

std::string unescape_key(const std::string& link_name) {
  std::string key;
  key.reserve(link_name.size());
  for (size_t i = 0; i < link_name.size(); ++i) {
    if (link_name[i] != '%') {
      key.push_back(link_name[i]);
      continue;
    }
    if (i + 2 >= link_name.size()) {
      throw FormatError("Link name '" + link_name + "' ends inside an escape sequence", {});
    }
    std::string hex = link_name.substr(i + 1, 2);
    if (hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
      throw FormatError("Link name '" + link_name + "' has an invalid escape sequence '%" + hex + "'", {});
    }
    key.push_back(static_cast<char>(std::stoi(hex, nullptr, 16)));
    i += 2;
  }
  return key;
}

}  // namespace persistence::detail
