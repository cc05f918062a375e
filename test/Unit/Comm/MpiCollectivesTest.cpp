//===- MpiCollectivesTest.cpp - Collective entry points on a 2x2 mesh -----===//
//
// Run under mpirun -np 4: mesh axes a (size 2) and b (size 2), world rank =
// 2*a + b. Masks: 1 = [a], 2 = [b], 3 = [a,b]. Each rank computes the
// expected output from every peer's (deterministic) input.
//
//===----------------------------------------------------------------------===//
#include "CollectiveRef.h"
#include "moert/moert.h"
#include "support/Json.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>

namespace {

const std::vector<int64_t> kMesh = {2, 2};

class MpiCollectives : public ::testing::Test {
protected:
  void SetUp() override { ctx_ = makeCtx(60); }
  void TearDown() override { moert_ctx_destroy(ctx_); }

  static moert_ctx *makeCtx(double timeout) {
    moert_ctx_options o;
    moert_ctx_options_init(&o);
    static const char *axes[2] = {"a", "b"};
    o.comm = MOERT_COMM_MPI;
    o.mesh_rank = 2;
    o.mesh_shape = kMesh.data();
    o.mesh_axes = axes;
    o.timeout_s = timeout;
    o.num_threads = 1;
    moert_ctx *ctx = nullptr;
    EXPECT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
    return ctx;
  }

  int rank() const { return moert_ctx_rank(ctx_); }
  std::vector<int> group(int64_t mask) const {
    return ref::groupRanks(kMesh, rank(), mask);
  }
  int groupRank(int64_t mask) const {
    std::vector<int> g = group(mask);
    return static_cast<int>(std::find(g.begin(), g.end(), rank()) - g.begin());
  }
  std::vector<ref::Tensor> groupInputs(int64_t mask, int64_t n) const {
    std::vector<ref::Tensor> ins;
    for (int r : group(mask))
      ins.push_back(ref::input(r, n));
    return ins;
  }
  void expectOk() {
    ASSERT_EQ(moert_ctx_status(ctx_), MOERT_OK) << moert_ctx_error(ctx_);
  }

