//===- Backward.cu - The backward kernels of training on CUDA -------------===//
//
// The elementwise, routing and permutation parts of the backward pass (the
// GEMMs are cuBLAS calls in CudaBackend.cu). f32 only (training is f32).
//
// Determinism: no atomics. Every sum over tokens or elements runs in an
// order fixed by the sizes alone (not by the device): rmsnorm's dw sums
// chunks of kRowsPerChunk rows, then the chunks in order; the MSE loss sums
// in double over a grid fixed by n, then the blocks in order.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "cuda/CudaKernels.h"
#include "cuda/DeviceUtils.cuh"

#include <algorithm>
#include <climits>
#include <cmath>

namespace moert {
namespace cuda {

namespace {

unsigned gridFor(const LaunchEnv &env, int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  blocks = std::min<int64_t>(blocks, int64_t(env.smCount) * 16);
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

int rowThreads(int64_t units) {
  return static_cast<int>(
      std::max<int64_t>(32, std::min<int64_t>(256, (units + 31) / 32 * 32)));
}

unsigned rowBlocks(int64_t rows) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(INT_MAX))));
}

//===--- rmsnorm
//-------------------------------------------------------------===//

/// Per row: r = 1/sqrt(mean x^2 + eps) and c = r^3 * mean_d(dy*w*x).
__global__ void rmsnormRowStatsKernel(const float *x, const float *w,
                                      const float *dy, float *rc, int64_t T,
                                      int64_t D, float eps) {
  __shared__ float scratch[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float *xr = x + t * D, *gr = dy + t * D;
    float ss = 0.f, dot = 0.f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float v = xr[d];
      ss += v * v;
      dot += gr[d] * w[d] * v;
    }
    ss = blockSum(ss, scratch);
    dot = blockSum(dot, scratch);
    if (threadIdx.x == 0) {
      const float r = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
      rc[2 * t] = r;
      rc[2 * t + 1] = r * r * r * (dot / static_cast<float>(D));
    }
  }
}

constexpr int kRowsPerChunk = 256;
constexpr int kColRows = 8; // threadIdx.y extent of the column sums

/// partial[c, d] = sum over the rows t of chunk c of dy[t,d]*x[t,d]*r[t]:
/// 32 columns per block, 8 rows of threads, summed in a fixed order.
__global__ void rmsnormDwPartialKernel(const float *x, const float *dy,
                                       const float *rc, float *partial,
                                       int64_t T, int64_t D) {
  __shared__ float part[kColRows][33];
  const int64_t d = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t c = blockIdx.y;
  const int64_t t0 = c * kRowsPerChunk;
  const int64_t t1 = min(T, t0 + kRowsPerChunk);
  float s = 0.f;
  if (d < D)
    for (int64_t t = t0 + threadIdx.y; t < t1; t += kColRows)
      s += dy[t * D + d] * x[t * D + d] * rc[2 * t];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    float total = 0.f;
    for (int r = 0; r < kColRows; ++r)
      total += part[r][threadIdx.x];
    partial[c * D + d] = total;
  }
}

/// out[d] = sum_c partial[c, d], c in order.
__global__ void sumChunksKernel(const float *partial, float *out,
                                int64_t chunks, int64_t D) {
  for (int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t c = 0; c < chunks; ++c)
      s += partial[c * D + d];
    out[d] = s;
  }
}

/// dx = r*dy*w - x*c (reads x and dy before writing dx: may alias them).
__global__ void rmsnormDxKernel(const float *x, const float *w, const float *dy,
                                const float *rc, float *dx, int64_t T,
                                int64_t D) {
  const int64_t n = T * D;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i - t * D;
    const float xv = x[i], gv = dy[i];
    dx[i] = rc[2 * t] * (gv * w[d]) - xv * rc[2 * t + 1];
  }
}

//===--- layernorm
//-----------------------------------------------------------===//

