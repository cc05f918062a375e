//===- AssignTest.cpp - assign, dispatch and combine ----------------------===//
#include "RuntimeTestUtil.h"

#include <cmath>
#include <limits>

using namespace moert_test;

namespace {

using Assign = CpuRuntimeTest;

struct Placement {
  std::vector<int32_t> positions, counts;
};

Placement runAssign(moert_ctx *ctx, const std::vector<int32_t> &idx, int64_t k,
                    int64_t E, int64_t capacity, int64_t groups) {
  int64_t T = static_cast<int64_t>(idx.size()) / k;
  Placement p{std::vector<int32_t>(T * k, 99),
              std::vector<int32_t>(std::max<int64_t>(groups, 1) * E, 99)};
  moert_assign(ctx, idx.data(), p.positions.data(), p.counts.data(), T, k, E,
               capacity, groups);
  return p;
}

/// Spec of moert_assign written as directly as possible.
Placement assignRef(const std::vector<int32_t> &idx, int64_t k, int64_t E,
                    int64_t C, int64_t groups) {
  int64_t T = static_cast<int64_t>(idx.size()) / k;
  Placement p{std::vector<int32_t>(T * k, -1), {}};
  if (C == 0) {
    int32_t row = 0;
    p.counts.assign(E, 0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          if (idx[t * k + j] == e) {
            p.positions[t * k + j] = row++;
            ++p.counts[e];
          }
    return p;
  }
  p.counts.assign(groups * E, 0);
  int64_t Tg = T / groups;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t t = g * Tg; t < (g + 1) * Tg; ++t) {
        int32_t e = idx[t * k + j];
        int32_t &n = p.counts[g * E + e];
        if (n < C)
          p.positions[t * k + j] =
              static_cast<int32_t>(e * groups * C + g * C + n++);
      }
  return p;
}

std::vector<int32_t> randomIndices(int64_t T, int64_t k, int64_t E,
                                   unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<int32_t> idx;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> all(E);
    for (int32_t e = 0; e < E; ++e)
      all[e] = e;
    std::shuffle(all.begin(), all.end(), gen);
    idx.insert(idx.end(), all.begin(), all.begin() + k);
  }
  return idx;
}

TEST_F(Assign, DroplessOrdersRowsByExpertThenTokenThenChoice) {
  std::vector<int32_t> idx{2, 0, 0, 1, 2, 1, 0, 2};
  Placement p = runAssign(ctx, idx, 2, 3, 0, 1);
  ASSERT_TRUE(ok());
  EXPECT_EQ(p.positions, (std::vector<int32_t>{5, 0, 1, 3, 6, 4, 2, 7}));
  EXPECT_EQ(p.counts, (std::vector<int32_t>{3, 2, 3}));
}

TEST_F(Assign, DroplessAllTokensToOneExpertLeaveOthersEmpty) {
  std::vector<int32_t> idx(10, 2); // T = 10, k = 1
  Placement p = runAssign(ctx, idx, 1, 4, 0, 0);
  ASSERT_TRUE(ok());
  EXPECT_EQ(p.counts, (std::vector<int32_t>{0, 0, 10, 0}));
  for (int32_t t = 0; t < 10; ++t)
    EXPECT_EQ(p.positions[t], t);
}

TEST_F(Assign, DroplessMatchesReference) {
  std::vector<int32_t> idx = randomIndices(50, 3, 7, 1);
  Placement p = runAssign(ctx, idx, 3, 7, 0, 1);
  ASSERT_TRUE(ok());
  Placement want = assignRef(idx, 3, 7, 0, 1);
  EXPECT_EQ(p.positions, want.positions);
  EXPECT_EQ(p.counts, want.counts);
}

TEST_F(Assign, CapacityServesFirstChoicesBeforeSecondChoices) {
  // Expert 1 gives its first slot to token 3's first choice even though
  // token 0's second choice comes earlier in token order.
  std::vector<int32_t> idx{0, 1, 0, 1, 0, 1, 1, 0};
  Placement p = runAssign(ctx, idx, 2, 2, 2, 1);
  ASSERT_TRUE(ok());
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, 3, 1, -1, -1, -1, 2, -1}));
  EXPECT_EQ(p.counts, (std::vector<int32_t>{2, 2}));
}

TEST_F(Assign, CapacityIsPerTokenGroup) {
  std::vector<int32_t> idx{0, 0, 0, 1}; // k = 1, two groups of two tokens
  Placement p = runAssign(ctx, idx, 1, 2, 1, 2);
  ASSERT_TRUE(ok());
  // position = e*(groups*C) + g*C + slot
  EXPECT_EQ(p.positions, (std::vector<int32_t>{0, -1, 1, 3}));
  EXPECT_EQ(p.counts, (std::vector<int32_t>{1, 0, 1, 1}));
}

