//===- SingleCollectivesTest.cpp - Collective entry points on one rank ----===//
//
// With one rank every collective is a local copy (or a sum over one input),
// but validation, layouts, the zeroed tail of all_to_all_v, async handles,
// statistics and the sticky error all run the same code as with many.
//
//===----------------------------------------------------------------------===//
#include "CollectiveRef.h"
#include "moert/moert.h"
#include "support/Json.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>

namespace {

class SingleCollectives : public ::testing::Test {
protected:
  void SetUp() override {
    moert_ctx_options o;
    moert_ctx_options_init(&o);
    static const int64_t shape[2] = {1, 1};
    static const char *axes[2] = {"x", "y"};
    o.mesh_rank = 2;
    o.mesh_shape = shape;
    o.mesh_axes = axes;
    ASSERT_EQ(moert_ctx_create(&o, &ctx_), MOERT_OK) << moert_last_error();
  }
  void TearDown() override { moert_ctx_destroy(ctx_); }

  void expectOk() {
    EXPECT_EQ(moert_ctx_status(ctx_), MOERT_OK) << moert_ctx_error(ctx_);
  }
  void expectError(moert_status code, const std::string &part) {
    EXPECT_EQ(moert_ctx_status(ctx_), code);
    EXPECT_NE(std::string(moert_ctx_error(ctx_)).find(part), std::string::npos)
        << "'" << part << "' not in: " << moert_ctx_error(ctx_);
    moert_ctx_clear_error(ctx_);
  }

