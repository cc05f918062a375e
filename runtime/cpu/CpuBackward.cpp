//===- CpuBackward.cpp - Gradients of the norm, routing, permutation ------===//
//
// The backward kernels other than the FFNs (CpuFfn.cpp) and the training
// loss, per docs/spec.md 7.1-7.2: GEMMs through OpenBLAS (router), row-wise
// work in parallel over tokens with f32 storage and double where a row is
// reduced (norm statistics, renormalization, softmax, log-sum-exp, the loss).
//
//===----------------------------------------------------------------------===//
#include "cpu/CpuBackend.h"
#include "cpu/CpuMath.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>

namespace moert {

using namespace cpu;

namespace {

/// Checks that every position is -1 or a row of the `rows`-row buffer.
Status checkPositions(const char *fn, const int32_t *positions, int64_t T,
                      int64_t k, int64_t rows) {
  for (int64_t i = 0; i < T * k; ++i)
    if (positions[i] < -1 || positions[i] >= rows)
      return error(MOERT_ERR_INVALID,
                   "%s: positions[%" PRId64 ",%" PRId64
                   "] = %d is not -1 or a row of the %" PRId64 "-row buffer",
                   fn, i / k, i % k, positions[i], rows);
  return Status::ok();
}

} // namespace

//===--- RMSNorm ----------------------------------------------------------===//

Status CpuBackend::rmsnormGrad(const void *xv, const void *wv, const void *dyv,
                               void *dxv, void *dwv, int64_t T, int64_t D,
                               float eps, int32_t dtype) {
  MOERT_TRY(requireF32("moert_rmsnorm_grad", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *w = static_cast<const float *>(wv);
  auto *dy = static_cast<const float *>(dyv);
  auto *dx = static_cast<float *>(dxv);
  auto *dw = static_cast<float *>(dwv);
  MOERT_TRY(trainWork_.reserve(T, "moert_rmsnorm_grad"));
  float *rs = trainWork_.data();
  // dx = r g - x r^3 mean(g x) with g = dy w, r = 1/sqrt(mean(x^2) + eps).
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = x + t * D, *dyr = dy + t * D;
    double sq = 0, gx = 0;
    for (int64_t d = 0; d < D; ++d) {
      sq += double(xr[d]) * xr[d];
      gx += double(dyr[d]) * w[d] * xr[d];
    }
    double r = 1.0 / std::sqrt(sq / double(D) + double(eps));
    float a = static_cast<float>(r);
    float b = static_cast<float>(r * r * r * gx / double(D));
    rs[t] = a;
    float *dxr = dx + t * D;
    for (int64_t d = 0; d < D; ++d)
      dxr[d] = a * dyr[d] * w[d] - b * xr[d];
  }
  // dw[d] = sum_t dy x r, column blocks in parallel, summed in double.
  const int64_t block = 64;
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t d0 = 0; d0 < D; d0 += block) {
    int64_t n = std::min(block, D - d0);
    double acc[block] = {};
    for (int64_t t = 0; t < T; ++t) {
      const float *xr = x + t * D + d0, *dyr = dy + t * D + d0;
      double r = rs[t];
      for (int64_t i = 0; i < n; ++i)
        acc[i] += double(dyr[i]) * xr[i] * r;
    }
    for (int64_t i = 0; i < n; ++i)
      dw[d0 + i] = static_cast<float>(acc[i]);
  }
  return Status::ok();
}

//===--- LayerNorm --------------------------------------------------------===//

Status CpuBackend::layernormGrad(const void *xv, const void *wv,
                                 const void *dyv, void *dxv, void *dwv,
                                 void *dbv, int64_t T, int64_t D, float eps,
                                 int32_t dtype) {
  MOERT_TRY(requireF32("moert_layernorm_grad", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *w = static_cast<const float *>(wv);
  auto *dy = static_cast<const float *>(dyv);
  auto *dx = static_cast<float *>(dxv);
  auto *dw = static_cast<float *>(dwv);
  auto *db = static_cast<float *>(dbv);
  MOERT_TRY(trainWork_.reserve(2 * T, "moert_layernorm_grad"));
  float *stats = trainWork_.data(); // per row: mean, r
  // xh = (x - mean) r, g = dy w, r = 1/sqrt(var + eps):
  // dx = r (g - mean(g) - xh mean(g xh)).
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = x + t * D, *dyr = dy + t * D;
    const auto [mean, r] = layerNormStats(xr, D, eps);
    double gs = 0, gxh = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double g = double(dyr[d]) * w[d];
      gs += g;
      gxh += g * (double(xr[d]) - mean) * r;
    }
    const float mu = static_cast<float>(mean), rf = static_cast<float>(r);
    const float gMean = static_cast<float>(gs / double(D));
    const float gxhMean = static_cast<float>(gxh / double(D));
    stats[2 * t] = mu;
    stats[2 * t + 1] = rf;
    float *dxr = dx + t * D;
    for (int64_t d = 0; d < D; ++d) {
      const float xh = (xr[d] - mu) * rf;
      dxr[d] = rf * (dyr[d] * w[d] - gMean - xh * gxhMean);
    }
  }
  // dw[d] = sum_t dy xh, db[d] = sum_t dy: column blocks in parallel, summed
  // in double.
  const int64_t block = 64;
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t d0 = 0; d0 < D; d0 += block) {
    int64_t n = std::min(block, D - d0);
    double accW[block] = {}, accB[block] = {};
    for (int64_t t = 0; t < T; ++t) {
      const float *xr = x + t * D + d0, *dyr = dy + t * D + d0;
      const double mu = stats[2 * t], r = stats[2 * t + 1];
      for (int64_t i = 0; i < n; ++i) {
        accW[i] += double(dyr[i]) * (double(xr[i]) - mu) * r;
        accB[i] += dyr[i];
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      dw[d0 + i] = static_cast<float>(accW[i]);
      if (db)
        db[d0 + i] = static_cast<float>(accB[i]);
    }
  }
  return Status::ok();
}

//===--- Router and top-k -------------------------------------------------===//

Status CpuBackend::routerGrad(const void *x, const void *w,
                              const float *dlogits, void *dx, void *dw,
                              int64_t T, int64_t D, int64_t E, int32_t dtype) {
  MOERT_TRY(requireF32("moert_router_grad", dtype));
  // dx[T,D] = dlogits[T,E] . w[E,D]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, E, 1.0f, dlogits,
              E, static_cast<const float *>(w), D, 0.0f,
              static_cast<float *>(dx), D);
  // dw[E,D] = dlogits^T . x
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, E, D, T, 1.0f, dlogits,
              E, static_cast<const float *>(x), D, 0.0f,
              static_cast<float *>(dw), D);
  return Status::ok();
}

