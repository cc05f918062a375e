//===- BackwardTest.cpp - The gradient kernels and the training loss ------===//
//
// Every gradient kernel through the C ABI against a double-precision
// reference written here from docs/spec.md 7.2, and the forward kernels
// against central finite differences of themselves: for a loss
// L = sum(dy * forward(inputs)), the backward kernel fed dy must give dL/d
// every input.
//
//===----------------------------------------------------------------------===//
#include "RuntimeTestUtil.h"
#include "cpu/CpuBackend.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

using namespace moert_test;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

bool gated(int32_t act) {
  return act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
}

std::string actName(int32_t act) {
  const char *names[] = {"Relu", "Gelu", "Swiglu", "Geglu"};
  return names[act];
}

double actRef(int32_t act, double v) {
  if (act == MOERT_ACT_RELU)
    return v > 0 ? v : 0;
  if (act == MOERT_ACT_SWIGLU)
    return siluRef(v);
  return geluRef(v);
}

/// relu'(0) = 0; gelu' = Phi + v phi (exact erf form); silu' = s (1 + v (1-s)).
double actGradRef(int32_t act, double v) {
  if (act == MOERT_ACT_RELU)
    return v > 0 ? 1 : 0;
  if (act == MOERT_ACT_SWIGLU) {
    double s = 1 / (1 + std::exp(-v));
    return s * (1 + v * (1 - s));
  }
  return 0.5 * std::erfc(-v / std::sqrt(2.0)) +
         v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI);
}

/// The gradient of one FFN row (docs/spec.md 7.2, the FFN rows): dx of the
/// row is written, the weight gradients accumulated. gate/up [F,D], down
/// [D,F]; gate null when ungated.
void ffnRowGradRef(const float *x, const float *gate, const float *up,
                   const float *down, const float *dy, int64_t D, int64_t F,
                   int32_t act, double *dx, double *dgate, double *dup,
                   double *ddown) {
  std::fill(dx, dx + D, 0.0);
  for (int64_t f = 0; f < F; ++f) {
    double a = 0, u = 0, dh = 0;
    for (int64_t d = 0; d < D; ++d) {
      u += double(x[d]) * up[f * D + d];
      if (gate)
        a += double(x[d]) * gate[f * D + d];
      dh += double(dy[d]) * down[d * F + f];
    }
    double h, du, da = 0;
    if (gate) {
      h = actRef(act, a) * u;
      du = dh * actRef(act, a);
      da = dh * u * actGradRef(act, a);
    } else {
      h = actRef(act, u);
      du = dh * actGradRef(act, u);
    }
    for (int64_t d = 0; d < D; ++d) {
      ddown[d * F + f] += double(dy[d]) * h;
      dup[f * D + d] += du * x[d];
      dx[d] += du * up[f * D + d];
      if (gate) {
        dgate[f * D + d] += da * x[d];
        dx[d] += da * gate[f * D + d];
      }
    }
  }
}

/// One-sided differences of `loss` in `p[i]` (forward, backward), over
/// the steps actually taken.
std::pair<double, double> differences(std::vector<float> &p, size_t i, float h,
                                      const std::function<double()> &loss) {
  float old = p[i];
  float hi = old + h, lo = old - h;
  double mid = loss();
  p[i] = hi;
  double up = loss();
  p[i] = lo;
  double down = loss();
  p[i] = old;
  return {(up - mid) / (double(hi) - old), (mid - down) / (double(old) - lo)};
}

double weightedSum(const std::vector<float> &w, const std::vector<float> &v) {
  double s = 0;
  for (size_t i = 0; i < v.size(); ++i)
    s += double(w[i]) * v[i];
  return s;
}

/// Compares the analytic gradient `grad` of `p` with central differences
/// at a few indices (f32 forward kernels: a coarse step and tolerance).
/// With `kinks` (ReLU: piecewise linear), an index whose two one-sided
/// differences disagree has a kink within the step and is skipped.
void checkFiniteDiff(std::vector<float> &p, const std::vector<float> &grad,
                     const std::function<double()> &loss, const char *what,
                     bool kinks = false, size_t samples = 6, float h = 4e-3f) {
  ASSERT_EQ(p.size(), grad.size()) << what;
  size_t checked = 0;
  for (size_t s = 0; s < 4 * samples && checked < samples; ++s) {
    size_t i = (s * 7919 + 3) % p.size();
    auto [fwd, bwd] = differences(p, i, h, loss);
    if (kinks && std::fabs(fwd - bwd) > 1e-3)
      continue;
    double fd = 0.5 * (fwd + bwd);
    EXPECT_NEAR(grad[i], fd, 3e-3 + 1e-2 * std::fabs(fd))
        << what << "[" << i << "]";
    ++checked;
  }
  EXPECT_EQ(checked, samples) << what << ": too many indices near a kink";
}

std::vector<double> asDouble(const std::vector<float> &v) {
  return std::vector<double>(v.begin(), v.end());
}

class Backward : public CpuRuntimeTest {};

//===--- RMSNorm ----------------------------------------------------------===//

