//===- ManifestTest.cpp - manifest.json parsing and the sharding rule -----===//
#include "support/Manifest.h"
#include "support/Json.h"

#include <gtest/gtest.h>

#include <functional>

using namespace moert;

namespace {

/// The example of docs/module-format.md, completed (every argument listed).
const char *kManifest = R"({
  "format": "moe-compiler-module",
  "version": 1,
  "module_hash": "5f0c2a9e3b1d7c44",
  "library": "module.so",
  "target": "cpu",
  "mesh": {"axes": ["dp", "ep", "tp"], "shape": [1, 2, 2]},
  "entries": [{
    "name": "forward",
    "symbol": "moe_entry_forward",
    "arena_bytes": 1048576,
    "args": [
      {"index": 1, "role": "weight",
       "name": "model.layers.0.block_sparse_moe.experts.{e}.w1.weight",
       "transpose": false, "dtype": "f32",
       "shape": [8, 64, 32], "local_shape": [4, 32, 32],
       "shard": [["ep"], ["tp"], []]},
      {"index": 0, "role": "input", "name": "hidden_states", "dtype": "f32",
       "shape": [64, 32], "local_shape": [32, 32], "shard": [["dp", "ep"], []]}
    ],
    "results": [
      {"index": 0, "name": "hidden_states", "dtype": "bf16", "shape": [64, 32],
       "local_shape": [32, 32], "shard": [["dp", "ep"], []]}
    ]
  }]
})";

Manifest parseOk(const std::string &text) {
  Manifest m;
  Status s = parseManifest(text, "manifest.json", m);
  EXPECT_TRUE(s.isOk()) << s.message();
  return m;
}

TEST(Manifest, ParsesTheDocumentedExample) {
  Manifest m = parseOk(kManifest);
  EXPECT_EQ(m.moduleHash, "5f0c2a9e3b1d7c44");
  EXPECT_EQ(m.library, "module.so");
  EXPECT_EQ(m.target, "cpu");
  EXPECT_EQ(m.mesh.size(), 4);
  const Entry *e = m.findEntry("forward");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(m.findEntry("backward"), nullptr);
  EXPECT_EQ(e->arenaBytes, 1048576);
  ASSERT_EQ(e->args.size(), 2u);
  EXPECT_EQ(e->args[0].name, "hidden_states"); // sorted by index
  EXPECT_EQ(e->args[0].role, "input");
  EXPECT_TRUE(e->args[1].isExpertStack());
  EXPECT_EQ(e->args[1].shard[1], std::vector<std::string>{"tp"});
  EXPECT_EQ(e->results[0].dtype, MOERT_BF16);
  EXPECT_EQ(e->results[0].role, "result");
  EXPECT_EQ(e->results[0].localBytes(), 32 * 32 * 2);
}

TEST(Manifest, MeshCoordinatesAreRowMajor) {
  Mesh mesh{{"dp", "ep", "tp"}, {1, 2, 2}};
  EXPECT_EQ(mesh.coords(3), (std::vector<int64_t>{0, 1, 1}));
  EXPECT_EQ(mesh.coords(2), (std::vector<int64_t>{0, 1, 0}));
  Mesh big{{"a", "b", "c"}, {2, 3, 4}};
  for (int64_t r = 0; r < big.size(); ++r) {
    std::vector<int64_t> c = big.coords(r);
    EXPECT_EQ((c[0] * 3 + c[1]) * 4 + c[2], r);
  }
  EXPECT_EQ(Mesh().size(), 1);
}

TEST(Manifest, SlicesFollowTheShardingRule) {
  Manifest m = parseOk(kManifest);
  const TensorSpec &x = m.entries[0].args[0]; // [64, 32] over [dp, ep]
  const TensorSpec &w = m.entries[0].args[1]; // [8, 64, 32] ep x tp
  Slice s;
  // Rank 3 = (dp 0, ep 1, tp 1): token index = dp*2 + ep = 1 of 2.
  ASSERT_TRUE(computeSlice(m.mesh, x, m.mesh.coords(3), s).isOk());
  EXPECT_EQ(s.lo, (std::vector<int64_t>{32, 0}));
  EXPECT_EQ(s.hi, (std::vector<int64_t>{64, 32}));
  ASSERT_TRUE(computeSlice(m.mesh, w, m.mesh.coords(3), s).isOk());
  EXPECT_EQ(s.lo, (std::vector<int64_t>{4, 32, 0}));
  EXPECT_EQ(s.hi, (std::vector<int64_t>{8, 64, 32}));
  EXPECT_EQ(s.shape(), w.localShape);
  ASSERT_TRUE(computeSlice(m.mesh, w, m.mesh.coords(1), s).isOk());
  EXPECT_EQ(s.lo, (std::vector<int64_t>{0, 32, 0}));
  // The order of the listed axes matters: [tp, ep] puts tp outermost.
  Mesh mesh{{"ep", "tp"}, {2, 3}};
  TensorSpec t;
  t.name = "t";
  t.shape = {12};
  t.shard = {{"tp", "ep"}};
  ASSERT_TRUE(computeSlice(mesh, t, {1, 2}, s).isOk()); // i = 2*2 + 1 = 5
  EXPECT_EQ(s.lo[0], 10);
  EXPECT_EQ(s.hi[0], 12);
  EXPECT_FALSE(computeSlice(mesh, t, {1}, s).isOk());
}

