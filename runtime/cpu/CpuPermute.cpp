//===- CpuPermute.cpp - Dispatch to and combine from expert layout --------===//
#include "base/Dtype.h"
#include "cpu/CpuBackend.h"
#include "cpu/CpuMath.h"

#include <cinttypes>
#include <cstring>

namespace moert {

using namespace cpu;

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