TEST_F(Backward, RmsnormGradMatchesReference) {
  const int64_t T = 5, D = 37;
  const float eps = 1e-5f;
  std::vector<float> x = randomVec(T * D, 1), w = randomVec(D, 2, 0.5f, 1.5f);
  std::vector<float> dy = randomVec(T * D, 3);
  std::vector<float> dx(T * D, kNaN), dw(D, kNaN);
  moert_rmsnorm_grad(ctx, x.data(), w.data(), dy.data(), dx.data(), dw.data(),
                     T, D, eps, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> dxRef(T * D), dwRef(D, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = &x[t * D], *g = &dy[t * D];
    double ms = 0, gx = 0;
    for (int64_t d = 0; d < D; ++d) {
      ms += double(xr[d]) * xr[d] / D;
      gx += double(g[d]) * w[d] * xr[d] / D;
    }
    double r = 1 / std::sqrt(ms + eps);
    for (int64_t d = 0; d < D; ++d) {
      dxRef[t * D + d] = r * g[d] * w[d] - xr[d] * r * r * r * gx;
      dwRef[d] += double(g[d]) * xr[d] * r;
    }
  }
  expectClose(dx, dxRef, 1e-5, 1e-6, "dx");
  expectClose(dw, dwRef, 1e-5, 1e-6, "dw");

  auto loss = [&] {
    std::vector<float> y(T * D);
    moert_rmsnorm(ctx, x.data(), w.data(), y.data(), T, D, eps, MOERT_F32);
    return weightedSum(dy, y);
  };
  checkFiniteDiff(x, dx, loss, "rmsnorm dx");
  checkFiniteDiff(w, dw, loss, "rmsnorm dw");
  EXPECT_TRUE(ok());
}

//===--- LayerNorm --------------------------------------------------------===//

TEST_F(Backward, LayernormGradMatchesReference) {
  const int64_t T = 5, D = 37;
  const float eps = 1e-5f;
  std::vector<float> x = randomVec(T * D, 1), w = randomVec(D, 2, 0.5f, 1.5f);
  std::vector<float> b = randomVec(D, 4), dy = randomVec(T * D, 3);
  std::vector<float> dx(T * D, kNaN), dw(D, kNaN), db(D, kNaN);
  moert_layernorm_grad(ctx, x.data(), w.data(), dy.data(), dx.data(), dw.data(),
                       db.data(), T, D, eps, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> dxRef(T * D), dwRef(D, 0.0), dbRef(D, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = &x[t * D], *g = &dy[t * D];
    double mean = 0, var = 0;
    for (int64_t d = 0; d < D; ++d)
      mean += double(xr[d]) / D;
    for (int64_t d = 0; d < D; ++d)
      var += (xr[d] - mean) * (xr[d] - mean) / D;
    double r = 1 / std::sqrt(var + eps), gMean = 0, gxh = 0;
    for (int64_t d = 0; d < D; ++d) {
      gMean += double(g[d]) * w[d] / D;
      gxh += double(g[d]) * w[d] * (xr[d] - mean) * r / D;
    }
    for (int64_t d = 0; d < D; ++d) {
      double xh = (xr[d] - mean) * r;
      dxRef[t * D + d] = r * (double(g[d]) * w[d] - gMean - xh * gxh);
      dwRef[d] += double(g[d]) * xh;
      dbRef[d] += g[d];
    }
  }
  expectClose(dx, dxRef, 1e-5, 1e-6, "dx");
  expectClose(dw, dwRef, 1e-5, 1e-6, "dw");
  expectClose(db, dbRef, 1e-5, 1e-6, "db");

  // Without a bias db is not written; dx and dw are the same.
  std::vector<float> dx2(T * D, kNaN), dw2(D, kNaN);
  moert_layernorm_grad(ctx, x.data(), w.data(), dy.data(), dx2.data(),
                       dw2.data(), nullptr, T, D, eps, MOERT_F32);
  ASSERT_TRUE(ok());
  EXPECT_EQ(dx2, dx);
  EXPECT_EQ(dw2, dw);

  auto loss = [&] {
    std::vector<float> y(T * D);
    moert_layernorm(ctx, x.data(), w.data(), b.data(), y.data(), T, D, eps,
                    MOERT_F32);
    return weightedSum(dy, y);
  };
  checkFiniteDiff(x, dx, loss, "layernorm dx");
  checkFiniteDiff(w, dw, loss, "layernorm dw");
  checkFiniteDiff(b, db, loss, "layernorm db");
  EXPECT_TRUE(ok());
}

//===--- Router + top-k ---------------------------------------------------===//

struct TopkCase {
  int32_t scoreFn;
  bool renormalize;
  float scaling;
  bool withDscores;
};

class TopkGrad : public CpuRuntimeTest,
                 public ::testing::WithParamInterface<TopkCase> {};

TEST_P(TopkGrad, MatchesReferenceAndFiniteDifferences) {
  const TopkCase c = GetParam();
  const int64_t T = 6, E = 7, k = 3, D = 10;
  std::vector<float> x = randomVec(T * D, 11), wr = randomVec(E * D, 12);
  std::vector<float> dweights = randomVec(T * k, 13);
  std::vector<float> dscores =
      c.withDscores ? randomVec(T * E, 14) : std::vector<float>();
  std::vector<float> logits(T * E), weights(T * k), scores(T * E);
  std::vector<int32_t> idx(T * k);
  auto forward = [&] {
    moert_router(ctx, x.data(), wr.data(), logits.data(), T, D, E, MOERT_F32);
    moert_topk(ctx, logits.data(), nullptr, weights.data(), idx.data(),
               scores.data(), T, E, k, c.scoreFn, c.renormalize, c.scaling, 0,
               0, 0);
  };
  forward();
  ASSERT_TRUE(ok());
  const std::vector<int32_t> chosen = idx;
  const float *ds = c.withDscores ? dscores.data() : nullptr;
  std::vector<float> dlogits(T * E, kNaN);
  moert_topk_grad(ctx, logits.data(), idx.data(), dweights.data(), ds,
                  dlogits.data(), T, E, k, c.scoreFn, c.renormalize, c.scaling);
  ASSERT_TRUE(ok());

  // Reference (docs/spec.md 7.2: gate weights, then scores), in double from
  // the logits.
  std::vector<double> ref(T * E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> s(E), dsc(E, 0.0);
    double mx = -1e30, sum = 0;
    for (int64_t e = 0; e < E; ++e)
      mx = std::max(mx, double(logits[t * E + e]));
    for (int64_t e = 0; e < E; ++e) {
      double l = logits[t * E + e];
      s[e] = c.scoreFn == MOERT_SCORE_SIGMOID ? 1 / (1 + std::exp(-l))
                                              : std::exp(l - mx);
      sum += s[e];
    }
    if (c.scoreFn == MOERT_SCORE_SOFTMAX)
      for (double &v : s)
        v /= sum;
    for (int64_t e = 0; e < E; ++e)
      dsc[e] = ds ? ds[t * E + e] : 0.0;
    double S = 0, dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      S += s[idx[t * k + j]];
      dot += double(c.scaling) * dweights[t * k + j] * s[idx[t * k + j]];
    }
    for (int64_t j = 0; j < k; ++j) {
      double hat = double(c.scaling) * dweights[t * k + j];
      dsc[idx[t * k + j]] += c.renormalize ? (hat - dot / S) / S : hat;
    }
    double dss = 0;
    for (int64_t e = 0; e < E; ++e)
      dss += dsc[e] * s[e];
    for (int64_t e = 0; e < E; ++e)
      ref[t * E + e] = c.scoreFn == MOERT_SCORE_SIGMOID
                           ? dsc[e] * s[e] * (1 - s[e])
                           : s[e] * (dsc[e] - dss);
  }
  expectClose(dlogits, ref, 1e-5, 1e-6, "dlogits");

  // The chain into the router: dx = dlogits . Wr, dWr = dlogits^T . x.
  std::vector<float> dx(T * D, kNaN), dwr(E * D, kNaN);
  moert_router_grad(ctx, x.data(), wr.data(), dlogits.data(), dx.data(),
                    dwr.data(), T, D, E, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> dxRef(T * D, 0.0), dwrRef(E * D, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t d = 0; d < D; ++d) {
        dxRef[t * D + d] += double(dlogits[t * E + e]) * wr[e * D + d];
        dwrRef[e * D + d] += double(dlogits[t * E + e]) * x[t * D + d];
      }
  expectClose(dx, dxRef, 1e-5, 1e-6, "router dx");
  expectClose(dwr, dwrRef, 1e-5, 1e-6, "router dw");

  // Finite differences of router + topk (the selection must not change).
  auto loss = [&] {
    forward();
    EXPECT_EQ(idx, chosen) << "a perturbation changed the selection";
    double l = weightedSum(dweights, weights);
    if (ds)
      l += weightedSum(dscores, scores);
    return l;
  };
  checkFiniteDiff(x, dx, loss, "router+topk dx");
  checkFiniteDiff(wr, dwr, loss, "router+topk dw");
  EXPECT_TRUE(ok());
}

INSTANTIATE_TEST_SUITE_P(
    Scores, TopkGrad,
    ::testing::Values(TopkCase{MOERT_SCORE_SOFTMAX, false, 1.0f, false},
                      TopkCase{MOERT_SCORE_SOFTMAX, true, 1.0f, false},
                      TopkCase{MOERT_SCORE_SOFTMAX, true, 2.5f, true},
                      TopkCase{MOERT_SCORE_SIGMOID, false, 1.0f, true},
                      TopkCase{MOERT_SCORE_SIGMOID, true, 2.5f, false}),
    [](const auto &info) {
      const TopkCase &c = info.param;
      return std::string(c.scoreFn == MOERT_SCORE_SOFTMAX ? "Softmax"
                                                          : "Sigmoid") +
             (c.renormalize ? "Renorm" : "Raw") +
             (c.scaling != 1.0f ? "Scaled" : "") +
             (c.withDscores ? "Dscores" : "");
    });

//===--- Dispatch and combine ---------------------------------------------===//

// 5 tokens, k = 2, 8 buffer rows; (1,1), (3,0) and (4,1) dropped; row 5
// unused.
const int64_t kT = 5, kK = 2, kRows = 8, kD = 11;
const std::vector<int32_t> kPositions = {0, 3, 6, -1, 1, 2, -1, 4, 7, -1};

TEST_F(Backward, DispatchGradSumsTheRowsOfEachToken) {
  const std::vector<int32_t> &pos = kPositions;
  std::vector<float> dout = randomVec(kRows * kD, 21);
  std::vector<float> dx(kT * kD, kNaN);
  moert_dispatch_grad(ctx, dout.data(), pos.data(), dx.data(), kT, kK, kD,
                      kRows, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> ref(kT * kD, 0.0);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t j = 0; j < kK; ++j)
      if (int32_t p = pos[t * kK + j]; p >= 0)
        for (int64_t d = 0; d < kD; ++d)
          ref[t * kD + d] += dout[p * kD + d];
  expectClose(dx, ref, 1e-6, 0, "dx");
  // The transpose of dispatch: <dispatch(x), g> == <x, dispatch_grad(g)>.
  std::vector<float> x = randomVec(kT * kD, 22), out(kRows * kD);
  moert_dispatch(ctx, x.data(), pos.data(), out.data(), kT, kK, kD, kRows,
                 MOERT_F32);
  EXPECT_NEAR(weightedSum(dout, out), weightedSum(x, dx), 1e-4);
  EXPECT_TRUE(ok());
}

class CombineGrad : public CpuRuntimeTest,
                    public ::testing::WithParamInterface<bool> {};

TEST_P(CombineGrad, KeptDroppedAndPassthrough) {
  const bool passthrough = GetParam();
  const std::vector<int32_t> &pos = kPositions;
  std::vector<float> y = randomVec(kRows * kD, 31);
  std::vector<float> weights = randomVec(kT * kK, 32, 0.1f, 1.0f);
  std::vector<float> xin = randomVec(kT * kD, 33);
  std::vector<float> dout = randomVec(kT * kD, 34);
  std::vector<float> dy(kRows * kD, kNaN), dweights(kT * kK, kNaN);
  std::vector<float> dpass(kT * kD, kNaN);
  const float *pass = passthrough ? xin.data() : nullptr;
  moert_combine_grad(ctx, y.data(), pos.data(), weights.data(), pass,
                     dout.data(), dy.data(), dweights.data(),
                     passthrough ? dpass.data() : nullptr, kT, kK, kD, kRows,
                     MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> dyRef(kRows * kD, 0.0), dwRef(kT * kK, 0.0);
  std::vector<double> dpRef(kT * kD, 0.0);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t j = 0; j < kK; ++j) {
      int32_t p = pos[t * kK + j];
      double w = weights[t * kK + j];
      for (int64_t d = 0; d < kD; ++d) {
        double g = dout[t * kD + d];
        if (p >= 0) {
          dyRef[p * kD + d] = w * g;
          dwRef[t * kK + j] += g * y[p * kD + d];
        } else if (passthrough) {
          dwRef[t * kK + j] += g * xin[t * kD + d];
          dpRef[t * kD + d] += w * g;
        }
      }
    }
  expectClose(dy, dyRef, 1e-6, 0, "dy"); // row 5 exactly 0
  expectClose(dweights, dwRef, 1e-5, 1e-6, "dweights");
  if (passthrough)
    expectClose(dpass, dpRef, 1e-6, 0, "dpassthrough");
  else
    for (int64_t j : {3, 6, 9})
      EXPECT_EQ(dweights[j], 0.0f) << "dropped assignment " << j;
  // Combine is linear in y, the weights and the passthrough: the gradients
  // are exact directional derivatives.
  std::vector<float> out(kT * kD);
  moert_combine(ctx, y.data(), pos.data(), weights.data(), pass, out.data(), kT,
                kK, kD, MOERT_F32);
  double lhs = weightedSum(dout, out);
  // <dout, combine(y, w, x)> = <y, dy> + <x, dpassthrough> = <w, dweights>.
  double rhs = weightedSum(y, dy);
  if (passthrough)
    rhs += weightedSum(xin, dpass);
  EXPECT_NEAR(lhs, rhs, 1e-4);
  EXPECT_NEAR(lhs, weightedSum(weights, dweights), 1e-4);
  EXPECT_TRUE(ok());
}

INSTANTIATE_TEST_SUITE_P(DropPolicy, CombineGrad, ::testing::Bool(),
                         [](const auto &info) {
                           return std::string(info.param ? "Passthrough"
                                                         : "Zero");
                         });

TEST_F(Backward, CombineGradRefusesARepeatedPosition) {
  const std::vector<int32_t> pos = {0, 3, 3, -1};
  std::vector<float> buf(64);
  moert_combine_grad(ctx, buf.data(), pos.data(), buf.data(), nullptr,
                     buf.data(), buf.data(), buf.data(), nullptr, 2, 2, 2, 4,
                     MOERT_F32);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("moert_combine_grad: positions[1,0] = 3 repeats "
                       "positions[0,1]"),
            std::string::npos)
      << err();
  moert_ctx_clear_error(ctx);
}

//===--- Expert FFN -------------------------------------------------------===//

/// Weights and gradients of E experts, and the reference over a layout.
struct ExpertSet {
  ExpertSet(int64_t E, int64_t D, int64_t F, int32_t act, unsigned seed)
      : E(E), D(D), F(F), act(act), up(randomVec(E * F * D, seed, -.4f, .4f)),
        down(randomVec(E * D * F, seed + 1, -.4f, .4f)) {
    if (gated(act))
      gate = randomVec(E * F * D, seed + 2, -.4f, .4f);
  }
  float *gatePtr() { return gate.empty() ? nullptr : gate.data(); }

  int64_t E, D, F;
  int32_t act;
  std::vector<float> gate, up, down;
};

/// The live rows of each expert, as moert_expert_ffn reads them.
std::vector<std::vector<int64_t>> liveRows(const int32_t *counts, int64_t E,
                                           int64_t S, int64_t R) {
  std::vector<std::vector<int64_t>> rows(E);
  int64_t next = 0;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t e = 0; e < E; ++e) {
      int64_t C = R / S, n = counts ? counts[s * E + e] : C;
      for (int64_t i = 0; i < n; ++i)
        rows[e].push_back(R == 0 ? next++ : e * R + s * C + i);
    }
  return rows;
}

