//===- RoutingReplayTest.cpp - moert_topk_forced (routing replay) ---------===//
#include "RuntimeTestUtil.h"

#include <algorithm>
#include <cmath>
#include <cstring>

using namespace moert_test;

namespace {

using RoutingReplay = CpuRuntimeTest;

constexpr int64_t T = 6, E = 8, k = 2;

/// moert_topk, then moert_topk_forced with its own choice: bit for bit the
/// same weights, indices and scores.
void expectOwnChoiceReplays(moert_ctx *ctx, int32_t scoreFn, int32_t renorm,
                            float scaling) {
  std::vector<float> logits = randomVec(T * E, 11, -2, 2);
  std::vector<float> w(T * k), s(T * E), w2(T * k), s2(T * E);
  std::vector<int32_t> idx(T * k), idx2(T * k);
  moert_topk(ctx, logits.data(), nullptr, w.data(), idx.data(), s.data(), T, E,
             k, scoreFn, renorm, scaling, 1, 1, MOERT_GROUP_SCORE_MAX);
  moert_topk_forced(ctx, logits.data(), idx.data(), w2.data(), idx2.data(),
                    s2.data(), T, E, k, scoreFn, renorm, scaling);
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  EXPECT_EQ(idx2, idx);
  EXPECT_EQ(0, std::memcmp(w2.data(), w.data(), w.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(s2.data(), s.data(), s.size() * sizeof(float)));
}

TEST_F(RoutingReplay, OwnChoiceGivesTheSameBitsSoftmax) {
  expectOwnChoiceReplays(ctx, MOERT_SCORE_SOFTMAX, 1, 2.5f);
}

TEST_F(RoutingReplay, OwnChoiceGivesTheSameBitsSigmoid) {
  expectOwnChoiceReplays(ctx, MOERT_SCORE_SIGMOID, 0, 1.0f);
}

TEST_F(RoutingReplay, ForcedWeightsAreTheScoresOfTheForcedExperts) {
  std::vector<float> logits = randomVec(T * E, 12, -2, 2);
  std::vector<int32_t> forced = {7, 0, 1, 2, 3, 4, 5, 6, 0, 7, 2, 5};
  std::vector<float> w(T * k), s(T * E);
  std::vector<int32_t> idx(T * k);
  moert_topk_forced(ctx, logits.data(), forced.data(), w.data(), idx.data(),
                    s.data(), T, E, k, MOERT_SCORE_SOFTMAX, 1, 0.5f);
  ASSERT_TRUE(ok());
  EXPECT_EQ(idx, forced);
  for (int64_t t = 0; t < T; ++t) {
    double m = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; ++e)
      m = std::max(m, double(logits[t * E + e]));
    for (int64_t e = 0; e < E; ++e)
      sum += std::exp(logits[t * E + e] - m);
    double rho[k], rsum = 0;
    for (int64_t j = 0; j < k; ++j)
      rsum += rho[j] = std::exp(logits[t * E + forced[t * k + j]] - m) / sum;
    for (int64_t j = 0; j < k; ++j)
      EXPECT_NEAR(w[t * k + j], 0.5 * rho[j] / rsum, 1e-6) << t << "," << j;
  }
}

TEST_F(RoutingReplay, ExpertOutOfRangeIsNamed) {
  std::vector<float> logits = randomVec(T * E, 13), w(T * k), s(T * E);
  std::vector<int32_t> forced(T * k, 0), idx(T * k);
  for (int64_t t = 0; t < T; ++t)
    forced[t * k + 1] = 1;
  forced[3 * k + 1] = E;
  moert_topk_forced(ctx, logits.data(), forced.data(), w.data(), idx.data(),
                    s.data(), T, E, k, MOERT_SCORE_SOFTMAX, 1, 1.0f);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("moert_topk_forced: token 3 (of this rank's 6), choice "
                       "1: expert 8 is not in [0, 8)"),
            std::string::npos)
      << err();
}

TEST_F(RoutingReplay, ExpertChosenTwiceIsNamed) {
  std::vector<float> logits = randomVec(T * E, 14), w(T * k), s(T * E);
  std::vector<int32_t> forced(T * k, 0), idx(T * k);
  for (int64_t t = 0; t < T; ++t)
    forced[t * k + 1] = 1;
  forced[5 * k + 1] = 0;
  moert_topk_forced(ctx, logits.data(), forced.data(), w.data(), idx.data(),
                    s.data(), T, E, k, MOERT_SCORE_SOFTMAX, 1, 1.0f);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("token 5 (of this rank's 6) chooses expert 0 twice"),
            std::string::npos)
      << err();
}

} // namespace