  moert_ctx *ctx_ = nullptr;
};

TEST_F(SingleCollectives, AllToAllIsACopyForEverySplitAndConcat) {
  ref::Dims d = {2, 3, 4, 5};
  ref::Tensor in = ref::input(0, ref::numel(d));
  for (int s = 0; s < 4; ++s) {
    for (int c = 0; c < 4; ++c) {
      ref::Tensor out(in.size(), -1);
      moert_all_to_all(ctx_, 3, in.data(), out.data(), 4, d[0], d[1], d[2],
                       d[3], s, c);
      expectOk();
      EXPECT_EQ(out, in) << "split " << s << " concat " << c;
    }
  }
  // In place.
  ref::Tensor buf = in;
  moert_all_to_all(ctx_, 1, buf.data(), buf.data(), 4, 2, 3, 4, 5, 1, 2);
  expectOk();
  EXPECT_EQ(buf, in);
}

TEST_F(SingleCollectives, AllToAllVZeroesTheTail) {
  ref::Tensor in = ref::input(0, 4 * 3);
  int32_t counts[2] = {1, 2}; // two entries for the one peer: 3 rows
  ref::Tensor out(6 * 3, -1);
  moert_all_to_all_v(ctx_, 1, in.data(), counts, counts, out.data(), 2, 2,
                     3 * sizeof(float), 4, 6);
  expectOk();
  for (int i = 0; i < 9; ++i)
    EXPECT_EQ(out[i], in[i]);
  for (int i = 9; i < 18; ++i)
    EXPECT_EQ(out[i], 0.0f) << i;
}

TEST_F(SingleCollectives, AllToAllVChecksItsCounts) {
  ref::Tensor in(12), out(12);
  int32_t many[1] = {5}, some[1] = {3}, negative[2] = {1, -1};
  moert_all_to_all_v(ctx_, 1, in.data(), many, many, out.data(), 1, 1, 4, 4, 8);
  expectError(MOERT_ERR_INVALID,
              "send_counts total 5 rows, more than in_rows (4)");
  moert_all_to_all_v(ctx_, 1, in.data(), some, some, out.data(), 1, 1, 4, 4, 2);
  expectError(MOERT_ERR_INVALID,
              "recv_counts total 3 rows, more than out_rows (2)");
  moert_all_to_all_v(ctx_, 1, in.data(), some, many, out.data(), 1, 1, 4, 8, 8);
  expectError(MOERT_ERR_INVALID, "sends 3 rows to itself but expects 5");
  moert_all_to_all_v(ctx_, 1, in.data(), negative, negative, out.data(), 2, 2,
                     4, 8, 8);
  expectError(MOERT_ERR_INVALID, "send_counts[1] is -1");
}

TEST_F(SingleCollectives, GatherScatterAndReduceOverOneRank) {
  ref::Dims d = {3, 2, 2, 1};
  ref::Tensor in = ref::input(0, ref::numel(d));
  for (int dim = 0; dim < 4; ++dim) {
    ref::Tensor out(in.size(), -1);
    moert_all_gather(ctx_, 2, in.data(), out.data(), 4, d[0], d[1], d[2], d[3],
                     dim);
    EXPECT_EQ(out, ref::allGather({in}, d, dim));
    out.assign(in.size(), -1);
    moert_reduce_scatter(ctx_, 2, in.data(), out.data(), d[0], d[1], d[2], d[3],
                         dim, MOERT_F32);
    EXPECT_EQ(out, ref::reduceScatter({in}, d, dim, 0));
  }
  ref::Tensor buf = in;
  moert_all_reduce(ctx_, 3, buf.data(), buf.data(), 12, MOERT_F32);
  expectOk();
  EXPECT_EQ(buf, in);
}

TEST_F(SingleCollectives, SliceOfOneIsTheWhole) {
  ref::Tensor in = ref::input(0, 24), out(24, -1);
  moert_slice(ctx_, 3, in.data(), out.data(), 4, 2, 3, 4, 1, 2);
  expectOk();
  EXPECT_EQ(out, in);
  moert_slice(ctx_, 1, in.data(), in.data(), 4, 2, 3, 4, 1, 1); // in place
  expectOk();
  EXPECT_EQ(out, in);
  moert_slice(ctx_, 1, in.data(), out.data(), 4, 2, 3, 4, 1, 5);
  expectError(MOERT_ERR_INVALID, "slice over [x]: dim (5)");
}

TEST_F(SingleCollectives, AsyncFormsCompleteAtTheWait) {
  ref::Tensor in = ref::input(0, 16), a(16), b(16), c(16);
  void *h1 =
      moert_all_to_all_start(ctx_, 1, in.data(), a.data(), 4, 4, 4, 1, 1, 1, 0);
  void *h2 =
      moert_all_gather_start(ctx_, 3, in.data(), b.data(), 4, 16, 1, 1, 1, 0);
  void *h3 =
      moert_all_reduce_start(ctx_, 2, in.data(), c.data(), 16, MOERT_F32);
  ASSERT_TRUE(h1 && h2 && h3);
  moert_wait(ctx_, h3);
  moert_wait(ctx_, h1);
  moert_wait(ctx_, h2);
  expectOk();
  EXPECT_EQ(a, in);
  EXPECT_EQ(b, in);
  EXPECT_EQ(c, in);
  int32_t n[1] = {2};
  ref::Tensor d(16, -1);
  void *h4 = moert_all_to_all_v_start(ctx_, 1, in.data(), n, n, d.data(), 1, 1,
                                      16, 4, 4);
  void *h5 = moert_reduce_scatter_start(ctx_, 1, in.data(), c.data(), 16, 1, 1,
                                        1, 0, MOERT_F32);
  moert_wait(ctx_, h4);
  moert_wait(ctx_, h5);
  expectOk();
  EXPECT_EQ(d[7], in[7]);
  EXPECT_EQ(d[8], 0.0f);
}

TEST_F(SingleCollectives, RecordsPhasesAndCollectives) {
  moert_ctx_reset_stats(ctx_);
  ref::Tensor in(8), out(8);
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 8, 1, 1, 1, 0, 0);
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 8, 1, 1, 1, 0, 0);
  moert_wait(ctx_, moert_all_gather_start(ctx_, 3, in.data(), out.data(), 4, 8,
                                          1, 1, 1, 0));
  moert::json::Value stats;
  ASSERT_TRUE(
      moert::json::parse(moert_ctx_stats_json(ctx_), "stats", stats).isOk());
  std::map<std::string, int64_t> phases, calls, bytes;
  for (const auto &p : stats.get("phases")->elements())
    phases[p.get("name")->getString()] = p.get("calls")->getInt();
  for (const auto &c : stats.get("collectives")->elements()) {
    std::string key =
        c.get("op")->getString() + "@" + c.get("axis")->getString();
    calls[key] = c.get("calls")->getInt();
    bytes[key] = c.get("bytes_sent")->getInt();
  }
  EXPECT_EQ(phases["all_to_all"], 2);
  EXPECT_EQ(phases["all_gather_start"], 1);
  EXPECT_EQ(phases["all_gather_wait"], 1);
  EXPECT_EQ(calls["all_to_all@x"], 2);
  EXPECT_EQ(calls["all_gather@x,y"], 1);
  EXPECT_EQ(bytes["all_to_all@x"], 0); // nothing goes to other ranks
}

