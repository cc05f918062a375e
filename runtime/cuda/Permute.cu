//===- Permute.cu - dispatch (permute) and combine (un-permute) on CUDA --===//
//
// dispatch first inverts `positions` into a source token per output row, so
// the copy writes every output row exactly once (copy or zero) instead of
// zeroing the whole buffer and then scattering into it. Rows move in 16-byte
// vectors where the row size and the pointers allow it.
//
// combine: one block per token, f32 accumulation over the k choices, 16-byte
// vector loads of the expert rows.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "cuda/CudaKernels.h"
#include "cuda/DeviceUtils.cuh"

#include <algorithm>
#include <climits>

namespace moert {
namespace cuda {

namespace {

__global__ void rowSourceKernel(const int32_t *positions, int32_t *rowSrc,
                                int64_t n, int64_t k, int64_t outRows) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int32_t p = positions[i];
    if (p >= 0 && p < outRows)
      rowSrc[p] = static_cast<int32_t>(i / k);
  }
}

/// V is the unit of copy (uint4, uint2, unsigned, unsigned short or char).
template <typename V>
__global__ void gatherRowsKernel(const V *x, const int32_t *rowSrc, V *out,
                                 int64_t rows, int64_t unitsPerRow) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int32_t src = rowSrc[r];
    V *o = out + r * unitsPerRow;
    if (src < 0) {
      V zero;
      memset(&zero, 0, sizeof(V));
      for (int64_t u = threadIdx.x; u < unitsPerRow; u += blockDim.x)
        o[u] = zero;
    } else {
      const V *s = x + int64_t(src) * unitsPerRow;
      for (int64_t u = threadIdx.x; u < unitsPerRow; u += blockDim.x)
        o[u] = s[u];
    }
  }
}

template <typename V>
Status gatherRows(const LaunchEnv &env, const void *x, const int32_t *rowSrc,
                  void *out, int64_t rows, int64_t rowBytes) {
  const int64_t units = rowBytes / int64_t(sizeof(V));
  const int threads =
      static_cast<int>(std::min<int64_t>(256, (units + 31) / 32 * 32));
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(rows, int64_t(INT_MAX)));
  gatherRowsKernel<V><<<blocks, threads, 0, env.stream>>>(
      static_cast<const V *>(x), rowSrc, static_cast<V *>(out), rows, units);
  MOERT_LAUNCHED("moert_dispatch", "gatherRowsKernel");
  return Status::ok();
}

/// The widest unit (16, 8, 4, 2, 1 bytes) that divides the row size and
/// aligns every pointer.
int copyUnit(int64_t rowBytes, std::initializer_list<const void *> ptrs) {
  for (int unit : {16, 8, 4, 2}) {
    bool ok = rowBytes % unit == 0;
    for (const void *p : ptrs)
      ok = ok && p && (reinterpret_cast<uintptr_t>(p) % unit == 0);
    if (ok)
      return unit;
  }
  return 1;
}

Status copyRows(const LaunchEnv &env, const void *x, const int32_t *rowSrc,
                void *out, int64_t rows, int64_t rowBytes) {
  switch (copyUnit(rowBytes, {x, out})) {
  case 16:
    return gatherRows<uint4>(env, x, rowSrc, out, rows, rowBytes);
  case 8:
    return gatherRows<uint2>(env, x, rowSrc, out, rows, rowBytes);
  case 4:
    return gatherRows<unsigned>(env, x, rowSrc, out, rows, rowBytes);
  case 2:
    return gatherRows<unsigned short>(env, x, rowSrc, out, rows, rowBytes);
  default:
    return gatherRows<unsigned char>(env, x, rowSrc, out, rows, rowBytes);
  }
}

template <typename T, int VEC>
__global__ void combineKernel(const T *y, const int32_t *positions,
                              const float *weights, const T *passthrough,
                              T *out, int64_t T_, int64_t k, int64_t D) {
  const int64_t vecs = D / VEC;
  for (int64_t t = blockIdx.x; t < T_; t += gridDim.x) {
    const int32_t *pos = positions + t * k;
    const float *w = weights + t * k;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float acc[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        acc[i] = 0.f;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t p = pos[j];
        const T *src = p >= 0 ? y + int64_t(p) * D
                              : (passthrough ? passthrough + t * D : nullptr);
        if (!src)
          continue;
        const float wj = w[j];
        float f[VEC];
        loadPack<T, VEC>(src + v * VEC, f);
#pragma unroll
        for (int i = 0; i < VEC; ++i)
          acc[i] += wj * f[i];
      }
      storePack<T, VEC>(out + t * D + v * VEC, acc);
    }
  }
}

