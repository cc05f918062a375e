//===- Format.h - printf-style strings and errors for driver code -*- C++
//-*-===//
//
// The support library (JSON, safetensors, manifest) is linked into moe-run
// and the tests; it uses only the header half of Status so that it does not
// depend on libmoert.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_FORMAT_H
#define MOERT_SUPPORT_FORMAT_H

#include "core/Status.h"

#include <cstdarg>
#include <cstdio>
#include <string>

namespace moert {

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

__attribute__((format(printf, 1, 2))) inline std::string format(const char *fmt,
                                                                ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

/// Like moert::error, without libmoert.
__attribute__((format(printf, 2, 3))) inline Status
supportError(moert_status code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return Status(code, std::move(s));
}

} // namespace moert

#endif // MOERT_SUPPORT_FORMAT_H