/// Per row: mean, r = 1/sqrt(var + eps), mean_d(g) and mean_d(g*xh) with
/// g = dy*w and xh = (x - mean)*r (stats[4t .. 4t+3]).
__global__ void layernormRowStatsKernel(const float *x, const float *w,
                                        const float *dy, float *stats,
                                        int64_t T, int64_t D, float eps) {
  __shared__ float scratch[32];
  const float fd = static_cast<float>(D);
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float *xr = x + t * D, *gr = dy + t * D;
    float s = 0.f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      s += xr[d];
    const float mean = blockSum(s, scratch) / fd;
    float ss = 0.f, gs = 0.f, gc = 0.f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      const float c = xr[d] - mean, g = gr[d] * w[d];
      ss += c * c;
      gs += g;
      gc += g * c;
    }
    ss = blockSum(ss, scratch);
    gs = blockSum(gs, scratch);
    gc = blockSum(gc, scratch);
    if (threadIdx.x == 0) {
      const float r = 1.0f / sqrtf(ss / fd + eps);
      stats[4 * t] = mean;
      stats[4 * t + 1] = r;
      stats[4 * t + 2] = gs / fd;
      stats[4 * t + 3] = gc * r / fd;
    }
  }
}

/// partialW[c, d] = sum over the rows t of chunk c of dy*xh, partialB[c, d]
/// of dy (if given), in the fixed order of rmsnormDwPartialKernel.
__global__ void layernormDwPartialKernel(const float *x, const float *dy,
                                         const float *stats, float *partialW,
                                         float *partialB, int64_t T,
                                         int64_t D) {
  __shared__ float partW[kColRows][33];
  __shared__ float partB[kColRows][33];
  const int64_t d = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t c = blockIdx.y;
  const int64_t t0 = c * kRowsPerChunk;
  const int64_t t1 = min(T, t0 + kRowsPerChunk);
  float sw = 0.f, sb = 0.f;
  if (d < D)
    for (int64_t t = t0 + threadIdx.y; t < t1; t += kColRows) {
      const float g = dy[t * D + d];
      sw += g * (x[t * D + d] - stats[4 * t]) * stats[4 * t + 1];
      sb += g;
    }
  partW[threadIdx.y][threadIdx.x] = sw;
  partB[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    float tw = 0.f, tb = 0.f;
    for (int r = 0; r < kColRows; ++r) {
      tw += partW[r][threadIdx.x];
      tb += partB[r][threadIdx.x];
    }
    partialW[c * D + d] = tw;
    if (partialB)
      partialB[c * D + d] = tb;
  }
}

/// dx = r*(dy*w - mean(g) - xh*mean(g*xh)) (reads x and dy before writing
/// dx: may alias them).
__global__ void layernormDxKernel(const float *x, const float *w,
                                  const float *dy, const float *stats,
                                  float *dx, int64_t T, int64_t D) {
  const int64_t n = T * D;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / D, d = i - t * D;
    const float *st = stats + 4 * t;
    const float xh = (x[i] - st[0]) * st[1];
    dx[i] = st[1] * (dy[i] * w[d] - st[2] - xh * st[3]);
  }
}

//===--- top-k
//----------------------------------------------------------------===//

constexpr int kWarpsPerBlock = 8;

struct ScoreRow {
  const float *row;
  float max, inv;
  bool softmax;
  __device__ float operator()(int64_t e) const {
    return softmax ? expf(row[e] - max) * inv : 1.0f / (1.0f + expf(-row[e]));
  }
};

/// The scores of row `row` as moert_topk computes them (one warp).
__device__ ScoreRow warpScores(const float *row, int64_t E, bool softmax) {
  const int lane = threadIdx.x & 31;
  ScoreRow s{row, 0.f, 1.f, softmax};
  if (softmax) {
    float m = -INFINITY;
    for (int64_t e = lane; e < E; e += 32)
      m = fmaxf(m, row[e]);
    m = warpMax(m);
    float sum = 0.f;
    for (int64_t e = lane; e < E; e += 32)
      sum += expf(row[e] - m);
    s.max = m;
    s.inv = 1.0f / warpSum(sum);
  }
  return s;
}

