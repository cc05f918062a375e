//===- CheckpointIndexTest.cpp - Checkpoint folders and FP8 weights -------===//
#include "support/CheckpointIndex.h"
#include "support/Fp8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <unistd.h>

using namespace moert;

namespace {

//===----------------------------------------------------------------------===//
// FP8 E4M3
//===----------------------------------------------------------------------===//

TEST(Fp8, DecodesEveryClassOfValue) {
  EXPECT_EQ(e4m3ToFloat(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3ToFloat(0x80)));
  EXPECT_EQ(e4m3ToFloat(0x38), 1.0f);                // exponent 7 = bias
  EXPECT_EQ(e4m3ToFloat(0x7e), 448.0f);              // largest finite
  EXPECT_EQ(e4m3ToFloat(0xfe), -448.0f);             // sign
  EXPECT_EQ(e4m3ToFloat(0x01), std::ldexp(1.f, -9)); // smallest subnormal
  EXPECT_EQ(e4m3ToFloat(0x07), 7 * std::ldexp(1.f, -9));
  EXPECT_EQ(e4m3ToFloat(0x08), std::ldexp(1.f, -6)); // smallest normal
  EXPECT_EQ(e4m3ToFloat(0x3b), 1.375f);
  EXPECT_TRUE(std::isnan(e4m3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3ToFloat(0xff)));
  EXPECT_EQ(e4m3ToFloat(0x78), 256.0f); // S.1111.000 is finite (no inf)
  // Monotonic over the positive codes.
  for (int b = 1; b < 0x7f; ++b)
    EXPECT_LT(e4m3ToFloat(static_cast<uint8_t>(b - 1)),
              e4m3ToFloat(static_cast<uint8_t>(b)));
}

TEST(Fp8, BlockRunsUseTheScaleOfEachElementsBlock) {
  // A [3, 300] matrix: 1 x 3 blocks, the last 44 columns wide.
  const int64_t rows = 3, cols = 300;
  std::vector<uint8_t> bytes(rows * cols, 0x38); // 1.0
  std::vector<float> scale = {2.0f, 3.0f, 5.0f};
  std::vector<float> out(rows * cols);
  // From the middle of row 0 to the middle of row 2.
  int64_t first = 100, count = 2 * cols + 50;
  dequantizeBlockRun(bytes.data(), first, count, cols, scale.data(),
                     out.data());
  for (int64_t i = 0; i < count; ++i) {
    int64_t c = (first + i) % cols;
    EXPECT_EQ(out[i], scale[c / 128]) << "element " << first + i;
  }
}

//===----------------------------------------------------------------------===//
// Index validation
//===----------------------------------------------------------------------===//

Status parse(const std::string &text, CheckpointIndex &ix) {
  return parseCheckpointIndex(text, "idx.json", ix);
}

TEST(CheckpointIndexParse, AcceptsWhatHuggingFacePublishes) {
  CheckpointIndex ix;
  Status s = parse(R"({"metadata": {"total_size": 12},
      "weight_map": {"a": "model-00001-of-00002.safetensors",
                     "b": "model-00002-of-00002.safetensors",
                     "c": "model-00001-of-00002.safetensors"}})",
                   ix);
  ASSERT_TRUE(s.isOk()) << s.message();
  ASSERT_EQ(ix.files.size(), 2u);
  EXPECT_EQ(ix.files[ix.shardOf.at("a")], "model-00001-of-00002.safetensors");
  EXPECT_EQ(ix.files[ix.shardOf.at("b")], "model-00002-of-00002.safetensors");
  EXPECT_EQ(ix.shardOf.at("c"), ix.shardOf.at("a"));
}

