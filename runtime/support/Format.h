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

/// " (nearest name: 'X')" for the key of `names` (a map keyed by
/// std::string) that shares the longest prefix with `name`, when that prefix
/// is at least half of `name`; else "". For "missing tensor" errors.
template <typename Map>
std::string nearestNameHint(const Map &names, const std::string &name) {
  std::string best;
  size_t bestLen = 0;
  for (const auto &kv : names) {
    const std::string &key = kv.first;
    size_t n = 0;
    while (n < key.size() && n < name.size() && key[n] == name[n])
      ++n;
    if (n > bestLen) {
      bestLen = n;
      best = key;
    }
  }
  if (best.empty() || bestLen * 2 < name.size())
    return "";
  return format(" (nearest name: '%s')", best.c_str());
}

} // namespace moert

#endif // MOERT_SUPPORT_FORMAT_H
