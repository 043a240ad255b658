#include "fault_files.h"

#include "h5/handle.h"

#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace persistence::testing {
namespace {

namespace h5 = persistence::detail::h5;

h5::Handle open_file(const std::string& path, unsigned flags) {
  h5::Handle fapl = h5::plist_handle(h5::check_id(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate", path));
  h5::check_status(H5Pset_file_locking(fapl.get(), false, true), "H5Pset_file_locking", path);
  return h5::file_handle(h5::check_id(H5Fopen(path.c_str(), flags, fapl.get()), "H5Fopen", path));
}

struct VisitState {
  hid_t file = -1;
  std::vector<RawDataRange>* ranges = nullptr;
};

herr_t visit_object(hid_t, const char* name, const H5O_info_t* info, void* data) {
  if (info->type != H5O_TYPE_DATASET) return 0;
  auto* state = static_cast<VisitState*>(data);
  std::string dataset = std::string("/") + name;
  h5::Handle handle = h5::dataset_handle(h5::check_id(H5Dopen2(state->file, dataset.c_str(), H5P_DEFAULT),
                                                      "H5Dopen2", dataset));
  haddr_t offset = H5Dget_offset(handle.get());
  if (offset == HADDR_UNDEF) return 0;  // compact, chunked or not allocated
  state->ranges->push_back({dataset, static_cast<uint64_t>(offset), H5Dget_storage_size(handle.get())});
  return 0;
}

}  // namespace

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path << " for reading";
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  EXPECT_TRUE(out.good()) << "writing " << bytes.size() << " bytes to " << path << " failed";
}

std::vector<RawDataRange> raw_data_ranges(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_file(path, H5F_ACC_RDONLY);
  std::vector<RawDataRange> ranges;
  VisitState state{file.get(), &ranges};
  h5::check_status(H5Ovisit2(file.get(), H5_INDEX_NAME, H5_ITER_INC, visit_object, &state, H5O_INFO_BASIC),
                   "H5Ovisit2", path);
  return ranges;
}

RawDataRange raw_data_range(const std::string& path, const std::string& dataset) {
  for (const auto& range : raw_data_ranges(path)) {
    if (range.dataset == dataset) return range;
  }
  ADD_FAILURE() << "dataset " << dataset << " of " << path << " has no contiguous raw data";
  return {};
}

void set_string_attribute(const std::string& path, const std::string& object_path, const std::string& name,
                          const std::string& value) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle file = open_file(path, H5F_ACC_RDWR);
  std::string subject = path + " object " + object_path + " attribute '" + name + "'";
  h5::Handle object =
      h5::Handle(h5::check_id(H5Oopen(file.get(), object_path.c_str(), H5P_DEFAULT), "H5Oopen", subject), H5Oclose);
  if (H5Aexists(object.get(), name.c_str()) > 0) {
    h5::check_status(H5Adelete(object.get(), name.c_str()), "H5Adelete", subject);
  }
  h5::Handle type = h5::type_handle(h5::check_id(H5Tcopy(H5T_C_S1), "H5Tcopy", subject));
  h5::check_status(H5Tset_size(type.get(), H5T_VARIABLE), "H5Tset_size", subject);
  h5::check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset", subject);
  h5::Handle space = h5::space_handle(h5::check_id(H5Screate(H5S_SCALAR), "H5Screate", subject));
  h5::Handle attribute = h5::attribute_handle(h5::check_id(
      H5Acreate2(object.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), "H5Acreate2",
      subject));
  const char* pointer = value.c_str();
  h5::check_status(H5Awrite(attribute.get(), type.get(), &pointer), "H5Awrite", subject);
}

void write_foreign_hdf5_file(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::Handle fapl = h5::plist_handle(h5::check_id(H5Pcreate(H5P_FILE_ACCESS), "H5Pcreate", path));
  h5::check_status(H5Pset_file_locking(fapl.get(), false, true), "H5Pset_file_locking", path);
  h5::Handle file = h5::file_handle(
      h5::check_id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), "H5Fcreate", path));
  h5::Handle group = h5::group_handle(
      h5::check_id(H5Gcreate2(file.get(), "models", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "H5Gcreate2", path));
  file.close(path);
}

CapturedStderr::CapturedStderr() {
  char pattern[] = "/tmp/persistence-stderr-XXXXXX";
  int fd = ::mkstemp(pattern);
  if (fd < 0) throw std::runtime_error("mkstemp failed for the standard error capture");
  path_ = pattern;
  std::fflush(stderr);
  saved_fd_ = ::dup(2);
  ::dup2(fd, 2);
  ::close(fd);
}

CapturedStderr::~CapturedStderr() { restore(); }

std::string CapturedStderr::text() {
  restore();
  return text_;
}

void CapturedStderr::restore() {
  if (saved_fd_ < 0) return;
  std::fflush(stderr);
  ::dup2(saved_fd_, 2);
  ::close(saved_fd_);
  saved_fd_ = -1;
  std::ifstream in(path_, std::ios::binary);
  text_ = std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(path_.c_str());
}

}  // namespace persistence::testing