TEST(CheckpointIndexParse, RejectsUntrustedInput) {
  struct Case {
    const char *text, *want;
  } cases[] = {
      {"[1]", "expected a JSON object"},
      {"{}", "no 'weight_map'"},
      {R"({"weight_map": []})", "no 'weight_map'"},
      {R"({"weight_map": {}})", "'weight_map' is empty"},
      {R"({"metadata": 3, "weight_map": {"a": "x"}})", "'metadata' must be"},
      {R"({"weight_map": {"a": 1}})", "tensor 'a' maps to number"},
      {R"({"weight_map": {"a": "../x.safetensors"}})", "maps to '../x"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "maps to '/etc/passwd'"},
      {R"({"weight_map": {"a": "sub\\x"}})", "not to a file name"},
      {R"({"weight_map": {"a": ".."}})", "not to a file name"},
      {R"({"weight_map": {"a": ""}})", "not to a file name"},
      {R"({"weight_map": {"a": "x\u0000y"}})", "not to a file name"},
      {R"({"weight_map": {"": "x"}})", "empty tensor name"},
      {R"({"weight_map": {"a": "x", "a": "y"}})", "duplicate key"},
      {R"({"weight_map": {"a": "x")", "idx.json"},
  };
  for (const Case &c : cases) {
    CheckpointIndex ix;
    Status s = parse(c.text, ix);
    ASSERT_FALSE(s.isOk()) << c.text;
    EXPECT_NE(s.message().find(c.want), std::string::npos)
        << c.text << " -> " << s.message();
  }
}

//===----------------------------------------------------------------------===//
// Folders
//===----------------------------------------------------------------------===//

class Folder : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/moe-ckpt-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string path(const std::string &name) const { return dir_ + "/" + name; }
  void writeText(const std::string &name, const std::string &text) {
    std::ofstream(path(name)) << text;
  }
  void write(const std::string &name, const std::vector<TensorData> &ts) {
    Status s = writeSafetensors(path(name), ts);
    ASSERT_TRUE(s.isOk()) << s.message();
  }
  /// A raw safetensors file with one F8_E4M3 tensor and, unless empty, its
  /// F32 scale (written with our writer, which has no F8: the header by
  /// hand).
  void writeFp8(const std::string &name, const std::string &tensor,
                std::vector<int64_t> shape, const std::vector<uint8_t> &bytes,
                std::vector<int64_t> scaleShape,
                const std::vector<float> &scale) {
    auto dims = [](const std::vector<int64_t> &s) {
      std::string r = "[";
      for (size_t i = 0; i < s.size(); ++i)
        r += (i ? "," : "") + std::to_string(s[i]);
      return r + "]";
    };
    size_t nb = bytes.size(), ns = scale.size() * 4;
    std::string header = "{\"" + tensor +
                         "\":{\"dtype\":\"F8_E4M3\",\"shape\":" + dims(shape) +
                         ",\"data_offsets\":[0," + std::to_string(nb) + "]}";
    if (!scaleShape.empty())
      header += ",\"" + tensor + "_scale_inv\":{\"dtype\":\"F32\",\"shape\":" +
                dims(scaleShape) + ",\"data_offsets\":[" + std::to_string(nb) +
                "," + std::to_string(nb + ns) + "]}";
    header += "}";
    std::ofstream f(path(name), std::ios::binary);
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i)
      f.put(static_cast<char>(n >> (8 * i)));
    f << header;
    f.write(reinterpret_cast<const char *>(bytes.data()), nb);
    f.write(reinterpret_cast<const char *>(scale.data()), ns);
  }
  Status open(const std::string &p) { return TensorSource::open(p, src_); }

  std::string dir_;
  std::unique_ptr<TensorSource> src_;
};

std::vector<float> iota(int64_t n, float base) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i)
    v[i] = base + static_cast<float>(i);
  return v;
}