template <typename T>
Status combineTyped(const LaunchEnv &env, const void *y,
                    const int32_t *positions, const float *weights,
                    const void *passthrough, void *out, int64_t T_, int64_t k,
                    int64_t D) {
  constexpr int V = vec16<T>();
  const bool vec = D % V == 0 && aligned16(y) && aligned16(out) &&
                   (!passthrough || aligned16(passthrough));
  const int64_t units = vec ? D / V : D;
  const int threads =
      static_cast<int>(std::min<int64_t>(256, (units + 31) / 32 * 32));
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>(T_, int64_t(INT_MAX)));
  const T *yt = static_cast<const T *>(y);
  const T *pt = static_cast<const T *>(passthrough);
  T *ot = static_cast<T *>(out);
  if (vec)
    combineKernel<T, V><<<blocks, threads, 0, env.stream>>>(
        yt, positions, weights, pt, ot, T_, k, D);
  else
    combineKernel<T, 1><<<blocks, threads, 0, env.stream>>>(
        yt, positions, weights, pt, ot, T_, k, D);
  MOERT_LAUNCHED("moert_combine", "combineKernel");
  return Status::ok();
}

template <typename V>
__global__ void zeroDeadRowsKernel(V *y, const int32_t *counts, int64_t E,
                                   int64_t S, int64_t C, int64_t unitsPerRow) {
  // One block per (s, e) segment: rows e*S*C + s*C + [count, C).
  const int64_t seg = blockIdx.x, s = seg / E, e = seg - s * E;
  int64_t live = counts[s * E + e];
  live = live < 0 ? 0 : (live > C ? C : live);
  V *base = y + ((e * S + s) * C + live) * unitsPerRow;
  const int64_t n = (C - live) * unitsPerRow;
  V zero;
  memset(&zero, 0, sizeof(V));
  for (int64_t u = threadIdx.x; u < n; u += blockDim.x)
    base[u] = zero;
}

template <typename V>
Status zeroDeadRowsTyped(const LaunchEnv &env, void *y, const int32_t *counts,
                         int64_t E, int64_t S, int64_t C, int64_t rowBytes) {
  zeroDeadRowsKernel<V><<<static_cast<unsigned>(E * S), 256, 0, env.stream>>>(
      static_cast<V *>(y), counts, E, S, C, rowBytes / int64_t(sizeof(V)));
  MOERT_LAUNCHED("moert_expert_ffn", "zeroDeadRowsKernel");
  return Status::ok();
}

} // namespace

Status launchDispatch(const LaunchEnv &env, const void *x,
                      const int32_t *positions, void *out, int64_t T, int64_t k,
                      int64_t D, int64_t outRows, int32_t dtype) {
  const char *op = "moert_dispatch";
  const size_t es = dtypeSize(dtype);
  if (outRows == 0)
    return Status::ok();
  if (outRows > INT_MAX || T > INT_MAX)
    return error(MOERT_ERR_INVALID,
                 "%s: out_rows=%lld or T=%lld exceeds "
                 "int32",
                 op, (long long)outRows, (long long)T);
  Scratch rowSrc(*env.alloc);
  MOERT_TRY(rowSrc.allocate(sizeof(int32_t) * outRows, op));
  MOERT_CUDA(op, cudaMemsetAsync(rowSrc.get(), 0xff, sizeof(int32_t) * outRows,
                                 env.stream));
  if (T > 0) {
    const int64_t n = T * k;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
    rowSourceKernel<<<blocks, 256, 0, env.stream>>>(
        positions, rowSrc.as<int32_t>(), n, k, outRows);
    MOERT_LAUNCHED(op, "rowSourceKernel");
  }
  return copyRows(env, x, rowSrc.as<int32_t>(), out, outRows,
                  D * static_cast<int64_t>(es));
}

Status launchCombine(const LaunchEnv &env, const void *y,
                     const int32_t *positions, const float *weights,
                     const void *passthrough, void *out, int64_t T, int64_t k,
                     int64_t D, int32_t dtype) {
  const char *op = "moert_combine";
  if (T == 0)
    return Status::ok();
  switch (dtype) {
  case MOERT_F32:
    return combineTyped<float>(env, y, positions, weights, passthrough, out, T,
                               k, D);
  case MOERT_F16:
    return combineTyped<__half>(env, y, positions, weights, passthrough, out, T,
                                k, D);
  case MOERT_BF16:
    return combineTyped<__nv_bfloat16>(env, y, positions, weights, passthrough,
                                       out, T, k, D);
  default:
    return error(MOERT_ERR_INVALID, "%s: unsupported dtype %d (%s)", op, dtype,
                 dtypeName(dtype));
  }
}

Status launchZeroDeadRows(const LaunchEnv &env, void *y, const int32_t *counts,
                          int64_t E, int64_t S, int64_t C, int64_t D,
                          int32_t dtype) {
  if (E * S == 0 || C == 0)
    return Status::ok();
  const int64_t rowBytes = D * static_cast<int64_t>(dtypeSize(dtype));
  switch (copyUnit(rowBytes, {y})) {
  case 16:
    return zeroDeadRowsTyped<uint4>(env, y, counts, E, S, C, rowBytes);
  case 8:
    return zeroDeadRowsTyped<uint2>(env, y, counts, E, S, C, rowBytes);
  case 4:
    return zeroDeadRowsTyped<unsigned>(env, y, counts, E, S, C, rowBytes);
  case 2:
    return zeroDeadRowsTyped<unsigned short>(env, y, counts, E, S, C, rowBytes);
  default:
    return zeroDeadRowsTyped<unsigned char>(env, y, counts, E, S, C, rowBytes);
  }
}

