//===- Json.h - A small JSON value, parser and writer -----------*- C++ -*-===//
//
// moe-run builds without LLVM, so it cannot use llvm::json. This is the
// little it needs: manifest.json, safetensors headers and the stats file.
// Objects keep their keys in insertion order (the writer reproduces it);
// numbers that are written as integers and fit in int64 stay exact.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_JSON_H
#define MOERT_SUPPORT_JSON_H

#include "base/Status.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moert {
namespace json {

class Value {
public:
  enum class Kind { Null, Bool, Number, String, Array, Object };
  using Member = std::pair<std::string, Value>;

  Value() = default;
  Value(bool b) : kind_(Kind::Bool), bool_(b) {}
  Value(int v) : Value(static_cast<int64_t>(v)) {}
  Value(int64_t v)
      : kind_(Kind::Number), isInt_(true), int_(v),
        num_(static_cast<double>(v)) {}
  Value(double v) : kind_(Kind::Number), num_(v) {}
  Value(const char *s) : kind_(Kind::String), str_(s) {}
  Value(std::string s) : kind_(Kind::String), str_(std::move(s)) {}

  static Value array() { return Value(Kind::Array); }
  static Value object() { return Value(Kind::Object); }

  Kind kind() const { return kind_; }
  bool isNull() const { return kind_ == Kind::Null; }
  bool isBool() const { return kind_ == Kind::Bool; }
  bool isNumber() const { return kind_ == Kind::Number; }
  /// A number written without fraction or exponent that fits in int64.
  bool isInt() const { return kind_ == Kind::Number && isInt_; }
  bool isString() const { return kind_ == Kind::String; }
  bool isArray() const { return kind_ == Kind::Array; }
  bool isObject() const { return kind_ == Kind::Object; }

  bool getBool() const { return bool_; }
  double getNumber() const { return num_; }
  int64_t getInt() const { return int_; }
  const std::string &getString() const { return str_; }

  /// Array elements.
  const std::vector<Value> &elements() const { return items_; }
  std::vector<Value> &elements() { return items_; }
  void push(Value v) { items_.push_back(std::move(v)); }

  /// Object members in insertion order.
  const std::vector<Member> &members() const { return members_; }
  /// Member named `key`, or nullptr.
  const Value *get(const std::string &key) const;
  /// Sets (or replaces) member `key`.
  void set(const std::string &key, Value v);
  /// Adds member `key`, which the caller knows is new: no search, so that
  /// the parser reads an object of n members in O(n), not O(n^2).
  void append(std::string key, Value v) {
    members_.emplace_back(std::move(key), std::move(v));
  }

  /// Name of a kind for messages ("object", "string", ...).
  static const char *kindName(Kind k);

private:
  explicit Value(Kind k) : kind_(k) {}

  Kind kind_ = Kind::Null;
  bool bool_ = false;
  bool isInt_ = false;
  int64_t int_ = 0;
  double num_ = 0;
  std::string str_;
  std::vector<Value> items_;
  std::vector<Member> members_;
};

/// Parses `text`. Errors (MOERT_ERR_INVALID) read
/// "<source>:<line>:<column>: <what went wrong>".
Status parse(const std::string &text, const std::string &source, Value &out);

/// Serializes `v`. indent = 0: one line; otherwise pretty-printed.
std::string write(const Value &v, int indent = 0);

/// Appends `s` as a quoted JSON string to `out`.
void writeString(const std::string &s, std::string &out);

} // namespace json
} // namespace moert

#endif // MOERT_SUPPORT_JSON_H