struct FfnLayout {
  const char *name;
  int64_t S, R, totalRows;
  std::vector<int32_t> counts; // [S, E]; empty: null (every row live)
};

class ExpertFfnGrad
    : public CpuRuntimeTest,
      public ::testing::WithParamInterface<std::tuple<int32_t, int>> {};

const int64_t kE = 3;
// Expert 2 gets no row in either layout.
const FfnLayout kLayouts[] = {
    {"Capacity", 2, 8, kE * 8, {4, 1, 0, 2, 0, 0}},
    {"CapacityAllLive", 2, 4, kE * 4, {}},
    {"Packed", 2, 0, 12, {3, 1, 0, 1, 4, 0}},
};

TEST_P(ExpertFfnGrad, MatchesReferenceWithZeroForDeadRowsAndIdleExperts) {
  const int32_t act = std::get<0>(GetParam());
  const FfnLayout &L = kLayouts[std::get<1>(GetParam())];
  const int64_t D = 9, F = 21; // not multiples of the vector width
  ExpertSet w(kE, D, F, act, 41);
  const int32_t *counts = L.counts.empty() ? nullptr : L.counts.data();
  std::vector<float> x = randomVec(L.totalRows * D, 42);
  std::vector<float> dy = randomVec(L.totalRows * D, 43);
  std::vector<float> dx(L.totalRows * D, kNaN);
  std::vector<float> dgate(w.gate.size(), kNaN), dup(w.up.size(), kNaN),
      ddown(w.down.size(), kNaN);
  float *dg = gated(act) ? dgate.data() : nullptr;
  moert_expert_ffn_grad(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                        w.down.data(), dy.data(), nullptr, nullptr, dx.data(),
                        dg, dup.data(), ddown.data(), kE, L.S, L.R, L.totalRows,
                        D, F, act, MOERT_F32);
  ASSERT_TRUE(ok());

  std::vector<double> dxRef(L.totalRows * D, 0.0);
  std::vector<double> dgRef(dgate.size(), 0.0), duRef(dup.size(), 0.0),
      ddRef(ddown.size(), 0.0);
  auto live = liveRows(counts, kE, L.S, L.R);
  for (int64_t e = 0; e < kE; ++e)
    for (int64_t r : live[e]) {
      int64_t o = e * F * D;
      ffnRowGradRef(&x[r * D], gated(act) ? &w.gate[o] : nullptr, &w.up[o],
                    &w.down[o], &dy[r * D], D, F, act, &dxRef[r * D],
                    gated(act) ? &dgRef[o] : nullptr, &duRef[o], &ddRef[o]);
    }
  expectClose(dx, dxRef, 1e-4, 1e-6, "dx"); // dead rows: exactly 0
  expectClose(dup, duRef, 1e-4, 1e-6, "dup");
  expectClose(ddown, ddRef, 1e-4, 1e-6, "ddown");
  if (gated(act))
    expectClose(dgate, dgRef, 1e-4, 1e-6, "dgate");
  // Expert 2 has no live row (when counts are given): exactly zero
  // gradients, not stale memory.
  ASSERT_EQ(live[2].empty(), counts != nullptr);
  for (int64_t i = 2 * F * D; counts && i < 3 * F * D; ++i) {
    ASSERT_EQ(dup[i], 0.0f);
    ASSERT_EQ(ddown[i], 0.0f);
    if (gated(act)) {
      ASSERT_EQ(dgate[i], 0.0f);
    }
  }

  // Finite differences of moert_expert_ffn itself.
  auto loss = [&] {
    std::vector<float> y(L.totalRows * D);
    moert_expert_ffn(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                     w.down.data(), y.data(), kE, L.S, L.R, L.totalRows, D, F,
                     act, MOERT_F32);
    return weightedSum(dy, y);
  };
  bool kinks = act == MOERT_ACT_RELU;
  checkFiniteDiff(x, dx, loss, "expert_ffn dx", kinks);
  checkFiniteDiff(w.up, dup, loss, "expert_ffn dup", kinks);
  checkFiniteDiff(w.down, ddown, loss, "expert_ffn ddown", kinks);
  if (gated(act))
    checkFiniteDiff(w.gate, dgate, loss, "expert_ffn dgate");
  EXPECT_TRUE(ok());
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ExpertFfnGrad,
    ::testing::Combine(::testing::Values(MOERT_ACT_RELU, MOERT_ACT_GELU,
                                         MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU),
                       ::testing::Values(0, 1, 2)),
    [](const auto &info) {
      return actName(std::get<0>(info.param)) +
             kLayouts[std::get<1>(info.param)].name;
    });

