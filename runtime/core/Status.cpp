//===- Status.cpp - Error values -------------------------------------------===//
#include "Status.h"

#include <cstdio>

namespace moert {

Status error(moert_status code, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  int len = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string message(len > 0 ? static_cast<size_t>(len) : 0, '\0');
  if (len > 0)
    std::vsnprintf(&message[0], message.size() + 1, fmt, args);
  va_end(args);
  return Status(code, std::move(message));
}

} // namespace moert