/// One warp per token; the token's dlogits row holds the score gradient
/// while it is built.
__global__ void topkGradKernel(const float *logits, const int32_t *indices,
                               const float *dweights, const float *dscores,
                               float *dlogits, int64_t T, int64_t E, int64_t k,
                               int softmax, int renormalize, float scaling) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= T)
    return; // whole warps leave; only warp-level syncs below
  const ScoreRow score = warpScores(logits + t * E, E, softmax != 0);
  float *out = dlogits + t * E;
  const int32_t *idx = indices + t * k;
  const float *dw = dweights + t * k;
  // 1. The direct score gradient.
  for (int64_t e = lane; e < E; e += 32)
    out[e] = dscores ? dscores[t * E + e] : 0.f;
  // 2. Gate weights w_j = c*rho_j/S: S and sum_j (c*dw_j)*rho_j.
  float sPart = 0.f, qPart = 0.f;
  for (int64_t j = lane; j < k; j += 32) {
    if (idx[j] < 0 || idx[j] >= E)
      continue;
    const float rho = score(idx[j]);
    sPart += rho;
    qPart += scaling * dw[j] * rho;
  }
  const float S = warpSum(sPart), q = warpSum(qPart);
  // As moert_topk: a zero sum keeps the raw (unnormalized) weights.
  const bool renorm = renormalize && S > 0.f;
  __syncwarp();
  if (lane == 0) {
    for (int64_t j = 0; j < k; ++j) { // in order: repeated experts add up
      if (idx[j] < 0 || idx[j] >= E)
        continue;
      const float wh = scaling * dw[j];
      out[idx[j]] += renorm ? (wh - q / S) / S : wh;
    }
  }
  __syncwarp();
  // 3. Through softmax / sigmoid.
  if (softmax) {
    float dot = 0.f;
    for (int64_t e = lane; e < E; e += 32)
      dot += out[e] * score(e);
    dot = warpSum(dot);
    for (int64_t e = lane; e < E; e += 32) {
      const float s = score(e);
      out[e] = s * (out[e] - dot);
    }
  } else {
    for (int64_t e = lane; e < E; e += 32) {
      const float s = score(e);
      out[e] = out[e] * s * (1.0f - s);
    }
  }
}

//===--- dispatch / combine
//-----------------------------------------------===//

__global__ void dispatchGradKernel(const float *dout, const int32_t *positions,
                                   float *dx, int64_t T, int64_t k, int64_t D,
                                   int64_t outRows) {
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const int32_t *pos = positions + t * k;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float s = 0.f;
      for (int64_t j = 0; j < k; ++j)
        if (pos[j] >= 0 && pos[j] < outRows)
          s += dout[int64_t(pos[j]) * D + d];
      dx[t * D + d] = s;
    }
  }
}

/// One block per token: dy rows of its kept choices, dweights, and the
/// passthrough gradient. dy was zeroed before.
__global__ void combineGradKernel(const float *y, const int32_t *positions,
                                  const float *weights,
                                  const float *passthrough, const float *dout,
                                  float *dy, float *dweights,
                                  float *dpassthrough, int64_t T, int64_t k,
                                  int64_t D, int64_t yRows) {
  __shared__ float scratch[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    const float *g = dout + t * D;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t p = positions[t * k + j];
      const float wj = weights[t * k + j];
      float dot = 0.f;
      if (p >= yRows) {
        // out of range: skipped (not a drop either)
      } else if (p >= 0) {
        const float *yr = y + int64_t(p) * D;
        float *dyr = dy + int64_t(p) * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
          dot += g[d] * yr[d];
          dyr[d] = wj * g[d];
        }
      } else if (passthrough) {
        const float *xr = passthrough + t * D;
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
          dot += g[d] * xr[d];
      }
      dot = blockSum(dot, scratch);
      if (threadIdx.x == 0)
        dweights[t * k + j] = dot;
    }
    if (passthrough && dpassthrough) {
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float s = 0.f;
        for (int64_t j = 0; j < k; ++j)
          if (positions[t * k + j] < 0)
            s += weights[t * k + j] * g[d];
        dpassthrough[t * D + d] = s;
      }
    }
  }
}

//===--- losses
//--------------------------------------------------------------===//

__global__ void expertLoadGradKernel(const float *dstats, float *dscores,
                                     int64_t T, int64_t E) {
  const int64_t n = T * E;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dscores[i] = dstats[E + i % E];
}