//===--- moe.chunk_counts / moe.chunk_rows / moe.join_rows ----------------===//

namespace {

__global__ void chunkCountsKernel(const int32_t *counts, int32_t *out,
                                  int64_t n, int64_t index, int64_t chunks) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = counts[i];
    out[i] =
        static_cast<int32_t>(c * (index + 1) / chunks - c * index / chunks);
  }
}

/// Block b < segments copies segment b's block of chunk `index`; block
/// `segments` zeroes the tail (the chunk's, or with join and index 0 the
/// whole buffer's). Every block sums the counts before its segment itself:
/// the segments are few (ranks x local experts).
template <typename V>
__global__ void chunkRowsKernel(const V *src, V *dst, const int32_t *counts,
                                int64_t segments, int64_t units,
                                int64_t srcRows, int64_t dstRows, int64_t index,
                                int64_t chunks, bool join) {
  __shared__ int64_t whole, part;
  const int64_t seg = blockIdx.x;
  if (threadIdx.x == 0) {
    int64_t w = 0, p = 0;
    for (int64_t i = 0; i < seg; ++i) {
      int64_t c = counts[i];
      w += c;
      p += c * (index + 1) / chunks - c * index / chunks;
    }
    whole = w;
    part = p;
  }
  __syncthreads();
  const int64_t wholeRows = join ? dstRows : srcRows;
  const int64_t partRows = join ? srcRows : dstRows;
  if (seg == segments) {
    if (join && index != 0)
      return;
    const int64_t from = join ? whole : part;
    V zero;
    memset(&zero, 0, sizeof(V));
    for (int64_t u = from * units + threadIdx.x; u < dstRows * units;
         u += blockDim.x)
      dst[u] = zero;
    return;
  }
  const int64_t c = counts[seg];
  const int64_t first = c * index / chunks;
  int64_t n = c * (index + 1) / chunks - first;
  // Counts past the buffers (rejected by the CPU backend): copy what fits.
  n = max(int64_t(0), min(n, min(wholeRows - whole - first, partRows - part)));
  const int64_t w0 = (whole + first) * units, p0 = part * units;
  for (int64_t u = threadIdx.x; u < n * units; u += blockDim.x) {
    if (join)
      dst[w0 + u] = src[p0 + u];
    else
      dst[p0 + u] = src[w0 + u];
  }
}

template <typename V>
Status chunkRowsAs(const LaunchEnv &env, const void *src, void *dst,
                   const int32_t *counts, int64_t segments, int64_t rowBytes,
                   int64_t srcRows, int64_t dstRows, int64_t index,
                   int64_t chunks, bool join) {
  const int64_t units = rowBytes / int64_t(sizeof(V));
  chunkRowsKernel<V>
      <<<static_cast<unsigned>(segments + 1), 256, 0, env.stream>>>(
          static_cast<const V *>(src), static_cast<V *>(dst), counts, segments,
          units, srcRows, dstRows, index, chunks, join);
  MOERT_LAUNCHED("moert_chunk_rows", "chunkRowsKernel");
  return Status::ok();
}

} // namespace

Status launchChunkCounts(const LaunchEnv &env, const int32_t *counts,
                         int32_t *out, int64_t n, int64_t index,
                         int64_t chunks) {
  if (n == 0)
    return Status::ok();
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65535));
  chunkCountsKernel<<<blocks, 256, 0, env.stream>>>(counts, out, n, index,
                                                    chunks);
  MOERT_LAUNCHED("moert_chunk_counts", "chunkCountsKernel");
  return Status::ok();
}

Status launchChunkRows(const LaunchEnv &env, const void *src, void *dst,
                       const int32_t *counts, int64_t segments,
                       int64_t rowBytes, int64_t srcRows, int64_t dstRows,
                       int64_t index, int64_t chunks, bool join) {
  if (segments > INT_MAX - 1)
    return error(MOERT_ERR_INVALID,
                 "moert_chunk_rows: segments=%lld exceeds int32",
                 (long long)segments);
  switch (copyUnit(rowBytes, {src, dst})) {
  case 16:
    return chunkRowsAs<uint4>(env, src, dst, counts, segments, rowBytes,
                              srcRows, dstRows, index, chunks, join);
  case 8:
    return chunkRowsAs<uint2>(env, src, dst, counts, segments, rowBytes,
                              srcRows, dstRows, index, chunks, join);
  case 4:
    return chunkRowsAs<unsigned>(env, src, dst, counts, segments, rowBytes,
                                 srcRows, dstRows, index, chunks, join);
  case 2:
    return chunkRowsAs<unsigned short>(env, src, dst, counts, segments,
                                       rowBytes, srcRows, dstRows, index,
                                       chunks, join);
  default:
    return chunkRowsAs<char>(env, src, dst, counts, segments, rowBytes, srcRows,
                             dstRows, index, chunks, join);
  }
}

} // namespace cuda
} // namespace moert