TEST_F(Assign, CapacityBelowOneTokenRoundsUpToOne) {
  // cf = 1, T = 4, k = 1, E = 8: cf*T*k/E = 0.5, C = ceil(0.5) = 1.
  int64_t C = static_cast<int64_t>(std::ceil(1.0 * 4 * 1 / 8));
  ASSERT_EQ(C, 1);
  std::vector<int32_t> idx{3, 3, 5, 3};
  Placement p = runAssign(ctx, idx, 1, 8, C, 1);
  ASSERT_TRUE(ok());
  EXPECT_EQ(p.positions, (std::vector<int32_t>{3, -1, 5, -1}));
  EXPECT_EQ(p.counts, (std::vector<int32_t>{0, 0, 0, 1, 0, 1, 0, 0}));
}

TEST_F(Assign, CapacityMatchesReference) {
  std::vector<int32_t> idx = randomIndices(48, 2, 6, 2);
  for (int64_t groups : {1, 3, 4}) {
    for (int64_t C : {1, 3, 16}) {
      Placement p = runAssign(ctx, idx, 2, 6, C, groups);
      ASSERT_TRUE(ok());
      Placement want = assignRef(idx, 2, 6, C, groups);
      EXPECT_EQ(p.positions, want.positions) << groups << " groups, C " << C;
      EXPECT_EQ(p.counts, want.counts) << groups << " groups, C " << C;
    }
  }
}

TEST_F(Assign, DispatchCopiesRowsAndZeroesTheRest) {
  int64_t T = 3, k = 2, D = 5, rows = 8;
  std::vector<float> x = randomVec(T * D, 3);
  std::vector<int32_t> pos{4, -1, 0, 6, -1, 2}; // rows 1, 3, 5, 7 unused
  std::vector<float> out(rows * D, std::numeric_limits<float>::quiet_NaN());
  moert_dispatch(ctx, x.data(), pos.data(), out.data(), T, k, D, rows,
                 MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<float> want(rows * D, 0.0f);
  for (int64_t i = 0; i < T * k; ++i)
    if (pos[i] >= 0)
      std::copy(&x[(i / k) * D], &x[(i / k) * D] + D, &want[pos[i] * D]);
  EXPECT_EQ(out, want);
}

TEST_F(Assign, DispatchAfterDroplessAssignIsSortedByExpert) {
  int64_t T = 40, k = 2, E = 5, D = 300; // big enough for the threads
  std::vector<int32_t> idx = randomIndices(T, k, E, 4);
  Placement p = runAssign(ctx, idx, k, E, 0, 1);
  std::vector<float> x = randomVec(T * D, 5), out(T * k * D, -1.0f);
  moert_dispatch(ctx, x.data(), p.positions.data(), out.data(), T, k, D, T * k,
                 MOERT_F32);
  ASSERT_TRUE(ok());
  for (int64_t i = 0; i < T * k; ++i)
    for (int64_t d = 0; d < D; ++d)
      ASSERT_EQ(out[p.positions[i] * D + d], x[(i / k) * D + d]);
}

std::vector<double> combineRef(const std::vector<float> &y,
                               const std::vector<int32_t> &pos,
                               const std::vector<float> &w,
                               const float *passthrough, int64_t T, int64_t k,
                               int64_t D) {
  std::vector<double> out(T * D, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) {
      int32_t p = pos[t * k + j];
      for (int64_t d = 0; d < D; ++d) {
        double v = p >= 0 ? y[p * D + d]
                          : (passthrough ? passthrough[t * D + d] : 0.0);
        out[t * D + d] += w[t * k + j] * v;
      }
    }
  return out;
}

TEST_F(Assign, CombineWeighsKeptAssignmentsAndDropsTheRest) {
  int64_t T = 4, k = 2, D = 6, rows = 5;
  std::vector<float> y = randomVec(rows * D, 6), w = randomVec(T * k, 7, 0, 1);
  std::vector<int32_t> pos{0, 3, -1, 1, 4, -1, -1, -1};
  std::vector<float> out(T * D, 123.0f);
  moert_combine(ctx, y.data(), pos.data(), w.data(), nullptr, out.data(), T, k,
                D, MOERT_F32);
  ASSERT_TRUE(ok());
  expectClose(out, combineRef(y, pos, w, nullptr, T, k, D), 1e-6, 1e-7, "out");
  for (int64_t d = 0; d < D; ++d)
    EXPECT_EQ(out[3 * D + d], 0.0f) << "a fully dropped token is zero";
}

TEST_F(Assign, CombinePassthroughReplacesDroppedAssignments) {
  int64_t T = 3, k = 2, D = 4, rows = 3;
  std::vector<float> y = randomVec(rows * D, 8), w = randomVec(T * k, 9, 0, 1);
  std::vector<float> x = randomVec(T * D, 10);
  std::vector<int32_t> pos{2, -1, -1, -1, 0, 1};
  std::vector<float> out(T * D);
  moert_combine(ctx, y.data(), pos.data(), w.data(), x.data(), out.data(), T, k,
                D, MOERT_F32);
  ASSERT_TRUE(ok());
  expectClose(out, combineRef(y, pos, w, x.data(), T, k, D), 1e-6, 1e-7, "out");
  for (int64_t d = 0; d < D; ++d) // token 1: both choices dropped
    EXPECT_FLOAT_EQ(out[D + d], (w[2] + w[3]) * x[D + d]);
}

TEST_F(Assign, CombineOfLargeBufferMatchesReference) {
  int64_t T = 256, k = 2, D = 200; // exercises the threaded path
  std::vector<int32_t> idx = randomIndices(T, k, 4, 11);
  Placement p = runAssign(ctx, idx, k, 4, 100, 2);
  std::vector<float> y = randomVec(4 * 200 * D, 12);
  std::vector<float> w = randomVec(T * k, 13, 0, 1), out(T * D);
  moert_combine(ctx, y.data(), p.positions.data(), w.data(), nullptr,
                out.data(), T, k, D, MOERT_F32);
  ASSERT_TRUE(ok());
  expectClose(out, combineRef(y, p.positions, w, nullptr, T, k, D), 1e-5, 1e-6,
              "out");
}

} // namespace