__global__ void loadBalanceLossGradKernel(const float *stats,
                                          const float *dloss, float *dstats,
                                          int64_t E, int64_t tokens, int64_t k,
                                          float coeff) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < E;
       e += int64_t(gridDim.x) * blockDim.x) {
    // The CPU backend's order: (dloss*coeff*E) * (count/(T*k)) / T.
    const double scale = double(dloss[0]) * double(coeff) * double(E);
    const double g =
        scale * (double(stats[e]) / double(tokens * k)) / double(tokens);
    dstats[e] = 0.f;
    dstats[E + e] = static_cast<float>(g);
  }
}

__global__ void zLossGradKernel(const float *logits, const float *dloss,
                                float *dlogits, int64_t T, int64_t E,
                                float scale) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= T)
    return;
  const float *row = logits + t * E;
  float m = -INFINITY;
  for (int64_t e = lane; e < E; e += 32)
    m = fmaxf(m, row[e]);
  m = warpMax(m);
  float s = 0.f;
  for (int64_t e = lane; e < E; e += 32)
    s += expf(row[e] - m);
  s = warpSum(s);
  const float lse = m + logf(s);
  const float f = dloss[0] * scale * lse / s; // scale = coeff*2/total
  for (int64_t e = lane; e < E; e += 32)
    dlogits[t * E + e] = f * expf(row[e] - m);
}

constexpr int kMseThreads = 256;
constexpr int64_t kMsePerBlock = 8192;
constexpr int64_t kMseMaxBlocks = 1024;

/// dy = 2*(y - t)/total; partial[b] = sum over block b's elements of
/// (y - t)^2 in double (grid-stride; the grid depends on n only).
__global__ void mseKernel(const float *y, const float *target, float *dy,
                          double *partial, int64_t n, double total) {
  __shared__ double part[kMseThreads];
  double s = 0.0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double d = double(y[i]) - double(target[i]);
    s += d * d;
    dy[i] = static_cast<float>(2.0 * d / total);
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w)
      part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    partial[blockIdx.x] = part[0];
}

__global__ void mseFinalKernel(const double *partial, int64_t blocks,
                               float *loss, double total) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b)
      s += partial[b];
    loss[0] = static_cast<float>(s / total);
  }
}

//===--- FFN pieces
//----------------------------------------------------------===//

__device__ __forceinline__ float normCdf(float v) {
  return 0.5f * (1.0f + erff(v * 0.70710678118654752440f));
}

/// act(v) and act'(v) of relu, gelu (exact erf form) and silu.
__device__ __forceinline__ void activateGrad(float v, int act, float &f,
                                             float &df) {
  switch (act) {
  case MOERT_ACT_RELU:
    f = v > 0.f ? v : 0.f;
    df = v > 0.f ? 1.f : 0.f;
    return;
  case MOERT_ACT_GELU:
  case MOERT_ACT_GEGLU: {
    const float cdf = normCdf(v);
    f = v * cdf;
    df = cdf + v * 0.39894228040143267794f * expf(-0.5f * v * v);
    return;
  }
  default: { // MOERT_ACT_SWIGLU: silu
    const float s = 1.0f / (1.0f + expf(-v));
    f = v * s;
    df = s * (1.0f + v * (1.0f - s));
    return;
  }
  }
}

__global__ void activationGradKernel(float *a, float *u, float *mbar, int64_t n,
                                     int act) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    float f, df;
    activateGrad(a[i], act, f, df);
    const float mb = mbar[i];
    if (u) {
      const float uv = u[i];
      a[i] = mb * uv * df;
      u[i] = mb * f;
      mbar[i] = f * uv;
    } else {
      a[i] = mb * df;
      mbar[i] = f;
    }
  }
}

/// One block per row: p = x.g, s = sigmoid(p); pbar = sum_d(dy*f)*s*(1-s);
/// f <- dy*s.
__global__ void sigmoidGateGradKernel(const float *x, const float *g,
                                      const float *dy, float *f, float *pbar,
                                      int64_t T, int64_t D) {
  __shared__ float scratch[32];
  for (int64_t t = blockIdx.x; t < T; t += gridDim.x) {
    float p = 0.f, q = 0.f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      p += x[t * D + d] * g[d];
      q += dy[t * D + d] * f[t * D + d];
    }
    p = blockSum(p, scratch);
    q = blockSum(q, scratch);
    const float s = 1.0f / (1.0f + expf(-p));
    // Each thread rewrites only the elements of f it has read itself.
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      f[t * D + d] = dy[t * D + d] * s;
    if (threadIdx.x == 0)
      pbar[t] = q * s * (1.0f - s);
  }
}

