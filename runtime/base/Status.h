//===- Status.h - Error values inside the runtime ---------------*- C++ -*-===//
//
// Errors inside the runtime are values: a code from the C ABI and a message
// that names what failed. Nothing in the runtime aborts on bad input.
//
// Base layer (docs/runtime.md): includes only the C ABI. Header-only apart
// from error() (Status.cpp, in libmoert), so that the support library and
// the drivers use it without linking libmoert.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_BASE_STATUS_H
#define MOERT_BASE_STATUS_H

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

/// vsnprintf into a std::string (header-only: the support library and the
/// drivers format with it without linking libmoert).
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

} // namespace moert

#endif // MOERT_BASE_STATUS_H