TEST_F(Backward, ExpertFfnGradInChunksEqualsOneChunk) {
  // Many chunks, some gathered from several segments, accumulate the weight
  // gradients across chunks: the result is that of one chunk.
  const int64_t D = 16, F = 24, S = 3;
  const std::vector<int32_t> counts = {3, 0, 2, 1, 4, 0, 5, 2, 3}; // [S, E]
  const int64_t rows = 20;
  std::vector<float> x = randomVec(rows * D, 52), dy = randomVec(rows * D, 53);
  for (int32_t act : {MOERT_ACT_SWIGLU, MOERT_ACT_RELU}) {
    ExpertSet w(kE, D, F, act, 51);
    auto run = [&](int64_t chunk, std::vector<float> &dx,
                   std::vector<float> &dg, std::vector<float> &du,
                   std::vector<float> &dd) {
      moert::CpuBackend backend(0);
      backend.setFfnChunkRows(chunk);
      dx.assign(rows * D, kNaN);
      dg.assign(w.gate.size(), kNaN);
      du.assign(w.up.size(), kNaN);
      dd.assign(w.down.size(), kNaN);
      moert::Status s = backend.expertFfnGrad(
          x.data(), counts.data(), w.gatePtr(), w.up.data(), w.down.data(),
          dy.data(), nullptr, nullptr, dx.data(),
          gated(act) ? dg.data() : nullptr, du.data(), dd.data(), kE, S, 0,
          rows, D, F, act, MOERT_F32);
      ASSERT_TRUE(s.isOk()) << s.message();
    };
    std::vector<float> dx1, dg1, du1, dd1, dx2, dg2, du2, dd2;
    run(1000, dx1, dg1, du1, dd1);
    for (int64_t chunk : {1, 3, 7}) {
      SCOPED_TRACE(actName(act) + ", chunk rows " + std::to_string(chunk));
      run(chunk, dx2, dg2, du2, dd2);
      expectClose(dx2, asDouble(dx1), 1e-5, 1e-6, "dx");
      expectClose(du2, asDouble(du1), 1e-5, 1e-6, "dup");
      expectClose(dd2, asDouble(dd1), 1e-5, 1e-6, "ddown");
      if (gated(act))
        expectClose(dg2, asDouble(dg1), 1e-5, 1e-6, "dgate");
    }
  }
}

/// Same bits (NaN included).
void expectSameBits(const std::vector<float> &got,
                    const std::vector<float> &want, const char *what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  if (got.empty()) // memcmp must not see the null data() of empty vectors
    return;
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
      << what << " differs";
}

class ExpertFfnSaved
    : public CpuRuntimeTest,
      public ::testing::WithParamInterface<std::tuple<int32_t, int>> {};