__global__ void addOuterKernel(float *dx, const float *pbar, const float *g,
                               int64_t T, int64_t D) {
  const int64_t n = T * D;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dx[i] += pbar[i / D] * g[i % D];
}

/// One block per packed row: its RowBlock by binary search.
__global__ void moveRowsKernel(const RowBlock *blocks, int64_t numBlocks,
                               float *layout, float *packed, int64_t total,
                               int64_t D, bool toPacked) {
  for (int64_t p = blockIdx.x; p < total; p += gridDim.x) {
    int64_t lo = 0, hi = numBlocks - 1;
    while (lo < hi) { // the last block whose packed start is <= p
      const int64_t mid = (lo + hi + 1) / 2;
      if (blocks[mid].packed <= p)
        lo = mid;
      else
        hi = mid - 1;
    }
    const int64_t row = blocks[lo].src + (p - blocks[lo].packed);
    float *l = layout + row * D, *q = packed + p * D;
    if (toPacked)
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        q[d] = l[d];
    else
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        l[d] = q[d];
  }
}

} // namespace

//===--- Launchers
//----------------------------------------------------------===//

Status launchRmsnormGrad(const LaunchEnv &env, const float *x, const float *w,
                         const float *dy, float *dx, float *dw, int64_t T,
                         int64_t D, float eps) {
  const char *op = "moert_rmsnorm_grad";
  if (D == 0)
    return Status::ok();
  if (T == 0) {
    MOERT_CUDA(op, cudaMemsetAsync(dw, 0, sizeof(float) * D, env.stream));
    return Status::ok();
  }
  const int64_t chunks = (T + kRowsPerChunk - 1) / kRowsPerChunk;
  const int64_t colTiles = (D + 31) / 32;
  if (chunks > 65535 || colTiles > INT_MAX)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: T=%lld D=%lld exceed the CUDA kernel's grid", op,
                 (long long)T, (long long)D);
  Scratch ws(*env.alloc);
  MOERT_TRY(ws.allocate(sizeof(float) * (2 * T + chunks * D), op));
  float *rc = ws.as<float>(), *partial = rc + 2 * T;
  rmsnormRowStatsKernel<<<rowBlocks(T), rowThreads(D), 0, env.stream>>>(
      x, w, dy, rc, T, D, eps);
  MOERT_LAUNCHED(op, "rmsnormRowStatsKernel");
  rmsnormDwPartialKernel<<<dim3(static_cast<unsigned>(colTiles),
                                static_cast<unsigned>(chunks)),
                           dim3(32, kColRows), 0, env.stream>>>(x, dy, rc,
                                                                partial, T, D);
  MOERT_LAUNCHED(op, "rmsnormDwPartialKernel");
  sumChunksKernel<<<gridFor(env, D, 256), 256, 0, env.stream>>>(partial, dw,
                                                                chunks, D);
  MOERT_LAUNCHED(op, "sumChunksKernel");
  rmsnormDxKernel<<<gridFor(env, T * D, 256), 256, 0, env.stream>>>(
      x, w, dy, rc, dx, T, D);
  MOERT_LAUNCHED(op, "rmsnormDxKernel");
  return Status::ok();
}

