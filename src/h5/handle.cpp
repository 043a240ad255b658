#include "h5/handle.h"

#include <persistence/errors.h>

namespace persistence::detail::h5 {
namespace {

herr_t collect_frame(unsigned depth, const H5E_error2_t* frame, void* data) {
  auto* text = static_cast<std::string*>(data);
  if (depth > 0) *text += "; ";
  *text += frame->func_name ? frame->func_name : "?";
  *text += ": ";
  *text += frame->desc ? frame->desc : "";
  return 0;
}

std::string take_error_stack() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_frame, &text);
  H5Eclear2(H5E_DEFAULT);
  return text;
}

[[noreturn]] void fail(const char* call, const std::string& subject) {
  std::string stack = take_error_stack();
  std::string problem = std::string(call) + " failed on " + subject;
  if (!stack.empty()) problem += " (HDF5 error stack: " + stack + ")";
  throw IoError(problem, {});
}

Handle make_string_type(size_t length, const std::string& subject) {
  Handle type = type_handle(check_id(H5Tcopy(H5T_C_S1), "H5Tcopy", subject));
  if (length == 0) {
    check_status(H5Tset_size(type.get(), H5T_VARIABLE), "H5Tset_size", subject);
  } else {
    check_status(H5Tset_size(type.get(), length), "H5Tset_size", subject);
    check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), "H5Tset_strpad", subject);
  }
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), "H5Tset_cset", subject);
  return type;
}

Handle scalar_space(const std::string& subject) {
  return space_handle(check_id(H5Screate(H5S_SCALAR), "H5Screate", subject));
}

Handle create_attribute(hid_t object, const std::string& name, hid_t type) {
  if (H5Aexists(object, name.c_str()) > 0) {
    check_status(H5Adelete(object, name.c_str()), "H5Adelete", "attribute '" + name + "'");
  }
  Handle space = scalar_space("attribute '" + name + "'");
  return attribute_handle(check_id(H5Acreate2(object, name.c_str(), type, space.get(), H5P_DEFAULT,
                                               H5P_DEFAULT),
                                   "H5Acreate2", "attribute '" + name + "'"));
}

std::optional<Handle> open_attribute(hid_t object, const std::string& name) {
  htri_t exists = H5Aexists(object, name.c_str());
  if (exists <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return std::nullopt;
  }
  return attribute_handle(
      check_id(H5Aopen(object, name.c_str(), H5P_DEFAULT), "H5Aopen", "attribute '" + name + "'"));
}

}  // namespace

std::recursive_mutex& library_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

void silence_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

hid_t check_id(hid_t id, const char* call, const std::string& subject) {
  if (id < 0) fail(call, subject);
  return id;
}

void check_status(herr_t status, const char* call, const std::string& subject) {
  if (status < 0) fail(call, subject);
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    closer_ = other.closer_;
    other.id_ = -1;
  }
  return *this;
}

void Handle::reset() noexcept {
  if (id_ >= 0 && closer_ != nullptr) {
    if (closer_(id_) < 0) H5Eclear2(H5E_DEFAULT);
  }
  id_ = -1;
}

void Handle::close(const std::string& subject) {
  if (id_ < 0) return;
  hid_t id = id_;
  id_ = -1;
  check_status(closer_(id), "close", subject);
}

Handle file_handle(hid_t id) { return Handle(id, H5Fclose); }
Handle group_handle(hid_t id) { return Handle(id, H5Gclose); }
Handle dataset_handle(hid_t id) { return Handle(id, H5Dclose); }
Handle space_handle(hid_t id) { return Handle(id, H5Sclose); }
Handle type_handle(hid_t id) { return Handle(id, H5Tclose); }
Handle plist_handle(hid_t id) { return Handle(id, H5Pclose); }
Handle attribute_handle(hid_t id) { return Handle(id, H5Aclose); }

Handle create_plist(hid_t cls, const std::string& subject) {
  return plist_handle(check_id(H5Pcreate(cls), "H5Pcreate", subject));
}

Handle create_group(hid_t parent, const std::string& name, const std::string& subject) {
  return group_handle(check_id(H5Gcreate2(parent, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                               "H5Gcreate2", subject + " group '" + name + "'"));
}

Handle open_group(hid_t parent, const std::string& name, const std::string& subject) {
  return group_handle(
      check_id(H5Gopen2(parent, name.c_str(), H5P_DEFAULT), "H5Gopen2", subject + " group '" + name + "'"));
}

bool link_exists(hid_t parent, const std::string& name) {
  htri_t exists = H5Lexists(parent, name.c_str(), H5P_DEFAULT);
  if (exists < 0) H5Eclear2(H5E_DEFAULT);
  return exists > 0;
}

std::vector<std::string> child_names(hid_t group, const std::string& subject) {
  // One pass over the links: H5Lget_name_by_idx rebuilds and sorts the link
  // table of a dense group on every call, which made listing quadratic.
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  hsize_t index = 0;
  check_status(H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &index, collect, &names), "H5Literate", subject);
  return names;
}