TEST(Manifest, ExpandsExpertNames) {
  EXPECT_EQ(expandExpertName("experts.{e}.w1.weight", 12),
            "experts.12.w1.weight");
  EXPECT_EQ(expandExpertName("{e}_{e}", 3), "3_3");
  EXPECT_EQ(expandExpertName("router.weight", 3), "router.weight");
}

TEST(Manifest, Fnv1aMatchesKnownValues) {
  EXPECT_EQ(fnv1a64Hex("", 0), "cbf29ce484222325");
  EXPECT_EQ(fnv1a64Hex("a", 1), "af63dc4c8601ec8c");
  EXPECT_EQ(fnv1a64Hex("foobar", 6), "85944171f73967e8");
}

//===--- Validation errors: each names the JSON path and the values -------===//

/// Parses the example after `edit` changed it; returns the error.
std::string errorAfter(const std::function<void(json::Value &)> &edit) {
  json::Value root;
  EXPECT_TRUE(json::parse(kManifest, "x", root).isOk());
  edit(root);
  Manifest m;
  Status s = parseManifest(json::write(root), "manifest.json", m);
  EXPECT_FALSE(s.isOk());
  return s.message();
}

json::Value &member(json::Value &v, const std::string &key) {
  return const_cast<json::Value &>(*v.get(key));
}

json::Value &arg(json::Value &root, int i) {
  return member(member(root, "entries").elements()[0], "args").elements()[i];
}

void expectHas(const std::string &msg, const std::string &part) {
  EXPECT_NE(msg.find(part), std::string::npos)
      << "'" << part << "' not in: " << msg;
}

TEST(Manifest, RejectsBadHeaderFields) {
  expectHas(errorAfter([](json::Value &r) { r.set("format", "x"); }),
            "manifest.json: format: 'x' is not");
  expectHas(errorAfter([](json::Value &r) { r.set("version", 2); }),
            "version 2 is not supported");
  expectHas(errorAfter([](json::Value &r) { r.set("module_hash", "xyz"); }),
            "module_hash: 'xyz' is not 16 hex digits");
  expectHas(errorAfter([](json::Value &r) { r.set("library", 3); }),
            "library: expected string, found number");
  expectHas(errorAfter(
                [](json::Value &r) { r.set("entries", json::Value::array()); }),
            "entries: no entry points");
}

TEST(Manifest, RejectsBadMeshes) {
  expectHas(errorAfter([](json::Value &r) {
              json::Value shape = json::Value::array();
              shape.push(2);
              member(r, "mesh").set("shape", shape);
            }),
            "mesh: 3 axes but 1 sizes");
  expectHas(errorAfter([](json::Value &r) {
              member(member(r, "mesh"), "shape").elements()[1] = json::Value(0);
            }),
            "mesh.shape[1]: size of axis 'ep' must be at least 1, got 0");
  expectHas(errorAfter([](json::Value &r) {
              member(member(r, "mesh"), "axes").elements()[2] =
                  json::Value("dp");
            }),
            "axis name 'dp' is repeated");
}

TEST(Manifest, RejectsSizesThatOverflow) {
  // [2^32, 2^32, 1]: the mesh size wraps to 0 in int64.
  expectHas(errorAfter([](json::Value &r) {
              auto &shape = member(member(r, "mesh"), "shape").elements();
              shape[0] = json::Value(int64_t(1) << 32);
              shape[1] = json::Value(int64_t(1) << 32);
            }),
            "mesh.shape: the product of the axis sizes [4294967296, "
            "4294967296, 2] overflows 64 bits");
  // 2^62 x 32 f32 elements: the byte size wraps.
  expectHas(errorAfter([](json::Value &r) {
              json::Value shape = json::Value::array();
              shape.push(int64_t(1) << 62);
              shape.push(32);
              arg(r, 1).set("shape", shape);
            }),
            "entries[0].args[1].shape: [4611686018427387904, 32] of f32: the "
            "byte size overflows 64 bits");
}

/// The description a library embeds: the example without its header.
Manifest description(const std::function<void(json::Value &)> &edit) {
  json::Value root;
  EXPECT_TRUE(json::parse(kManifest, "x", root).isOk());
  json::Value desc = json::Value::object();
  desc.set("mesh", *root.get("mesh"));
  desc.set("entries", *root.get("entries"));
  if (edit)
    edit(desc);
  Manifest m;
  Status s = parseModuleDescription(json::write(desc), "module.so", m);
  EXPECT_TRUE(s.isOk()) << s.message();
  return m;
}