  moert_ctx *ctx_ = nullptr;
};

TEST_F(MpiCollectives, ContextSeesTheMesh) {
  ASSERT_NE(ctx_, nullptr);
  EXPECT_EQ(moert_ctx_world_size(ctx_), 4);
  EXPECT_EQ(moert_ctx_coord(ctx_, 0), rank() / 2);
  EXPECT_EQ(moert_ctx_coord(ctx_, 1), rank() % 2);
}

TEST_F(MpiCollectives, AllToAllForEverySplitAndConcat) {
  ref::Dims d = {4, 4, 2, 4};
  for (int64_t mask : {1, 2, 3}) {
    for (int s = 0; s < 4; ++s) {
      if (s == 2 && mask == 3)
        continue; // d[2] = 2 does not split over 4 ranks
      for (int c = 0; c < 4; ++c) {
        ref::Tensor in = ref::input(rank(), ref::numel(d));
        ref::Tensor out(in.size(), -1);
        moert_all_to_all(ctx_, mask, in.data(), out.data(), 4, d[0], d[1], d[2],
                         d[3], s, c);
        expectOk();
        ref::Tensor want = ref::allToAll(groupInputs(mask, ref::numel(d)), d, s,
                                         c, groupRank(mask));
        ASSERT_EQ(out, want)
            << "mask " << mask << " split " << s << " concat " << c;
      }
    }
  }
}

TEST_F(MpiCollectives, AllToAllInPlace) {
  ref::Dims d = {2, 8, 1, 1};
  ref::Tensor buf = ref::input(rank(), 16);
  moert_all_to_all(ctx_, 3, buf.data(), buf.data(), 4, 2, 8, 1, 1, 1, 0);
  expectOk();
  EXPECT_EQ(buf, ref::allToAll(groupInputs(3, 16), d, 1, 0, groupRank(3)));
}

/// Rows (of 3 floats) group member g sends to member p: uneven, some zero.
int rowsFor(int g, int p, int entry) { return (g * 2 + p * 3 + entry) % 3; }

TEST_F(MpiCollectives, UnevenAllToAllVWithZeroSizedSends) {
  const int64_t kRow = 3;
  for (int64_t mask : {1, 2, 3}) {
    std::vector<int> g = group(mask);
    int n = static_cast<int>(g.size()), me = groupRank(mask);
    // Two count entries per peer (e.g. two local experts).
    std::vector<int32_t> sc, rc;
    int64_t sendRows = 0, recvRows = 0;
    for (int p = 0; p < n; ++p)
      for (int e = 0; e < 2; ++e) {
        sc.push_back(rowsFor(me, p, e));
        rc.push_back(rowsFor(p, me, e));
        sendRows += sc.back();
        recvRows += rc.back();
      }
    ref::Tensor in = ref::input(g[me], (sendRows + 1) * kRow);
    ref::Tensor out((recvRows + 2) * kRow, -1);
    moert_all_to_all_v(ctx_, mask, in.data(), sc.data(), rc.data(), out.data(),
                       2 * n, 2 * n, kRow * 4, sendRows + 1, recvRows + 2);
    expectOk();
    int64_t row = 0;
    for (int p = 0; p < n; ++p) {
      int64_t start = 0; // where p's rows for me start in p's input
      for (int q = 0; q < me; ++q)
        start += rowsFor(p, q, 0) + rowsFor(p, q, 1);
      int64_t rows = rowsFor(p, me, 0) + rowsFor(p, me, 1);
      for (int64_t r = 0; r < rows; ++r, ++row)
        for (int k = 0; k < kRow; ++k)
          ASSERT_EQ(out[row * kRow + k],
                    ref::inputValue(g[p], (start + r) * kRow + k))
              << "mask " << mask << " from " << p;
    }
    for (int64_t i = recvRows * kRow; i < (recvRows + 2) * kRow; ++i)
      ASSERT_EQ(out[i], 0.0f) << "tail not zeroed";
  }
}

TEST_F(MpiCollectives, AllGatherReduceScatterAllReduceOverSubGroups) {
  ref::Dims d = {4, 2, 4, 3};
  int64_t n = ref::numel(d);
  for (int64_t mask : {1, 2, 3}) {
    std::vector<ref::Tensor> ins = groupInputs(mask, n);
    int gs = static_cast<int>(ins.size()), me = groupRank(mask);
    ref::Tensor in = ref::input(rank(), n);
    for (int dim = 0; dim < 4; ++dim) {
      ref::Tensor out(n * gs, -1);
      moert_all_gather(ctx_, mask, in.data(), out.data(), 4, d[0], d[1], d[2],
                       d[3], dim);
      expectOk();
      ASSERT_EQ(out, ref::allGather(ins, d, dim)) << mask << " " << dim;
      if (d[dim] % gs)
        continue;
      ref::Tensor part(n / gs, -1);
      moert_reduce_scatter(ctx_, mask, in.data(), part.data(), d[0], d[1], d[2],
                           d[3], dim, MOERT_F32);
      expectOk();
      ASSERT_EQ(part, ref::reduceScatter(ins, d, dim, me)) << mask << dim;
    }
    ref::Tensor sum = in;
    moert_all_reduce(ctx_, mask, sum.data(), sum.data(), n, MOERT_F32);
    expectOk();
    ASSERT_EQ(sum, ref::allReduce(ins));
  }
}

TEST_F(MpiCollectives, SliceKeepsThisRanksChunk) {
  ref::Dims d = {4, 2, 4, 2};
  ref::Tensor in = ref::input(rank(), ref::numel(d));
  moert_ctx_reset_stats(ctx_);
  for (int64_t mask : {1, 2, 3}) {
    int n = static_cast<int>(group(mask).size()), me = groupRank(mask);
    for (int dim : {0, 2}) {
      ref::Dims od = d;
      od[dim] /= n;
      ref::Tensor out(ref::numel(od), -1), want(out.size());
      ref::forEach(od, [&](const ref::Dims &o) {
        ref::Dims i = o;
        i[dim] += me * od[dim];
        want[ref::flat(od, o)] = in[ref::flat(d, i)];
      });
      moert_slice(ctx_, mask, in.data(), out.data(), 4, d[0], d[1], d[2], d[3],
                  dim);
      expectOk();
      ASSERT_EQ(out, want) << "mask " << mask << " dim " << dim;
      ref::Tensor buf = in; // in place: the chunk lands at the front
      moert_slice(ctx_, mask, buf.data(), buf.data(), 4, d[0], d[1], d[2], d[3],
                  dim);
      expectOk();
      ASSERT_TRUE(std::equal(want.begin(), want.end(), buf.begin()));
    }
  }
  // A phase, not a collective.
  EXPECT_EQ(std::string(moert_ctx_stats_json(ctx_)).find("\"op\""),
            std::string::npos);
}

TEST_F(MpiCollectives, AsyncStartAndWaitOverlap) {
  ref::Dims d = {4, 4, 1, 1};
  ref::Tensor in = ref::input(rank(), 16), a(16, -1), b(32, -1), c(16, -1);
  void *ha =
      moert_all_to_all_start(ctx_, 3, in.data(), a.data(), 4, 4, 4, 1, 1, 1, 0);
  void *hb =
      moert_all_gather_start(ctx_, 1, in.data(), b.data(), 4, 4, 4, 1, 1, 1);
  void *hc =
      moert_all_reduce_start(ctx_, 2, in.data(), c.data(), 16, MOERT_F32);
  expectOk();
  moert_wait(ctx_, hc);
  moert_wait(ctx_, ha);
  moert_wait(ctx_, hb);
  expectOk();
  EXPECT_EQ(a, ref::allToAll(groupInputs(3, 16), d, 1, 0, groupRank(3)));
  EXPECT_EQ(b, ref::allGather(groupInputs(1, 16), d, 1));
  EXPECT_EQ(c, ref::allReduce(groupInputs(2, 16)));
  int32_t counts[4] = {1, 1, 1, 1};
  ref::Tensor v(4, -1);
  void *hv = moert_all_to_all_v_start(ctx_, 3, in.data(), counts, counts,
                                      v.data(), 4, 4, 4, 16, 4);
  ref::Tensor rs(8, -1);
  void *hr = moert_reduce_scatter_start(ctx_, 1, in.data(), rs.data(), 16, 1, 1,
                                        1, 0, MOERT_F32);
  moert_wait(ctx_, hr);
  moert_wait(ctx_, hv);
  expectOk();
  for (int p = 0; p < 4; ++p)
    EXPECT_EQ(v[p], ref::inputValue(p, rank()));
  EXPECT_EQ(rs, ref::reduceScatter(groupInputs(1, 16), {16, 1, 1, 1}, 0,
                                   groupRank(1)));
}

TEST_F(MpiCollectives, StatsCountBytesSentToOtherRanks) {
  moert_ctx_reset_stats(ctx_);
  ref::Tensor in(64), out(256);
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 64, 1, 1, 1, 0, 0);
  moert_all_to_all(ctx_, 1, in.data(), out.data(), 4, 64, 1, 1, 1, 0, 0);
  moert_all_gather(ctx_, 3, in.data(), out.data(), 4, 64, 1, 1, 1, 0);
  moert_all_reduce(ctx_, 2, in.data(), out.data(), 64, MOERT_F32);
  moert_reduce_scatter(ctx_, 3, in.data(), out.data(), 64, 1, 1, 1, 0,
                       MOERT_F32);
  // Rank r sends r rows of 4 bytes to each of the 3 others (and to itself).
  std::vector<int32_t> sc(4, rank()), rc = {0, 1, 2, 3};
  moert_all_to_all_v(ctx_, 3, in.data(), sc.data(), rc.data(), out.data(), 4, 4,
                     4, 64, 64);
  expectOk();
  moert::json::Value stats;
  ASSERT_TRUE(
      moert::json::parse(moert_ctx_stats_json(ctx_), "stats", stats).isOk());
  std::map<std::string, std::pair<int64_t, int64_t>> got;
  for (const auto &c : stats.get("collectives")->elements())
    got[c.get("op")->getString() + "@" + c.get("axis")->getString()] = {
        c.get("calls")->getInt(), c.get("bytes_sent")->getInt()};
  EXPECT_EQ(got["all_to_all@a"], std::make_pair(int64_t(2), int64_t(256)));
  EXPECT_EQ(got["all_gather@a,b"], std::make_pair(int64_t(1), int64_t(768)));
  EXPECT_EQ(got["all_reduce@b"], std::make_pair(int64_t(1), int64_t(256)));
  EXPECT_EQ(got["reduce_scatter@a,b"],
            std::make_pair(int64_t(1), int64_t(192)));
  EXPECT_EQ(got["all_to_all_v@a,b"],
            std::make_pair(int64_t(1), int64_t(3 * rank() * 4)));
}

