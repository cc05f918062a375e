//===- Json.cpp - A small JSON value, parser and writer -------------------===//
#include "support/Json.h"
#include "support/Format.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

namespace moert {
namespace json {

//===----------------------------------------------------------------------===//
// Value
//===----------------------------------------------------------------------===//

const Value *Value::get(const std::string &key) const {
  for (const Member &m : members_)
    if (m.first == key)
      return &m.second;
  return nullptr;
}

void Value::set(const std::string &key, Value v) {
  for (Member &m : members_) {
    if (m.first == key) {
      m.second = std::move(v);
      return;
    }
  }
  members_.emplace_back(key, std::move(v));
}

const char *Value::kindName(Kind k) {
  switch (k) {
  case Kind::Null:
    return "null";
  case Kind::Bool:
    return "boolean";
  case Kind::Number:
    return "number";
  case Kind::String:
    return "string";
  case Kind::Array:
    return "array";
  case Kind::Object:
    return "object";
  }
  return "?";
}

//===----------------------------------------------------------------------===//
// Parser
//===----------------------------------------------------------------------===//

namespace {

/// Deep enough for any file of ours, shallow enough for the stack.
constexpr int kMaxDepth = 256;

class Parser {
public:
  Parser(const std::string &text, const std::string &source)
      : text_(text), source_(source) {}

  Status parseDocument(Value &out) {
    skipSpace();
    MOERT_TRY(parseValue(out, 0));
    skipSpace();
    if (pos_ != text_.size())
      return fail("unexpected '%s' after the JSON value", here().c_str());
    return Status::ok();
  }

private:
  __attribute__((format(printf, 2, 3))) Status fail(const char *fmt, ...) {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    va_list ap;
    va_start(ap, fmt);
    std::string msg = vformat(fmt, ap);
    va_end(ap);
    return supportError(MOERT_ERR_INVALID, "%s:%d:%d: %s", source_.c_str(),
                        line, col, msg.c_str());
  }

  /// The character at the cursor, printable, for messages.
  std::string here() const {
    if (pos_ >= text_.size())
      return "end of input";
    unsigned char c = static_cast<unsigned char>(text_[pos_]);
    if (c < 0x20 || c >= 0x7f)
      return format("\\x%02x", c);
    return std::string(1, static_cast<char>(c));
  }

  void skipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  bool consumeWord(const char *word) {
    size_t n = std::strlen(word);
    if (text_.compare(pos_, n, word) != 0)
      return false;
    pos_ += n;
    return true;
  }

  Status parseValue(Value &out, int depth) {
    if (depth > kMaxDepth)
      return fail("nesting deeper than %d levels", kMaxDepth);
    if (pos_ >= text_.size())
      return fail("expected a value, found end of input");
    char c = text_[pos_];
    if (c == '{')
      return parseObject(out, depth);
    if (c == '[')
      return parseArray(out, depth);
    if (c == '"') {
      std::string s;
      MOERT_TRY(parseString(s));
      out = Value(std::move(s));
      return Status::ok();
    }
    if (c == '-' || (c >= '0' && c <= '9'))
      return parseNumber(out);
    if (consumeWord("true")) {
      out = Value(true);
      return Status::ok();
    }
    if (consumeWord("false")) {
      out = Value(false);
      return Status::ok();
    }
    if (consumeWord("null")) {
      out = Value();
      return Status::ok();
    }
    return fail("expected a value, found '%s'", here().c_str());
  }

  Status parseObject(Value &out, int depth) {
    out = Value::object();
    ++pos_; // '{'
    skipSpace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return Status::ok();
    }
    std::unordered_set<std::string> keys;
    while (true) {
      skipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"')
        return fail("expected a string key, found '%s'", here().c_str());
      std::string key;
      MOERT_TRY(parseString(key));
      if (!keys.insert(key).second)
        return fail("duplicate key \"%s\"", key.c_str());
      skipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':')
        return fail("expected ':' after key \"%s\", found '%s'", key.c_str(),
                    here().c_str());
      ++pos_;
      skipSpace();
      Value v;
      MOERT_TRY(parseValue(v, depth + 1));
      out.append(std::move(key), std::move(v));
      skipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return Status::ok();
      }
      return fail("expected ',' or '}' in object, found '%s'", here().c_str());
    }
  }

