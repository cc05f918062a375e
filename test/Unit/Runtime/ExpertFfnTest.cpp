//===- ExpertFfnTest.cpp - expert_ffn, mlp and the whole layer ------------===//
#include "RuntimeTestUtil.h"
#include "cpu/CpuBackend.h"

#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <limits>

using namespace moert_test;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

bool gated(int32_t act) {
  return act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
}

/// Random weights of E experts: gate/up [E,F,D] (gate empty when ungated),
/// down [E,D,F], scaled so that hidden values stay O(1).
struct Experts {
  Experts(int64_t E, int64_t D, int64_t F, int32_t act, unsigned seed)
      : E(E), D(D), F(F), act(act), up(randomVec(E * F * D, seed, -0.3f, 0.3f)),
        down(randomVec(E * D * F, seed + 1, -0.3f, 0.3f)) {
    if (gated(act))
      gate = randomVec(E * F * D, seed + 2, -0.3f, 0.3f);
  }
  const float *gatePtr(int64_t e = 0) const {
    return gate.empty() ? nullptr : gate.data() + e * F * D;
  }
  /// FFN of expert e on one row, in double.
  std::vector<double> apply(int64_t e, const float *x) const {
    return ffnRowRef(x, gatePtr(e), up.data() + e * F * D,
                     down.data() + e * D * F, D, F, act);
  }

  int64_t E, D, F;
  int32_t act;
  std::vector<float> gate, up, down;
};

/// moert_expert_ffn's spec: live rows get their expert's FFN, others 0.
std::vector<double> expertFfnRef(const std::vector<float> &x,
                                 const int32_t *counts, const Experts &w,
                                 int64_t S, int64_t R, int64_t totalRows) {
  int64_t E = w.E, D = w.D;
  std::vector<double> y(totalRows * D, 0.0);
  auto put = [&](int64_t e, int64_t row) {
    std::vector<double> r = w.apply(e, &x[row * D]);
    std::copy(r.begin(), r.end(), y.begin() + row * D);
  };
  int64_t row = 0;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t e = 0; e < E; ++e) {
      int64_t C = R / S, n = counts ? counts[s * E + e] : C;
      for (int64_t i = 0; i < n; ++i)
        put(e, R == 0 ? row++ : e * R + s * C + i);
    }
  return y;
}

class ExpertFfn : public CpuRuntimeTest {
protected:
  /// Runs moert_expert_ffn on a y pre-filled with NaN and checks every row.
  void check(const Experts &w, const std::vector<int32_t> &counts, int64_t S,
             int64_t R, int64_t totalRows, unsigned seed) {
    std::vector<float> x = randomVec(totalRows * w.D, seed);
    std::vector<float> y(totalRows * w.D, kNaN);
    const int32_t *c = counts.empty() ? nullptr : counts.data();
    moert_expert_ffn(ctx, x.data(), c, w.gatePtr(), w.up.data(), w.down.data(),
                     y.data(), w.E, S, R, totalRows, w.D, w.F, w.act,
                     MOERT_F32);
    ASSERT_TRUE(ok());
    expectClose(y, expertFfnRef(x, c, w, S, R, totalRows), 1e-4, 1e-5, "y");
  }
};

std::string activationName(int32_t act) {
  const char *names[] = {"Relu", "Gelu", "Swiglu", "Geglu"};
  return names[act];
}

class ExpertFfnActivation : public ExpertFfn,
                            public ::testing::WithParamInterface<int32_t> {};

TEST_P(ExpertFfnActivation, PackedWithEmptyExpertAndSpareRows) {
  Experts w(4, 24, 40, GetParam(), 1);
  check(w, {3, 0, 5, 1}, 1, 0, 11, 2); // rows 9 and 10 are spare
}

TEST_P(ExpertFfnActivation, PackedSeveralSegments) {
  Experts w(4, 16, 20, GetParam(), 3);
  // counts[S = 3, E = 4]; expert 3 gets no row in any segment.
  check(w, {2, 0, 3, 0, 1, 4, 0, 0, 0, 2, 5, 0}, 3, 0, 17, 4);
}

TEST_P(ExpertFfnActivation, CapacityLayoutWithCounts) {
  Experts w(3, 12, 20, GetParam(), 5);
  check(w, {2, 5, 0, 3, 0, 1}, 2, 10, 30, 6); // C = 5 per segment
}

