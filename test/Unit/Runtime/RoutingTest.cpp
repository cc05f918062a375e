//===- RoutingTest.cpp - router, topk, expert_load and the aux losses -----===//
#include "RuntimeTestUtil.h"

#include <algorithm>
#include <numeric>

using namespace moert_test;

namespace {

using Routing = CpuRuntimeTest;

struct TopkArgs {
  int64_t E = 8, k = 2;
  int32_t scoreFn = MOERT_SCORE_SOFTMAX;
  bool renormalize = false;
  float scaling = 1.0f;
  int64_t groups = 0, kept = 0;
  int32_t groupScore = MOERT_GROUP_SCORE_MAX;
  const float *bias = nullptr;
};

struct TopkResult {
  std::vector<int32_t> idx;
  std::vector<double> weights, scores;
};

/// docs/spec.md items 3.1-3.4 for one token, in double, by sorting.
TopkResult topkRef(const float *logits, const TopkArgs &a) {
  int64_t E = a.E;
  TopkResult r;
  r.scores.resize(E);
  double m = *std::max_element(logits, logits + E), sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    r.scores[e] = a.scoreFn == MOERT_SCORE_SIGMOID
                      ? 1.0 / (1.0 + std::exp(-double(logits[e])))
                      : std::exp(double(logits[e]) - m);
    sum += r.scores[e];
  }
  if (a.scoreFn == MOERT_SCORE_SOFTMAX)
    for (double &s : r.scores)
      s /= sum;
  std::vector<double> sel(E);
  for (int64_t e = 0; e < E; ++e)
    sel[e] = r.scores[e] + (a.bias ? a.bias[e] : 0.0);
  std::vector<bool> allowed(E, true);
  if (a.groups > 1) {
    int64_t per = E / a.groups;
    std::vector<std::pair<double, int64_t>> gs;
    for (int64_t g = 0; g < a.groups; ++g) {
      std::vector<double> v(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(v.rbegin(), v.rend());
      double s = a.groupScore == MOERT_GROUP_SCORE_MAX ? v[0] : v[0] + v[1];
      gs.push_back({-s, g});
    }
    std::sort(gs.begin(), gs.end()); // best first, lower group on ties
    std::vector<bool> keep(a.groups, false);
    for (int64_t i = 0; i < a.kept; ++i)
      keep[gs[i].second] = true;
    for (int64_t e = 0; e < E; ++e)
      allowed[e] = keep[e / per];
  }
  std::vector<std::pair<double, int64_t>> order;
  for (int64_t e = 0; e < E; ++e)
    if (allowed[e])
      order.push_back({-sel[e], e});
  std::sort(order.begin(), order.end());
  double wsum = 0;
  for (int64_t j = 0; j < a.k; ++j) {
    r.idx.push_back(static_cast<int32_t>(order[j].second));
    r.weights.push_back(r.scores[order[j].second]);
    wsum += r.weights.back();
  }
  for (double &w : r.weights)
    w = (a.renormalize ? w / wsum : w) * a.scaling;
  return r;
}

/// Runs moert_topk on T rows of logits.
TopkResult runTopk(moert_ctx *ctx, const std::vector<float> &logits,
                   const TopkArgs &a) {
  int64_t T = static_cast<int64_t>(logits.size()) / a.E;
  std::vector<float> w(T * a.k), s(T * a.E);
  TopkResult r;
  r.idx.resize(T * a.k);
  moert_topk(ctx, logits.data(), a.bias, w.data(), r.idx.data(), s.data(), T,
             a.E, a.k, a.scoreFn, a.renormalize, a.scaling, a.groups, a.kept,
             a.groupScore);
  r.weights.assign(w.begin(), w.end());
  r.scores.assign(s.begin(), s.end());
  return r;
}

/// Compares moert_topk with the reference on every row.
void expectTopkMatches(moert_ctx *ctx, const std::vector<float> &logits,
                       const TopkArgs &a) {
  TopkResult got = runTopk(ctx, logits, a);
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  TopkResult want;
  for (size_t t = 0; t < logits.size() / a.E; ++t) {
    TopkResult row = topkRef(logits.data() + t * a.E, a);
    want.idx.insert(want.idx.end(), row.idx.begin(), row.idx.end());
    want.weights.insert(want.weights.end(), row.weights.begin(),
                        row.weights.end());
    want.scores.insert(want.scores.end(), row.scores.begin(), row.scores.end());
  }
  EXPECT_EQ(got.idx, want.idx);
  expectClose(got.weights, want.weights, 1e-5, 1e-7, "weights");
  expectClose(got.scores, want.scores, 1e-5, 1e-7, "scores");
}

TEST_F(Routing, RouterMatchesReference) {
  for (auto [T, D, E] : {std::tuple<int64_t, int64_t, int64_t>{5, 19, 6},
                         {1, 7, 1},
                         {64, 128, 8}}) {
    std::vector<float> x = randomVec(T * D, 1), w = randomVec(E * D, 2);
    std::vector<float> logits(T * E);
    moert_router(ctx, x.data(), w.data(), logits.data(), T, D, E, MOERT_F32);
    ASSERT_TRUE(ok());
    std::vector<double> want(T * E, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t d = 0; d < D; ++d)
          want[t * E + e] += double(x[t * D + d]) * w[e * D + d];
    expectClose(logits, want, 1e-5, 1e-5, "logits");
  }
}

TEST_F(Routing, SoftmaxTopkMatchesReference) {
  TopkArgs a;
  expectTopkMatches(ctx, randomVec(32 * 8, 3, -2, 2), a);
  a.k = 8; // every expert, in decreasing order
  expectTopkMatches(ctx, randomVec(4 * 8, 4, -2, 2), a);
}

TEST_F(Routing, SingleTokenAndSingleExpert) {
  TopkArgs a;
  expectTopkMatches(ctx, randomVec(8, 5), a); // T = 1
  a.E = 1;
  a.k = 1;
  TopkResult r = runTopk(ctx, {0.3f, -7.0f}, a);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(r.weights, (std::vector<double>{1.0, 1.0}));
}

TEST_F(Routing, IndicesAreInDecreasingScoreOrder) {
  TopkArgs a;
  a.E = 5;
  a.k = 3;
  TopkResult r = runTopk(ctx, {0.1f, 2.0f, -1.0f, 3.0f, 1.0f}, a);
  ASSERT_TRUE(ok());
  EXPECT_EQ(r.idx, (std::vector<int32_t>{3, 1, 4}));
  EXPECT_GT(r.weights[0], r.weights[1]);
  EXPECT_GT(r.weights[1], r.weights[2]);
}

TEST_F(Routing, TiesGoToTheLowerExpert) {
  TopkArgs a;
  a.E = 5;
  a.k = 2;
  TopkResult r = runTopk(ctx,
                         {1.0f, 3.0f, 3.0f, 0.0f, 3.0f, // three-way tie
                          0.5f, 0.5f, 0.5f, 0.5f, 0.5f},
                         a);
  ASSERT_TRUE(ok());
  EXPECT_EQ(r.idx, (std::vector<int32_t>{1, 2, 0, 1}));
  EXPECT_FLOAT_EQ(r.weights[2], 0.2f);
}

TEST_F(Routing, RenormalizeThenScale) {
  TopkArgs a;
  a.renormalize = true;
  a.scaling = 2.5f;
  std::vector<float> logits = randomVec(16 * 8, 6, -2, 2);
  expectTopkMatches(ctx, logits, a);
  TopkResult r = runTopk(ctx, logits, a);
  for (int64_t t = 0; t < 16; ++t)
    EXPECT_NEAR(r.weights[2 * t] + r.weights[2 * t + 1], 2.5, 1e-5);
}

TEST_F(Routing, SigmoidBiasChangesSelectionNotWeights) {
  TopkArgs a;
  a.scoreFn = MOERT_SCORE_SIGMOID;
  a.E = 4;
  std::vector<float> logits{2.0f, 1.0f, 0.0f, -1.0f};
  TopkResult plain = runTopk(ctx, logits, a);
  EXPECT_EQ(plain.idx, (std::vector<int32_t>{0, 1}));
  std::vector<float> bias{0.0f, 0.0f, 0.0f, 0.9f}; // lifts expert 3 to 1st
  a.bias = bias.data();
  TopkResult biased = runTopk(ctx, logits, a);
  ASSERT_TRUE(ok());
  EXPECT_EQ(biased.idx, (std::vector<int32_t>{3, 0}));
  EXPECT_NEAR(biased.weights[0], 1.0 / (1.0 + std::exp(1.0)), 1e-6);
  EXPECT_NEAR(biased.weights[1], 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
  expectClose(biased.scores, plain.scores, 0, 0, "scores (bias-free)");
  std::vector<float> manyBias = randomVec(8, 7, -0.3f, 0.3f);
  a = TopkArgs();
  a.scoreFn = MOERT_SCORE_SIGMOID;
  a.bias = manyBias.data();
  a.renormalize = true;
  expectTopkMatches(ctx, randomVec(32 * 8, 8, -2, 2), a);
}

TEST_F(Routing, GroupScoreMaxAndTop2SumPickDifferentGroups) {
  // Every score is 0.5; the bias shapes the selection scores:
  //   group 0 {1.4, 0.5} max 1.4 sum 1.9; group 1 {1.1, 1.0} max 1.1 sum 2.1.
  std::vector<float> bias{0.9f, 0.0f, 0.6f, 0.5f, 0.1f, 0.1f, 0.2f, 0.0f};
  std::vector<float> logits(8, 0.0f);
  TopkArgs a;
  a.scoreFn = MOERT_SCORE_SIGMOID;
  a.bias = bias.data();
  a.groups = 4;
  a.kept = 1;
  TopkResult byMax = runTopk(ctx, logits, a);
  EXPECT_EQ(byMax.idx, (std::vector<int32_t>{0, 1}));
  a.groupScore = MOERT_GROUP_SCORE_TOP2_SUM;
  TopkResult bySum = runTopk(ctx, logits, a);
  EXPECT_EQ(bySum.idx, (std::vector<int32_t>{2, 3}));
  ASSERT_TRUE(ok());
  EXPECT_EQ(bySum.weights, (std::vector<double>{0.5, 0.5}));
}

TEST_F(Routing, GroupTiesKeepLowerGroups) {
  TopkArgs a;
  a.groups = 4;
  a.kept = 2;
  a.k = 3;
  TopkResult r = runTopk(ctx, std::vector<float>(8, 1.0f), a);
  ASSERT_TRUE(ok());
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, 1, 2}));
}

