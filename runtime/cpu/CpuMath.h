//===- CpuMath.h - Activation math of the CPU kernels -----------*- C++ -*-===//
//
// The activations run over T*k*F values after the expert GEMMs, so they have
// AVX2 forms (libm's scalar expf / erff would cost 5-40% of the layer): an exp
// accurate to about 1 ulp, SiLU, and the erf GeLU through a fitted erfc. The
// scalar forms serve tails and builds without AVX2. Also: dot products with
// independent accumulators (faster and more accurate than one serial sum).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPU_CPUMATH_H
#define MOERT_CPU_CPUMATH_H

#include "base/Dtype.h"
#include "base/Status.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace moert {
namespace cpu {

/// e^x, relative error ~1e-7; the argument is clamped to [-87.3, 88.3].
inline float expApprox(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  // x = n*ln2 + r with |r| <= ln2/2 (ln2 split in two for an exact n*ln2).
  float n = std::nearbyint(x * 1.44269504f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  // Taylor series to degree 7: truncation error < 6e-9 on |r| <= 0.347.
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

#if defined(__AVX2__) && defined(__FMA__)
/// expApprox on 8 lanes. Written with intrinsics because compilers do not
/// vectorize the clamp (they split it into branches with constant results).
inline __m256 expApprox8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  for (float c :
       {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

inline float silu(float x) { return x / (1.0f + expApprox(-x)); }

/// erfc(t) * exp(t^2) ~= z * P(z) with z = 1/(1 + t/2), t in [0, 10]; P is
/// our least-squares fit in relative error (2e-8 in double, ~3e-7 when
/// evaluated in f32). The substitution makes the 1/(t sqrt(pi)) tail smooth.
constexpr float kErfcScaled[10] = {
    0.282064497f, 0.28285709f,   0.238644436f, 0.225544065f,  -0.0983250737f,
    0.421290129f, -0.670043945f, 0.428946346f, -0.123263076f, 0.0122855566f};

/// The exact (erf) GeLU, x * Phi(x), not the tanh approximation. 1 + erf is
/// computed as erfc of |x| (2 - erfc for x >= 0), so the negative tail keeps
/// its relative accuracy instead of cancelling.
inline float gelu(float x) {
  float t = std::fabs(x) * 0.70710678f;
  t = t < 10.0f ? t : 10.0f;
  float z = 1.0f / (1.0f + 0.5f * t);
  float p = kErfcScaled[9];
  for (int i = 8; i >= 0; --i)
    p = p * z + kErfcScaled[i];
  // exp(-t^2) = exp(-x^2/2) with x^2 split into hi + lo (exact with FMA):
  // rounding t or t^2 first would cost up to 1e-5 relative in the far tail.
  float x2 = x * x, x2lo = std::fma(x, x, -x2);
  float erfc = z * p * expApprox(-0.5f * x2) * (1.0f - 0.5f * x2lo);
  return 0.5f * x * (x >= 0.0f ? 2.0f - erfc : erfc);
}

inline float relu(float x) { return x > 0.0f ? x : 0.0f; }

/// LayerNorm's statistics of one row of D values: the mean and
/// r = 1/sqrt(var + eps), in two passes summed in double (the variance of the
/// centered values: no cancellation). The forward and the backward both use
/// it, so the backward normalizes exactly as the forward did.
struct RowNormStats {
  double mean, r;
};
inline RowNormStats layerNormStats(const float *x, int64_t D, float eps) {
  double sum = 0;
  for (int64_t d = 0; d < D; ++d)
    sum += x[d];
  const double mean = sum / double(D);
  double sq = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double c = double(x[d]) - mean;
    sq += c * c;
  }
  return {mean, 1.0 / std::sqrt(sq / double(D) + double(eps))};
}

/// h[i] = gelu(h[i]) * (u ? u[i] : 1): the GeLU and GEGLU step.
inline void geluTimes(float *h, const float *u, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(h + i);
    __m256 t =
        _mm256_mul_ps(_mm256_and_ps(x, absMask), _mm256_set1_ps(0.70710678f));
    t = _mm256_min_ps(t, _mm256_set1_ps(10.0f));
    __m256 z =
        _mm256_div_ps(one, _mm256_fmadd_ps(t, _mm256_set1_ps(0.5f), one));
    __m256 p = _mm256_set1_ps(kErfcScaled[9]);
    for (int c = 8; c >= 0; --c)
      p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kErfcScaled[c]));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 x2lo = _mm256_fmsub_ps(x, x, x2);
    __m256 e = expApprox8(_mm256_mul_ps(x2, _mm256_set1_ps(-0.5f)));
    e = _mm256_mul_ps(e, _mm256_fnmadd_ps(x2lo, _mm256_set1_ps(0.5f), one));
    __m256 erfc = _mm256_mul_ps(_mm256_mul_ps(z, p), e);
    __m256 positive = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 cdf2 = _mm256_blendv_ps(erfc, _mm256_sub_ps(two, erfc), positive);
    __m256 g = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), cdf2);
    if (u)
      g = _mm256_mul_ps(g, _mm256_loadu_ps(u + i));
    _mm256_storeu_ps(h + i, g);
  }
