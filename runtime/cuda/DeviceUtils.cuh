//===- DeviceUtils.cuh - Device helpers shared by the kernels ---*- CUDA
//-*-===//
//
// Storage <-> f32 conversion (round to nearest even), 16-byte vector packs,
// warp and block reductions, and the sortable (score, index) key that gives
// "largest score, ties to the lower index" as a plain integer maximum.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_DEVICEUTILS_CUH
#define MOERT_CUDA_DEVICEUTILS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace moert {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

//===--- Conversions
//-------------------------------------------------------===//
__device__ __forceinline__ float toFloat(float v) { return v; }
__device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float toFloat(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) {
  return v;
}
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

//===--- Vector packs
//------------------------------------------------------===//
/// VEC elements of T loaded / stored in one instruction (16 bytes when
/// VEC * sizeof(T) == 16). Callers check alignment before choosing VEC > 1.
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void loadPack(const T *p, float (&f)[VEC]) {
  Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC> *>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i)
    f[i] = toFloat(pk.v[i]);
}

template <typename T, int VEC>
__device__ __forceinline__ void storePack(T *p, const float (&f)[VEC]) {
  Pack<T, VEC> pk;
#pragma unroll
  for (int i = 0; i < VEC; ++i)
    pk.v[i] = fromFloat<T>(f[i]);
  *reinterpret_cast<Pack<T, VEC> *>(p) = pk;
}

/// Elements per 16-byte vector.
template <typename T> constexpr int vec16() { return int(16 / sizeof(T)); }

inline bool aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

//===--- Reductions
//--------------------------------------------------------===//
__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__device__ __forceinline__ unsigned long long warpMaxU64(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    unsigned long long other = __shfl_xor_sync(kFullMask, v, o);
    v = other > v ? other : v;
  }
  return v;
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
/// thread gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float blockSum(float v, float *scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int warps = (blockDim.x + 31) >> 5;
  v = warpSum(v);
  __syncthreads(); // scratch may still be read from a previous call
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < warps; ++w) // fixed order: deterministic
    total += scratch[w];
  return total;
}

//===--- Sortable (score, index) keys
//---------------------------------------===//
/// Larger key <=> larger score, or equal score and lower index. A key is
/// never 0, so 0 marks an entry already taken. NaN orders as -inf (ties
/// with it, lower index first), as on the CPU backend: NaN sorts last. (A
/// positive NaN's bits would otherwise make it the largest key.) The high
/// word of every key is then >= that of -inf (0x007fffff), so a key whose
/// high word is 0 is below all of them (see maskedKey).
__device__ __forceinline__ unsigned long long makeKey(float v, int index) {
  if (isnan(v))
    v = -INFINITY;
  if (v == 0.0f)
    v = 0.0f; // -0 ties with +0
  unsigned u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) |
         static_cast<unsigned>(0xffffffffu - static_cast<unsigned>(index));
}

/// A nonzero key below every makeKey key: an entry that may be picked only
/// after all real ones (experts of groups masked out by group-limited
/// routing, which the CPU never picks).
__device__ __forceinline__ unsigned long long maskedKey(int index) {
  return static_cast<unsigned long long>(0xffffffffu -
                                         static_cast<unsigned>(index));
}

__device__ __forceinline__ float keyValue(unsigned long long key) {
  unsigned u = static_cast<unsigned>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  return __uint_as_float(u);
}

__device__ __forceinline__ int keyIndex(unsigned long long key) {
  return static_cast<int>(0xffffffffu - static_cast<unsigned>(key));
}

} // namespace cuda
} // namespace moert

#endif // MOERT_CUDA_DEVICEUTILS_CUH