TEST_P(ExpertFfnSaved, SameBitsAsRecomputation) {
  // moert_expert_ffn_train keeps a = x.gate^T and u = x.up^T; the gradient
  // that reads them gives the very bits of the one that recomputes them,
  // with one chunk or many (gathered from several segments), and zeroes
  // the dead rows of the saved buffers (forward_train's results are defined
  // everywhere, not what the caller's buffer held).
  const int32_t act = std::get<0>(GetParam());
  const FfnLayout &L = kLayouts[std::get<1>(GetParam())];
  const int64_t D = 9, F = 21, rows = L.totalRows;
  ExpertSet w(kE, D, F, act, 71);
  const int32_t *counts = L.counts.empty() ? nullptr : L.counts.data();
  std::vector<float> x = randomVec(rows * D, 72), dy = randomVec(rows * D, 73);
  struct Result {
    std::vector<float> y, a, u, dx, dg, du, dd;
  };
  auto run = [&](int64_t chunk, bool save, Result &r) {
    moert::CpuBackend backend(0);
    backend.setFfnChunkRows(chunk);
    r.y.assign(rows * D, kNaN);
    r.a.assign(gated(act) ? rows * F : 0, kNaN);
    r.u.assign(save ? rows * F : 0, kNaN);
    r.dx.assign(rows * D, kNaN);
    r.dg.assign(w.gate.size(), kNaN);
    r.du.assign(w.up.size(), kNaN);
    r.dd.assign(w.down.size(), kNaN);
    float *sa = save && gated(act) ? r.a.data() : nullptr;
    float *su = save ? r.u.data() : nullptr;
    moert::Status s = backend.expertFfn(
        x.data(), counts, w.gatePtr(), w.up.data(), w.down.data(), r.y.data(),
        sa, su, kE, L.S, L.R, rows, D, F, act, MOERT_F32);
    ASSERT_TRUE(s.isOk()) << s.message();
    s = backend.expertFfnGrad(
        x.data(), counts, w.gatePtr(), w.up.data(), w.down.data(), dy.data(),
        sa, su, r.dx.data(), gated(act) ? r.dg.data() : nullptr, r.du.data(),
        r.dd.data(), kE, L.S, L.R, rows, D, F, act, MOERT_F32);
    ASSERT_TRUE(s.isOk()) << s.message();
  };
  auto live = liveRows(counts, kE, L.S, L.R);
  std::vector<bool> isLive(rows, false);
  for (const auto &e : live)
    for (int64_t r : e)
      isLive[r] = true;
  for (int64_t chunk : {0, 1, 3}) {
    SCOPED_TRACE("chunk rows " + std::to_string(chunk));
    Result recompute, saved;
    run(chunk, false, recompute);
    run(chunk, true, saved);
    expectSameBits(saved.y, recompute.y, "y");
    expectSameBits(saved.dx, recompute.dx, "dx");
    expectSameBits(saved.du, recompute.du, "dup");
    expectSameBits(saved.dd, recompute.dd, "ddown");
    expectSameBits(saved.dg, recompute.dg, "dgate");
    // The saved values: u = x.up^T (a = x.gate^T) on live rows, zero on
    // dead rows (the buffers were NaN before the call).
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t f = 0; f < F; ++f) {
        float u = saved.u[r * F + f];
        if (!isLive[r]) {
          ASSERT_EQ(u, 0.0f) << "dead row " << r << " of u";
          if (gated(act)) {
            ASSERT_EQ(saved.a[r * F + f], 0.0f) << "dead row " << r << " of a";
          }
          continue;
        }
        int64_t e = 0;
        while (std::find(live[e].begin(), live[e].end(), r) == live[e].end())
          ++e;
        double uRef = 0, aRef = 0;
        for (int64_t d = 0; d < D; ++d) {
          uRef += double(x[r * D + d]) * w.up[(e * F + f) * D + d];
          if (gated(act))
            aRef += double(x[r * D + d]) * w.gate[(e * F + f) * D + d];
        }
        ASSERT_NEAR(u, uRef, 1e-4) << "row " << r;
        if (gated(act)) {
          ASSERT_NEAR(saved.a[r * F + f], aRef, 1e-4) << "row " << r;
        }
      }
    }
  }

  // Through the C ABI: moert_expert_ffn_train's y is moert_expert_ffn's.
  std::vector<float> y1(rows * D), y2(rows * D), a(rows * F), u(rows * F);
  moert_expert_ffn(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                   w.down.data(), y1.data(), kE, L.S, L.R, rows, D, F, act,
                   MOERT_F32);
  moert_expert_ffn_train(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                         w.down.data(), y2.data(),
                         gated(act) ? a.data() : nullptr, u.data(), kE, L.S,
                         L.R, rows, D, F, act, MOERT_F32);
  ASSERT_TRUE(ok());
  expectSameBits(y2, y1, "y through the C ABI");
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ExpertFfnSaved,
    ::testing::Combine(::testing::Values(MOERT_ACT_RELU, MOERT_ACT_GELU,
                                         MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU),
                       ::testing::Values(0, 1, 2)),
    [](const auto &info) {
      return actName(std::get<0>(info.param)) +
             kLayouts[std::get<1>(info.param)].name;
    });

//===--- moe-overlap's split of the gradient ------------------------------===//

class ExpertFfnSplit
    : public CpuRuntimeTest,
      public ::testing::WithParamInterface<std::tuple<int32_t, int>> {};