  Status parseArray(Value &out, int depth) {
    out = Value::array();
    ++pos_; // '['
    skipSpace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return Status::ok();
    }
    while (true) {
      skipSpace();
      Value v;
      MOERT_TRY(parseValue(v, depth + 1));
      out.push(std::move(v));
      skipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return Status::ok();
      }
      return fail("expected ',' or ']' in array, found '%s'", here().c_str());
    }
  }

  Status parseHex4(unsigned &out) {
    out = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      if (pos_ >= text_.size())
        return fail("unterminated \\u escape");
      char c = text_[pos_];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        return fail("bad hex digit '%s' in \\u escape", here().c_str());
      out = out * 16 + d;
    }
    return Status::ok();
  }

  static void appendUtf8(unsigned cp, std::string &s) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xc0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xe0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      s += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      s += static_cast<char>(0xf0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      s += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  Status parseUnicodeEscape(std::string &s) {
    unsigned cp;
    MOERT_TRY(parseHex4(cp));
    if (cp >= 0xd800 && cp < 0xdc00) {
      if (!consumeWord("\\u"))
        return fail("unpaired UTF-16 surrogate in \\u escape");
      unsigned lo;
      MOERT_TRY(parseHex4(lo));
      if (lo < 0xdc00 || lo >= 0xe000)
        return fail("unpaired UTF-16 surrogate in \\u escape");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    } else if (cp >= 0xdc00 && cp < 0xe000) {
      return fail("unpaired UTF-16 surrogate in \\u escape");
    }
    appendUtf8(cp, s);
    return Status::ok();
  }

  Status parseEscape(std::string &s) {
    if (pos_ >= text_.size())
      return fail("unterminated string");
    char c = text_[pos_++];
    switch (c) {
    case '"':
    case '\\':
    case '/':
      s += c;
      return Status::ok();
    case 'b':
      s += '\b';
      return Status::ok();
    case 'f':
      s += '\f';
      return Status::ok();
    case 'n':
      s += '\n';
      return Status::ok();
    case 'r':
      s += '\r';
      return Status::ok();
    case 't':
      s += '\t';
      return Status::ok();
    case 'u':
      return parseUnicodeEscape(s);
    default:
      --pos_;
      return fail("unknown escape '\\%s' in string", here().c_str());
    }
  }

  Status parseString(std::string &s) {
    ++pos_; // opening quote
    while (true) {
      if (pos_ >= text_.size())
        return fail("unterminated string");
      char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return Status::ok();
      }
      if (static_cast<unsigned char>(c) < 0x20)
        return fail("control character '%s' in string (escape it)",
                    here().c_str());
      ++pos_;
      if (c == '\\')
        MOERT_TRY(parseEscape(s));
      else
        s += c;
    }
  }

  bool isDigit(size_t i) const {
    return i < text_.size() && text_[i] >= '0' && text_[i] <= '9';
  }

  Status parseNumber(Value &out) {
    size_t start = pos_;
    bool integral = true;
    if (text_[pos_] == '-')
      ++pos_;
    if (!isDigit(pos_))
      return fail("expected a digit, found '%s'", here().c_str());
    if (text_[pos_] == '0' && isDigit(pos_ + 1))
      return fail("leading zero in number");
    while (isDigit(pos_))
      ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (!isDigit(pos_))
        return fail("expected a digit after '.', found '%s'", here().c_str());
      while (isDigit(pos_))
        ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-'))
        ++pos_;
      if (!isDigit(pos_))
        return fail("expected a digit in exponent, found '%s'", here().c_str());
      while (isDigit(pos_))
        ++pos_;
    }
    std::string lexeme = text_.substr(start, pos_ - start);
    if (integral) {
      errno = 0;
      long long v = std::strtoll(lexeme.c_str(), nullptr, 10);
      if (errno == 0) {
        out = Value(static_cast<int64_t>(v));
        return Status::ok();
      }
    }
    out = Value(std::strtod(lexeme.c_str(), nullptr));
    return Status::ok();
  }

  const std::string &text_;
  const std::string &source_;
  size_t pos_ = 0;
};

//===----------------------------------------------------------------------===//
// Writer
//===----------------------------------------------------------------------===//

void writeNumber(const Value &v, std::string &out) {
  if (v.isInt()) {
    out += std::to_string(v.getInt());
    return;
  }
  double d = v.getNumber();
  if (!std::isfinite(d)) { // JSON has no inf / nan
    out += "null";
    return;
  }
  // The shortest of %.15g / %.16g / %.17g that reads back exactly.
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d)
      break;
  }
  out += buf;
}

void newline(int indent, int depth, std::string &out) {
  if (indent <= 0)
    return;
  out += '\n';
  out.append(static_cast<size_t>(indent * depth), ' ');
}

void writeValue(const Value &v, int indent, int depth, std::string &out);

void writeArray(const Value &v, int indent, int depth, std::string &out) {
  const auto &items = v.elements();
  out += '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i)
      out += indent > 0 ? "," : ", ";
    newline(indent, depth + 1, out);
    writeValue(items[i], indent, depth + 1, out);
  }
  if (!items.empty())
    newline(indent, depth, out);
  out += ']';
}

void writeObject(const Value &v, int indent, int depth, std::string &out) {
  const auto &members = v.members();
  out += '{';
  for (size_t i = 0; i < members.size(); ++i) {
    if (i)
      out += indent > 0 ? "," : ", ";
    newline(indent, depth + 1, out);
    writeString(members[i].first, out);
    out += ": ";
    writeValue(members[i].second, indent, depth + 1, out);
  }
  if (!members.empty())
    newline(indent, depth, out);
  out += '}';
}

void writeValue(const Value &v, int indent, int depth, std::string &out) {
  switch (v.kind()) {
  case Value::Kind::Null:
    out += "null";
    return;
  case Value::Kind::Bool:
    out += v.getBool() ? "true" : "false";
    return;
  case Value::Kind::Number:
    writeNumber(v, out);
    return;
  case Value::Kind::String:
    writeString(v.getString(), out);
    return;
  case Value::Kind::Array:
    writeArray(v, indent, depth, out);
    return;
  case Value::Kind::Object:
    writeObject(v, indent, depth, out);
    return;
  }
}

} // namespace

Status parse(const std::string &text, const std::string &source, Value &out) {
  Parser p(text, source);
  return p.parseDocument(out);
}

void writeString(const std::string &s, std::string &out) {
  out += '"';
  for (char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    case '\b':
      out += "\\b";
      break;
    case '\f':
      out += "\\f";
      break;
    default:
      if (static_cast<unsigned char>(c) < 0x20)
        out += format("\\u%04x", static_cast<unsigned char>(c));
      else
        out += c;
    }
  }
  out += '"';
}

std::string write(const Value &v, int indent) {
  std::string out;
  writeValue(v, indent, 0, out);
  return out;
}

} // namespace json
} // namespace moert
