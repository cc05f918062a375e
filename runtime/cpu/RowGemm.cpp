//===- RowGemm.cpp - Row-independent SGEMM for the expert FFN -------------===//
//
// The usual blocked GEMM (Goto / BLIS): for each block of kKc values of k,
// b is packed into panels of kNr columns ([k][kNr], zero-padded past N) and
// each thread packs blocks of kMc rows of a into micro-panels of kMr rows
// ([k][kMr], zero-padded past M); a kMr x kNr register tile of c then runs
// one fma per element and k. The padding only feeds lanes that are never
// stored, and the accumulator of each element is c itself between k blocks
// (a float stored and reloaded exactly), so each element is the single
// ascending fma chain of RowGemm.h whatever the tile it falls in, and the
// AVX2 kernel (one IEEE fma per lane) and the portable kernel (std::fma)
// agree bit for bit.
//
//===----------------------------------------------------------------------===//
#include "cpu/RowGemm.h"

#include <omp.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MOERT_ROWGEMM_X86 1
#endif

namespace moert {
namespace cpu {

namespace {

constexpr int64_t kMr = RowGemm::kMr, kNr = RowGemm::kNr;

/// One kMr x kNr tile of c over kc values of k: c (= 0 when !accumulate)
/// += ap . bp, with ap packed [kc][kMr] and bp [kc][kNr].
using Kernel = void (*)(int64_t kc, const float *ap, const float *bp, float *c,
                        int64_t ldc, bool accumulate);

using PackB = void (*)(const float *b, int64_t N, int64_t K, int64_t n0,
                       int64_t pc, int64_t kc, float *dst);

void kernelPortable(int64_t kc, const float *ap, const float *bp, float *c,
                    int64_t ldc, bool accumulate) {
  float t[kMr][kNr];
  for (int64_t r = 0; r < kMr; ++r)
    for (int64_t j = 0; j < kNr; ++j)
      t[r][j] = accumulate ? c[r * ldc + j] : 0.0f;
  for (int64_t k = 0; k < kc; ++k, ap += kMr, bp += kNr)
    for (int64_t r = 0; r < kMr; ++r)
      for (int64_t j = 0; j < kNr; ++j)
        t[r][j] = std::fma(ap[r], bp[j], t[r][j]);
  for (int64_t r = 0; r < kMr; ++r)
    for (int64_t j = 0; j < kNr; ++j)
      c[r * ldc + j] = t[r][j];
}

#ifdef MOERT_ROWGEMM_X86
// 12 accumulators, two b vectors and one broadcast of a: 15 of the 16 ymm
// registers.
__attribute__((target("avx2,fma"))) void kernelAvx2(int64_t kc, const float *ap,
                                                    const float *bp, float *c,
                                                    int64_t ldc,
                                                    bool accumulate) {
  static_assert(kMr == 6 && kNr == 16, "the AVX2 kernel is 6 x 16");
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  if (accumulate) {
    c00 = _mm256_loadu_ps(c + 0 * ldc);
    c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
    c10 = _mm256_loadu_ps(c + 1 * ldc);
    c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
    c20 = _mm256_loadu_ps(c + 2 * ldc);
    c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
    c30 = _mm256_loadu_ps(c + 3 * ldc);
    c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
    c40 = _mm256_loadu_ps(c + 4 * ldc);
    c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
    c50 = _mm256_loadu_ps(c + 5 * ldc);
    c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
  } else {
    c00 = c01 = c10 = c11 = c20 = c21 = _mm256_setzero_ps();
    c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k, ap += kMr, bp += kNr) {
    __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
    __m256 a = _mm256_broadcast_ss(ap + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(ap + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10);
    c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(ap + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20);
    c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(ap + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30);
    c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(ap + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40);
    c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(ap + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50);
    c51 = _mm256_fmadd_ps(a, b1, c51);
  }
  _mm256_storeu_ps(c + 0 * ldc, c00);
  _mm256_storeu_ps(c + 0 * ldc + 8, c01);
  _mm256_storeu_ps(c + 1 * ldc, c10);
  _mm256_storeu_ps(c + 1 * ldc + 8, c11);
  _mm256_storeu_ps(c + 2 * ldc, c20);
  _mm256_storeu_ps(c + 2 * ldc + 8, c21);
  _mm256_storeu_ps(c + 3 * ldc, c30);
  _mm256_storeu_ps(c + 3 * ldc + 8, c31);
  _mm256_storeu_ps(c + 4 * ldc, c40);
  _mm256_storeu_ps(c + 4 * ldc + 8, c41);
  _mm256_storeu_ps(c + 5 * ldc, c50);
  _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}
#endif

/// Columns [n0, n0 + kNr) of b [N, K], k in [pc, pc + kc), as [kc][kNr].
void packBPortable(const float *b, int64_t N, int64_t K, int64_t n0, int64_t pc,
                   int64_t kc, float *dst) {
  for (int64_t j = 0; j < kNr; ++j) {
    if (n0 + j >= N) {
      for (int64_t k = 0; k < kc; ++k)
        dst[k * kNr + j] = 0.0f;
      continue;
    }
    const float *src = b + (n0 + j) * K + pc;
    for (int64_t k = 0; k < kc; ++k)
      dst[k * kNr + j] = src[k];
  }
}

#ifdef MOERT_ROWGEMM_X86
/// packBPortable with 8 x 8 transposes in registers (packing moves values
/// and cannot change a bit; it is most of the time outside the kernel).
__attribute__((target("avx2,fma"))) void packBAvx2(const float *b, int64_t N,
                                                   int64_t K, int64_t n0,
                                                   int64_t pc, int64_t kc,
                                                   float *dst) {
  if (n0 + kNr > N)
    return packBPortable(b, N, K, n0, pc, kc, dst);
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8)
    for (int64_t j = 0; j < kNr; j += 8) {
      const float *src = b + (n0 + j) * K + pc + k;
      __m256 r0 = _mm256_loadu_ps(src + 0 * K);
      __m256 r1 = _mm256_loadu_ps(src + 1 * K);
      __m256 r2 = _mm256_loadu_ps(src + 2 * K);
      __m256 r3 = _mm256_loadu_ps(src + 3 * K);
      __m256 r4 = _mm256_loadu_ps(src + 4 * K);
      __m256 r5 = _mm256_loadu_ps(src + 5 * K);
      __m256 r6 = _mm256_loadu_ps(src + 6 * K);
      __m256 r7 = _mm256_loadu_ps(src + 7 * K);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
      __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
      __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
      __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44);
      __m256 s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44);
      __m256 s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44);
      __m256 s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44);
      __m256 s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float *d = dst + k * kNr + j;
      _mm256_store_ps(d + 0 * kNr, _mm256_permute2f128_ps(s0, s4, 0x20));
      _mm256_store_ps(d + 1 * kNr, _mm256_permute2f128_ps(s1, s5, 0x20));
      _mm256_store_ps(d + 2 * kNr, _mm256_permute2f128_ps(s2, s6, 0x20));
      _mm256_store_ps(d + 3 * kNr, _mm256_permute2f128_ps(s3, s7, 0x20));
      _mm256_store_ps(d + 4 * kNr, _mm256_permute2f128_ps(s0, s4, 0x31));
      _mm256_store_ps(d + 5 * kNr, _mm256_permute2f128_ps(s1, s5, 0x31));
      _mm256_store_ps(d + 6 * kNr, _mm256_permute2f128_ps(s2, s6, 0x31));
      _mm256_store_ps(d + 7 * kNr, _mm256_permute2f128_ps(s3, s7, 0x31));
    }
  for (; k < kc; ++k)
    for (int64_t j = 0; j < kNr; ++j)
      dst[k * kNr + j] = b[(n0 + j) * K + pc + k];
}
#endif