void write_attribute(hid_t object, const std::string& name, const std::string& value) {
  Handle type = make_string_type(0, "attribute '" + name + "'");
  Handle attribute = create_attribute(object, name, type.get());
  const char* pointer = value.c_str();
  check_status(H5Awrite(attribute.get(), type.get(), &pointer), "H5Awrite", "attribute '" + name + "'");
}

void write_attribute(hid_t object, const std::string& name, int64_t value) {
  Handle attribute = create_attribute(object, name, H5T_STD_I64LE);
  check_status(H5Awrite(attribute.get(), H5T_NATIVE_INT64, &value), "H5Awrite", "attribute '" + name + "'");
}

void write_attribute(hid_t object, const std::string& name, uint64_t value) {
  Handle attribute = create_attribute(object, name, H5T_STD_U64LE);
  check_status(H5Awrite(attribute.get(), H5T_NATIVE_UINT64, &value), "H5Awrite", "attribute '" + name + "'");
}

std::optional<std::string> read_string_attribute(hid_t object, const std::string& name) {
  auto attribute = open_attribute(object, name);
  if (!attribute) return std::nullopt;
  std::string subject = "attribute '" + name + "'";
  Handle file_type = type_handle(check_id(H5Aget_type(attribute->get()), "H5Aget_type", subject));
  if (H5Tget_class(file_type.get()) != H5T_STRING) return std::nullopt;

  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle type = make_string_type(0, subject);
    char* pointer = nullptr;
    check_status(H5Aread(attribute->get(), type.get(), &pointer), "H5Aread", subject);
    std::string value = pointer ? pointer : "";
    Handle space = scalar_space(subject);
    H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, &pointer);
    return value;
  }
  size_t size = H5Tget_size(file_type.get());
  std::string value(size, '\0');
  Handle type = make_string_type(size, subject);
  check_status(H5Aread(attribute->get(), type.get(), value.data()), "H5Aread", subject);
  value.resize(value.find('\0') == std::string::npos ? size : value.find('\0'));
  return value;
}

std::optional<int64_t> read_int_attribute(hid_t object, const std::string& name) {
  auto attribute = open_attribute(object, name);
  if (!attribute) return std::nullopt;
  int64_t value = 0;
  check_status(H5Aread(attribute->get(), H5T_NATIVE_INT64, &value), "H5Aread", "attribute '" + name + "'");
  return value;
}

std::optional<uint64_t> read_uint64_attribute(hid_t object, const std::string& name) {
  auto attribute = open_attribute(object, name);
  if (!attribute) return std::nullopt;
  uint64_t value = 0;
  check_status(H5Aread(attribute->get(), H5T_NATIVE_UINT64, &value), "H5Aread", "attribute '" + name + "'");
  return value;
}

void write_text_dataset(hid_t parent, const std::string& name, const std::string& text,
                        hid_t transfer_plist, bool is_writer, const std::string& subject) {
  // HDF5 cannot make a string type of length 0, so an empty text is stored as one NUL byte.
  Handle type = make_string_type(std::max<size_t>(text.size(), 1), subject);
  Handle space = scalar_space(subject);
  Handle dataset = dataset_handle(check_id(
      H5Dcreate2(parent, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      "H5Dcreate2", subject));

  // Every rank joins the collective write; only the writer selects the element.
  Handle selection = scalar_space(subject);
  if (!is_writer) check_status(H5Sselect_none(selection.get()), "H5Sselect_none", subject);
  std::string buffer = text.empty() ? std::string(1, '\0') : text;
  check_status(H5Dwrite(dataset.get(), type.get(), selection.get(), selection.get(), transfer_plist,
                        is_writer ? buffer.data() : nullptr),
               "H5Dwrite", subject);
  dataset.close(subject);
}

std::string read_text_dataset(hid_t parent, const std::string& name, hid_t transfer_plist,
                              const std::string& subject) {
  Handle dataset = dataset_handle(check_id(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), "H5Dopen2", subject));
  Handle file_type = type_handle(check_id(H5Dget_type(dataset.get()), "H5Dget_type", subject));
  if (H5Tget_class(file_type.get()) != H5T_STRING) {
    throw FormatError("Dataset '" + name + "' is not a string dataset", {}, "");
  }
  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle type = make_string_type(0, subject);
    char* pointer = nullptr;
    check_status(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, transfer_plist, &pointer), "H5Dread",
                 subject);
    std::string value = pointer ? pointer : "";
    Handle space = scalar_space(subject);
    H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, &pointer);
    return value;
  }
  size_t size = H5Tget_size(file_type.get());
  std::string value(size, '\0');
  Handle type = make_string_type(size, subject);
  check_status(H5Dread(dataset.get(), type.get(), H5S_ALL, H5S_ALL, transfer_plist, value.data()), "H5Dread",
               subject);
  size_t end = value.find('\0');
  if (end != std::string::npos) value.resize(end);
  return value;
}

}  // namespace persistence::detail::h5
