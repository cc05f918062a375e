//===- JsonTest.cpp - The small JSON parser and writer of moe-run ---------===//
#include "support/Json.h"

#include <gtest/gtest.h>

using moert::Status;
using moert::json::Value;

namespace {

Value parseOk(const std::string &text) {
  Value v;
  Status s = moert::json::parse(text, "t.json", v);
  EXPECT_TRUE(s.isOk()) << s.message();
  return v;
}

std::string parseError(const std::string &text) {
  Value v;
  Status s = moert::json::parse(text, "t.json", v);
  EXPECT_FALSE(s.isOk()) << text;
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
  return s.message();
}

TEST(Json, ParsesEveryKind) {
  Value v = parseOk(R"({"a": [1, -2.5, true, false, null], "b": {"c": "x"},
                        "big": 9007199254740993, "e": 1e3})");
  ASSERT_TRUE(v.isObject());
  const Value *a = v.get("a");
  ASSERT_TRUE(a && a->isArray());
  ASSERT_EQ(a->elements().size(), 5u);
  EXPECT_TRUE(a->elements()[0].isInt());
  EXPECT_EQ(a->elements()[0].getInt(), 1);
  EXPECT_FALSE(a->elements()[1].isInt());
  EXPECT_DOUBLE_EQ(a->elements()[1].getNumber(), -2.5);
  EXPECT_TRUE(a->elements()[2].getBool());
  EXPECT_FALSE(a->elements()[3].getBool());
  EXPECT_TRUE(a->elements()[4].isNull());
  EXPECT_EQ(v.get("b")->get("c")->getString(), "x");
  // Integers stay exact beyond 2^53.
  EXPECT_EQ(v.get("big")->getInt(), 9007199254740993LL);
  EXPECT_FALSE(v.get("e")->isInt());
  EXPECT_DOUBLE_EQ(v.get("e")->getNumber(), 1000.0);
  EXPECT_EQ(v.get("missing"), nullptr);
}

TEST(Json, KeepsMemberOrder) {
  Value v = parseOk(R"({"z": 1, "a": 2, "m": 3})");
  ASSERT_EQ(v.members().size(), 3u);
  EXPECT_EQ(v.members()[0].first, "z");
  EXPECT_EQ(v.members()[2].first, "m");
  EXPECT_EQ(moert::json::write(v), R"({"z": 1, "a": 2, "m": 3})");
}

TEST(Json, StringEscapesRoundTrip) {
  Value v = parseOk(R"(["a\"b\\c\/d\n\t\u00e9\ud83d\ude00"])");
  const std::string &s = v.elements()[0].getString();
  EXPECT_EQ(s, "a\"b\\c/d\n\t\xc3\xa9\xf0\x9f\x98\x80");
  Value back = parseOk(moert::json::write(v));
  EXPECT_EQ(back.elements()[0].getString(), s);
}

TEST(Json, WriterRoundTripsNumbers) {
  Value v = Value::array();
  v.push(0.1);
  v.push(static_cast<int64_t>(-42));
  v.push(1.0 / 3.0);
  Value back = parseOk(moert::json::write(v, 2));
  EXPECT_EQ(back.elements()[0].getNumber(), 0.1);
  EXPECT_EQ(back.elements()[1].getInt(), -42);
  EXPECT_EQ(back.elements()[2].getNumber(), 1.0 / 3.0);
  EXPECT_EQ(moert::json::write(v.elements()[0]), "0.1");
}

TEST(Json, ErrorsGiveLineAndColumn) {
  EXPECT_EQ(parseError("{\n  \"a\": 1,\n  \"b\" 2\n}"),
            "t.json:3:7: expected ':' after key \"b\", found '2'");
  EXPECT_EQ(parseError("[1, 2"), "t.json:1:6: expected ',' or ']' in array, "
                                 "found 'end of input'");
  EXPECT_NE(parseError("{\"a\": 1} x").find("1:10"), std::string::npos);
}

TEST(Json, RejectsMalformedInput) {
  for (const char *bad :
       {"", "{", "[1,]", "{\"a\":}", "01", "1.", "-", "tru", "\"abc",
        "\"a\\x\"", "\"\\u12\"", "{\"a\": 1, \"a\": 2}", "[1 2]", "nul",
        "\"\\ud800\"", "{1: 2}", "\"tab\there\""})
    parseError(bad);
}

TEST(Json, DeepNestingIsAnErrorNotACrash) {
  std::string deep(100000, '[');
  EXPECT_NE(parseError(deep).find("nesting"), std::string::npos);
}

} // namespace
