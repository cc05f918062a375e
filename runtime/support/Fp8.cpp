//===- Fp8.cpp - FP8 E4M3 values and DeepSeek-V3 block scales -------------===//
#include "support/Fp8.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moert {

float e4m3ToFloat(uint8_t b) {
  float sign = (b & 0x80) ? -1.0f : 1.0f;
  int exp = (b >> 3) & 0xf;
  int mant = b & 0x7;
  if (exp == 0xf && mant == 0x7)
    return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) // subnormal (or zero): m/8 * 2^-6
    return sign * std::ldexp(static_cast<float>(mant), -9);
  return sign * std::ldexp(static_cast<float>(8 + mant), exp - 10);
}

namespace {
struct Table {
  float v[256];
  Table() {
    for (int i = 0; i < 256; ++i)
      v[i] = e4m3ToFloat(static_cast<uint8_t>(i));
  }
};
} // namespace

void dequantizeBlockRun(const uint8_t *bytes, int64_t first, int64_t count,
                        int64_t cols, const float *scale, float *out) {
  static const Table table;
  int64_t blockCols = (cols + kFp8BlockSize - 1) / kFp8BlockSize;
  int64_t row = first / cols, col = first % cols;
  for (int64_t i = 0; i < count;) {
    // The rest of this row, one block column at a time.
    const float *srow = scale + (row / kFp8BlockSize) * blockCols;
    while (i < count && col < cols) {
      int64_t blockEnd =
          std::min<int64_t>((col / kFp8BlockSize + 1) * kFp8BlockSize, cols);
      int64_t n = std::min(blockEnd - col, count - i);
      float s = srow[col / kFp8BlockSize];
      for (int64_t k = 0; k < n; ++k)
        out[i + k] = table.v[bytes[i + k]] * s;
      i += n;
      col += n;
    }
    col = 0;
    ++row;
  }
}

} // namespace moert