TEST_P(ExpertFfnActivation, MlpMatchesReference) {
  int64_t T = 7, D = 16, F = 24;
  Experts w(1, D, F, GetParam(), 7);
  std::vector<float> x = randomVec(T * D, 8), g = randomVec(D, 9), y(T * D);
  const float *gates[] = {nullptr, g.data()};
  for (const float *sigmoidGate : gates) {
    moert_mlp(ctx, x.data(), w.gatePtr(), w.up.data(), w.down.data(),
              sigmoidGate, y.data(), T, D, F, GetParam(), MOERT_F32);
    ASSERT_TRUE(ok());
    std::vector<double> want;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> r = w.apply(0, &x[t * D]);
      double s = 1.0;
      if (sigmoidGate) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d)
          dot += double(x[t * D + d]) * g[d];
        s = 1.0 / (1.0 + std::exp(-dot));
      }
      for (double v : r)
        want.push_back(v * s);
    }
    expectClose(y, want, 1e-4, 1e-5, sigmoidGate ? "gated y" : "y");
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, ExpertFfnActivation,
                         ::testing::Values(MOERT_ACT_RELU, MOERT_ACT_GELU,
                                           MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU),
                         [](const auto &info) {
                           return activationName(info.param);
                         });

TEST_F(ExpertFfn, CapacityLayoutWithoutCountsUsesEveryRow) {
  Experts w(3, 8, 12, MOERT_ACT_SWIGLU, 10);
  check(w, {}, 2, 6, 18, 11);
}

TEST_F(ExpertFfn, SingleRow) {
  Experts w(2, 8, 12, MOERT_ACT_SWIGLU, 12);
  check(w, {0, 1}, 1, 0, 1, 13);
}

TEST_F(ExpertFfn, AllRowsToOneExpertSpanSeveralChunks) {
  Experts w(4, 8, 12, MOERT_ACT_SWIGLU, 14);
  check(w, {0, 0, 1300, 0}, 1, 0, 1300, 15);
}

TEST_F(ExpertFfn, ManySmallSegmentsAreGatheredIntoChunks) {
  // 6 segments of up to 199 rows: an expert's rows are not contiguous and
  // its chunks span segments.
  std::mt19937 gen(16);
  std::vector<int32_t> counts(6 * 3);
  int64_t total = 0;
  for (int32_t &c : counts)
    total += c = static_cast<int32_t>(gen() % 200);
  Experts w(3, 8, 12, MOERT_ACT_GEGLU, 17);
  check(w, counts, 6, 0, total, 18);
}

TEST_F(ExpertFfn, CapacityLayoutPartlyFullAcrossChunks) {
  Experts w(2, 8, 12, MOERT_ACT_RELU, 19);
  check(w, {400, 0, 300, 2}, 2, 800, 1600, 20); // C = 400
}

