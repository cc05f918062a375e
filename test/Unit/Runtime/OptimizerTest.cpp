//===- OptimizerTest.cpp - AdamW, SGD and the selection-bias update -------===//
//
// docs/spec.md 7.3 / 7.4: hand-computed values, and a bit-for-bit comparison
// with the float64 reference's order of operations (Optimizer.step of
// python/moe_compiler/train_reference.py) written out here in double (this
// file is compiled with -ffp-contract=off, as the kernels are).
//
//===----------------------------------------------------------------------===//
#include "RuntimeTestUtil.h"

#include <cstring>
#include <functional>
#include <limits>

using namespace moert_test;

namespace {

/// The hparams tensor of moert_kernels.def.
struct HParams {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f,
        weightDecay = 0.01f, momentum = 0, step = 1, rate = 1e-3f;
  std::vector<float> tensor() const {
    return {lr, beta1, beta2, eps, weightDecay, momentum, step, rate};
  }
};

double f32(double v) { return static_cast<double>(static_cast<float>(v)); }

/// train_reference.Optimizer.step (adamw) on one element, storage f32.
void adamwRef(const HParams &h, float &w, float g, float &m, float &v) {
  double lr = h.lr, b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weightDecay,
         n = h.step;
  double p = double(w) * (1.0 - lr * wd);
  double mn = f32(double(m) * b1 + double(g) * (1.0 - b1));
  double vn = f32(double(v) * b2 + double(g) * double(g) * (1.0 - b2));
  double stepSize = lr / (1.0 - std::pow(b1, n));
  double denom = std::sqrt(vn) / std::sqrt(1.0 - std::pow(b2, n)) + eps;
  p = p + (-stepSize) * (mn / denom);
  w = static_cast<float>(p);
  m = static_cast<float>(mn);
  v = static_cast<float>(vn);
}

/// train_reference.Optimizer.step (sgd) on one element, storage f32.
void sgdRef(const HParams &h, float &w, float g, float &buf) {
  double p = w, d = g;
  if (h.weightDecay != 0)
    d = d + p * double(h.weightDecay);
  if (h.momentum != 0)
    d = f32(h.step > 1 ? double(buf) * double(h.momentum) + d : d);
  buf = static_cast<float>(d);
  p = p + d * (-double(h.lr));
  w = static_cast<float>(p);
}

bool sameBits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

::testing::AssertionResult bitwiseEqual(const std::vector<float> &got,
                                        const std::vector<float> &want,
                                        const char *what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size differs";
  for (size_t i = 0; i < got.size(); ++i)
    if (!sameBits(got[i], want[i]))
      return ::testing::AssertionFailure()
             << what << "[" << i << "] = " << got[i] << " (bits differ), want "
             << want[i];
  return ::testing::AssertionSuccess();
}

class Optimizer : public CpuRuntimeTest {
protected:
  void adamw(const HParams &h, std::vector<float> &w,
             const std::vector<float> &g, std::vector<float> &m,
             std::vector<float> &v) {
    std::vector<float> hp = h.tensor();
    moert_adamw(ctx, w.data(), g.data(), m.data(), v.data(), hp.data(),
                w.data(), m.data(), v.data(), int64_t(w.size()));
  }
  void sgd(const HParams &h, std::vector<float> &w, const std::vector<float> &g,
           std::vector<float> &buf) {
    std::vector<float> hp = h.tensor();
    moert_sgd(ctx, w.data(), g.data(), buf.data(), hp.data(), w.data(),
              buf.data(), int64_t(w.size()));
  }
};

TEST_F(Optimizer, AdamWFirstStepByHand) {
  // p = 1 (1 - 0.1*0.01) = 0.999; m = (1 - b1) 0.5 = 0.05; v = (1 - b2)
  // 0.25 = 0.00025 (b1, b2 are the f32 values 0.9f, 0.999f); step 1:
  // lr/(1 - b1) = 1 and sqrt(v)/sqrt(1 - b2) = 0.5, so p = 0.999 - 0.05/0.5
  // = 0.899 (to the rounding of the f32 hyperparameters).
  HParams h;
  h.lr = 0.1f;
  std::vector<float> w = {1.0f}, g = {0.5f}, m = {0.0f}, v = {0.0f};
  adamw(h, w, g, m, v);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(w[0], 0.899, 1e-6);
  EXPECT_FLOAT_EQ(m[0], float(0.5 * (1 - double(0.9f))));
  EXPECT_FLOAT_EQ(v[0], float(0.25 * (1 - double(0.999f))));
  // A zero gradient still decays the moments and the weight (spec 7.3).
  h.step = 2;
  std::vector<float> zero = {0.0f};
  float w1 = w[0], m1 = m[0], v1 = v[0];
  adamw(h, w, zero, m, v);
  ASSERT_TRUE(ok());
  EXPECT_FLOAT_EQ(m[0], float(double(0.9f) * m1));
  EXPECT_FLOAT_EQ(v[0], float(double(0.999f) * v1));
  EXPECT_LT(w[0], w1 * (1 - 0.1 * 0.01) + 1e-7);
}

TEST_F(Optimizer, AdamWMatchesTheReferenceBitForBit) {
  const size_t n = 1001; // vector body and tail
  std::vector<float> w = randomVec(n, 1), m = randomVec(n, 2, -0.1f, 0.1f);
  std::vector<float> v = randomVec(n, 3, 0.0f, 0.01f);
  HParams h;
  h.lr = 3e-3f;
  h.beta1 = 0.85f;
  h.beta2 = 0.995f;
  h.eps = 1e-6f;
  h.weightDecay = 0.1f;
  std::vector<float> rw = w, rm = m, rv = v;
  for (int step = 1; step <= 5; ++step) {
    h.step = float(step + 7); // a resumed run: n continues
    std::vector<float> g = randomVec(n, 10 + step);
    adamw(h, w, g, m, v);
    ASSERT_TRUE(ok());
    for (size_t i = 0; i < n; ++i)
      adamwRef(h, rw[i], g[i], rm[i], rv[i]);
    ASSERT_TRUE(bitwiseEqual(w, rw, "w")) << "step " << step;
    ASSERT_TRUE(bitwiseEqual(m, rm, "exp_avg")) << "step " << step;
    ASSERT_TRUE(bitwiseEqual(v, rv, "exp_avg_sq")) << "step " << step;
  }
}

TEST_F(Optimizer, AdamWInPlaceEqualsSeparateOutputs) {
  const size_t n = 300;
  std::vector<float> w = randomVec(n, 21), g = randomVec(n, 22),
                     m = randomVec(n, 23), v = randomVec(n, 24, 0.0f, 1.0f);
  std::vector<float> w2(n), m2(n), v2(n);
  HParams h;
  h.step = 3;
  std::vector<float> hp = h.tensor();
  moert_adamw(ctx, w.data(), g.data(), m.data(), v.data(), hp.data(), w2.data(),
              m2.data(), v2.data(), int64_t(n));
  adamw(h, w, g, m, v); // w_out == w, m_out == m, v_out == v
  ASSERT_TRUE(ok());
  EXPECT_TRUE(bitwiseEqual(w, w2, "w"));
  EXPECT_TRUE(bitwiseEqual(m, m2, "m"));
  EXPECT_TRUE(bitwiseEqual(v, v2, "v"));
}

TEST_F(Optimizer, SgdWithoutMomentumWritesExactlyWMinusLrG) {
  const size_t n = 777;
  std::vector<float> w = randomVec(n, 31), g = randomVec(n, 32);
  std::vector<float> buf(n, 123.0f);
  HParams h;
  h.lr = 0.01f;
  h.weightDecay = 0;
  h.momentum = 0;
  h.step = 4;
  std::vector<float> w0 = w;
  sgd(h, w, g, buf);
  ASSERT_TRUE(ok());
  for (size_t i = 0; i < n; ++i) {
    float want = static_cast<float>(double(w0[i]) - double(h.lr) * g[i]);
    ASSERT_TRUE(sameBits(w[i], want)) << i << ": " << w[i] << " vs " << want;
    ASSERT_EQ(buf[i], g[i]) << "the buffer records d = g";
  }
}

TEST_F(Optimizer, SgdMomentumAndWeightDecayByHandAndBitForBit) {
  // By hand: w = 2, g = 1, wd = 0.5, mu = 0.9, lr = 0.1.
  // Step 1: d = 1 + 2*0.5 = 2, b = d = 2, w = 2 - 0.2 = 1.8.
  // Step 2: g = 1: d = 1 + 0.9 = 1.9, b = 0.9*2 + 1.9 = 3.7, w = 1.8 - 0.37.
  HParams h;
  h.lr = 0.1f;
  h.weightDecay = 0.5f;
  h.momentum = 0.9f;
  std::vector<float> w = {2.0f}, g = {1.0f}, buf = {42.0f};
  h.step = 1;
  sgd(h, w, g, buf);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(buf[0], 2.0, 1e-6);
  EXPECT_NEAR(w[0], 1.8, 1e-6);
  h.step = 2;
  sgd(h, w, g, buf);
  ASSERT_TRUE(ok());
  EXPECT_NEAR(buf[0], 3.7, 1e-6);
  EXPECT_NEAR(w[0], 1.43, 1e-6);

  const size_t n = 513;
  for (float wd : {0.0f, 0.05f})
    for (float mu : {0.0f, 0.9f}) {
      HParams r;
      r.lr = 0.02f;
      r.weightDecay = wd;
      r.momentum = mu;
      std::vector<float> pw = randomVec(n, 41), pb(n, 0.0f);
      std::vector<float> rw = pw, rb = pb;
      for (int step = 1; step <= 3; ++step) {
        r.step = float(step);
        std::vector<float> pg = randomVec(n, 50 + step);
        sgd(r, pw, pg, pb);
        ASSERT_TRUE(ok());
        for (size_t i = 0; i < n; ++i)
          sgdRef(r, rw[i], pg[i], rb[i]);
        ASSERT_TRUE(bitwiseEqual(pw, rw, "w"))
            << "wd " << wd << " mu " << mu << " step " << step;
        ASSERT_TRUE(bitwiseEqual(pb, rb, "momentum_buffer"))
            << "wd " << wd << " mu " << mu << " step " << step;
      }
    }
}

TEST_F(Optimizer, SgdSeparateOutputsLeaveTheInputs) {
  std::vector<float> w = {1.0f, 2.0f}, g = {0.5f, -0.5f}, buf = {0.1f, 0.2f};
  std::vector<float> w2(2), b2(2);
  HParams h;
  h.momentum = 0.5f;
  h.weightDecay = 0;
  h.step = 2;
  std::vector<float> hp = h.tensor();
  moert_sgd(ctx, w.data(), g.data(), buf.data(), hp.data(), w2.data(),
            b2.data(), 2);
  ASSERT_TRUE(ok());
  EXPECT_EQ(w, (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(buf, (std::vector<float>{0.1f, 0.2f}));
  EXPECT_FLOAT_EQ(b2[0], 0.5f * 0.1f + 0.5f);
  EXPECT_FLOAT_EQ(w2[1], 2.0f - 1e-3f * (0.5f * 0.2f - 0.5f));
}

TEST_F(Optimizer, BiasUpdateMovesTowardTheMeanLoad) {
  // T = 6 tokens, k = 2, E = 4: mean load 3. Loads 5 (over), 3 (even),
  // 1 and 3 -> -rate, 0, +rate, 0.
  std::vector<float> bias = {0.25f, -0.5f, 0.0f, 1.0f};
  std::vector<float> load = {5, 3, 1, 3};
  HParams h;
  h.rate = 0.125f;
  std::vector<float> hp = h.tensor(), out(4);
  moert_bias_update(ctx, bias.data(), load.data(), hp.data(), out.data(), 4, 6,
                    2);
  ASSERT_TRUE(ok());
  EXPECT_EQ(out, (std::vector<float>{0.125f, -0.5f, 0.125f, 1.0f}));
  // In place, and f32(bias + f32(rate) * sign) bit for bit.
  h.rate = 1e-3f;
  hp = h.tensor();
  moert_bias_update(ctx, bias.data(), load.data(), hp.data(), bias.data(), 4, 6,
                    2);
  ASSERT_TRUE(ok());
  EXPECT_TRUE(sameBits(bias[0], static_cast<float>(0.25 - double(1e-3f))));
  EXPECT_EQ(bias[1], -0.5f);
  EXPECT_TRUE(sameBits(bias[2], static_cast<float>(0.0 + double(1e-3f))));
}

//===--- Rejections -------------------------------------------------------===//

TEST_F(Optimizer, RejectsBadHyperparameters) {
  std::vector<float> w = {1.0f}, g = {1.0f}, m = {0.0f}, v = {0.0f};
  struct Case {
    std::function<void(HParams &)> edit;
    const char *message;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Case cases[] = {
      {[](HParams &h) { h.lr = 0; },
       "moert_adamw: hparams[0] (lr) = 0 must be a finite number > 0"},
      {[&](HParams &h) { h.lr = nan; }, "hparams[0] (lr) = nan"},
      {[](HParams &h) { h.beta2 = 1; }, "hparams[2] (beta2) = 1"},
      {[](HParams &h) { h.step = 0; }, "hparams[6] (step) = 0"},
      {[](HParams &h) { h.step = 1.5f; }, "hparams[6] (step) = 1.5"},
  };
  for (const Case &c : cases) {
    HParams h;
    c.edit(h);
    adamw(h, w, g, m, v);
    EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
    EXPECT_NE(err().find(c.message), std::string::npos) << err();
    moert_ctx_clear_error(ctx);
  }
  EXPECT_EQ(w[0], 1.0f) << "a refused step writes nothing";
  HParams h;
  h.momentum = -1;
  sgd(h, w, g, m);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("moert_sgd: hparams[5] (momentum) = -1"),
            std::string::npos)
      << err();
  moert_ctx_clear_error(ctx);
}

TEST_F(Optimizer, RejectsAPartialOverlap) {
  std::vector<float> buf(16, 0.0f), hp = HParams().tensor();
  moert_sgd(ctx, buf.data(), buf.data(), buf.data() + 8, hp.data(),
            buf.data() + 2, buf.data() + 8, 4);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_ERR_INVALID);
  EXPECT_NE(err().find("moert_sgd: w_out overlaps w in part"),
            std::string::npos)
      << err();
  moert_ctx_clear_error(ctx);
}

} // namespace