TEST_F(SingleCollectives, ValidationNamesTheValues) {
  ref::Tensor in(24), out(24);
  moert_all_to_all(ctx_, 4, in.data(), out.data(), 4, 24, 1, 1, 1, 0, 0);
  expectError(MOERT_ERR_INVALID, "axis_mask 0x4");
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 24, 1, 1, 1, 4, 0);
  expectError(MOERT_ERR_INVALID, "all_to_all over [x]: split_dim (4)");
  moert_all_gather(ctx_, 1, in.data(), out.data(), 0, 24, 1, 1, 1, 0);
  expectError(MOERT_ERR_INVALID, "all_gather over [x]: element size 0");
  moert_all_reduce(ctx_, 1, in.data(), out.data(), 24, 17);
  expectError(MOERT_ERR_INVALID, "unknown dtype 17");
  moert_all_gather(ctx_, 1, nullptr, out.data(), 4, 24, 1, 1, 1, 0);
  expectError(MOERT_ERR_INVALID, "in is null");
}

TEST_F(SingleCollectives, StickyErrorMakesCollectivesNoOps) {
  ref::Tensor in = ref::input(0, 8), out(8, -1);
  moert_all_to_all(ctx_, 8, in.data(), out.data(), 4, 8, 1, 1, 1, 0, 0);
  ASSERT_NE(moert_ctx_status(ctx_), MOERT_OK);
  std::string first = moert_ctx_error(ctx_);
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 8, 1, 1, 1, 0, 0);
  EXPECT_EQ(out[3], -1); // not run
  EXPECT_EQ(
      moert_all_reduce_start(ctx_, 1, in.data(), out.data(), 8, MOERT_F32),
      nullptr);
  moert_wait(ctx_, nullptr); // no-op under the sticky error
  EXPECT_EQ(first, moert_ctx_error(ctx_));
  moert_ctx_clear_error(ctx_);
  moert_wait(ctx_, nullptr);
  expectError(MOERT_ERR_INVALID, "moert_wait: null handle");
}

TEST(SingleWorld, HelpersAreCopies) {
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  moert_ctx *ctx;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  EXPECT_EQ(moert_world_init(nullptr, nullptr, MOERT_COMM_SINGLE), MOERT_OK);
  EXPECT_EQ(moert_world_barrier(ctx), MOERT_OK);
  int64_t v = 42, got = 0;
  EXPECT_EQ(moert_world_gather(ctx, &v, &got, 8), MOERT_OK);
  EXPECT_EQ(got, 42);
  got = 0;
  EXPECT_EQ(moert_world_allgather(ctx, &v, &got, 8), MOERT_OK);
  EXPECT_EQ(got, 42);
  EXPECT_EQ(moert_world_broadcast(ctx, &v, 8), MOERT_OK);
  EXPECT_EQ(moert_world_gather(ctx, &v, &got, -1), MOERT_ERR_INVALID);
  // Collectives without a mesh: mask 0 is this rank alone.
  float in[4] = {1, 2, 3, 4}, out[4] = {};
  moert_ctx_clear_error(ctx);
  moert_all_gather(ctx, 0, in, out, 4, 4, 1, 1, 1, 0);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  EXPECT_EQ(out[3], 4);
  moert_ctx_destroy(ctx);
}

} // namespace