TEST_F(Routing, GroupLimitedMatchesReference) {
  std::vector<float> bias = randomVec(16, 9, -0.1f, 0.1f);
  for (int32_t gs : {MOERT_GROUP_SCORE_MAX, MOERT_GROUP_SCORE_TOP2_SUM}) {
    for (int32_t fn : {MOERT_SCORE_SOFTMAX, MOERT_SCORE_SIGMOID}) {
      TopkArgs a;
      a.E = 16;
      a.k = 4;
      a.groups = 4;
      a.kept = 2;
      a.groupScore = gs;
      a.scoreFn = fn;
      a.bias = fn == MOERT_SCORE_SIGMOID ? bias.data() : nullptr;
      a.renormalize = fn == MOERT_SCORE_SIGMOID;
      a.scaling = 2.5f;
      SCOPED_TRACE("group score " + std::to_string(gs) + ", score fn " +
                   std::to_string(fn));
      expectTopkMatches(ctx, randomVec(64 * 16, 10 + gs + 2 * fn, -3, 3), a);
    }
  }
}

TEST_F(Routing, ExpertLoadCountsAssignmentsAndSumsScores) {
  int64_t T = 6, k = 2, E = 4;
  std::vector<float> scores = randomVec(T * E, 11, 0, 1);
  std::vector<int32_t> idx{0, 1, 1, 2, 1, 0, 3, 1, 0, 1, 1, 3};
  std::vector<float> stats(2 * E, -1.0f);
  moert_expert_load(ctx, scores.data(), idx.data(), stats.data(), T, k, E);
  ASSERT_TRUE(ok());
  std::vector<double> want(2 * E, 0.0);
  for (int32_t e : idx)
    want[e] += 1;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      want[E + e] += scores[t * E + e];
  EXPECT_EQ(stats[0], 3.0f);
  EXPECT_EQ(stats[1], 6.0f);
  EXPECT_EQ(stats[2], 1.0f);
  EXPECT_EQ(stats[3], 2.0f);
  expectClose(stats, want, 1e-6, 0, "stats");
}

