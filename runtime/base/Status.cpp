//===- Status.cpp - Error values ------------------------------------------===//
#include "base/Status.h"

namespace moert {

Status error(moert_status code, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string message = vformat(fmt, args);
  va_end(args);
  return Status(code, std::move(message));
}

} // namespace moert