Status launchLayernormGrad(const LaunchEnv &env, const float *x, const float *w,
                           const float *dy, float *dx, float *dw, float *db,
                           int64_t T, int64_t D, float eps) {
  const char *op = "moert_layernorm_grad";
  if (D == 0)
    return Status::ok();
  if (T == 0) {
    MOERT_CUDA(op, cudaMemsetAsync(dw, 0, sizeof(float) * D, env.stream));
    if (db)
      MOERT_CUDA(op, cudaMemsetAsync(db, 0, sizeof(float) * D, env.stream));
    return Status::ok();
  }
  const int64_t chunks = (T + kRowsPerChunk - 1) / kRowsPerChunk;
  const int64_t colTiles = (D + 31) / 32;
  if (chunks > 65535 || colTiles > INT_MAX)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: T=%lld D=%lld exceed the CUDA kernel's grid", op,
                 (long long)T, (long long)D);
  Scratch ws(*env.alloc);
  MOERT_TRY(ws.allocate(sizeof(float) * (4 * T + 2 * chunks * D), op));
  float *stats = ws.as<float>(), *partialW = stats + 4 * T;
  float *partialB = db ? partialW + chunks * D : nullptr;
  layernormRowStatsKernel<<<rowBlocks(T), rowThreads(D), 0, env.stream>>>(
      x, w, dy, stats, T, D, eps);
  MOERT_LAUNCHED(op, "layernormRowStatsKernel");
  layernormDwPartialKernel<<<dim3(static_cast<unsigned>(colTiles),
                                  static_cast<unsigned>(chunks)),
                             dim3(32, kColRows), 0, env.stream>>>(
      x, dy, stats, partialW, partialB, T, D);
  MOERT_LAUNCHED(op, "layernormDwPartialKernel");
  sumChunksKernel<<<gridFor(env, D, 256), 256, 0, env.stream>>>(partialW, dw,
                                                                chunks, D);
  MOERT_LAUNCHED(op, "sumChunksKernel");
  if (db) {
    sumChunksKernel<<<gridFor(env, D, 256), 256, 0, env.stream>>>(partialB, db,
                                                                  chunks, D);
    MOERT_LAUNCHED(op, "sumChunksKernel");
  }
  layernormDxKernel<<<gridFor(env, T * D, 256), 256, 0, env.stream>>>(
      x, w, dy, stats, dx, T, D);
  MOERT_LAUNCHED(op, "layernormDxKernel");
  return Status::ok();
}

Status launchTopkGrad(const LaunchEnv &env, const float *logits,
                      const int32_t *indices, const float *dweights,
                      const float *dscores, float *dlogits, int64_t T,
                      int64_t E, int64_t k, int32_t scoreFn,
                      int32_t renormalize, float scaling) {
  const char *op = "moert_topk_grad";
  if (T == 0 || E == 0)
    return Status::ok();
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: T=%lld too large", op, (long long)T);
  topkGradKernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0,
                   env.stream>>>(logits, indices, dweights, dscores, dlogits, T,
                                 E, k, scoreFn == MOERT_SCORE_SOFTMAX,
                                 renormalize != 0, scaling);
  MOERT_LAUNCHED(op, "topkGradKernel");
  return Status::ok();
}

Status launchDispatchGrad(const LaunchEnv &env, const float *dout,
                          const int32_t *positions, float *dx, int64_t T,
                          int64_t k, int64_t D, int64_t outRows) {
  const char *op = "moert_dispatch_grad";
  if (T == 0 || D == 0)
    return Status::ok();
  dispatchGradKernel<<<rowBlocks(T), rowThreads(D), 0, env.stream>>>(
      dout, positions, dx, T, k, D, outRows);
  MOERT_LAUNCHED(op, "dispatchGradKernel");
  return Status::ok();
}

Status launchCombineGrad(const LaunchEnv &env, const float *y,
                         const int32_t *positions, const float *weights,
                         const float *passthrough, const float *dout, float *dy,
                         float *dweights, float *dpassthrough, int64_t T,
                         int64_t k, int64_t D, int64_t yRows) {
  const char *op = "moert_combine_grad";
  if (yRows > 0 && D > 0)
    MOERT_CUDA(op,
               cudaMemsetAsync(dy, 0, sizeof(float) * yRows * D, env.stream));
  if (T == 0)
    return Status::ok();
  combineGradKernel<<<rowBlocks(T), rowThreads(D), 0, env.stream>>>(
      y, positions, weights, passthrough, dout, dy, dweights, dpassthrough, T,
      k, D, yRows);
  MOERT_LAUNCHED(op, "combineGradKernel");
  return Status::ok();
}

Status launchExpertLoadGrad(const LaunchEnv &env, const float *dstats,
                            float *dscores, int64_t T, int64_t E) {
  const char *op = "moert_expert_load_grad";
  if (T * E == 0)
    return Status::ok();
  expertLoadGradKernel<<<gridFor(env, T * E, 256), 256, 0, env.stream>>>(
      dstats, dscores, T, E);
  MOERT_LAUNCHED(op, "expertLoadGradKernel");
  return Status::ok();
}

