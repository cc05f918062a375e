//===- Status.cpp - Error values and dtype helpers ------------------------===//
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

size_t dtypeSize(int32_t dtype) {
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

const char *dtypeName(int32_t dtype) {
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