TEST_P(ExpertFfnSplit, DataThenWeightGiveTheFusedBits) {
  // moert_expert_ffn_grad_data then moert_expert_ffn_grad_weight on its
  // rows: the bits of moert_expert_ffn_grad (dx and the three weight
  // gradients), with one chunk or many, recomputing or reading the saved
  // activations; the per-row values are zero on dead rows.
  const int32_t act = std::get<0>(GetParam());
  const FfnLayout &L = kLayouts[std::get<1>(GetParam())];
  const int64_t D = 9, F = 21, rows = L.totalRows;
  ExpertSet w(kE, D, F, act, 81);
  const int32_t *counts = L.counts.empty() ? nullptr : L.counts.data();
  std::vector<float> x = randomVec(rows * D, 82), dy = randomVec(rows * D, 83);
  auto live = liveRows(counts, kE, L.S, L.R);
  std::vector<bool> isLive(rows, false);
  for (const auto &e : live)
    for (int64_t r : e)
      isLive[r] = true;
  for (int64_t chunk : {0, 1, 3})
    for (bool save : {false, true}) {
      SCOPED_TRACE("chunk rows " + std::to_string(chunk) +
                   (save ? ", saved" : ", recomputed"));
      moert::CpuBackend backend(0);
      backend.setFfnChunkRows(chunk);
      std::vector<float> y(rows * D), a(gated(act) ? rows * F : 0),
          u(save ? rows * F : 0);
      float *sa = save && gated(act) ? a.data() : nullptr;
      float *su = save ? u.data() : nullptr;
      if (save) {
        ASSERT_TRUE(backend
                        .expertFfn(x.data(), counts, w.gatePtr(), w.up.data(),
                                   w.down.data(), y.data(), sa, su, kE, L.S,
                                   L.R, rows, D, F, act, MOERT_F32)
                        .isOk());
      }
      std::vector<float> dx(rows * D, kNaN), dg(w.up.size(), kNaN),
          du(w.up.size(), kNaN), dd(w.down.size(), kNaN);
      ASSERT_TRUE(backend
                      .expertFfnGrad(
                          x.data(), counts, w.gatePtr(), w.up.data(),
                          w.down.data(), dy.data(), sa, su, dx.data(),
                          gated(act) ? dg.data() : nullptr, du.data(),
                          dd.data(), kE, L.S, L.R, rows, D, F, act, MOERT_F32)
                      .isOk());
      std::vector<float> dx2(rows * D, kNaN), h(rows * F, kNaN),
          pu(rows * F, kNaN), pg(gated(act) ? rows * F : 0, kNaN),
          dg2(w.up.size(), kNaN), du2(w.up.size(), kNaN),
          dd2(w.down.size(), kNaN);
      float *pgp = gated(act) ? pg.data() : nullptr;
      moert::Status s = backend.expertFfnGradData(
          x.data(), counts, w.gatePtr(), w.up.data(), w.down.data(), dy.data(),
          sa, su, dx2.data(), h.data(), pgp, pu.data(), kE, L.S, L.R, rows, D,
          F, act, MOERT_F32);
      ASSERT_TRUE(s.isOk()) << s.message();
      s = backend.expertFfnGradWeight(
          x.data(), counts, dy.data(), h.data(), pgp, pu.data(),
          gated(act) ? dg2.data() : nullptr, du2.data(), dd2.data(), kE, L.S,
          L.R, rows, D, F, MOERT_F32);
      ASSERT_TRUE(s.isOk()) << s.message();
      expectSameBits(dx2, dx, "dx");
      expectSameBits(du2, du, "dup");
      expectSameBits(dd2, dd, "ddown");
      if (gated(act))
        expectSameBits(dg2, dg, "dgate");
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t f = 0; f < F; ++f) {
          if (isLive[r]) {
            ASSERT_TRUE(std::isfinite(h[r * F + f])) << "row " << r;
            continue;
          }
          ASSERT_EQ(h[r * F + f], 0.0f) << "dead row " << r << " of hidden";
          ASSERT_EQ(pu[r * F + f], 0.0f) << "dead row " << r << " of dpre_up";
          if (gated(act)) {
            ASSERT_EQ(pg[r * F + f], 0.0f) << "dead row " << r;
          }
        }
    }

  // Through the C ABI.
  std::vector<float> dx(rows * D), dg(w.up.size()), du(w.up.size()),
      dd(w.down.size()), dx2(rows * D), dg2(w.up.size()), du2(w.up.size()),
      dd2(w.down.size()), h(rows * F), pu(rows * F),
      pg(gated(act) ? rows * F : 0);
  float *dgp = gated(act) ? dg.data() : nullptr;
  float *dg2p = gated(act) ? dg2.data() : nullptr;
  float *pgp = gated(act) ? pg.data() : nullptr;
  moert_expert_ffn_grad(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                        w.down.data(), dy.data(), nullptr, nullptr, dx.data(),
                        dgp, du.data(), dd.data(), kE, L.S, L.R, rows, D, F,
                        act, MOERT_F32);
  moert_expert_ffn_grad_data(ctx, x.data(), counts, w.gatePtr(), w.up.data(),
                             w.down.data(), dy.data(), nullptr, nullptr,
                             dx2.data(), h.data(), pgp, pu.data(), kE, L.S, L.R,
                             rows, D, F, act, MOERT_F32);
  moert_expert_ffn_grad_weight(ctx, x.data(), counts, dy.data(), h.data(), pgp,
                               pu.data(), dg2p, du2.data(), dd2.data(), kE, L.S,
                               L.R, rows, D, F, MOERT_F32);
  ASSERT_TRUE(ok()) << err();
  expectSameBits(dx2, dx, "dx through the C ABI");
  expectSameBits(du2, du, "dup through the C ABI");
  expectSameBits(dd2, dd, "ddown through the C ABI");
  expectSameBits(dg2, dg, "dgate through the C ABI");
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ExpertFfnSplit,
    ::testing::Combine(::testing::Values(MOERT_ACT_RELU, MOERT_ACT_GELU,
                                         MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU),
                       ::testing::Values(0, 1, 2)),
    [](const auto &info) {
      return actName(std::get<0>(info.param)) +
             kLayouts[std::get<1>(info.param)].name;
    });

TEST_F(Backward, GradDataOfRowChunksIsTheWholeBits) {
  // moe-overlap's chunks of a packed buffer (a block of rows of every
  // segment, moe.chunk_rows): the data gradient of each chunk has the bits
  // of the same rows of the whole buffer's, for F not a multiple of 8 (the
  // activation's vector path) and rows not a multiple of the GEMM tiles.
  const int64_t D = 20, F = 37, S = 3, n = 3;
  const std::vector<int32_t> counts = {7, 0, 5, 1, 9, 0, 6, 2, 3}; // [S, E]
  int64_t rows = 0;
  for (int32_t c : counts)
    rows += c;
  std::vector<float> x = randomVec(rows * D, 91), dy = randomVec(rows * D, 92);
  for (int32_t act : {MOERT_ACT_SWIGLU, MOERT_ACT_GELU}) {
    SCOPED_TRACE(actName(act));
    ExpertSet w(kE, D, F, act, 93);
    moert::CpuBackend backend(2);
    auto data = [&](const std::vector<float> &xs, const std::vector<float> &dys,
                    const std::vector<int32_t> &cs, int64_t r,
                    std::vector<float> &dx, std::vector<float> &h,
                    std::vector<float> &pu, std::vector<float> &pg) {
      dx.assign(r * D, kNaN);
      h.assign(r * F, kNaN);
      pu.assign(r * F, kNaN);
      pg.assign(gated(act) ? r * F : 0, kNaN);
      moert::Status s = backend.expertFfnGradData(
          xs.data(), cs.data(), w.gatePtr(), w.up.data(), w.down.data(),
          dys.data(), nullptr, nullptr, dx.data(), h.data(),
          gated(act) ? pg.data() : nullptr, pu.data(), kE, S, 0, r, D, F, act,
          MOERT_F32);
      ASSERT_TRUE(s.isOk()) << s.message();
    };
    std::vector<float> dx, h, pu, pg;
    data(x, dy, counts, rows, dx, h, pu, pg);
    for (int64_t i = 0; i < n; ++i) {
      // Chunk i: rows [c*i/n, c*(i+1)/n) of every segment, and where they
      // are in the whole buffer.
      std::vector<int32_t> cc;
      std::vector<int64_t> at;
      for (int64_t seg = 0, start = 0; seg < S * kE; start += counts[seg++]) {
        int64_t c = counts[seg], lo = c * i / n, hi = c * (i + 1) / n;
        cc.push_back(int32_t(hi - lo));
        for (int64_t r = lo; r < hi; ++r)
          at.push_back(start + r);
      }
      int64_t r = int64_t(at.size());
      std::vector<float> xc(r * D), dyc(r * D);
      for (int64_t j = 0; j < r; ++j) {
        std::copy_n(&x[at[j] * D], D, &xc[j * D]);
        std::copy_n(&dy[at[j] * D], D, &dyc[j * D]);
      }
      std::vector<float> dxc, hc, puc, pgc;
      data(xc, dyc, cc, r, dxc, hc, puc, pgc);
      for (int64_t j = 0; j < r; ++j) {
        SCOPED_TRACE("chunk " + std::to_string(i) + " row " +
                     std::to_string(j));
        ASSERT_EQ(std::memcmp(&dxc[j * D], &dx[at[j] * D], D * 4), 0);
        ASSERT_EQ(std::memcmp(&hc[j * F], &h[at[j] * F], F * 4), 0);
        ASSERT_EQ(std::memcmp(&puc[j * F], &pu[at[j] * F], F * 4), 0);
        if (gated(act)) {
          ASSERT_EQ(std::memcmp(&pgc[j * F], &pg[at[j] * F], F * 4), 0);
        }
      }
    }
  }
}

//===--- Dense MLP --------------------------------------------------------===//

class MlpGrad
    : public CpuRuntimeTest,
      public ::testing::WithParamInterface<std::tuple<int32_t, bool>> {};

