//===- SafetensorsTest.cpp - Slices, conversions and corrupt files --------===//
#include "support/Safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <limits>
#include <unistd.h>

using namespace moert;

namespace {

class Safetensors : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moe-st-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string path(const std::string &name) const { return dir_ + "/" + name; }

  /// A file with raw `header` text and `data` bytes.
  std::string writeRaw(const std::string &name, const std::string &header,
                       const std::string &data) {
    std::string p = path(name);
    std::ofstream f(p, std::ios::binary);
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i)
      f.put(static_cast<char>(n >> (8 * i)));
    f << header << data;
    return p;
  }

  Status open(const std::string &p) { return SafetensorsFile::open(p, file_); }

  std::string dir_;
  std::unique_ptr<SafetensorsFile> file_;
};

std::vector<float> iota(int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(i);
  return v;
}

TEST_F(Safetensors, RoundTripsEveryDtype) {
  std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 1e-3f};
  std::vector<uint16_t> f16, b16;
  for (float f : f32) {
    f16.push_back(floatToHalf(f));
    b16.push_back(floatToBf16(f));
  }
  std::vector<int32_t> i32 = {1, -2, 3};
  std::vector<int64_t> i64 = {INT64_C(1) << 40, -5};
  std::string p = path("all.safetensors");
  ASSERT_TRUE(writeSafetensors(p,
                               {{"f32", MOERT_F32, {2, 2}, f32.data()},
                                {"f16", MOERT_F16, {4}, f16.data()},
                                {"bf16", MOERT_BF16, {4, 1}, b16.data()},
                                {"i32", MOERT_I32, {3}, i32.data()},
                                {"i64", MOERT_I64, {2}, i64.data()},
                                {"empty", MOERT_F32, {0, 3}, nullptr}},
                               {{"format", "pt"}})
                  .isOk());
  ASSERT_TRUE(open(p).isOk());
  EXPECT_EQ(file_->names().size(), 6u);
  EXPECT_EQ(file_->metadata().at("format"), "pt");
  EXPECT_EQ(file_->find("bf16")->dtypeName, "BF16");
  EXPECT_EQ(file_->find("bf16")->shape, (std::vector<int64_t>{4, 1}));
  std::vector<float> out(4);
  for (const char *name : {"f32", "f16", "bf16"}) {
    ASSERT_TRUE(file_->readAll(name, MOERT_F32, out.data()).isOk()) << name;
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(out[i], f32[i], std::fabs(f32[i]) * 1e-2) << name;
  }
  std::vector<int64_t> wide(3);
  ASSERT_TRUE(file_->readAll("i32", MOERT_I64, wide.data()).isOk());
  EXPECT_EQ(wide, (std::vector<int64_t>{1, -2, 3}));
  std::vector<int64_t> i64Back(2);
  ASSERT_TRUE(file_->readAll("i64", MOERT_I64, i64Back.data()).isOk());
  EXPECT_EQ(i64Back, i64);
}

TEST_F(Safetensors, WritesAtomicallyAndReplaces) {
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  std::string p = path("out.safetensors");
  ASSERT_TRUE(writeSafetensors(p, {{"x", MOERT_F32, {2}, a.data()}}).isOk());
  ASSERT_TRUE(writeSafetensors(p, {{"x", MOERT_F32, {3}, b.data()}}).isOk());
  ASSERT_TRUE(open(p).isOk());
  EXPECT_EQ(file_->find("x")->shape, (std::vector<int64_t>{3}));
  // Only the final file is in the directory: no temporaries left.
  DIR *d = opendir(dir_.c_str());
  int entries = 0;
  while (dirent *e = readdir(d))
    entries += e->d_name[0] != '.';
  closedir(d);
  EXPECT_EQ(entries, 1);
  Status s = writeSafetensors(dir_ + "/no/such/dir/out.safetensors",
                              {{"x", MOERT_F32, {2}, a.data()}});
  EXPECT_EQ(s.code(), MOERT_ERR_IO);
  EXPECT_NE(s.message().find("no/such/dir/out.safetensors"), std::string::npos);
  s = writeSafetensors(
      p, {{"x", MOERT_F32, {2}, a.data()}, {"x", MOERT_F32, {2}, a.data()}});
  EXPECT_NE(s.message().find("'x' given twice"), std::string::npos);
}