TEST(Manifest, ChecksTheManifestAgainstTheLibrary) {
  Manifest file = parseOk(kManifest);
  EXPECT_TRUE(
      checkManifestAgainstLibrary(file, description(nullptr), "manifest.json")
          .isOk());
  auto mismatch = [&](const std::function<void(json::Value &)> &edit) {
    Status s =
        checkManifestAgainstLibrary(file, description(edit), "manifest.json");
    EXPECT_FALSE(s.isOk());
    return s.message();
  };
  expectHas(mismatch([](json::Value &d) { arg(d, 1).set("dtype", "f16"); }),
            "manifest.json: entries[0].args[0].dtype ('hidden_states') is f32 "
            "but the module library says f16");
  expectHas(mismatch([](json::Value &d) {
              json::Value shape = json::Value::array();
              shape.push(16);
              shape.push(32);
              member(member(d, "entries").elements()[0], "results")
                  .elements()[0]
                  .set("local_shape", shape);
              json::Value global = json::Value::array();
              global.push(32);
              global.push(32);
              member(member(d, "entries").elements()[0], "results")
                  .elements()[0]
                  .set("shape", global);
            }),
            "entries[0].results[0].shape ('hidden_states') is [64, 32] but the "
            "module library says [32, 32]");
  expectHas(mismatch([](json::Value &d) {
              member(d, "entries").elements()[0].set("arena_bytes", 512);
            }),
            "entries[0].arena_bytes is 1048576 but the module library says "
            "512");
  expectHas(mismatch([](json::Value &d) {
              member(d, "entries").elements()[0].set("symbol", "moe_entry_x");
            }),
            "entries[0].symbol is 'moe_entry_forward' but the module library "
            "says 'moe_entry_x'");
  expectHas(mismatch([](json::Value &d) { arg(d, 0).set("transpose", true); }),
            "entries[0].args[1].transpose");
}

TEST(Manifest, RejectsBadTensors) {
  // In the example, args[0] is the expert weight and args[1] the input.
  expectHas(errorAfter([](json::Value &r) {
              member(arg(r, 0), "shard").elements()[0].elements()[0] =
                  json::Value("xp");
            }),
            "entries[0].args[0].shard[0]: unknown mesh axis 'xp' (mesh "
            "axes: dp, ep, tp)");
  expectHas(errorAfter([](json::Value &r) { arg(r, 1).set("dtype", "f8"); }),
            "entries[0].args[1].dtype: unknown dtype 'f8'");
  expectHas(errorAfter([](json::Value &r) { arg(r, 1).set("role", "x"); }),
            "role 'x' is not one of input, weight");
  expectHas(errorAfter([](json::Value &r) { arg(r, 1).set("index", 5); }),
            "index 5 is out of range");
  expectHas(errorAfter([](json::Value &r) { arg(r, 1).set("index", 1); }),
            "index 1 is repeated");
  expectHas(errorAfter([](json::Value &r) {
              member(arg(r, 0), "local_shape").elements()[0] = json::Value(8);
            }),
            "dimension 0 is 8 but shape [8, 64, 32] split over [ep] gives 4");
  expectHas(errorAfter([](json::Value &r) {
              member(arg(r, 0), "shape").elements()[0] = json::Value(7);
            }),
            "dimension 0 of length 7 is not divisible by the 2 ranks of "
            "[ep]");
  expectHas(errorAfter([](json::Value &r) {
              member(arg(r, 1), "shard").elements()[1].push("ep");
            }),
            "mesh axis 'ep' shards two dimensions");
  expectHas(errorAfter([](json::Value &r) {
              member(arg(r, 1), "shard").elements().pop_back();
            }),
            "args[1].shard: 1 entries for a tensor of rank 2");
  expectHas(errorAfter([](json::Value &r) { arg(r, 1).set("name", "x.{e}"); }),
            "'{e}' names are for weights");
  expectHas(
      errorAfter([](json::Value &r) { arg(r, 0).set("transpose", "yes"); }),
      "transpose: expected a boolean");
  expectHas(errorAfter([](json::Value &r) {
              json::Value e = member(r, "entries").elements()[0];
              member(r, "entries").push(e);
            }),
            "entries[1].name: entry 'forward' appears twice");
  expectHas(errorAfter([](json::Value &r) {
              member(r, "entries").elements()[0].set("symbol", "a-b");
            }),
            "'a-b' is not a C identifier");
}

TEST(Manifest, ReportsJsonSyntaxWithPosition) {
  Manifest m;
  Status s = parseManifest("{\n  \"format\": }", "out/manifest.json", m);
  EXPECT_EQ(s.message(), "out/manifest.json:2:13: expected a value, found '}'");
  s = loadManifest("/nonexistent/manifest.json", m);
  EXPECT_EQ(s.code(), MOERT_ERR_IO);
  expectHas(s.message(), "/nonexistent/manifest.json");
}

} // namespace