#endif
  for (; i < n; ++i)
    h[i] = gelu(h[i]) * (u ? u[i] : 1.0f);
}

/// h[i] = silu(h[i]) * u[i]: the SwiGLU step, the hot loop after the GEMMs.
inline void siluTimes(float *h, const float *u, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(h + i);
    __m256 e = expApprox8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, e));
    _mm256_storeu_ps(h + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
#endif
  for (; i < n; ++i)
    h[i] = silu(h[i]) * u[i];
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

//===--- Activations with their derivatives (the training kernels) --------===//

/// gelu(x) and gelu'(x) = Phi(x) + x phi(x), with the erfc fit of gelu():
/// the erfc and exp(-x^2/2) it computes give Phi and phi at once.
inline void geluAndGrad(float x, float &g, float &dg) {
  float t = std::fabs(x) * 0.70710678f;
  t = t < 10.0f ? t : 10.0f;
  float z = 1.0f / (1.0f + 0.5f * t);
  float p = kErfcScaled[9];
  for (int i = 8; i >= 0; --i)
    p = p * z + kErfcScaled[i];
  float x2 = x * x, x2lo = std::fma(x, x, -x2);
  float e = expApprox(-0.5f * x2) * (1.0f - 0.5f * x2lo);
  float erfc = z * p * e;
  float cdf = 0.5f * (x >= 0.0f ? 2.0f - erfc : erfc);
  g = x * cdf;
  dg = cdf + x * e * 0.39894228f; // 1/sqrt(2 pi)
}

/// silu(x) and silu'(x) = s (1 + x (1 - s)), s = sigmoid(x).
inline void siluAndGrad(float x, float &f, float &df) {
  float s = 1.0f / (1.0f + expApprox(-x));
  f = x * s;
  df = s * (1.0f + x * (1.0f - s));
}

#if defined(__AVX2__) && defined(__FMA__)
inline void geluAndGrad8(__m256 x, __m256 &g, __m256 &dg) {
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  const __m256 half = _mm256_set1_ps(0.5f);
  __m256 t =
      _mm256_mul_ps(_mm256_and_ps(x, absMask), _mm256_set1_ps(0.70710678f));
  t = _mm256_min_ps(t, _mm256_set1_ps(10.0f));
  __m256 z = _mm256_div_ps(one, _mm256_fmadd_ps(t, half, one));
  __m256 p = _mm256_set1_ps(kErfcScaled[9]);
  for (int c = 8; c >= 0; --c)
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kErfcScaled[c]));
  __m256 x2 = _mm256_mul_ps(x, x);
  __m256 x2lo = _mm256_fmsub_ps(x, x, x2);
  __m256 e = expApprox8(_mm256_mul_ps(x2, _mm256_set1_ps(-0.5f)));
  e = _mm256_mul_ps(e, _mm256_fnmadd_ps(x2lo, half, one));
  __m256 erfc = _mm256_mul_ps(_mm256_mul_ps(z, p), e);
  __m256 positive = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
  __m256 cdf = _mm256_mul_ps(
      half, _mm256_blendv_ps(erfc, _mm256_sub_ps(two, erfc), positive));
  g = _mm256_mul_ps(x, cdf);
  dg = _mm256_fmadd_ps(_mm256_mul_ps(x, e), _mm256_set1_ps(0.39894228f), cdf);
}

