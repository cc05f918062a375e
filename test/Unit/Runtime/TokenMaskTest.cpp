//===- TokenMaskTest.cpp - The token mask's kernels (padding) -------------===//
//
// moert_mask_rows and moert_token_count, index -1 in moert_assign and
// moert_expert_load, and the masked losses: each against the same kernel on
// the real tokens alone (the rows compacted), which is what a masked batch
// must equal (docs/spec.md 3.11).
//
//===----------------------------------------------------------------------===//
#include "RuntimeTestUtil.h"

#include <cstring>
#include <limits>

using namespace moert_test;

namespace {

using TokenMask = CpuRuntimeTest;

constexpr int64_t T = 8, E = 6, k = 2;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const std::vector<int32_t> kMask = {1, 0, 1, 1, 0, 0, 1, 1};

/// The rows of `v` (width `w`) whose mask is 1.
template <typename V> V realRows(const V &v, int64_t w) {
  V out;
  for (int64_t t = 0; t < T; ++t)
    if (kMask[t])
      out.insert(out.end(), v.begin() + t * w, v.begin() + (t + 1) * w);
  return out;
}

TEST_F(TokenMask, MaskRowsZeroesFloatsAndUnroutesIndices) {
  std::vector<float> x = randomVec(T * 3, 1), y(T * 3, 7.0f);
  moert_mask_rows(ctx, x.data(), kMask.data(), y.data(), T, 3 * 4, 0);
  std::vector<int32_t> idx(T * k, 5), out(T * k, 0);
  moert_mask_rows(ctx, idx.data(), kMask.data(), out.data(), T, k * 4, 255);
  ASSERT_TRUE(ok());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < 3; ++j)
      EXPECT_EQ(y[t * 3 + j], kMask[t] ? x[t * 3 + j] : 0.0f) << t;
    for (int64_t j = 0; j < k; ++j)
      EXPECT_EQ(out[t * k + j], kMask[t] ? 5 : -1) << t;
  }
  // In place.
  moert_mask_rows(ctx, x.data(), kMask.data(), x.data(), T, 3 * 4, 0);
  ASSERT_TRUE(ok());
  EXPECT_EQ(x, y);
}

TEST_F(TokenMask, TokenCountCountsRealTokens) {
  float n = -1;
  moert_token_count(ctx, kMask.data(), &n, T);
  ASSERT_TRUE(ok());
  EXPECT_EQ(n, 5.0f);
}

TEST_F(TokenMask, AValueOtherThanZeroOrOneNamesTheToken) {
  std::vector<int32_t> bad = kMask;
  bad[5] = 2;
  float n = 0;
  moert_token_count(ctx, bad.data(), &n, T);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("moert_token_count: token_mask of token 5 (of this "
                       "rank's 8) is 2: 1 marks a real token, 0 padding"),
            std::string::npos)
      << err();
}

TEST_F(TokenMask, MaskRowsChecksTheMaskToo) {
  std::vector<int32_t> bad = kMask;
  bad[0] = -1;
  std::vector<float> x(T), y(T);
  moert_mask_rows(ctx, x.data(), bad.data(), y.data(), T, 4, 0);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("token_mask of token 0 (of this rank's 8) is -1"),
            std::string::npos)
      << err();
}

/// Index -1 takes no slot: the real tokens get the positions and counts
/// they get alone, with the same capacity and one token group.
TEST_F(TokenMask, AssignGivesUnroutedTokensNoSlot) {
  std::vector<int32_t> idx = {0, 1, 9, 9, 0, 2, 0, 1, 9, 9, 9, 9, 0, 3, 1, 0};
  for (int64_t t = 0; t < T; ++t)
    if (!kMask[t])
      idx[t * k] = idx[t * k + 1] = -1;
  std::vector<int32_t> real = realRows(idx, k);
  const int64_t R = int64_t(real.size()) / k;
  for (int64_t capacity : {0, 2}) {
    SCOPED_TRACE("capacity " + std::to_string(capacity));
    std::vector<int32_t> pos(T * k), cnt(E), rpos(R * k), rcnt(E);
    moert_assign(ctx, idx.data(), pos.data(), cnt.data(), T, k, E, capacity, 1);
    moert_assign(ctx, real.data(), rpos.data(), rcnt.data(), R, k, E, capacity,
                 1);
    ASSERT_TRUE(ok());
    EXPECT_EQ(cnt, rcnt);
    EXPECT_EQ(realRows(pos, k), rpos);
    for (int64_t t = 0; t < T; ++t) {
      if (!kMask[t]) {
        EXPECT_EQ(pos[t * k] + pos[t * k + 1], -2) << t;
      }
    }
  }
  // expert_load counts only [0, E).
  std::vector<float> scores(T * E, 0.5f), stats(2 * E), rstats(2 * E);
  std::vector<float> rscores(R * E, 0.5f);
  moert_expert_load(ctx, scores.data(), idx.data(), stats.data(), T, k, E);
  moert_expert_load(ctx, rscores.data(), real.data(), rstats.data(), R, k, E);
  ASSERT_TRUE(ok());
  EXPECT_EQ(std::vector<float>(stats.begin(), stats.begin() + E),
            std::vector<float>(rstats.begin(), rstats.begin() + E));
}

