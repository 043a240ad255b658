// Library and file-format versions.
#pragma once

namespace persistence {

inline constexpr const char* kLibraryVersion = "0.1.0";

// A file whose major format version is newer than this one is rejected on open.
inline constexpr int kFormatVersionMajor = 1;
inline constexpr int kFormatVersionMinor = 0;

}  // namespace persistence