Status CpuBackend::topkGrad(const float *logits, const int32_t *indices,
                            const float *dweights, const float *dscores,
                            float *dlogits, int64_t T, int64_t E, int64_t k,
                            int32_t scoreFn, int32_t renormalize,
                            float scaling) {
  for (int64_t i = 0; i < T * k; ++i)
    if (indices[i] < 0 || indices[i] >= E)
      return error(MOERT_ERR_INVALID,
                   "moert_topk_grad: indices[%" PRId64 ",%" PRId64
                   "] = %d is not an expert in [0, %" PRId64 ")",
                   i / k, i % k, indices[i], E);
  // Per thread: the row's scores (f32, as moert_topk has them) and their
  // gradient (double).
  rowScratch_.resize(static_cast<size_t>(threads_ * E));
  groupScratch_.resize(static_cast<size_t>(threads_ * E));
  double *dsScratch = rowScratch_.data();
  float *sScratch = groupScratch_.data();
#pragma omp parallel for num_threads(threads_) if (T * E > 16384)
  for (int64_t t = 0; t < T; ++t) {
    double *ds = dsScratch + omp_get_thread_num() * E;
    float *s = sScratch + omp_get_thread_num() * E;
    scoreRow(logits + t * E, s, E, scoreFn);
    const int32_t *idx = indices + t * k;
    const float *dwt = dweights + t * k;
    for (int64_t e = 0; e < E; ++e)
      ds[e] = dscores ? double(dscores[t * E + e]) : 0.0;
    // w_j = c rho_j / S: dw_hat = c dw; renormalized, d rho_j =
    // (dw_hat_j - sum_j' dw_hat_j' rho_j' / S) / S. As moert_topk, a zero S
    // keeps the raw weights (no renormalization).
    double sum = 0, dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      sum += double(s[idx[j]]);
      dot += double(scaling) * dwt[j] * s[idx[j]];
    }
    bool renorm = renormalize && sum > 0;
    for (int64_t j = 0; j < k; ++j) {
      double hat = double(scaling) * dwt[j];
      ds[idx[j]] += renorm ? (hat - dot / sum) / sum : hat;
    }
    float *dl = dlogits + t * E;
    if (scoreFn == MOERT_SCORE_SIGMOID) {
      for (int64_t e = 0; e < E; ++e)
        dl[e] = static_cast<float>(ds[e] * s[e] * (1.0 - double(s[e])));
      continue;
    }
    double dss = 0;
    for (int64_t e = 0; e < E; ++e)
      dss += ds[e] * s[e];
    for (int64_t e = 0; e < E; ++e)
      dl[e] = static_cast<float>(double(s[e]) * (ds[e] - dss));
  }
  return Status::ok();
}

