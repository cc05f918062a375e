//===- Dtype.h - The dtype codes of the C ABI -------------------*- C++ -*-===//
//
// Sizes, names and classes of the MOERT_F32 ... MOERT_I64 codes of moert.h.
// Base layer (docs/runtime.md): header-only, used by the backends, the
// communicators, the support library and the drivers alike.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_BASE_DTYPE_H
#define MOERT_BASE_DTYPE_H

#include "moert/moert.h"

#include <cstddef>
#include <cstdint>

namespace moert {

/// Bytes of one element of `dtype` (0 for an unknown code).
inline size_t dtypeSize(int32_t dtype) {
  switch (dtype) {
  case MOERT_F32:
  case MOERT_I32:
    return 4;
  case MOERT_F16:
  case MOERT_BF16:
    return 2;
  case MOERT_I64:
    return 8;
  default:
    return 0;
  }
}

/// The float dtypes (f32, f16, bf16) convert among themselves, as do the
/// integer ones (i32, i64); float <-> int is never a conversion.
inline bool isFloatDtype(int32_t dtype) {
  return dtype == MOERT_F32 || dtype == MOERT_F16 || dtype == MOERT_BF16;
}
inline bool isIntDtype(int32_t dtype) {
  return dtype == MOERT_I32 || dtype == MOERT_I64;
}

/// "f32", "f16", "bf16", "i32", "i64", or "unknown".
inline const char *dtypeName(int32_t dtype) {
  switch (dtype) {
  case MOERT_F32:
    return "f32";
  case MOERT_F16:
    return "f16";
  case MOERT_BF16:
    return "bf16";
  case MOERT_I32:
    return "i32";
  case MOERT_I64:
    return "i64";
  default:
    return "unknown";
  }
}

} // namespace moert

#endif // MOERT_BASE_DTYPE_H