TEST_F(Safetensors, ReadsSlicesWithContiguousRunsOnly) {
  std::vector<float> v = iota(4 * 5 * 6);
  std::string p = path("t.safetensors");
  ASSERT_TRUE(
      writeSafetensors(p, {{"t", MOERT_F32, {4, 5, 6}, v.data()}}).isOk());
  ASSERT_TRUE(open(p).isOk());
  auto at = [](int64_t i, int64_t j, int64_t k) {
    return static_cast<float>((i * 5 + j) * 6 + k);
  };
  // Rows 1..3 of dimension 0: one contiguous run.
  std::vector<float> out(2 * 5 * 6);
  ASSERT_TRUE(
      file_->readSlice("t", {}, {1, 0, 0}, {3, 5, 6}, MOERT_F32, out.data())
          .isOk());
  EXPECT_EQ(file_->readCalls(), 1);
  EXPECT_EQ(out[0], at(1, 0, 0));
  EXPECT_EQ(out.back(), at(2, 4, 5));
  // A box in every dimension: one run per (i, j).
  out.assign(2 * 2 * 3, -1);
  ASSERT_TRUE(
      file_->readSlice("t", {}, {2, 1, 3}, {4, 3, 6}, MOERT_F32, out.data())
          .isOk());
  EXPECT_EQ(file_->readCalls(), 1 + 4);
  EXPECT_EQ(file_->bytesRead(), (60 + 12) * 4);
  int n = 0;
  for (int i = 2; i < 4; ++i)
    for (int j = 1; j < 3; ++j)
      for (int k = 3; k < 6; ++k)
        EXPECT_EQ(out[n++], at(i, j, k));
  // Viewed as [20, 6] (same elements, as the manifest's reshape rule).
  out.assign(20 * 2, -1);
  ASSERT_TRUE(
      file_->readSlice("t", {20, 6}, {0, 4}, {20, 6}, MOERT_F32, out.data())
          .isOk());
  EXPECT_EQ(out[0], 4.0f);
  EXPECT_EQ(out[3], 11.0f);
  // Empty slices read nothing.
  int64_t calls = file_->readCalls();
  ASSERT_TRUE(
      file_->readSlice("t", {}, {1, 0, 0}, {1, 5, 6}, MOERT_F32, nullptr)
          .isOk());
  EXPECT_EQ(file_->readCalls(), calls);
}

TEST_F(Safetensors, ConvertsOnRead) {
  std::vector<uint16_t> b16 = {floatToBf16(1.0f), floatToBf16(-0.5f)};
  std::vector<int64_t> big = {INT64_C(1) << 40};
  std::string p = path("c.safetensors");
  ASSERT_TRUE(writeSafetensors(p, {{"b", MOERT_BF16, {2}, b16.data()},
                                   {"big", MOERT_I64, {1}, big.data()}})
                  .isOk());
  ASSERT_TRUE(open(p).isOk());
  std::vector<uint16_t> half(2);
  ASSERT_TRUE(file_->readAll("b", MOERT_F16, half.data()).isOk());
  EXPECT_EQ(halfToFloat(half[0]), 1.0f);
  EXPECT_EQ(halfToFloat(half[1]), -0.5f);
  int32_t small;
  Status s = file_->readAll("big", MOERT_I32, &small);
  EXPECT_NE(s.message().find("does not fit in i32"), std::string::npos);
  float f;
  s = file_->readAll("big", MOERT_F32, &f);
  EXPECT_NE(s.message().find("dtype I64, which cannot be read as f32"),
            std::string::npos)
      << s.message();
}

TEST(HalfConversions, SpecialValuesAndRounding) {
  EXPECT_EQ(floatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(floatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(floatToHalf(65520.0f), 0x7c00); // rounds to inf
  EXPECT_EQ(floatToHalf(INFINITY), 0x7c00);
  EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(NAN))));
  EXPECT_EQ(halfToFloat(0x0001), std::ldexp(1.0f, -24)); // smallest subnormal
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -26)), 0x0000); // rounds to zero
  EXPECT_EQ(floatToHalf(std::ldexp(3.0f, -26)), 0x0001);
  // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(floatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  for (uint32_t h = 0; h < 0x7c00; ++h) // every finite half round-trips
    ASSERT_EQ(floatToHalf(halfToFloat(static_cast<uint16_t>(h))), h);
  EXPECT_EQ(floatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16ToFloat(0xc040), -3.0f);
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80); // tie: even
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(NAN))));
}

//===--- Corrupt and mismatched files: every error names file and tensor --===//

void expectError(const Status &s, moert_status code,
                 std::vector<std::string> parts) {
  EXPECT_EQ(s.code(), code) << s.message();
  for (const std::string &p : parts)
    EXPECT_NE(s.message().find(p), std::string::npos)
        << "'" << p << "' not in: " << s.message();
}

TEST_F(Safetensors, TooShortForTheLength) {
  std::string p = path("short.safetensors");
  std::ofstream(p) << "abc";
  expectError(open(p), MOERT_ERR_IO, {"short.safetensors", "truncated"});
}