//===--- Dispatch and combine ---------------------------------------------===//

Status CpuBackend::dispatchGrad(const void *doutv, const int32_t *positions,
                                void *dxv, int64_t T, int64_t k, int64_t D,
                                int64_t outRows, int32_t dtype) {
  MOERT_TRY(requireF32("moert_dispatch_grad", dtype));
  MOERT_TRY(checkPositions("moert_dispatch_grad", positions, T, k, outRows));
  auto *dout = static_cast<const float *>(doutv);
  auto *dx = static_cast<float *>(dxv);
#pragma omp parallel for num_threads(threads_) if (T * k * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    float *o = dx + t * D;
    for (int64_t d = 0; d < D; ++d)
      o[d] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      int32_t p = positions[t * k + j];
      if (p < 0)
        continue;
      const float *src = dout + int64_t(p) * D;
      for (int64_t d = 0; d < D; ++d)
        o[d] += src[d];
    }
  }
  return Status::ok();
}

Status CpuBackend::combineGrad(const void *yv, const int32_t *positions,
                               const float *weights, const void *passthroughv,
                               const void *doutv, void *dyv, float *dweights,
                               void *dpassthroughv, int64_t T, int64_t k,
                               int64_t D, int64_t yRows, int32_t dtype) {
  const char *fn = "moert_combine_grad";
  MOERT_TRY(requireF32(fn, dtype));
  MOERT_TRY(checkPositions(fn, positions, T, k, yRows));
  // Each row of y belongs to at most one assignment (moert_assign makes it
  // so): invert the map, so that every row of dy is written exactly once.
  rowOwner_.assign(static_cast<size_t>(yRows), -1);
  for (int64_t i = 0; i < T * k; ++i) {
    int32_t p = positions[i];
    if (p < 0)
      continue;
    if (rowOwner_[p] >= 0)
      return error(MOERT_ERR_INVALID,
                   "%s: positions[%" PRId64 ",%" PRId64 "] = %d repeats "
                   "positions[%d,%d]",
                   fn, i / k, i % k, p, int(rowOwner_[p] / k),
                   int(rowOwner_[p] % k));
    rowOwner_[p] = static_cast<int32_t>(i);
  }
  auto *y = static_cast<const float *>(yv);
  auto *pass = static_cast<const float *>(passthroughv);
  auto *dout = static_cast<const float *>(doutv);
  auto *dy = static_cast<float *>(dyv);
  auto *dpass = static_cast<float *>(dpassthroughv);
  const int32_t *owner = rowOwner_.data();
#pragma omp parallel for num_threads(threads_) if (yRows * D > 65536)
  for (int64_t r = 0; r < yRows; ++r) {
    float *o = dy + r * D;
    int32_t i = owner[r];
    if (i < 0) {
      std::memset(o, 0, static_cast<size_t>(D) * sizeof(float));
      continue;
    }
    const float *src = dout + (i / k) * D;
    float w = weights[i];
    for (int64_t d = 0; d < D; ++d)
      o[d] = w * src[d];
  }
#pragma omp parallel for num_threads(threads_) if (T * k * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    const float *g = dout + t * D;
    float *dp = pass ? dpass + t * D : nullptr;
    if (dp)
      for (int64_t d = 0; d < D; ++d)
        dp[d] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = t * k + j;
      int32_t p = positions[i];
      if (p >= 0) {
        dweights[i] = dot(g, y + int64_t(p) * D, D);
      } else if (pass) {
        dweights[i] = dot(g, pass + t * D, D);
        float w = weights[i];
        for (int64_t d = 0; d < D; ++d)
          dp[d] += w * g[d];
      } else {
        dweights[i] = 0.0f;
      }
    }
  }
  return Status::ok();
}