TEST_F(TokenMask, MaskedLossesAreTheRealTokensLosses) {
  const float count = 5.0f, coeff = 0.01f;
  std::vector<float> logits = randomVec(T * E, 3, -2, 2);
  std::vector<float> real = realRows(logits, E);
  float z = 0, zr = 0;
  moert_z_loss(ctx, logits.data(), kMask.data(), &count, &z, T, E, T, coeff);
  moert_z_loss(ctx, real.data(), nullptr, nullptr, &zr, 5, E, 5, coeff);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(z, zr, 1e-6f * std::fabs(zr));

  std::vector<float> dl(T * E, kNaN), dlr(5 * E);
  float one = 1.0f;
  moert_z_loss_grad(ctx, logits.data(), &one, kMask.data(), &count, dl.data(),
                    T, E, T, coeff);
  moert_z_loss_grad(ctx, real.data(), &one, nullptr, nullptr, dlr.data(), 5, E,
                    5, coeff);
  ASSERT_TRUE(ok());
  EXPECT_EQ(realRows(dl, E), dlr);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E && !kMask[t]; ++e) {
      EXPECT_EQ(dl[t * E + e], 0.0f) << t;
    }
  }

  std::vector<float> stats = randomVec(2 * E, 4, 0, 3), ds(2 * E), dsr(2 * E);
  float lb = 0, lbr = 0;
  moert_load_balance_loss(ctx, stats.data(), &count, &lb, E, T, k, coeff);
  moert_load_balance_loss(ctx, stats.data(), nullptr, &lbr, E, 5, k, coeff);
  moert_load_balance_loss_grad(ctx, stats.data(), &one, &count, ds.data(), E, T,
                               k, coeff);
  moert_load_balance_loss_grad(ctx, stats.data(), &one, nullptr, dsr.data(), E,
                               5, k, coeff);
  ASSERT_TRUE(ok());
  EXPECT_EQ(lb, lbr);
  EXPECT_EQ(ds, dsr);

  // No real token: both losses and their gradients are 0.
  const float none = 0.0f;
  moert_load_balance_loss(ctx, stats.data(), &none, &lb, E, T, k, coeff);
  moert_z_loss(ctx, logits.data(), kMask.data(), &none, &z, T, E, T, coeff);
  ASSERT_TRUE(ok());
  EXPECT_EQ(lb, 0.0f);
  EXPECT_EQ(z, 0.0f);
}

TEST_F(TokenMask, MaskedMseIsTheRealRowsMean) {
  const int64_t D = 4;
  const float count = 5.0f;
  std::vector<float> y = randomVec(T * D, 5), t = randomVec(T * D, 6);
  std::vector<float> yr = realRows(y, D), tr = realRows(t, D);
  std::vector<float> dy(T * D, kNaN), dyr(5 * D);
  float loss = 0, lossr = 0;
  moert_mse_loss(ctx, y.data(), t.data(), kMask.data(), &count, &loss,
                 dy.data(), T, T * D, T * D, MOERT_F32);
  moert_mse_loss(ctx, yr.data(), tr.data(), nullptr, nullptr, &lossr,
                 dyr.data(), 5, 5 * D, 5 * D, MOERT_F32);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(loss, lossr, 1e-6f * lossr);
  EXPECT_EQ(realRows(dy, D), dyr);
  for (int64_t r = 0; r < T; ++r) {
    for (int64_t d = 0; d < D && !kMask[r]; ++d) {
      EXPECT_EQ(dy[r * D + d], 0.0f) << r;
    }
  }
}

} // namespace
