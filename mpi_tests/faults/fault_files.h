// File surgery for the fault tests: raw bytes of a step file, the file offset
// of each dataset's raw data, edits of string attributes through the HDF5 C
// API, and a capture of this process's standard error. All functions are
// local: they run on the calling rank only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace persistence::testing {

// Returns the whole content of path; an unreadable file fails the current test.
std::string read_file_bytes(const std::string& path);

// Replaces the content of path with bytes.
void write_file_bytes(const std::string& path, const std::string& bytes);

// Where one contiguous dataset's raw data lies in a file.
struct RawDataRange {
  std::string dataset;  // HDF5 path, e.g. /models/model/states/weight
  uint64_t offset = 0;  // from H5Dget_offset
  uint64_t size = 0;    // from H5Dget_storage_size
};

// Returns the raw data range of every dataset in the file that has one
// (contiguous and allocated), in HDF5 visiting order.
std::vector<RawDataRange> raw_data_ranges(const std::string& path);

// Returns the raw data range of one dataset; a dataset without one fails the current test.
RawDataRange raw_data_range(const std::string& path, const std::string& dataset);

// Rewrites a string attribute of the object at object_path (a group or dataset,
// "/" for the root) as a variable-length UTF-8 string.
void set_string_attribute(const std::string& path, const std::string& object_path, const std::string& name,
                          const std::string& value);

// Creates an HDF5 file that contains one group and no persistence attributes.
void write_foreign_hdf5_file(const std::string& path);

// Redirects file descriptor 2 into a temporary file until text() or the
// destructor restores it, so a test can check what the library logged.
class CapturedStderr {
 public:
  CapturedStderr();
  ~CapturedStderr();

  CapturedStderr(const CapturedStderr&) = delete;
  CapturedStderr& operator=(const CapturedStderr&) = delete;

  // Restores standard error and returns everything written to it meanwhile.
  std::string text();

 private:
  void restore();

  int saved_fd_ = -1;
  std::string path_;
  std::string text_;
};

}  // namespace persistence::testing
