//===- Fp8.h - FP8 E4M3 values and DeepSeek-V3 block scales -----*- C++ -*-===//
//
// F8_E4M3 in safetensors is OCP FP8 E4M3 "fn" (torch.float8_e4m3fn): 1 sign,
// 4 exponent (bias 7) and 3 mantissa bits, no infinities, NaN only for
// S.1111.111, largest finite 448, subnormals m/8 * 2^-6.
//
// DeepSeek-V3 publishes its linear weights [M, N] as F8_E4M3 with a block
// scale `<name>_scale_inv` of F32 [ceil(M/128), ceil(N/128)]: the value of
// element (r, c) is fp8(r, c) * scale_inv[r / 128][c / 128], computed in f32
// (its inference/kernel.py weight_dequant); blocks at the right and bottom
// edges are partial.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_FP8_H
#define MOERT_SUPPORT_FP8_H

#include <cstdint>

namespace moert {

/// Rows and columns of one block of a block-scaled FP8 matrix.
constexpr int64_t kFp8BlockSize = 128;

/// The value of an FP8 E4M3 (fn) byte; exact in float.
float e4m3ToFloat(uint8_t b);

/// Dequantizes `count` elements of an [rows, cols] block-scaled matrix
/// starting at row-major element `first`: out[i] = e4m3ToFloat(bytes[i]) *
/// scale[block of element first + i], `scale` being [ceil(rows/128),
/// ceil(cols/128)] row-major.
void dequantizeBlockRun(const uint8_t *bytes, int64_t first, int64_t count,
                        int64_t cols, const float *scale, float *out);

} // namespace moert

#endif // MOERT_SUPPORT_FP8_H
