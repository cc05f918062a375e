//===- CpuOptimizer.cpp - AdamW, SGD and the selection-bias update --------===//
//
// docs/spec.md 7.3 / 7.4, operation for operation as the float64 reference
// (python/moe_compiler/train_reference.py, Optimizer.step): every value is
// read from f32 into double, every new state value is rounded to f32 before
// the weight update reads it, and the new weight is rounded to f32 once. So
// that the double arithmetic is the reference's to the last bit, this file
// is compiled with -ffp-contract=off (no fused multiply-add:
// runtime/cpu/CMakeLists.txt) and evaluates every expression in the
// reference's order. The loops carry no dependence between elements, so an
// output may be its input (w_out == w, ...).
//
//===----------------------------------------------------------------------===//
#include "cpu/CpuBackend.h"

#include <cinttypes>
#include <cmath>

namespace moert {

namespace {

/// The f32 hyperparameter tensor (moert_kernels.def): [0] lr, [1] beta1,
/// [2] beta2, [3] eps, [4] weight_decay, [5] momentum, [6] step n,
/// [7] bias update rate.
enum HParam {
  kLr,
  kBeta1,
  kBeta2,
  kEps,
  kWeightDecay,
  kMomentum,
  kStep,
  kRate
};

/// The value an f32 store gives, back in double.
inline double f32(double v) {
  return static_cast<double>(static_cast<float>(v));
}

/// Checks hyperparameter `i` (its value lives in device memory, so the
/// context cannot).
Status checkHParam(const char *fn, const float *h, HParam i, const char *name,
                   bool ok, const char *rule) {
  if (std::isfinite(h[i]) && ok)
    return Status::ok();
  return error(MOERT_ERR_INVALID,
               "%s: hparams[%d] (%s) = %g must be a finite number %s", fn,
               int(i), name, double(h[i]), rule);
}

Status checkStep(const char *fn, const float *h) {
  float n = h[kStep];
  return checkHParam(fn, h, kStep, "step", n >= 1 && n == std::floor(n),
                     "that is a whole number >= 1");
}

} // namespace

Status CpuBackend::adamw(const float *w, const float *g, const float *m,
                         const float *v, const float *hparams, float *wOut,
                         float *mOut, float *vOut, int64_t n) {
  const char *fn = "moert_adamw";
  const float *h = hparams;
  MOERT_TRY(checkHParam(fn, h, kLr, "lr", h[kLr] > 0, "> 0"));
  MOERT_TRY(checkHParam(fn, h, kBeta1, "beta1", h[kBeta1] >= 0 && h[kBeta1] < 1,
                        "in [0, 1)"));
  MOERT_TRY(checkHParam(fn, h, kBeta2, "beta2", h[kBeta2] >= 0 && h[kBeta2] < 1,
                        "in [0, 1)"));
  MOERT_TRY(checkHParam(fn, h, kEps, "eps", h[kEps] >= 0, ">= 0"));
  MOERT_TRY(checkHParam(fn, h, kWeightDecay, "weight_decay",
                        h[kWeightDecay] >= 0, ">= 0"));
  MOERT_TRY(checkStep(fn, h));
  const double lr = h[kLr], b1 = h[kBeta1], b2 = h[kBeta2], eps = h[kEps];
  const double wd = h[kWeightDecay], step = h[kStep];
  const double decay = 1.0 - lr * wd;
  const double stepSize = lr / (1.0 - std::pow(b1, step));
  const double bc2 = std::sqrt(1.0 - std::pow(b2, step));
  const double c1 = 1.0 - b1, c2 = 1.0 - b2;
#pragma omp parallel for simd num_threads(threads_) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    double gi = g[i];
    double p = double(w[i]) * decay;
    double mi = f32(double(m[i]) * b1 + gi * c1);
    double vi = f32(double(v[i]) * b2 + gi * gi * c2);
    double denom = std::sqrt(vi) / bc2 + eps;
    p = p + (-stepSize) * (mi / denom);
    mOut[i] = static_cast<float>(mi);
    vOut[i] = static_cast<float>(vi);
    wOut[i] = static_cast<float>(p);
  }
  return Status::ok();
}

Status CpuBackend::sgd(const float *w, const float *g, const float *buf,
                       const float *hparams, float *wOut, float *bufOut,
                       int64_t n) {
  const char *fn = "moert_sgd";
  const float *h = hparams;
  MOERT_TRY(checkHParam(fn, h, kLr, "lr", h[kLr] > 0, "> 0"));
  MOERT_TRY(checkHParam(fn, h, kWeightDecay, "weight_decay",
                        h[kWeightDecay] >= 0, ">= 0"));
  MOERT_TRY(
      checkHParam(fn, h, kMomentum, "momentum", h[kMomentum] >= 0, ">= 0"));
  MOERT_TRY(checkStep(fn, h));
  const double lr = h[kLr], wd = h[kWeightDecay], mu = h[kMomentum];
  // At step 1 the buffer starts as d; without momentum it records d.
  const bool first = h[kStep] == 1.0f;
  const bool decayed = wd != 0, momentum = mu != 0;
#pragma omp parallel for simd num_threads(threads_) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    double p = w[i];
    double d = g[i];
    if (decayed)
      d = d + p * wd;
    if (momentum)
      d = f32(first ? d : double(buf[i]) * mu + d);
    bufOut[i] = static_cast<float>(d);
    p = p + d * (-lr);
    wOut[i] = static_cast<float>(p);
  }
  return Status::ok();
}

Status CpuBackend::biasUpdate(const float *bias, const float *load,
                              const float *hparams, float *biasOut, int64_t E,
                              int64_t tokens, int64_t k) {
  MOERT_TRY(checkHParam("moert_bias_update", hparams, kRate, "bias_update_rate",
                        true, "of any sign"));
  const double rate = hparams[kRate];
  const double mean = double(tokens * k) / double(E);
  for (int64_t e = 0; e < E; ++e) {
    double diff = mean - double(load[e]);
    double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : diff); // sign(0) = 0
    biasOut[e] = static_cast<float>(double(bias[e]) + rate * sign);
  }
  return Status::ok();
}

} // namespace moert