TEST_F(Safetensors, HeaderLongerThanTheFile) {
  std::string p = writeRaw("h.safetensors", "{}", "");
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.put(100); // header length 100, 2 bytes follow
  f.close();
  expectError(open(p), MOERT_ERR_IO, {"h.safetensors", "truncated", "100"});
}

TEST_F(Safetensors, AbsurdHeaderLength) {
  std::string p = path("huge.safetensors");
  std::ofstream(p, std::ios::binary) << std::string(8, '\xff') << "{}";
  expectError(open(p), MOERT_ERR_INVALID, {"huge.safetensors", "corrupt"});
}

TEST_F(Safetensors, HeaderThatIsNotJson) {
  std::string p = writeRaw("j.safetensors", "{\"t\": {\"dtype\": ", "");
  expectError(open(p), MOERT_ERR_INVALID,
              {"j.safetensors", "corrupt header", "1:17"});
  p = writeRaw("k.safetensors", "[1, 2]", "");
  expectError(open(p), MOERT_ERR_INVALID, {"k.safetensors", "object"});
}

TEST_F(Safetensors, BadEntries) {
  struct Case {
    const char *header, *expect;
  };
  const Case cases[] = {
      {R"({"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})",
       "unknown dtype 'F33'"},
      {R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})",
       "no shape"},
      {R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})",
       "data_offsets"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})",
       "needs 8 bytes"},
      {R"({"w": [1]})", "not an object"},
      {R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", "no dtype"},
  };
  for (const Case &c : cases) {
    std::string p = writeRaw("e.safetensors", c.header, std::string(4, '\0'));
    expectError(open(p), MOERT_ERR_INVALID, {"e.safetensors", "'w'", c.expect});
  }
}

TEST_F(Safetensors, OffsetsBeyondTheData) {
  std::string p = writeRaw(
      "o.safetensors",
      R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
      std::string(16, '\0'));
  expectError(open(p), MOERT_ERR_IO,
              {"o.safetensors", "'w'", "[8, 24]", "16-byte"});
}

TEST_F(Safetensors, TruncatedData) {
  std::vector<float> v = iota(64);
  std::string p = path("t.safetensors");
  ASSERT_TRUE(writeSafetensors(p, {{"a", MOERT_F32, {8}, v.data()},
                                   {"b", MOERT_F32, {56}, v.data()}})
                  .isOk());
  ASSERT_EQ(truncate(p.c_str(), 200), 0);
  expectError(open(p), MOERT_ERR_IO, {"t.safetensors", "'b'", "truncated"});
}

TEST_F(Safetensors, MissingTensorSuggestsANearName) {
  std::vector<float> v = iota(4);
  std::string p = path("m.safetensors");
  ASSERT_TRUE(
      writeSafetensors(
          p, {{"model.layers.0.mlp.gate.weight", MOERT_F32, {4}, v.data()}})
          .isOk());
  ASSERT_TRUE(open(p).isOk());
  float out[4];
  Status s = file_->readAll("model.layers.0.mlp.gate.wieght", MOERT_F32, out);
  expectError(s, MOERT_ERR_INVALID,
              {"m.safetensors",
               "missing tensor 'model.layers.0.mlp.gate."
               "wieght'",
               "nearest name: 'model.layers.0.mlp.gate.weight'"});
}

TEST_F(Safetensors, WrongShapeDtypeAndBounds) {
  std::vector<float> v = iota(12);
  std::string p = path("s.safetensors");
  ASSERT_TRUE(writeSafetensors(p, {{"w", MOERT_F32, {3, 4}, v.data()}}).isOk());
  std::string f64 = writeRaw(
      "f64.safetensors",
      R"({"d": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})",
      std::string(8, '\0'));
  ASSERT_TRUE(open(p).isOk());
  float out[12];
  expectError(file_->readSlice("w", {3, 5}, {0, 0}, {3, 5}, MOERT_F32, out),
              MOERT_ERR_INVALID, {"s.safetensors", "'w'", "[3, 4]", "[3, 5]"});
  expectError(file_->readSlice("w", {}, {0, 0}, {4, 4}, MOERT_F32, out),
              MOERT_ERR_INVALID, {"'w'", "[0, 4) of dimension 0"});
  expectError(file_->readSlice("w", {}, {0}, {3}, MOERT_F32, out),
              MOERT_ERR_INVALID, {"'w'", "rank"});
  int32_t ints[12];
  expectError(file_->readAll("w", MOERT_I32, ints), MOERT_ERR_INVALID,
              {"'w'", "dtype F32", "i32"});
  ASSERT_TRUE(open(f64).isOk()); // F64 is valid, just not ours
  double d;
  expectError(file_->readAll("d", MOERT_F32, &d), MOERT_ERR_INVALID,
              {"f64.safetensors", "'d'", "F64"});
}

} // namespace