TEST_F(Routing, LoadBalanceLossIsCoeffWhenBalanced) {
  // f_e = P_e = 1/E for every e: E * sum_e (1/E)^2 = 1.
  std::vector<float> stats{4, 4, 4, 4, 2, 2, 2, 2};
  float out = 0;
  moert_load_balance_loss(ctx, stats.data(), nullptr, &out, 4, 8, 2, 0.01f);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(out, 0.01f, 1e-8);
}

TEST_F(Routing, LoadBalanceLossMatchesFormula) {
  // T = 5 tokens, k = 2; counts sum to 10, score sums to 5.
  std::vector<float> stats{7, 2, 1, 0, 2.5f, 1.5f, 0.75f, 0.25f};
  float out = 0;
  moert_load_balance_loss(ctx, stats.data(), nullptr, &out, 4, 5, 2, 0.1f);
  ASSERT_TRUE(ok());
  double want = 0;
  for (int e = 0; e < 4; ++e)
    want += (stats[e] / 10.0) * (stats[4 + e] / 5.0);
  EXPECT_NEAR(out, 0.1 * 4 * want, 1e-7);
}

TEST_F(Routing, ZLossIsScaledMeanOfSquaredLogSumExp) {
  int64_t T = 5, E = 8;
  std::vector<float> logits = randomVec(T * E, 12, -4, 4);
  logits[3] = 80.0f; // needs the max-shift to stay finite
  double sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    double m = *std::max_element(&logits[t * E], &logits[t * E] + E), s = 0;
    for (int64_t e = 0; e < E; ++e)
      s += std::exp(logits[t * E + e] - m);
    sum += (m + std::log(s)) * (m + std::log(s));
  }
  float out = 0;
  moert_z_loss(ctx, logits.data(), nullptr, nullptr, &out, T, E, T, 0.001f);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(out, 0.001 * sum / T, 1e-6 * std::fabs(0.001 * sum / T));
  // A rank holding 5 of 20 tokens contributes its share of the mean.
  moert_z_loss(ctx, logits.data(), nullptr, nullptr, &out, T, E, 20, 0.001f);
  EXPECT_NEAR(out, 0.001 * sum / 20, 1e-6 * std::fabs(0.001 * sum / 20));
}

} // namespace
