//===- CpuBackend.cpp - Memory and elementwise kernels on the host --------===//
#include "cpu/CpuBackend.h"
#include "base/Dtype.h"
#include "cpu/CpuMath.h"

#include <cblas.h>
#include <omp.h>

#include <chrono>
#include <cinttypes>
#include <cstdlib>
#include <cstring>

namespace moert {

using namespace cpu;

//===--- Workspace --------------------------------------------------------===//

Workspace::~Workspace() { std::free(data_); }

Status Workspace::reserve(int64_t n, const char *fn) {
  if (n <= size_)
    return Status::ok();
  std::free(data_);
  data_ = nullptr;
  size_ = 0;
  void *p = nullptr;
  if (posix_memalign(&p, 64, static_cast<size_t>(n) * sizeof(float)) != 0)
    return error(MOERT_ERR_NOMEM,
                 "%s: cannot allocate %" PRId64 " bytes of workspace", fn,
                 n * int64_t(sizeof(float)));
  data_ = static_cast<float *>(p);
  size_ = n;
  return Status::ok();
}

//===--- Backend ----------------------------------------------------------===//

CpuBackend::CpuBackend(int32_t numThreads)
    : threads_(numThreads > 0 ? numThreads : omp_get_max_threads()) {
  // OpenBLAS keeps a global pool: the last context created sets its size.
  if (numThreads > 0)
    openblas_set_num_threads(numThreads);
}

Status createCpuBackend(const BackendOptions &opts,
                        std::unique_ptr<Backend> &out) {
  out = std::make_unique<CpuBackend>(opts.numThreads);
  return Status::ok();
}

double CpuBackend::now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

//===--- Memory -----------------------------------------------------------===//

Status CpuBackend::alloc(int64_t bytes, void **out) {
  // Never zero bytes: every allocation is a distinct, freeable pointer.
  size_t size = bytes > 64 ? static_cast<size_t>(bytes) : 64;
  void *p = nullptr;
  if (posix_memalign(&p, 64, size) != 0) {
    *out = nullptr;
    return error(
        MOERT_ERR_NOMEM,
        "moert_alloc: cannot allocate %" PRId64 " bytes of host memory", bytes);
  }
  *out = p;
  return Status::ok();
}

void CpuBackend::free(void *p) { std::free(p); }

Status CpuBackend::copy(void *dst, const void *src, int64_t bytes) {
  if (bytes > 0 && dst != src)
    std::memmove(dst, src, static_cast<size_t>(bytes));
  return Status::ok();
}

Status CpuBackend::copyToDevice(void *dst, const void *src, int64_t bytes) {
  return copy(dst, src, bytes);
}

Status CpuBackend::copyToHost(void *dst, const void *src, int64_t bytes) {
  return copy(dst, src, bytes);
}

Status CpuBackend::memsetZero(void *dst, int64_t bytes) {
  if (bytes > 0)
    std::memset(dst, 0, static_cast<size_t>(bytes));
  return Status::ok();
}

Status CpuBackend::copy2D(void *dst, int64_t dstPitch, const void *src,
                          int64_t srcPitch, int64_t widthBytes,
                          int64_t height) {
  auto *d = static_cast<char *>(dst);
  auto *s = static_cast<const char *>(src);
  for (int64_t r = 0; r < height; ++r)
    std::memcpy(d + r * dstPitch, s + r * srcPitch,
                static_cast<size_t>(widthBytes));
  return Status::ok();
}

//===--- Elementwise kernels ----------------------------------------------===//

Status CpuBackend::rmsnorm(const void *xv, const void *wv, void *yv, int64_t T,
                           int64_t D, float eps, int32_t dtype) {
  MOERT_TRY(requireF32("moert_rmsnorm", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *w = static_cast<const float *>(wv);
  auto *y = static_cast<float *>(yv);
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = x + t * D;
    float meanSquare = dot(xr, xr, D) / static_cast<float>(D);
    float inv = 1.0f / std::sqrt(meanSquare + eps);
    float *yr = y + t * D;
    for (int64_t d = 0; d < D; ++d)
      yr[d] = xr[d] * inv * w[d];
  }
  return Status::ok();
}

Status CpuBackend::layernorm(const void *xv, const void *wv, const void *bv,
                             void *yv, int64_t T, int64_t D, float eps,
                             int32_t dtype) {
  MOERT_TRY(requireF32("moert_layernorm", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *w = static_cast<const float *>(wv);
  auto *b = static_cast<const float *>(bv);
  auto *y = static_cast<float *>(yv);
#pragma omp parallel for num_threads(threads_) if (T * D > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float *xr = x + t * D;
    const RowNormStats st = layerNormStats(xr, D, eps);
    const float mu = static_cast<float>(st.mean);
    const float inv = static_cast<float>(st.r);
    float *yr = y + t * D;
    if (b)
      for (int64_t d = 0; d < D; ++d)
        yr[d] = (xr[d] - mu) * inv * w[d] + b[d];
    else
      for (int64_t d = 0; d < D; ++d)
        yr[d] = (xr[d] - mu) * inv * w[d];
  }
  return Status::ok();
}

namespace {
/// y[i] = a[i] + b[i] over a flat range, in parallel for large n.
template <typename V>
void addRange(const V *a, const V *b, V *y, int64_t n, int threads) {
#pragma omp parallel for num_threads(threads) if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    y[i] = a[i] + b[i];
}

template <typename V>
Status addTyped(const void *a, const void *b, void *y, int64_t n, int threads) {
  addRange(static_cast<const V *>(a), static_cast<const V *>(b),
           static_cast<V *>(y), n, threads);
  return Status::ok();
}

/// Integer sums are exact, so add and accumulate also serve i32 / i64
/// (counts reduced over ranks).
Status addAnyType(const char *fn, const void *a, const void *b, void *y,
                  int64_t n, int32_t dtype, int threads) {
  switch (dtype) {
  case MOERT_F32:
    return addTyped<float>(a, b, y, n, threads);
  case MOERT_I32:
    return addTyped<int32_t>(a, b, y, n, threads);
  case MOERT_I64:
    return addTyped<int64_t>(a, b, y, n, threads);
  default:
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: dtype %s is not supported on the cpu backend (f32, i32 "
                 "and i64 are)",
                 fn, dtypeName(dtype));
  }
}
} // namespace

Status CpuBackend::add(const void *a, const void *b, void *y, int64_t n,
                       int32_t dtype) {
  return addAnyType("moert_add", a, b, y, n, dtype, threads_);
}

Status CpuBackend::accumulate(void *acc, const void *x, int64_t n,
                              int32_t dtype) {
  return addAnyType("accumulate", acc, x, acc, n, dtype, threads_);
}

} // namespace moert