TEST_F(ExpertFfn, SiluIsAccurateOverAWideRange) {
  // D = F = 1 and unit weights: y[t] = silu(x[t]) * x[t], so every value of
  // the vectorized exp is checked, including the clamped extremes.
  int64_t T = 2001;
  std::vector<float> x(T), y(T), one(1, 1.0f);
  for (int64_t t = 0; t < T; ++t)
    x[t] = -100.0f + 0.1f * t;
  moert_mlp(ctx, x.data(), one.data(), one.data(), one.data(), nullptr,
            y.data(), T, 1, 1, MOERT_ACT_SWIGLU, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> want(T);
  for (int64_t t = 0; t < T; ++t)
    want[t] = siluRef(x[t]) * x[t];
  expectClose(y, want, 1e-6, 1e-30, "silu(x) * x");
}

TEST_F(ExpertFfn, GeluIsAccurateOverAWideRange) {
  // Ungated GeLU with D = F = 1 and unit weights: y[t] = gelu(x[t]), far
  // into the negative tail where 1 + erf must not cancel.
  int64_t T = 2401;
  std::vector<float> x(T), y(T), one(1, 1.0f);
  for (int64_t t = 0; t < T; ++t)
    x[t] = -12.0f + 0.01f * t;
  moert_mlp(ctx, x.data(), nullptr, one.data(), one.data(), nullptr, y.data(),
            T, 1, 1, MOERT_ACT_GELU, MOERT_F32);
  ASSERT_TRUE(ok());
  std::vector<double> want(T);
  for (int64_t t = 0; t < T; ++t)
    want[t] = geluRef(x[t]);
  expectClose(y, want, 2e-6, 1e-37, "gelu(x)");
}

TEST(CpuBackendFfn, ChunksOfAnySizeGiveTheSameRows) {
  // The ABI picks one chunk for small shapes; the backend is driven directly
  // to cut experts into chunks that start and end inside segments.
  std::vector<int32_t> counts{40, 0, 13, 25, 1, 30, 0, 22, 9}; // [S=3, E=3]
  int64_t total = 0;
  for (int32_t c : counts)
    total += c;
  Experts w(3, 8, 12, MOERT_ACT_SWIGLU, 24);
  std::vector<float> x = randomVec(total * w.D, 25);
  std::vector<double> want = expertFfnRef(x, counts.data(), w, 3, 0, total);
  moert::CpuBackend backend(0);
  for (int64_t chunk : {1, 7, 16, 64, 0}) {
    backend.setFfnChunkRows(chunk);
    std::vector<float> y(total * w.D, kNaN);
    moert::Status s = backend.expertFfn(
        x.data(), counts.data(), w.gatePtr(), w.up.data(), w.down.data(),
        y.data(), nullptr, nullptr, 3, 3, 0, total, w.D, w.F, w.act, MOERT_F32);
    ASSERT_TRUE(s.isOk()) << s.message();
    SCOPED_TRACE("chunk rows " + std::to_string(chunk));
    expectClose(y, want, 1e-4, 1e-5, "y");
  }
}

//===--- The whole layer through the ABI ----------------------------------===//

struct Layer {
  int64_t T, D, F, E, k;
  std::vector<float> x, router;
  Experts experts;

  Layer(int64_t T, int64_t D, int64_t F, int64_t E, int64_t k, unsigned seed)
      : T(T), D(D), F(F), E(E), k(k), x(randomVec(T * D, seed)),
        router(randomVec(E * D, seed + 1)),
        experts(E, D, F, MOERT_ACT_SWIGLU, seed + 2) {}

  /// router -> topk (softmax, renormalized) -> assign -> dispatch ->
  /// expert_ffn -> combine. capacity 0 = dropless.
  std::vector<float> run(moert_ctx *ctx, int64_t C, int64_t groups) const {
    std::vector<float> logits(T * E), scores(T * E), w(T * k), out(T * D);
    std::vector<int32_t> idx(T * k), pos(T * k), counts(groups * E);
    int64_t rows = C ? E * groups * C : T * k;
    std::vector<float> buf(rows * D), y(rows * D);
    moert_router(ctx, x.data(), router.data(), logits.data(), T, D, E,
                 MOERT_F32);
    moert_topk(ctx, logits.data(), nullptr, w.data(), idx.data(), scores.data(),
               T, E, k, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0);
    moert_assign(ctx, idx.data(), pos.data(), counts.data(), T, k, E, C,
                 groups);
    moert_dispatch(ctx, x.data(), pos.data(), buf.data(), T, k, D, rows,
                   MOERT_F32);
    moert_expert_ffn(ctx, buf.data(), counts.data(), experts.gatePtr(),
                     experts.up.data(), experts.down.data(), y.data(), E,
                     C ? groups : 1, C ? groups * C : 0, rows, D, F,
                     MOERT_ACT_SWIGLU, MOERT_F32);
    moert_combine(ctx, y.data(), pos.data(), w.data(), nullptr, out.data(), T,
                  k, D, MOERT_F32);
    return out;
  }

  /// docs/spec.md section 3 in double, straight from the definitions.
  std::vector<double> reference(int64_t C, int64_t groups) const {
    std::vector<double> out(T * D, 0.0);
    std::vector<int64_t> fill(groups * E, 0);
    std::vector<std::vector<std::pair<int64_t, double>>> choice(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> s(E);
      double m = -1e300, sum = 0, wsum = 0;
      for (int64_t e = 0; e < E; ++e) {
        for (int64_t d = 0; d < D; ++d)
          s[e] += double(x[t * D + d]) * router[e * D + d];
        m = std::max(m, s[e]);
      }
      std::vector<std::pair<double, int64_t>> order;
      for (int64_t e = 0; e < E; ++e) {
        s[e] = std::exp(s[e] - m);
        sum += s[e];
        order.push_back({-s[e], e});
      }
      std::sort(order.begin(), order.end());
      for (int64_t j = 0; j < k; ++j) {
        choice[t].push_back({order[j].second, s[order[j].second] / sum});
        wsum += choice[t].back().second;
      }
      for (auto &c : choice[t])
        c.second /= wsum;
    }
    for (int64_t j = 0; j < k; ++j) // slot-major service for capacity
      for (int64_t t = 0; t < T; ++t) {
        auto [e, weight] = choice[t][j];
        int64_t g = C ? t / (T / groups) : 0;
        if (C && fill[g * E + e]++ >= C)
          continue;
        std::vector<double> r = experts.apply(e, &x[t * D]);
        for (int64_t d = 0; d < D; ++d)
          out[t * D + d] += weight * r[d];
      }
    return out;
  }
};

TEST_F(ExpertFfn, DroplessLayerMatchesReference) {
  Layer layer(48, 32, 40, 8, 2, 21);
  std::vector<float> out = layer.run(ctx, 0, 1);
  ASSERT_TRUE(ok());
  expectClose(out, layer.reference(0, 1), 1e-4, 1e-5, "out");
}

TEST_F(ExpertFfn, CapacityLayerMatchesReference) {
  Layer layer(48, 32, 40, 8, 2, 22);
  // cf = 1.0, two groups of 24 tokens: C = ceil(1.0 * 24 * 2 / 8) = 6.
  std::vector<float> out = layer.run(ctx, 6, 2);
  ASSERT_TRUE(ok());
  expectClose(out, layer.reference(6, 2), 1e-4, 1e-5, "out");
}

TEST_F(ExpertFfn, SingleTokenLayerMatchesReference) {
  Layer layer(1, 16, 24, 4, 2, 26);
  expectClose(layer.run(ctx, 0, 1), layer.reference(0, 1), 1e-4, 1e-5,
              "dropless");
  // C = ceil(1.0 * 1 * 2 / 4) = 1: both choices fit (different experts).
  expectClose(layer.run(ctx, 1, 1), layer.reference(1, 1), 1e-4, 1e-5,
              "capacity");
  EXPECT_TRUE(ok());
}

//===--- Timing (disabled: run with --gtest_also_run_disabled_tests) ------===//

double seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

template <typename Fn> double bestOf(int reps, Fn &&fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    double start = seconds();
    fn();
    best = std::min(best, seconds() - start);
  }
  return best;
}

