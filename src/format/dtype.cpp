#include "format/dtype.h"

#include <persistence/errors.h>

#include <array>
#include <utility>

namespace persistence::detail {
namespace {

constexpr std::array<std::pair<c10::ScalarType, const char*>, 10> kNames = {{
    {c10::ScalarType::Float, "float32"},
    {c10::ScalarType::Double, "float64"},
    {c10::ScalarType::Half, "float16"},
    {c10::ScalarType::BFloat16, "bfloat16"},
    {c10::ScalarType::Char, "int8"},
    {c10::ScalarType::Short, "int16"},
    {c10::ScalarType::Int, "int32"},
    {c10::ScalarType::Long, "int64"},
    {c10::ScalarType::Byte, "uint8"},
    {c10::ScalarType::Bool, "bool"},
}};

// Builds a 16-bit float from a float32 template. The fields must be set while
// the precision is still 32 bits, then precision and size shrink to 16.
h5::Handle custom_half(size_t mantissa_bits, size_t exponent_bits, size_t bias, const char* name) {
  std::string subject = std::string("type ") + name;
  h5::Handle type = h5::type_handle(h5::check_id(H5Tcopy(H5T_IEEE_F32LE), "H5Tcopy", subject));
  h5::check_status(H5Tset_fields(type.get(), 15, mantissa_bits, exponent_bits, 0, mantissa_bits),
                   "H5Tset_fields", subject);
  h5::check_status(H5Tset_offset(type.get(), 0), "H5Tset_offset", subject);
  h5::check_status(H5Tset_precision(type.get(), 16), "H5Tset_precision", subject);
  h5::check_status(H5Tset_size(type.get(), 2), "H5Tset_size", subject);
  h5::check_status(H5Tset_ebias(type.get(), bias), "H5Tset_ebias", subject);
  return type;
}

h5::Handle bool_enum() {
  h5::Handle type = h5::type_handle(h5::check_id(H5Tenum_create(H5T_STD_I8LE), "H5Tenum_create", "type bool"));
  int8_t no = 0;
  int8_t yes = 1;
  h5::check_status(H5Tenum_insert(type.get(), "FALSE", &no), "H5Tenum_insert", "type bool");
  h5::check_status(H5Tenum_insert(type.get(), "TRUE", &yes), "H5Tenum_insert", "type bool");
  return type;
}

h5::Handle copy_of(hid_t predefined, const char* name) {
  return h5::type_handle(h5::check_id(H5Tcopy(predefined), "H5Tcopy", std::string("type ") + name));
}

}  // namespace

bool is_supported_dtype(c10::ScalarType dtype) {
  for (const auto& [type, name] : kNames) {
    if (type == dtype) return true;
  }
  return false;
}

std::string dtype_name(c10::ScalarType dtype) {
  for (const auto& [type, name] : kNames) {
    if (type == dtype) return name;
  }
  return c10::toString(dtype);
}

std::optional<c10::ScalarType> dtype_from_name(const std::string& text) {
  for (const auto& [type, name] : kNames) {
    if (text == name) return type;
  }
  return std::nullopt;
}

h5::Handle hdf5_type(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Float: return copy_of(H5T_IEEE_F32LE, "float32");
    case c10::ScalarType::Double: return copy_of(H5T_IEEE_F64LE, "float64");
    case c10::ScalarType::Half: return custom_half(10, 5, 15, "float16");
    case c10::ScalarType::BFloat16: return custom_half(7, 8, 127, "bfloat16");
    case c10::ScalarType::Char: return copy_of(H5T_STD_I8LE, "int8");
    case c10::ScalarType::Short: return copy_of(H5T_STD_I16LE, "int16");
    case c10::ScalarType::Int: return copy_of(H5T_STD_I32LE, "int32");
    case c10::ScalarType::Long: return copy_of(H5T_STD_I64LE, "int64");
    case c10::ScalarType::Byte: return copy_of(H5T_STD_U8LE, "uint8");
    case c10::ScalarType::Bool: return bool_enum();
    default:
      throw InvalidArgumentError("Tensors of dtype " + std::string(c10::toString(dtype)) + " cannot be saved", {},
                                 "Supported dtypes: float32, float64, float16, bfloat16, int8, int16, int32, "
                                 "int64, uint8, bool");
  }
}

}  // namespace persistence::detail
