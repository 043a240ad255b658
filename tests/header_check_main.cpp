// Run-time half of the public header check. The build has already compiled
// every public header in a translation unit of its own. This program checks
// what a compiler cannot: that the umbrella header persistence.h includes
// every public header, and that version.h agrees with the CMake project version.
//
// Usage: persistence_header_check <include/persistence directory>

#include <persistence/version.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <string>

namespace {

constexpr const char* kUmbrellaHeader = "persistence.h";

// Returns the names of the headers in dir, such as "errors.h".
std::set<std::string> list_public_headers(const std::filesystem::path& dir) {
  std::set<std::string> headers;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().extension() == ".h") {
      headers.insert(entry.path().filename().string());
    }
  }
  return headers;
}

// Returns the names X of every `#include <persistence/X>` line in file.
std::set<std::string> list_persistence_includes(const std::filesystem::path& file) {
  static const std::regex include_line(R"(^\s*#\s*include\s*<persistence/([^>]+)>)");
  std::set<std::string> included;
  std::ifstream in(file);
  std::string line;
  std::smatch match;
  while (std::getline(in, line)) {
    if (std::regex_search(line, match, include_line)) {
      included.insert(match[1].str());
    }
  }
  return included;
}

// Returns the number of public headers that the umbrella header does not include.
int check_umbrella_includes_all(const std::filesystem::path& dir) {
  const auto umbrella = dir / kUmbrellaHeader;
  if (!std::filesystem::is_regular_file(umbrella)) {
    std::cerr << umbrella.string() << ": umbrella header not found\n";
    return 1;
  }

  const auto included = list_persistence_includes(umbrella);
  int failures = 0;
  for (const auto& header : list_public_headers(dir)) {
    if (header != kUmbrellaHeader && !included.contains(header)) {
      std::cerr << umbrella.string() << ": does not include <persistence/" << header
                << ">. Add it, so that the umbrella header offers the whole public API.\n";
      ++failures;
    }
  }
  return failures;
}

// Returns 1 when kLibraryVersion differs from the version in project() of CMakeLists.txt.
int check_library_version() {
  const std::string header_version = persistence::kLibraryVersion;
  const std::string project_version = PERSISTENCE_PROJECT_VERSION;
  if (header_version == project_version) {
    return 0;
  }
  std::cerr << "persistence/version.h: expected kLibraryVersion \"" << project_version
            << "\" as in project() of CMakeLists.txt, but got \"" << header_version
            << "\". Update one of them so the two agree.\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <include/persistence directory>\n";
    return 2;
  }
  const std::filesystem::path dir = argv[1];

  const int failures = check_umbrella_includes_all(dir) + check_library_version();
  if (failures > 0) {
    return 1;
  }
  std::cout << "public headers: " << list_public_headers(dir).size()
            << " headers compile alone, the umbrella header includes them all, "
            << "and version.h matches the project version\n";
  return 0;
}
