//===- RuntimeTestUtil.h - Shared helpers of the runtime kernel tests -----===//
//
// Kernels are called through the C ABI on a CPU context with host buffers and
// compared with naive reference loops in double precision.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TEST_UNIT_RUNTIME_RUNTIMETESTUTIL_H
#define MOE_TEST_UNIT_RUNTIME_RUNTIMETESTUTIL_H

#include "moert/moert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace moert_test {

/// A CPU context per test; every test ends with the context error-free
/// unless it clears or checks the error itself.
class CpuRuntimeTest : public ::testing::Test {
protected:
  void SetUp() override {
    moert_ctx_options o;
    moert_ctx_options_init(&o);
    ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  }
  void TearDown() override { moert_ctx_destroy(ctx); }

  /// Status of the context, with its message on failure.
  ::testing::AssertionResult ok() const {
    if (moert_ctx_status(ctx) == MOERT_OK)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << moert_ctx_error(ctx);
  }
  std::string err() const { return moert_ctx_error(ctx); }

  moert_ctx *ctx = nullptr;
};

/// Uniform values in [lo, hi) from a fixed seed.
inline std::vector<float> randomVec(size_t n, unsigned seed, float lo = -1.0f,
                                    float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(gen);
  return v;
}

inline double siluRef(double x) { return x / (1.0 + std::exp(-x)); }
/// 0.5 x (1 + erf(x / sqrt 2)), written with erfc so that the negative tail
/// does not cancel.
inline double geluRef(double x) {
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}

/// act(x W1^T) W2^T or (act(x Wg^T) * x Wu^T) Wd^T for one row, in double.
/// gate/up: [F, D], down: [D, F].
inline std::vector<double> ffnRowRef(const float *x, const float *gate,
                                     const float *up, const float *down,
                                     int64_t D, int64_t F, int32_t act) {
  std::vector<double> h(F);
  for (int64_t f = 0; f < F; ++f) {
    double u = 0, g = 0;
    for (int64_t d = 0; d < D; ++d) {
      u += double(x[d]) * up[f * D + d];
      if (gate)
        g += double(x[d]) * gate[f * D + d];
    }
    switch (act) {
    case MOERT_ACT_RELU:
      h[f] = u > 0 ? u : 0;
      break;
    case MOERT_ACT_GELU:
      h[f] = geluRef(u);
      break;
    case MOERT_ACT_SWIGLU:
      h[f] = siluRef(g) * u;
      break;
    default:
      h[f] = geluRef(g) * u;
      break;
    }
  }
  std::vector<double> y(D, 0.0);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t f = 0; f < F; ++f)
      y[d] += h[f] * down[d * F + f];
  return y;
}

/// Expects |got - want| <= atol + rtol*|want| elementwise.
template <typename Got, typename Want>
void expectClose(const Got &got, const Want &want, double rtol, double atol,
                 const char *what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double g = got[i], w = want[i];
    if (std::fabs(g - w) <= atol + rtol * std::fabs(w))
      continue;
    ADD_FAILURE() << what << "[" << i << "] = " << g << ", expected " << w;
    if (++reported == 5)
      return;
  }
}

} // namespace moert_test

#endif // MOE_TEST_UNIT_RUNTIME_RUNTIMETESTUTIL_H