/// Columns [n0, n0 + kNr) of b [K, N] (the NN form), k in [pc, pc + kc),
/// as [kc][kNr]: the same panel packBPortable makes of b^T.
void packBKN(const float *b, int64_t N, int64_t K, int64_t n0, int64_t pc,
             int64_t kc, float *dst) {
  (void)K;
  int64_t cols = std::min(kNr, N - n0);
  for (int64_t k = 0; k < kc; ++k) {
    const float *src = b + (pc + k) * N + n0;
    float *d = dst + k * kNr;
    std::memcpy(d, src, static_cast<size_t>(cols) * sizeof(float));
    for (int64_t j = cols; j < kNr; ++j)
      d[j] = 0.0f;
  }
}

/// Rows [m0, m0 + mc) of a [M, K], k in [pc, pc + kc), as micro-panels of
/// kMr rows, each [kc][kMr].
void packA(const float *a, int64_t M, int64_t K, int64_t m0, int64_t mc,
           int64_t pc, int64_t kc, float *dst) {
  for (int64_t p = 0; p < mc; p += kMr, dst += kMr * kc)
    for (int64_t r = 0; r < kMr; ++r) {
      int64_t m = m0 + p + r;
      if (m >= M) {
        for (int64_t k = 0; k < kc; ++k)
          dst[k * kMr + r] = 0.0f;
        continue;
      }
      const float *src = a + m * K + pc;
      for (int64_t k = 0; k < kc; ++k)
        dst[k * kMr + r] = src[k];
    }
}

