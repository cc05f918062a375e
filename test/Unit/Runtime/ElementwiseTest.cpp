//===- ElementwiseTest.cpp - rmsnorm and add ------------------------------===//
#include "RuntimeTestUtil.h"

using namespace moert_test;

namespace {

using Elementwise = CpuRuntimeTest;

std::vector<double> rmsnormRef(const std::vector<float> &x,
                               const std::vector<float> &w, int64_t T,
                               int64_t D, double eps) {
  std::vector<double> y(T * D);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d)
      ss += double(x[t * D + d]) * x[t * D + d];
    double inv = 1.0 / std::sqrt(ss / D + eps);
    for (int64_t d = 0; d < D; ++d)
      y[t * D + d] = x[t * D + d] * inv * w[d];
  }
  return y;
}

TEST_F(Elementwise, RmsnormMatchesReference) {
  // Odd D exercises the tail of the vector loop; the big case the threads.
  for (auto [T, D] : {std::pair<int64_t, int64_t>{3, 37}, {1, 1}, {64, 1024}}) {
    std::vector<float> x = randomVec(T * D, 10, -3, 3);
    std::vector<float> w = randomVec(D, 11, 0.5, 1.5), y(T * D);
    moert_rmsnorm(ctx, x.data(), w.data(), y.data(), T, D, 1e-5f, MOERT_F32);
    ASSERT_TRUE(ok());
    expectClose(y, rmsnormRef(x, w, T, D, 1e-5), 1e-5, 1e-6, "y");
  }
}

TEST_F(Elementwise, RmsnormEpsilonGuardsZeroRows) {
  std::vector<float> x(8, 0.0f), w(8, 1.0f), y(8, 1.0f);
  moert_rmsnorm(ctx, x.data(), w.data(), y.data(), 1, 8, 1e-6f, MOERT_F32);
  ASSERT_TRUE(ok());
  EXPECT_EQ(y, std::vector<float>(8, 0.0f));
}

std::vector<double> layernormRef(const std::vector<float> &x,
                                 const std::vector<float> &w, const float *b,
                                 int64_t T, int64_t D, double eps) {
  std::vector<double> y(T * D);
  for (int64_t t = 0; t < T; ++t) {
    double mean = 0, var = 0;
    for (int64_t d = 0; d < D; ++d)
      mean += double(x[t * D + d]) / D;
    for (int64_t d = 0; d < D; ++d)
      var += (x[t * D + d] - mean) * (x[t * D + d] - mean) / D;
    double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t d = 0; d < D; ++d)
      y[t * D + d] = (x[t * D + d] - mean) * inv * w[d] + (b ? b[d] : 0.0);
  }
  return y;
}

TEST_F(Elementwise, LayernormMatchesReference) {
  // With and without a bias; an offset of 100 checks the two-pass variance
  // (no cancellation); the big case runs the threads.
  for (auto [T, D] : {std::pair<int64_t, int64_t>{3, 37}, {1, 1}, {64, 1024}}) {
    std::vector<float> x = randomVec(T * D, 10, 97, 103);
    std::vector<float> w = randomVec(D, 11, 0.5, 1.5), b = randomVec(D, 12);
    std::vector<float> y(T * D);
    moert_layernorm(ctx, x.data(), w.data(), nullptr, y.data(), T, D, 1e-5f,
                    MOERT_F32);
    ASSERT_TRUE(ok());
    expectClose(y, layernormRef(x, w, nullptr, T, D, 1e-5), 1e-4, 1e-5, "y");
    moert_layernorm(ctx, x.data(), w.data(), b.data(), y.data(), T, D, 1e-5f,
                    MOERT_F32);
    ASSERT_TRUE(ok());
    expectClose(y, layernormRef(x, w, b.data(), T, D, 1e-5), 1e-4, 1e-5, "y+b");
  }
}

TEST_F(Elementwise, LayernormOfAConstantRowIsTheBias) {
  std::vector<float> x(8, 3.0f), w(8, 2.0f), b(8, 0.25f), y(8, 1.0f);
  moert_layernorm(ctx, x.data(), w.data(), b.data(), y.data(), 1, 8, 1e-6f,
                  MOERT_F32);
  ASSERT_TRUE(ok());
  EXPECT_EQ(y, std::vector<float>(8, 0.25f));
}

TEST_F(Elementwise, AddF32SmallAndLarge) {
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(300000)}) {
    std::vector<float> a = randomVec(n, 1), b = randomVec(n, 2), y(n);
    moert_add(ctx, a.data(), b.data(), y.data(), n, MOERT_F32);
    ASSERT_TRUE(ok());
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(y[i], a[i] + b[i]) << i;
  }
}

TEST_F(Elementwise, AddIntegersAndInPlace) {
  std::vector<int32_t> a{1, -2, 3}, b{10, 20, 30};
  moert_add(ctx, a.data(), b.data(), a.data(), 3, MOERT_I32);
  EXPECT_EQ(a, (std::vector<int32_t>{11, 18, 33}));
  std::vector<int64_t> c{int64_t(1) << 40, 5}, d{1, -5};
  moert_add(ctx, c.data(), d.data(), c.data(), 2, MOERT_I64);
  EXPECT_EQ(c, (std::vector<int64_t>{(int64_t(1) << 40) + 1, 0}));
  moert_add(ctx, nullptr, nullptr, nullptr, 0, MOERT_F32); // empty is fine
  EXPECT_TRUE(ok());
}

} // namespace