TEST_P(MlpGrad, MatchesReferenceAndFiniteDifferences) {
  const int32_t act = std::get<0>(GetParam());
  const bool sigmoid = std::get<1>(GetParam());
  const int64_t T = 7, D = 10, F = 19;
  ExpertSet w(1, D, F, act, 61);
  std::vector<float> sg = sigmoid ? randomVec(D, 62) : std::vector<float>();
  std::vector<float> x = randomVec(T * D, 63), dy = randomVec(T * D, 64);
  std::vector<float> dx(T * D, kNaN), dgate(w.gate.size(), kNaN),
      dup(w.up.size(), kNaN), ddown(w.down.size(), kNaN), dsg(D, kNaN);
  moert_mlp_grad(ctx, x.data(), w.gatePtr(), w.up.data(), w.down.data(),
                 sigmoid ? sg.data() : nullptr, dy.data(), dx.data(),
                 gated(act) ? dgate.data() : nullptr, dup.data(), ddown.data(),
                 sigmoid ? dsg.data() : nullptr, T, D, F, act, MOERT_F32);
  ASSERT_TRUE(ok());

  // o = f(x) s(p), p = x.sg: f gets dy s; dp = (dy . f) s (1 - s).
  std::vector<double> dxRef(T * D, 0.0), dgRef(dgate.size(), 0.0),
      duRef(dup.size(), 0.0), ddRef(ddown.size(), 0.0), dsgRef(D, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = &x[t * D];
    std::vector<float> g(dy.begin() + t * D, dy.begin() + (t + 1) * D);
    double s = 1, dp = 0;
    if (sigmoid) {
      double p = 0;
      for (int64_t d = 0; d < D; ++d)
        p += double(xr[d]) * sg[d];
      s = 1 / (1 + std::exp(-p));
      std::vector<double> f =
          ffnRowRef(xr, w.gatePtr(), w.up.data(), w.down.data(), D, F, act);
      for (int64_t d = 0; d < D; ++d) {
        dp += double(g[d]) * f[d];
        g[d] = static_cast<float>(g[d] * s);
      }
      dp *= s * (1 - s);
    }
    ffnRowGradRef(xr, w.gatePtr(), w.up.data(), w.down.data(), g.data(), D, F,
                  act, &dxRef[t * D], gated(act) ? dgRef.data() : nullptr,
                  duRef.data(), ddRef.data());
    for (int64_t d = 0; d < D; ++d) {
      if (sigmoid)
        dxRef[t * D + d] += dp * sg[d];
      dsgRef[d] += dp * xr[d];
    }
  }
  expectClose(dx, dxRef, 1e-4, 1e-5, "dx");
  expectClose(dup, duRef, 1e-4, 1e-5, "dup");
  expectClose(ddown, ddRef, 1e-4, 1e-5, "ddown");
  if (gated(act))
    expectClose(dgate, dgRef, 1e-4, 1e-5, "dgate");
  if (sigmoid)
    expectClose(dsg, dsgRef, 1e-4, 1e-5, "dsigmoid_gate");

  auto loss = [&] {
    std::vector<float> y(T * D);
    moert_mlp(ctx, x.data(), w.gatePtr(), w.up.data(), w.down.data(),
              sigmoid ? sg.data() : nullptr, y.data(), T, D, F, act, MOERT_F32);
    return weightedSum(dy, y);
  };
  bool kinks = act == MOERT_ACT_RELU;
  checkFiniteDiff(x, dx, loss, "mlp dx", kinks);
  checkFiniteDiff(w.up, dup, loss, "mlp dup", kinks);
  checkFiniteDiff(w.down, ddown, loss, "mlp ddown", kinks);
  if (gated(act))
    checkFiniteDiff(w.gate, dgate, loss, "mlp dgate");
  if (sigmoid)
    checkFiniteDiff(sg, dsg, loss, "mlp dsigmoid_gate");
  EXPECT_TRUE(ok());
}

INSTANTIATE_TEST_SUITE_P(
    Activations, MlpGrad,
    ::testing::Combine(::testing::Values(MOERT_ACT_RELU, MOERT_ACT_GELU,
                                         MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU),
                       ::testing::Bool()),
    [](const auto &info) {
      return actName(std::get<0>(info.param)) +
             (std::get<1>(info.param) ? "SigmoidGate" : "");
    });

TEST_F(Backward, ActivationDerivativesAtZeroAndInTheTails) {
  // relu'(0) = 0 (torch's convention): an FFN whose pre-activations are all
  // exactly 0 passes no gradient to x or up through relu.
  const int64_t D = 4, F = 3;
  std::vector<float> x(D, 0.0f), up = randomVec(F * D, 71),
                                 down = randomVec(D * F, 72);
  std::vector<float> dy = randomVec(D, 73), dx(D, kNaN), dup(F * D, kNaN),
                     ddown(D * F, kNaN);
  moert_mlp_grad(ctx, x.data(), nullptr, up.data(), down.data(), nullptr,
                 dy.data(), dx.data(), nullptr, dup.data(), ddown.data(),
                 nullptr, 1, D, F, MOERT_ACT_RELU, MOERT_F32);
  ASSERT_TRUE(ok());
  for (float v : dx)
    EXPECT_EQ(v, 0.0f);
  // GeLU and SiLU derivatives over [-12, 12] (vector lanes and scalar
  // tails) through a one-unit MLP: dx = down . act'(x up) up.
  // With D = F = 1 and unit weights: gelu gives y = gelu(x); swiglu
  // (gate = up = 1) gives y = silu(x) x.
  const int64_t T = 203;
  std::vector<float> xs(T), one(1, 1.0f), dys(T, 1.0f), dxs(T), dg(1), du(1),
      dd(1);
  for (int64_t t = 0; t < T; ++t)
    xs[t] = -12.0f + 24.0f * float(t) / float(T - 1);
  for (int32_t act : {MOERT_ACT_GELU, MOERT_ACT_SWIGLU}) {
    bool g = act == MOERT_ACT_SWIGLU;
    moert_mlp_grad(ctx, xs.data(), g ? one.data() : nullptr, one.data(),
                   one.data(), nullptr, dys.data(), dxs.data(),
                   g ? dg.data() : nullptr, du.data(), dd.data(), nullptr, T, 1,
                   1, act, MOERT_F32);
    ASSERT_TRUE(ok());
    for (int64_t t = 0; t < T; ++t) {
      double v = xs[t];
      double want =
          g ? actGradRef(act, v) * v + siluRef(v) : actGradRef(act, v);
      EXPECT_NEAR(dxs[t], want, 2e-6 + 2e-6 * std::fabs(want))
          << actName(act) << " at " << v;
    }
  }
}

//===--- Losses -----------------------------------------------------------===//

TEST_F(Backward, LossStatisticsGradients) {
  const int64_t T = 6, E = 5, k = 2, tokens = 24;
  const float coeff = 0.03f;
  std::vector<float> stats = {3, 1, 4, 0, 4, 1.5f, 0.5f, 2, 1, 1};
  std::vector<float> dloss = {1.75f}, dstats(2 * E, kNaN);
  moert_load_balance_loss_grad(ctx, stats.data(), dloss.data(), nullptr,
                               dstats.data(), E, tokens, k, coeff);
  ASSERT_TRUE(ok());
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(dstats[e], 0.0f);
    double want = 1.75 * double(coeff) * E * stats[e] / (tokens * k) / tokens;
    EXPECT_NEAR(dstats[E + e], want, 1e-7 * std::fabs(want));
  }
  // Linear in the score sums: the gradient is the exact slope.
  std::vector<float> out(1), bumped = stats;
  bumped[E + 2] += 1.0f;
  moert_load_balance_loss(ctx, stats.data(), nullptr, out.data(), E, tokens, k,
                          coeff);
  float base = out[0];
  moert_load_balance_loss(ctx, bumped.data(), nullptr, out.data(), E, tokens, k,
                          coeff);
  EXPECT_NEAR((out[0] - base) * 1.75, dstats[E + 2], 1e-6);

  // expert_load: dscores[t, e] = dstats[1, e].
  std::vector<float> dscores(T * E, kNaN);
  moert_expert_load_grad(ctx, dstats.data(), dscores.data(), T, E);
  ASSERT_TRUE(ok());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      EXPECT_EQ(dscores[t * E + e], dstats[E + e]);
}