Status launchLoadBalanceLossGrad(const LaunchEnv &env, const float *stats,
                                 const float *dloss, float *dstats, int64_t E,
                                 int64_t tokens, int64_t k, float coeff) {
  const char *op = "moert_load_balance_loss_grad";
  if (E == 0)
    return Status::ok();
  loadBalanceLossGradKernel<<<gridFor(env, E, 256), 256, 0, env.stream>>>(
      stats, dloss, dstats, E, tokens, k, coeff);
  MOERT_LAUNCHED(op, "loadBalanceLossGradKernel");
  return Status::ok();
}

Status launchZLossGrad(const LaunchEnv &env, const float *logits,
                       const float *dloss, float *dlogits, int64_t T, int64_t E,
                       int64_t totalTokens, float coeff) {
  const char *op = "moert_z_loss_grad";
  if (T == 0 || E == 0)
    return Status::ok();
  const int64_t blocks = (T + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: T=%lld too large", op, (long long)T);
  const float scale = coeff * 2.0f / static_cast<float>(totalTokens);
  zLossGradKernel<<<static_cast<unsigned>(blocks), 32 * kWarpsPerBlock, 0,
                    env.stream>>>(logits, dloss, dlogits, T, E, scale);
  MOERT_LAUNCHED(op, "zLossGradKernel");
  return Status::ok();
}

Status launchMseLoss(const LaunchEnv &env, const float *y, const float *target,
                     float *loss, float *dy, int64_t n, int64_t totalN) {
  const char *op = "moert_mse_loss";
  const int64_t blocks = std::max<int64_t>(
      1,
      std::min<int64_t>((n + kMsePerBlock - 1) / kMsePerBlock, kMseMaxBlocks));
  Scratch ws(*env.alloc);
  MOERT_TRY(ws.allocate(sizeof(double) * blocks, op));
  mseKernel<<<static_cast<unsigned>(blocks), kMseThreads, 0, env.stream>>>(
      y, target, dy, ws.as<double>(), n, double(totalN));
  MOERT_LAUNCHED(op, "mseKernel");
  mseFinalKernel<<<1, 32, 0, env.stream>>>(ws.as<double>(), blocks, loss,
                                           double(totalN));
  MOERT_LAUNCHED(op, "mseFinalKernel");
  return Status::ok();
}

Status launchActivationGrad(const LaunchEnv &env, float *a, float *u,
                            float *mbar, int64_t n, int32_t activation,
                            const char *op) {
  if (n == 0)
    return Status::ok();
  activationGradKernel<<<gridFor(env, n, 256), 256, 0, env.stream>>>(
      a, u, mbar, n, activation);
  MOERT_LAUNCHED(op, "activationGradKernel");
  return Status::ok();
}

Status launchSigmoidGateGrad(const LaunchEnv &env, const float *x,
                             const float *g, const float *dy, float *f,
                             float *pbar, int64_t T, int64_t D) {
  const char *op = "moert_mlp_grad";
  if (T == 0)
    return Status::ok();
  sigmoidGateGradKernel<<<rowBlocks(T), rowThreads(D), 0, env.stream>>>(
      x, g, dy, f, pbar, T, D);
  MOERT_LAUNCHED(op, "sigmoidGateGradKernel");
  return Status::ok();
}

Status launchAddOuter(const LaunchEnv &env, float *dx, const float *pbar,
                      const float *g, int64_t T, int64_t D, const char *op) {
  if (T * D == 0)
    return Status::ok();
  addOuterKernel<<<gridFor(env, T * D, 256), 256, 0, env.stream>>>(dx, pbar, g,
                                                                   T, D);
  MOERT_LAUNCHED(op, "addOuterKernel");
  return Status::ok();
}

Status launchMoveRows(const LaunchEnv &env, const RowBlock *blocks,
                      int64_t numBlocks, float *layout, float *packed,
                      int64_t total, int64_t D, bool toPacked, const char *op) {
  if (total == 0 || numBlocks == 0 || D == 0)
    return Status::ok();
  moveRowsKernel<<<rowBlocks(total), rowThreads(D), 0, env.stream>>>(
      blocks, numBlocks, layout, packed, total, D, toPacked);
  MOERT_LAUNCHED(op, "moveRowsKernel");
  return Status::ok();
}

} // namespace cuda
} // namespace moert