TEST_F(Folder, OpensOnlyTheShardsOfTheTensorsRead) {
  // Three shards: a router, the experts, and attention nobody reads.
  std::vector<float> router = iota(4 * 6, 0), e0 = iota(8 * 6, 100),
                     e1 = iota(8 * 6, 200), attn = iota(6 * 6, 300);
  write("model-00001-of-00003.safetensors",
        {{"gate.weight", MOERT_F32, {4, 6}, router.data()}});
  // bf16 expert 1 (values exact in bf16).
  std::vector<uint16_t> e1b(e1.size());
  for (size_t i = 0; i < e1.size(); ++i)
    e1b[i] = floatToBf16(e1[i]);
  write("model-00002-of-00003.safetensors",
        {{"experts.0.w1.weight", MOERT_F32, {8, 6}, e0.data()},
         {"experts.1.w1.weight", MOERT_BF16, {8, 6}, e1b.data()}});
  write("model-00003-of-00003.safetensors",
        {{"self_attn.q_proj.weight", MOERT_F32, {6, 6}, attn.data()}});
  writeText(kCheckpointIndexName, R"({"metadata": {"total_size": 1},
    "weight_map": {"gate.weight": "model-00001-of-00003.safetensors",
      "experts.0.w1.weight": "model-00002-of-00003.safetensors",
      "experts.1.w1.weight": "model-00002-of-00003.safetensors",
      "self_attn.q_proj.weight": "model-00003-of-00003.safetensors"}})");
  ASSERT_TRUE(open(dir_).isOk());
  EXPECT_TRUE(src_->openedFiles().empty()); // only the index so far

  // Rows [4, 8) of expert 1, as a rank of tp=2 would read them.
  std::vector<float> out(4 * 6);
  Status s = src_->readSlice("experts.1.w1.weight", {}, {4, 0}, {8, 6},
                             MOERT_F32, out.data());
  ASSERT_TRUE(s.isOk()) << s.message();
  for (int64_t i = 0; i < 24; ++i)
    EXPECT_EQ(out[i], e1[24 + i]);
  EXPECT_EQ(src_->openedFiles(),
            std::vector<std::string>{path("model-00002-of-00003.safetensors")});
  EXPECT_EQ(src_->bytesRead(), 24 * 2); // the slice only, in bf16

  // The same through the index file itself.
  ASSERT_TRUE(open(path(kCheckpointIndexName)).isOk());
  const TensorInfo *t;
  ASSERT_TRUE(src_->lookup("gate.weight", t).isOk());
  EXPECT_EQ(t->shape, (std::vector<int64_t>{4, 6}));
  EXPECT_EQ(src_->openedFiles().size(), 1u);
}

