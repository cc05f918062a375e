//===- JsonFuzzer.cpp - libFuzzer target: moert's JSON reader and writer --===//
//
// Any bytes go to json::parse. A document it accepts is written back (on one
// line and pretty-printed); both texts must parse again to the same value.
// Numbers compare by value (a double written without fraction reads back as
// an integer), and a non-finite number compares equal to the null the writer
// puts in its place (JSON has no inf).
//
//===----------------------------------------------------------------------===//
#include "support/Json.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using moert::json::Value;

namespace {

bool sameValue(const Value &a, const Value &b) {
  if (a.isNumber() && !std::isfinite(a.getNumber()))
    return b.isNull();
  if (a.kind() != b.kind())
    return false;
  switch (a.kind()) {
  case Value::Kind::Null:
    return true;
  case Value::Kind::Bool:
    return a.getBool() == b.getBool();
  case Value::Kind::Number:
    if (a.isInt() && b.isInt())
      return a.getInt() == b.getInt();
    return a.getNumber() == b.getNumber();
  case Value::Kind::String:
    return a.getString() == b.getString();
  case Value::Kind::Array:
    if (a.elements().size() != b.elements().size())
      return false;
    for (size_t i = 0; i < a.elements().size(); ++i)
      if (!sameValue(a.elements()[i], b.elements()[i]))
        return false;
    return true;
  case Value::Kind::Object:
    if (a.members().size() != b.members().size())
      return false;
    for (size_t i = 0; i < a.members().size(); ++i)
      if (a.members()[i].first != b.members()[i].first ||
          !sameValue(a.members()[i].second, b.members()[i].second))
        return false;
    return true;
  }
  return false;
}

[[noreturn]] void fail(const char *what, const std::string &text) {
  std::fprintf(stderr, "json fuzzer: %s\n  text: %s\n", what, text.c_str());
  std::abort();
}

void checkRoundTrip(const Value &v, int indent) {
  std::string text = moert::json::write(v, indent);
  Value back;
  moert::Status s = moert::json::parse(text, "written", back);
  if (!s.isOk())
    fail(("the writer's output does not parse: " + s.message()).c_str(), text);
  if (!sameValue(v, back))
    fail("the writer's output parses to a different value", text);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  Value v;
  moert::Status s = moert::json::parse(text, "input.json", v);
  if (!s.isOk()) {
    // Errors read "<source>:<line>:<column>: <what went wrong>".
    if (s.message().rfind("input.json:", 0) != 0)
      fail(("error does not name the source: " + s.message()).c_str(), text);
    return 0;
  }
  checkRoundTrip(v, 0);
  checkRoundTrip(v, 2);
  return 0;
}
