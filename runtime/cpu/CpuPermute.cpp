//===- CpuPermute.cpp - Dispatch to and combine from expert layout --------===//
#include "base/Dtype.h"
#include "cpu/CpuBackend.h"
#include "cpu/CpuMath.h"

#include <cinttypes>
#include <cstring>

namespace moert {

using namespace cpu;

Status CpuBackend::chunkCounts(const int32_t *counts, int32_t *out, int64_t n,
                               int64_t index, int64_t chunks) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t c = counts[i];
    out[i] =
        static_cast<int32_t>(c * (index + 1) / chunks - c * index / chunks);
  }
  return Status::ok();
}

Status CpuBackend::chunkRowsByCounts(const void *src, void *dst,
                                     const int32_t *counts, int64_t segments,
                                     int64_t rowBytes, int64_t srcRows,
                                     int64_t dstRows, int64_t index,
                                     int64_t chunks, bool join) {
  // Walk the segments: `whole` rows into the packed buffer, `part` rows
  // into the chunk.
  int64_t whole = 0, part = 0;
  auto *s = static_cast<const char *>(src);
  auto *d = static_cast<char *>(dst);
  const size_t bytes = static_cast<size_t>(rowBytes);
  int64_t wholeRows = join ? dstRows : srcRows;
  int64_t partRows = join ? srcRows : dstRows;
  for (int64_t i = 0; i < segments; ++i) {
    int64_t c = counts[i];
    if (c < 0)
      return error(MOERT_ERR_INVALID,
                   "moert_chunk_rows: counts[%" PRId64 "] = %" PRId64
                   " is negative",
                   i, c);
    int64_t first = c * index / chunks, n = c * (index + 1) / chunks - first;
    if (whole + c > wholeRows || part + n > partRows)
      return error(MOERT_ERR_INVALID,
                   "moert_chunk_rows: the counts (%" PRId64
                   " rows so far) exceed the buffer's %" PRId64
                   " rows or the chunk's %" PRId64,
                   whole + c, wholeRows, partRows);
    if (n > 0) {
      if (join)
        std::memcpy(d + (whole + first) * rowBytes, s + part * rowBytes,
                    static_cast<size_t>(n) * bytes);
      else
        std::memcpy(d + part * rowBytes, s + (whole + first) * rowBytes,
                    static_cast<size_t>(n) * bytes);
    }
    whole += c;
    part += n;
  }
  if (!join && part < dstRows)
    std::memset(d + part * rowBytes, 0,
                static_cast<size_t>(dstRows - part) * bytes);
  if (join && index == 0 && whole < dstRows)
    std::memset(d + whole * rowBytes, 0,
                static_cast<size_t>(dstRows - whole) * bytes);
  return Status::ok();
}

Status CpuBackend::dispatch(const void *x, const int32_t *positions, void *out,
                            int64_t T, int64_t k, int64_t D, int64_t outRows,
                            int32_t dtype) {
  // A row copy: every dtype works, whatever the backend computes in.
  // Inverting the map first writes every output row exactly once (copied or
  // zeroed) instead of zeroing the whole buffer and then copying over it.
  rowSource_.assign(static_cast<size_t>(outRows), -1);
  for (int64_t i = 0; i < T * k; ++i) {
    int32_t p = positions[i];
    if (p >= outRows)
      return error(MOERT_ERR_INVALID,
                   "moert_dispatch: positions[%" PRId64 ",%" PRId64
                   "] = %d is past the %" PRId64 " output rows",
                   i / k, i % k, p, outRows);
    if (p >= 0)
      rowSource_[p] = static_cast<int32_t>(i / k);
  }
  size_t rowBytes = static_cast<size_t>(D) * dtypeSize(dtype);
  auto *src = static_cast<const char *>(x);
  auto *dst = static_cast<char *>(out);
  const int32_t *source = rowSource_.data();
#pragma omp parallel for num_threads(threads_) if (outRows * D > 65536)
  for (int64_t r = 0; r < outRows; ++r) {
    if (source[r] >= 0)
      std::memcpy(dst + r * rowBytes, src + source[r] * rowBytes, rowBytes);
    else
      std::memset(dst + r * rowBytes, 0, rowBytes);
  }
  return Status::ok();
}

Status CpuBackend::combine(const void *yv, const int32_t *positions,
                           const float *weights, const void *passthroughv,
                           void *outv, int64_t T, int64_t k, int64_t D,
                           int32_t dtype) {
  MOERT_TRY(requireF32("moert_combine", dtype));
  auto *y = static_cast<const float *>(yv);
  auto *passthrough = static_cast<const float *>(passthroughv);
  auto *out = static_cast<float *>(outv);
#pragma omp parallel for num_threads(threads_) if (T * k * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    float *o = out + t * D;
    for (int64_t d = 0; d < D; ++d)
      o[d] = 0.0f;
    for (int64_t j = 0; j < k; ++j) {
      int32_t p = positions[t * k + j];
      const float *src =
          p >= 0 ? y + p * D : (passthrough ? passthrough + t * D : nullptr);
      if (!src)
        continue; // dropped: contributes nothing
      float w = weights[t * k + j];
      for (int64_t d = 0; d < D; ++d)
        o[d] += w * src[d];
    }
  }
  return Status::ok();
}

} // namespace moert