// The benchmark shape: T=2048, D=1024, F=3584, E=8, top-2, SwiGLU, dropless.
// Prints the expert FFN against the same GEMMs through cblas_sgemm alone.
TEST_F(ExpertFfn, DISABLED_TimingOfTheBenchmarkLayer) {
  const int64_t T = 2048, D = 1024, F = 3584, E = 8, k = 2, rows = T * k;
  Layer layer(T, D, F, E, k, 23);
  std::vector<float> logits(T * E), scores(T * E), w(T * k);
  std::vector<int32_t> idx(T * k), pos(T * k), counts(E);
  std::vector<float> buf(rows * D), y(rows * D), h(rows * F), u(rows * F);
  moert_router(ctx, layer.x.data(), layer.router.data(), logits.data(), T, D, E,
               MOERT_F32);
  moert_topk(ctx, logits.data(), nullptr, w.data(), idx.data(), scores.data(),
             T, E, k, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0);
  moert_assign(ctx, idx.data(), pos.data(), counts.data(), T, k, E, 0, 1);
  moert_dispatch(ctx, layer.x.data(), pos.data(), buf.data(), T, k, D, rows,
                 MOERT_F32);
  const Experts &ex = layer.experts;
  auto ffn = [&] {
    moert_expert_ffn(ctx, buf.data(), counts.data(), ex.gatePtr(), ex.up.data(),
                     ex.down.data(), y.data(), E, 1, 0, rows, D, F,
                     MOERT_ACT_SWIGLU, MOERT_F32);
  };
  auto gemms = [&] {
    for (int64_t e = 0, row = 0; e < E; row += counts[e++]) {
      const float *xe = buf.data() + row * D;
      auto nt = [&](const float *a, const float *b, float *c, int64_t m,
                    int64_t n, int64_t kk) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, 1.0f, a,
                    kk, b, kk, 0.0f, c, n);
      };
      nt(xe, ex.gatePtr(e), h.data() + row * F, counts[e], F, D);
      nt(xe, ex.up.data() + e * F * D, u.data() + row * F, counts[e], F, D);
      nt(h.data() + row * F, ex.down.data() + e * D * F, y.data() + row * D,
         counts[e], D, F);
    }
  };
  // Interleaved and best-of, so that load from other processes hits both.
  double ffnTime = 1e30, gemmTime = 1e30, layerTime = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    ffnTime = std::min(ffnTime, bestOf(1, ffn));
    gemmTime = std::min(gemmTime, bestOf(1, gemms));
    layerTime = std::min(layerTime, bestOf(1, [&] { layer.run(ctx, 0, 1); }));
  }
  ASSERT_TRUE(ok());
  std::printf("expert counts:");
  for (int32_t c : counts)
    std::printf(" %d", c);
  std::printf("\nexpert_ffn %.1f ms, raw cblas_sgemm %.1f ms (ratio %.3f), "
              "whole layer %.1f ms (ratio %.3f)\n",
              ffnTime * 1e3, gemmTime * 1e3, ffnTime / gemmTime,
              layerTime * 1e3, layerTime / gemmTime);
  std::printf("%s\n", moert_ctx_stats_json(ctx));
}

} // namespace
