//===- Format.h - printf-style strings and errors for drivers ---*- C++ -*-===//
//
// The support library (JSON, safetensors, manifest) is linked into moe-run
// and the tests; it uses only the header half of Status (vformat included)
// so that it does not depend on libmoert.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_FORMAT_H
#define MOERT_SUPPORT_FORMAT_H

#include "base/Status.h"

#include <cstdarg>
#include <cstdio>
#include <string>

namespace moert {

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