TEST_F(MpiCollectives, MismatchedShapesFailOnEveryRank) {
  ref::Tensor in(12), out(12);
  moert_all_to_all(ctx_, 3, in.data(), out.data(), 4, 6, 2, 1, 1, 0, 0);
  EXPECT_EQ(moert_ctx_status(ctx_), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_ctx_error(ctx_))
                .find("all_to_all over [a,b]: split dimension 0 of size 6 is "
                      "not divisible by the group size 4"),
            std::string::npos)
      << moert_ctx_error(ctx_);
}

TEST_F(MpiCollectives, WorldHelpers) {
  int64_t v = rank() == 0 ? 77 : 0;
  ASSERT_EQ(moert_world_broadcast(ctx_, &v, 8), MOERT_OK);
  EXPECT_EQ(v, 77);
  int32_t mine = rank() + 10, all[4] = {};
  ASSERT_EQ(moert_world_gather(ctx_, &mine, rank() == 0 ? all : nullptr, 4),
            MOERT_OK);
  if (rank() == 0) {
    EXPECT_EQ(all[3], 13);
  }
  ASSERT_EQ(moert_world_allgather(ctx_, &mine, all, 4), MOERT_OK);
  EXPECT_EQ(all[2], 12);
  EXPECT_EQ(moert_world_barrier(ctx_), MOERT_OK);
  EXPECT_EQ(moert_world_launched(), 1);
  // The world as moe-run sees it without reaching for MPI itself.
  EXPECT_EQ(moert_world_rank(), rank());
  EXPECT_EQ(moert_world_size(), moert_ctx_world_size(ctx_));
  EXPECT_EQ(moert_world_launcher_size(), moert_ctx_world_size(ctx_));
}

// Last: leaves an abandoned collective behind on the ranks that timed out.
TEST_F(MpiCollectives, ZTimeoutWhenOneRankSkipsACollective) {
  moert_ctx *quick = makeCtx(1.0);
  ASSERT_NE(quick, nullptr);
  float x[4] = {1, 2, 3, 4}, y[4];
  if (rank() != 0) {
    moert_all_reduce(quick, 3, x, y, 4, MOERT_F32);
    EXPECT_EQ(moert_ctx_status(quick), MOERT_ERR_TIMEOUT);
    std::string msg = moert_ctx_error(quick);
    EXPECT_NE(msg.find("all_reduce over [a,b] timed out after 1."),
              std::string::npos)
        << msg;
    // Sticky: later collectives are no-ops and return at once.
    moert_all_reduce(quick, 3, x, y, 4, MOERT_F32);
    EXPECT_EQ(moert_ctx_error(quick), msg);
  }
  EXPECT_EQ(moert_world_barrier(ctx_), MOERT_OK) << moert_ctx_error(ctx_);
  moert_ctx_destroy(quick);
}

} // namespace
