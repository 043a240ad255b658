// RAII handles and checked wrappers for the HDF5 C API. Every HDF5 call in the
// library goes through check_id or check_status, whose errors carry the HDF5
// error stack. HDF5 here is built without thread safety: only one thread per
// process may make these calls at a time.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace persistence::detail::h5 {

// Returns the process-wide lock around HDF5 use. The background I/O thread
// keeps it for a whole save, and readers on other threads for a whole read.
std::recursive_mutex& library_mutex();
using LibraryLock = std::lock_guard<std::recursive_mutex>;

// Turns off HDF5's printing of error stacks; failures are reported through exceptions.
void silence_errors();

// Throws IoError with call, subject and the HDF5 error stack when id is negative.
hid_t check_id(hid_t id, const char* call, const std::string& subject);
void check_status(herr_t status, const char* call, const std::string& subject);

// A move-only owner of one HDF5 identifier, closed with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);

  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept : id_(other.id_), closer_(other.closer_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const noexcept { return id_; }
  bool valid() const noexcept { return id_ >= 0; }

  // Closes the identifier without throwing; used by destructors and error paths.
  void reset() noexcept;

  // Closes the identifier and throws IoError when HDF5 reports a failure.
  void close(const std::string& subject);

 private:
  hid_t id_ = -1;
  Closer closer_ = nullptr;
};

Handle file_handle(hid_t id);
Handle group_handle(hid_t id);
Handle dataset_handle(hid_t id);
Handle space_handle(hid_t id);
Handle type_handle(hid_t id);
Handle plist_handle(hid_t id);
Handle attribute_handle(hid_t id);

// Checked object helpers. subject names the file or object in error messages.
Handle create_plist(hid_t cls, const std::string& subject);
Handle create_group(hid_t parent, const std::string& name, const std::string& subject);
Handle open_group(hid_t parent, const std::string& name, const std::string& subject);
bool link_exists(hid_t parent, const std::string& name);
std::vector<std::string> child_names(hid_t group, const std::string& subject);

// Attributes. Strings are variable-length UTF-8 scalars; every rank of a
// parallel file must write identical values.
void write_attribute(hid_t object, const std::string& name, const std::string& value);
void write_attribute(hid_t object, const std::string& name, int64_t value);
void write_attribute(hid_t object, const std::string& name, uint64_t value);
std::optional<std::string> read_string_attribute(hid_t object, const std::string& name);
std::optional<int64_t> read_int_attribute(hid_t object, const std::string& name);
std::optional<uint64_t> read_uint64_attribute(hid_t object, const std::string& name);

// Text as a fixed-length UTF-8 scalar dataset, because parallel HDF5 1.10
// cannot write variable-length string datasets. Collective on a parallel file:
// every rank calls it; only writer_rank's text is stored.
void write_text_dataset(hid_t parent, const std::string& name, const std::string& text,
                        hid_t transfer_plist, bool is_writer, const std::string& subject);

// Reads a fixed- or variable-length string dataset.
std::string read_text_dataset(hid_t parent, const std::string& name, hid_t transfer_plist,
                              const std::string& subject);

}  // namespace persistence::detail::h5