TEST_F(Backward, ZLossGradMatchesReferenceAndFiniteDifferences) {
  const int64_t T = 4, E = 9, total = 10;
  const float coeff = 0.01f;
  std::vector<float> logits = randomVec(T * E, 81, -3.0f, 3.0f);
  std::vector<float> dloss = {2.0f}, dl(T * E, kNaN);
  moert_z_loss_grad(ctx, logits.data(), dloss.data(), nullptr, nullptr,
                    dl.data(), T, E, total, coeff);
  ASSERT_TRUE(ok());
  std::vector<double> ref(T * E);
  for (int64_t t = 0; t < T; ++t) {
    double s = 0;
    for (int64_t e = 0; e < E; ++e)
      s += std::exp(double(logits[t * E + e]));
    double lse = std::log(s);
    for (int64_t e = 0; e < E; ++e)
      ref[t * E + e] = 2.0 * coeff * 2 * lse / total *
                       std::exp(double(logits[t * E + e])) / s;
  }
  expectClose(dl, ref, 1e-6, 1e-9, "dlogits");
  auto loss = [&] {
    std::vector<float> out(1);
    moert_z_loss(ctx, logits.data(), nullptr, nullptr, out.data(), T, E, total,
                 coeff);
    return 2.0 * out[0];
  };
  checkFiniteDiff(logits, dl, loss, "z_loss dlogits", false, 6, 1e-2f);
  EXPECT_TRUE(ok());
}

TEST_F(Backward, MseLossIsThisRanksShareOfTheGlobalMean) {
  const int64_t n = 1000, total = 4000;
  std::vector<float> y = randomVec(n, 91), t = randomVec(n, 92);
  std::vector<float> loss(1, kNaN), dy(n, kNaN);
  moert_mse_loss(ctx, y.data(), t.data(), nullptr, nullptr, loss.data(),
                 dy.data(), 1, n, total, MOERT_F32);
  ASSERT_TRUE(ok());
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = double(y[i]) - t[i];
    sum += d * d;
    EXPECT_EQ(dy[i], static_cast<float>(2.0 * d / total)) << i;
  }
  EXPECT_EQ(loss[0], static_cast<float>(sum / total));
  // In place: dy may be y.
  moert_mse_loss(ctx, y.data(), t.data(), nullptr, nullptr, loss.data(),
                 y.data(), 1, n, total, MOERT_F32);
  ASSERT_TRUE(ok());
  EXPECT_EQ(y, dy);
}

TEST_F(Backward, StatsNameAPhaseAfterEachKernel) {
  float buf[64] = {};
  moert_mse_loss(ctx, buf, buf, nullptr, nullptr, buf, buf + 8, 1, 8, 8,
                 MOERT_F32);
  moert_rmsnorm_grad(ctx, buf, buf, buf, buf + 16, buf + 32, 2, 4, 1e-5f,
                     MOERT_F32);
  ASSERT_TRUE(ok());
  std::string stats = moert_ctx_stats_json(ctx);
  EXPECT_NE(stats.find("\"name\": \"mse_loss\""), std::string::npos) << stats;
  EXPECT_NE(stats.find("\"name\": \"rmsnorm_grad\""), std::string::npos)
      << stats;
  EXPECT_EQ(stats.find("\"name\": \"rmsnorm\""), std::string::npos) << stats;
}

//===--- Timing (disabled: run with --gtest_also_run_disabled_tests) ------===//

double seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// The benchmark shape of ExpertFfnTest (T=2048, D=1024, F=3584, E=8, top-2,
// SwiGLU, dropless): expert_ffn_grad against its GEMMs through cblas_sgemm
// alone: the two that recompute the hidden activations and the six of the
// gradients (the backward's GEMM floor).
TEST_F(Backward, DISABLED_TimingOfTheExpertFfnBackward) {
  const int64_t D = 1024, F = 3584, E = 8, rows = 4096;
  ExpertSet w(E, D, F, MOERT_ACT_SWIGLU, 101);
  std::vector<int32_t> counts(E, int32_t(rows / E));
  std::vector<float> x = randomVec(rows * D, 102),
                     dy = randomVec(rows * D, 103);
  std::vector<float> dx(rows * D), dg(E * F * D), du(E * F * D), dd(E * D * F);
  std::vector<float> a(rows * F), u(rows * F), h(rows * F), dh(rows * F);
  auto grad = [&] {
    moert_expert_ffn_grad(ctx, x.data(), counts.data(), w.gate.data(),
                          w.up.data(), w.down.data(), dy.data(), nullptr,
                          nullptr, dx.data(), dg.data(), du.data(), dd.data(),
                          E, 1, 0, rows, D, F, MOERT_ACT_SWIGLU, MOERT_F32);
  };
  auto gemms = [&](bool recompute) {
    auto sg = [](CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n,
                 int64_t kk, const float *A, int64_t lda, const float *B,
                 int64_t ldb, float beta, float *C) {
      cblas_sgemm(CblasRowMajor, ta, tb, m, n, kk, 1.0f, A, lda, B, ldb, beta,
                  C, n);
    };
    const auto N = CblasNoTrans, T = CblasTrans;
    for (int64_t e = 0, row = 0; e < E; row += counts[e++]) {
      int64_t m = counts[e];
      const float *xe = &x[row * D], *dye = &dy[row * D];
      const float *ge = &w.gate[e * F * D], *ue = &w.up[e * F * D],
                  *de = &w.down[e * D * F];
      float *ae = &a[row * F], *uu = &u[row * F], *he = &h[row * F],
            *dhe = &dh[row * F];
      if (recompute) {
        sg(N, T, m, F, D, xe, D, ge, D, 0, ae);
        sg(N, T, m, F, D, xe, D, ue, D, 0, uu);
      }
      sg(N, N, m, F, D, dye, D, de, F, 0, dhe);
      sg(T, N, D, F, m, dye, D, he, F, 0, &dd[e * D * F]);
      sg(N, N, m, D, F, uu, F, ue, D, 0, &dx[row * D]);
      sg(N, N, m, D, F, ae, F, ge, D, 1, &dx[row * D]);
      sg(T, N, F, D, m, uu, F, xe, D, 0, &du[e * F * D]);
      sg(T, N, F, D, m, ae, F, xe, D, 0, &dg[e * F * D]);
    }
  };
  double gradTime = 1e30, all = 1e30, floor = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    double t0 = seconds();
    grad();
    double t1 = seconds();
    gemms(true);
    double t2 = seconds();
    gemms(false);
    double t3 = seconds();
    gradTime = std::min(gradTime, t1 - t0);
    all = std::min(all, t2 - t1);
    floor = std::min(floor, t3 - t2);
  }
  ASSERT_TRUE(ok());
  std::printf("expert_ffn_grad %.1f ms; its 8 GEMMs through cblas_sgemm %.1f "
              "ms (ratio %.3f); the 6 gradient GEMMs %.1f ms (ratio %.3f)\n",
              gradTime * 1e3, all * 1e3, gradTime / all, floor * 1e3,
              gradTime / floor);
}

} // namespace