TEST_F(Folder, ErrorsNameTheTensorAndTheShard) {
  std::vector<float> a = iota(4, 0);
  write("s1.safetensors", {{"a", MOERT_F32, {4}, a.data()}});
  writeText(kCheckpointIndexName, R"({"weight_map": {"a": "s1.safetensors",
    "b": "s1.safetensors", "layers.0.c": "gone.safetensors"}})");
  ASSERT_TRUE(open(dir_).isOk()); // a missing shard nobody needs is fine
  const TensorInfo *t;
  Status s = src_->lookup("layers.0.x", t);
  EXPECT_NE(s.message().find("missing tensor 'layers.0.x': it is in none of "
                             "the 2 shards of the index (nearest name: "
                             "'layers.0.c')"),
            std::string::npos)
      << s.message();
  s = src_->lookup("layers.0.c", t);
  EXPECT_NE(s.message().find("tensor 'layers.0.c' is in shard "
                             "'gone.safetensors', which cannot be read"),
            std::string::npos)
      << s.message();
  s = src_->lookup("b", t);
  EXPECT_NE(s.message().find("s1.safetensors: the index " +
                             path(kCheckpointIndexName) +
                             " puts tensor 'b' in this file, but it has no "
                             "such tensor"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(src_->find("b"), nullptr);

  std::string empty = path("empty");
  ASSERT_EQ(::mkdir(empty.c_str(), 0755), 0);
  s = open(empty);
  EXPECT_NE(s.message().find("neither is here"), std::string::npos)
      << s.message();
}

TEST_F(Folder, AFolderWithOneModelFileAndAPlainFile) {
  std::vector<float> a = iota(6, 1);
  write("model.safetensors", {{"a", MOERT_F32, {2, 3}, a.data()}});
  for (const std::string &p : {dir_, path("model.safetensors")}) {
    ASSERT_TRUE(open(p).isOk()) << p;
    std::vector<float> out(3);
    ASSERT_TRUE(
        src_->readSlice("a", {}, {1, 0}, {2, 3}, MOERT_F32, out.data()).isOk());
    EXPECT_EQ(out, (std::vector<float>{4, 5, 6}));
  }
}

//===----------------------------------------------------------------------===//
// FP8 through a TensorSource
//===----------------------------------------------------------------------===//

/// Equal, or both NaN.
bool same(float a, float b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

/// Expected value of element (r, c) of the FP8 test matrix.
float fp8Want(const std::vector<uint8_t> &bytes, const std::vector<float> &s,
              int64_t cols, int64_t r, int64_t c) {
  int64_t bc = (cols + 127) / 128;
  return e4m3ToFloat(bytes[r * cols + c]) * s[(r / 128) * bc + c / 128];
}

TEST_F(Folder, Fp8SlicesAreDequantizedWithTheirBlocksScale) {
  // [200, 260]: 2 x 3 blocks, partial at the bottom and the right.
  const int64_t rows = 200, cols = 260;
  std::vector<uint8_t> bytes(rows * cols);
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<uint8_t>((i * 37 + 11) % 256);
  bytes[5] = 0x7f; // NaN passes through
  std::vector<float> scale = {0.5f, 2.0f, 0.25f, 3.0f, 1.5f, 0.125f};
  writeFp8("model.safetensors", "w.weight", {rows, cols}, bytes, {2, 3}, scale);
  ASSERT_TRUE(open(dir_).isOk());
  // A slice whose rows and columns start inside blocks.
  std::vector<int64_t> lo = {100, 120}, hi = {190, 250};
  std::vector<float> out((hi[0] - lo[0]) * (hi[1] - lo[1]));
  Status s = src_->readSlice("w.weight", {}, lo, hi, MOERT_F32, out.data());
  ASSERT_TRUE(s.isOk()) << s.message();
  size_t i = 0;
  for (int64_t r = lo[0]; r < hi[0]; ++r)
    for (int64_t c = lo[1]; c < hi[1]; ++c, ++i)
      ASSERT_TRUE(same(out[i], fp8Want(bytes, scale, cols, r, c)))
          << r << "," << c;
  // The whole matrix, viewed as [2, 100, 260] (a reshaped view), to bf16.
  std::vector<uint16_t> all(rows * cols);
  s = src_->readSlice("w.weight", {2, 100, 260}, {0, 0, 0}, {2, 100, 260},
                      MOERT_BF16, all.data());
  ASSERT_TRUE(s.isOk()) << s.message();
  EXPECT_TRUE(std::isnan(bf16ToFloat(all[5])));
  for (int64_t k = 6; k < rows * cols; k += 97)
    EXPECT_TRUE(same(bf16ToFloat(all[k]),
                     bf16ToFloat(floatToBf16(
                         fp8Want(bytes, scale, cols, k / cols, k % cols)))))
        << k;
}

TEST_F(Folder, Fp8ScaleErrors) {
  std::vector<uint8_t> bytes(4 * 4, 0x38);
  writeFp8("noscale.safetensors", "w", {4, 4}, bytes, {}, {});
  writeFp8("badshape.safetensors", "w", {4, 4}, bytes, {2, 1}, {1, 1});
  writeFp8("nan.safetensors", "w", {4, 4}, bytes, {1, 1}, {NAN});
  writeFp8("rank3.safetensors", "w", {1, 4, 4}, bytes, {1, 1}, {1});
  struct Case {
    const char *file, *want;
  } cases[] = {
      {"noscale.safetensors", "tensor 'w' is F8_E4M3 but there is no block "
                              "scale 'w_scale_inv'"},
      {"badshape.safetensors", "block scale 'w_scale_inv' is F32 [2, 1]; "
                               "tensor 'w' of shape [4, 4] needs a float "
                               "tensor of shape [1, 1]"},
      {"nan.safetensors", "has a non-finite value at block (0, 0)"},
      {"rank3.safetensors", "block scales are defined for matrices only"},
  };
  for (const Case &c : cases) {
    ASSERT_TRUE(open(path(c.file)).isOk());
    std::vector<float> out(16);
    const TensorInfo *t;
    ASSERT_TRUE(src_->lookup("w", t).isOk());
    std::vector<int64_t> hi = t->shape, lo(hi.size(), 0);
    Status s = src_->readSlice("w", {}, lo, hi, MOERT_F32, out.data());
    ASSERT_FALSE(s.isOk()) << c.file;
    EXPECT_NE(s.message().find(c.want), std::string::npos) << s.message();
  }
  // A scale listed in the index, in a shard that is not there.
  writeText(kCheckpointIndexName, R"({"weight_map": {
    "w": "noscale.safetensors", "w_scale_inv": "gone.safetensors"}})");
  ASSERT_TRUE(open(dir_).isOk());
  std::vector<float> out(16);
  Status s0 = src_->readSlice("w", {}, {0, 0}, {4, 4}, MOERT_F32, out.data());
  EXPECT_NE(s0.message().find("tensor 'w_scale_inv' is in shard "
                              "'gone.safetensors', which cannot be read"),
            std::string::npos)
      << s0.message();
  ASSERT_TRUE(open(path("nan.safetensors")).isOk());
  int32_t ints[16];
  Status s = src_->readSlice("w", {}, {0, 0}, {4, 4}, MOERT_I32, ints);
  EXPECT_NE(s.message().find("cannot be read as i32"), std::string::npos)
      << s.message();
}

} // namespace