/// One tile that ends past M or N: through a full tile on the stack, of
/// which only the rows and columns inside c are read and written back.
void edgeTile(Kernel kernel, int64_t kc, const float *ap, const float *bp,
              float *c, int64_t ldc, int64_t rows, int64_t cols,
              bool accumulate) {
  alignas(64) float t[kMr * kNr] = {};
  if (accumulate)
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(t + r * kNr, c + r * ldc, cols * sizeof(float));
  kernel(kc, ap, bp, t, kNr, accumulate);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(c + r * ldc, t + r * kNr, cols * sizeof(float));
}

RowGemmPath envPath() {
  const char *v = std::getenv("MOERT_ROWGEMM");
  if (v && std::strcmp(v, "portable") == 0)
    return RowGemmPath::Portable;
  return rowGemmHasAvx2() ? RowGemmPath::Avx2 : RowGemmPath::Portable;
}

} // namespace

bool rowGemmHasAvx2() {
#ifdef MOERT_ROWGEMM_X86
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

RowGemmPath rowGemmAutoPath() {
  static const RowGemmPath path = envPath();
  return path;
}

const char *rowGemmPathName(RowGemmPath path) {
  switch (path) {
  case RowGemmPath::Avx2:
    return "avx2";
  case RowGemmPath::Portable:
    return "portable";
  default:
    return "auto";
  }
}

namespace {
/// The kernel and the packing of b of `path` (Auto: this process's).
void choose(RowGemmPath path, Kernel &kernel, PackB &packB) {
  if (path == RowGemmPath::Auto)
    path = rowGemmAutoPath();
  kernel = kernelPortable;
  packB = packBPortable;
#ifdef MOERT_ROWGEMM_X86
  if (path == RowGemmPath::Avx2 && rowGemmHasAvx2()) {
    kernel = kernelAvx2;
    packB = packBAvx2;
  }
#endif
}

int64_t panelsOf(int64_t N) { return (N + kNr - 1) / kNr; }
} // namespace

PackedB::~PackedB() { std::free(data_); }

int64_t PackedB::bytes() const {
  return panelsOf(n_) * kNr * k_ * int64_t(sizeof(float));
}

RowGemm::~RowGemm() { std::free(pack_); }

Status RowGemm::pack(const float *b, int64_t N, int64_t K, int threads,
                     const char *fn, PackedB &out, RowGemmPath path) {
  std::free(out.data_);
  out.data_ = nullptr;
  out.source_ = b;
  out.n_ = std::max<int64_t>(N, 0);
  out.k_ = std::max<int64_t>(K, 0);
  if (N <= 0 || K <= 0)
    return Status::ok();
  Kernel kernel;
  PackB packB;
  choose(path, kernel, packB);
  int64_t panels = panelsOf(N);
  void *p = nullptr;
  if (posix_memalign(&p, 64, static_cast<size_t>(out.bytes())))
    return error(MOERT_ERR_NOMEM,
                 "%s: cannot allocate %" PRId64 " bytes of packed weights", fn,
                 out.bytes());
  out.data_ = static_cast<float *>(p);
  // Block pc holds panels of kc values of k from panels * kNr * pc on (every
  // block before it has kKc).
#pragma omp parallel for num_threads(std::max(1, threads)) schedule(static)
  for (int64_t p0 = 0; p0 < panels; ++p0)
    for (int64_t pc = 0; pc < K; pc += kKc) {
      int64_t kc = std::min(kKc, K - pc);
      packB(b, N, K, p0 * kNr, pc, kc,
            out.data_ + panels * kNr * pc + p0 * kNr * kc);
    }
  return Status::ok();
}

Status RowGemm::nt(const float *a, const float *b, float *c, int64_t M,
                   int64_t N, int64_t K, int threads, const char *fn,
                   RowGemmPath path) {
  return run(a, b, nullptr, c, M, N, K, threads, fn, /*bKN=*/false,
             /*accumulateC=*/false, path);
}

Status RowGemm::nn(const float *a, const float *b, float *c, int64_t M,
                   int64_t N, int64_t K, int threads, const char *fn,
                   bool accumulate, RowGemmPath path) {
  return run(a, b, nullptr, c, M, N, K, threads, fn, /*bKN=*/true, accumulate,
             path);
}

Status RowGemm::nt(const float *a, const PackedB &b, float *c, int64_t M,
                   int threads, const char *fn, RowGemmPath path) {
  return run(a, b.source(), &b, c, M, b.n(), b.k(), threads, fn,
             /*bKN=*/false, /*accumulateC=*/false, path);
}

Status RowGemm::reserve(int64_t floats, const char *fn) {
  if (floats <= packSize_)
    return Status::ok();
  std::free(pack_);
  pack_ = nullptr;
  packSize_ = 0;
  void *p = nullptr;
  if (posix_memalign(&p, 64, static_cast<size_t>(floats) * sizeof(float)))
    return error(MOERT_ERR_NOMEM,
                 "%s: cannot allocate %" PRId64 " bytes of GEMM workspace", fn,
                 floats * int64_t(sizeof(float)));
  pack_ = static_cast<float *>(p);
  packSize_ = floats;
  return Status::ok();
}

Status RowGemm::run(const float *a, const float *b, const PackedB *packed,
                    float *c, int64_t M, int64_t N, int64_t K, int threads,
                    const char *fn, bool bKN, bool accumulateC,
                    RowGemmPath path) {
  if (M <= 0 || N <= 0)
    return Status::ok();
  if (K <= 0) { // the empty sum
    if (!accumulateC)
      std::memset(c, 0, static_cast<size_t>(M * N) * sizeof(float));
    return Status::ok();
  }
  Kernel kernel;
  PackB packB;
  choose(path, kernel, packB);
  if (bKN)
    packB = packBKN;
  threads = std::max(1, threads);
  // Small products are not worth waking threads for (any split gives the
  // same bits).
  if (M * N * std::min(K, kKc) < (int64_t(1) << 18))
    threads = 1;
  int64_t panels = panelsOf(N);
  threads = static_cast<int>(std::min<int64_t>(threads, panels));
  int64_t kcMax = std::min(K, kKc);
  int64_t packedB = packed ? 0 : panels * kNr * kcMax, packedA = kMc * kcMax;
  MOERT_TRY(reserve(packedB + threads * packedA, fn));
  // Each thread owns a range of column panels: it packs them and computes
  // every row of them, so no thread waits for another until the end.
#pragma omp parallel num_threads(threads)
  {
    int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t p0 = panels * tid / nt, p1 = panels * (tid + 1) / nt;
    float *ap = pack_ + packedB + tid * packedA;
    for (int64_t pc = 0; pc < K && p0 < p1; pc += kKc) {
      int64_t kc = std::min(kKc, K - pc);
      bool accumulate = pc > 0 || accumulateC;
      float *bp;
      if (packed) {
        bp = packed->data_ + panels * kNr * pc + p0 * kNr * kc;
      } else {
        bp = pack_ + p0 * kNr * kcMax;
        for (int64_t p = p0; p < p1; ++p)
          packB(b, N, K, p * kNr, pc, kc, bp + (p - p0) * kNr * kc);
      }
      for (int64_t m0 = 0; m0 < M; m0 += kMc) {
        int64_t mc = std::min(kMc, M - m0);
        packA(a, M, K, m0, mc, pc, kc, ap);
        int64_t tiles = (mc + kMr - 1) / kMr;
        for (int64_t p = p0; p < p1; ++p) {
          const float *bPanel = bp + (p - p0) * kNr * kc;
          int64_t n0 = p * kNr, cols = std::min(kNr, N - n0);
          // b packed beforehand (held weights) comes from memory, and the
          // tiles of one panel are too few for the hardware prefetcher to
          // run ahead: the next panel goes into L2, a share per tile.
          const char *next =
              packed && p + 1 < p1
                  ? reinterpret_cast<const char *>(bPanel + kNr * kc)
                  : nullptr;
          int64_t lines = kNr * kc * int64_t(sizeof(float)) / 64;
          for (int64_t i = 0, t = 0; i < mc; i += kMr, ++t) {
            if (next)
              for (int64_t l = lines * t / tiles; l < lines * (t + 1) / tiles;
                   ++l)
                __builtin_prefetch(next + 64 * l, 0, 2);
            float *ct = c + (m0 + i) * N + n0;
            const float *aPanel = ap + i * kc;
            int64_t rows = std::min(kMr, mc - i);
            if (rows == kMr && cols == kNr)
              kernel(kc, aPanel, bPanel, ct, N, accumulate);
            else
              edgeTile(kernel, kc, aPanel, bPanel, ct, N, rows, cols,
                       accumulate);
          }
        }
      }
    }
  }
  return Status::ok();
}

} // namespace cpu
} // namespace moert