//===--- Loss statistics and losses ---------------------------------------===//

Status CpuBackend::expertLoadGrad(const float *dstats, float *dscores,
                                  int64_t T, int64_t E) {
  // Row 1 of the stats is sum_t scores[t, e]; row 0 (counts) has no path.
  const float *dsum = dstats + E;
#pragma omp parallel for num_threads(threads_) if (T * E > 65536)
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(dscores + t * E, dsum, static_cast<size_t>(E) * sizeof(float));
  return Status::ok();
}

Status CpuBackend::loadBalanceLossGrad(const float *stats, const float *dloss,
                                       float *dstats, int64_t E, int64_t tokens,
                                       int64_t k, float coeff) {
  double scale = double(dloss[0]) * double(coeff) * double(E);
  for (int64_t e = 0; e < E; ++e) {
    dstats[e] = 0.0f;
    dstats[E + e] = static_cast<float>(
        scale * (double(stats[e]) / double(tokens * k)) / double(tokens));
  }
  return Status::ok();
}

Status CpuBackend::zLossGrad(const float *logits, const float *dloss,
                             float *dlogits, int64_t T, int64_t E,
                             int64_t totalTokens, float coeff) {
  double scale = double(dloss[0]) * double(coeff) * 2.0 / double(totalTokens);
  rowScratch_.resize(static_cast<size_t>(threads_ * E));
  double *scratch = rowScratch_.data();
#pragma omp parallel for num_threads(threads_) if (T * E > 16384)
  for (int64_t t = 0; t < T; ++t) {
    double *ex = scratch + omp_get_thread_num() * E;
    const float *row = logits + t * E;
    float m = row[0];
    for (int64_t e = 1; e < E; ++e)
      m = row[e] > m ? row[e] : m;
    double s = 0;
    for (int64_t e = 0; e < E; ++e) {
      ex[e] = std::exp(double(row[e]) - double(m));
      s += ex[e];
    }
    double lse = double(m) + std::log(s);
    double f = scale * lse / s;
    for (int64_t e = 0; e < E; ++e)
      dlogits[t * E + e] = static_cast<float>(f * ex[e]);
  }
  return Status::ok();
}

Status CpuBackend::mseLoss(const void *yv, const void *targetv, float *loss,
                           void *dyv, int64_t n, int64_t totalN,
                           int32_t dtype) {
  MOERT_TRY(requireF32("moert_mse_loss", dtype));
  auto *y = static_cast<const float *>(yv);
  auto *target = static_cast<const float *>(targetv);
  auto *dy = static_cast<float *>(dyv);
  double total = double(totalN), sum = 0;
  // dy may alias y: each element is read before it is written.
#pragma omp parallel for simd num_threads(threads_) reduction(+ : sum) \
    if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    double diff = double(y[i]) - double(target[i]);
    sum += diff * diff;
    dy[i] = static_cast<float>(2.0 * diff / total);
  }
  loss[0] = static_cast<float>(sum / total);
  return Status::ok();
}

} // namespace moert