inline void siluAndGrad8(__m256 x, __m256 &f, __m256 &df) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 e = expApprox8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, e));
  f = _mm256_mul_ps(x, s);
  df = _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one));
}
#endif

/// The FFN's hidden activation and the factors of its backward, in place
/// over n elements (docs/spec.md 7.2):
///  - gated (a = x.gate^T, u = x.up^T): h = act(a) u; then a := act'(a) u
///    (times dh it is da) and u := act(a) (times dh it is du);
///  - ungated (u = x.up^T; a unused): h = act(u); then u := act'(u).
/// relu'(0) = 0.
inline void activateWithGrad(int32_t act, float *a, float *u, float *h,
                             int64_t n) {
  int64_t i = 0;
  if (act == MOERT_ACT_RELU) {
    for (; i < n; ++i) {
      float v = u[i];
      h[i] = v > 0.0f ? v : 0.0f;
      u[i] = v > 0.0f ? 1.0f : 0.0f;
    }
    return;
  }
  bool gated = act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
  bool silu = act == MOERT_ACT_SWIGLU;
  float *in = gated ? a : u;
#if defined(__AVX2__) && defined(__FMA__)
  for (; i + 8 <= n; i += 8) {
    __m256 f, df;
    if (silu)
      siluAndGrad8(_mm256_loadu_ps(in + i), f, df);
    else
      geluAndGrad8(_mm256_loadu_ps(in + i), f, df);
    if (gated) {
      __m256 uv = _mm256_loadu_ps(u + i);
      _mm256_storeu_ps(h + i, _mm256_mul_ps(f, uv));
      _mm256_storeu_ps(a + i, _mm256_mul_ps(df, uv));
      _mm256_storeu_ps(u + i, f);
    } else {
      _mm256_storeu_ps(h + i, f);
      _mm256_storeu_ps(u + i, df);
    }
  }
#endif
  for (; i < n; ++i) {
    float f, df;
    if (silu)
      siluAndGrad(in[i], f, df);
    else
      geluAndGrad(in[i], f, df);
    if (gated) {
      float uv = u[i];
      h[i] = f * uv;
      a[i] = df * uv;
      u[i] = f;
    } else {
      h[i] = f;
      u[i] = df;
    }
  }
}

/// Scores of one row of logits: softmax (max subtracted, sum in double) or
/// sigmoid, exactly as moert_topk computes them.
inline void scoreRow(const float *logits, float *scores, int64_t E,
                     int32_t fn) {
  if (fn == MOERT_SCORE_SIGMOID) {
    for (int64_t e = 0; e < E; ++e)
      scores[e] = sigmoid(logits[e]);
    return;
  }
  float m = logits[0];
  for (int64_t e = 1; e < E; ++e)
    m = logits[e] > m ? logits[e] : m;
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    scores[e] = std::exp(logits[e] - m);
    sum += scores[e];
  }
  float inv = static_cast<float>(1.0 / sum);
  for (int64_t e = 0; e < E; ++e)
    scores[e] *= inv;
}

/// Dot product with 16 independent f32 accumulators.
inline float dot(const float *a, const float *b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l)
      acc[l] += a[i + l] * b[i + l];
  float s = 0.0f;
  for (; i < n; ++i)
    s += a[i] * b[i];
  for (int l = 0; l < 16; ++l)
    s += acc[l];
  return s;
}

inline bool isF32(int32_t dtype) { return dtype == MOERT_F32; }

/// The CPU backend computes in f32 only.
inline Status requireF32(const char *fn, int32_t dtype) {
  if (isF32(dtype))
    return Status::ok();
  return error(MOERT_ERR_UNSUPPORTED,
               "%s: dtype %s is not supported on the cpu backend (only f32)",
               fn, dtypeName(dtype));
}

} // namespace cpu
} // namespace moert

#endif // MOERT_CPU_CPUMATH_H
