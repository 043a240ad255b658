// Mapping between torch dtypes and the HDF5 types that store them. The same
// type serves as file and memory type, so HDF5 never converts (its conversions
// are slow, round bfloat16 ties away from zero, and turn collective transfers
// into independent ones).
#pragma once

#include "h5/handle.h"

#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

namespace persistence::detail {

// True for float32/64, float16, bfloat16, int8..int64, uint8 and bool.
bool is_supported_dtype(c10::ScalarType dtype);

// Lower-case torch name without the "torch." prefix: float32, bfloat16, int64, bool.
std::string dtype_name(c10::ScalarType dtype);
std::optional<c10::ScalarType> dtype_from_name(const std::string& name);

// The HDF5 type of dtype. float16 and bfloat16 are IEEE-style custom floats
// (sign bit 15; 5 or 8 exponent bits; bias 15 or 127), which h5dump prints as
// numbers and h5py reads as float16 and float32; bool is an int8 enum
// {FALSE, TRUE}, which h5py reads as numpy bool.
h5::Handle hdf5_type(c10::ScalarType dtype);

}  // namespace persistence::detail
