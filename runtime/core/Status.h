//===- Status.h - Error values inside the runtime ---------------*- C++ -*-===//
//
// Errors inside the runtime are values: a code from the C ABI and a message
// that names what failed. Nothing in the runtime aborts on bad input.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CORE_STATUS_H
#define MOERT_CORE_STATUS_H

#include "moert/moert.h"

#include <cstdarg>
#include <cstdio>
#include <string>
#include <utility>

namespace moert {

class [[nodiscard]] Status {
public:
  Status() = default;
  Status(moert_status code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }
  bool isOk() const { return code_ == MOERT_OK; }
  explicit operator bool() const { return !isOk(); } // true on error
  moert_status code() const { return code_; }
  const std::string &message() const { return message_; }

private:
  moert_status code_ = MOERT_OK;
  std::string message_;
};

/// vsnprintf into a std::string. Header-only, like dtypeSize below, so that
/// the support library and moe-run format with it without linking libmoert.
inline std::string vformat(const char *fmt, va_list ap) {
  va_list copy;
  va_copy(copy, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0)
    return std::string();
  std::string s(static_cast<size_t>(n) + 1, '\0');
  std::vsnprintf(&s[0], s.size(), fmt, ap);
  s.resize(static_cast<size_t>(n));
  return s;
}

/// printf-style error constructor: `return error(MOERT_ERR_INVALID, "k (%d)
/// exceeds experts (%d)", k, e);`
Status error(moert_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/// Returns from the enclosing function when `expr` yields an error Status.
#define MOERT_TRY(expr)                                                        \
  do {                                                                         \
    ::moert::Status moertTryStatus_ = (expr);                                  \
    if (!moertTryStatus_.isOk())                                               \
      return moertTryStatus_;                                                  \
  } while (0)

/// Bytes of one element of `dtype` (0 for an unknown code). Header-only so
/// that the support library and moe-run share it without linking libmoert.
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

#endif // MOERT_CORE_STATUS_H