namespace {

using RowChunks = CpuRuntimeTest;

// moert_chunk_counts / moert_chunk_rows against the definition: chunk i of n
// holds rows [c*i/n, c*(i+1)/n) of every segment of c rows, packed; joining
// the n chunks gives back every counted row, and zeros after them.
TEST_F(RowChunks, ChunksAndJoinMatchTheDefinition) {
  const std::vector<int32_t> counts = {5, 0, 2, 9, 1, 7}; // 24 rows
  const int64_t segs = 6, rows = 30, D = 3;
  std::vector<float> src(rows * D);
  for (size_t i = 0; i < src.size(); ++i)
    src[i] = float(i);
  for (int64_t n : {1, 2, 3, 8}) {
    SCOPED_TRACE(n);
    const int64_t part = std::min(rows, (rows + segs * (n - 1)) / n);
    std::vector<float> joined(rows * D, -1.0f);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> c(segs, -1);
      moert_chunk_counts(ctx, counts.data(), c.data(), segs, i, n);
      std::vector<float> chunk(part * D, -1.0f);
      moert_chunk_rows(ctx, src.data(), chunk.data(), counts.data(), segs,
                       D * 4, rows, part, i, n, 0);
      ASSERT_TRUE(ok());
      std::vector<float> want;
      int64_t first = 0;
      for (int64_t s = 0; s < segs; ++s) {
        int64_t lo = counts[s] * i / n, hi = counts[s] * (i + 1) / n;
        EXPECT_EQ(c[s], hi - lo);
        for (int64_t r = first + lo; r < first + hi; ++r)
          for (int64_t d = 0; d < D; ++d)
            want.push_back(src[r * D + d]);
        first += counts[s];
      }
      want.resize(part * D, 0.0f);
      EXPECT_EQ(chunk, want);
      moert_chunk_rows(ctx, chunk.data(), joined.data(), counts.data(), segs,
                       D * 4, part, rows, i, n, 1);
      ASSERT_TRUE(ok());
    }
    std::vector<float> want(src.begin(), src.begin() + 24 * D);
    want.resize(rows * D, 0.0f);
    EXPECT_EQ(joined, want);
  }
}

TEST_F(RowChunks, CountsPastTheBufferAreAnError) {
  const std::vector<int32_t> counts = {4, 4};
  std::vector<float> src(6 * 2), dst(6 * 2);
  moert_chunk_rows(ctx, src.data(), dst.data(), counts.data(), 2, 8, 6, 6, 0, 1,
                   0);
  EXPECT_NE(moert_ctx_status(ctx), MOERT_OK);
  EXPECT_NE(err().find("moert_chunk_rows: the counts"), std::string::npos)
      << err();
}

} // namespace
