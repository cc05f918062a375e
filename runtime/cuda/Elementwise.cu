//===- Elementwise.cu - rmsnorm, add, activations on CUDA ----------------===//
//
// Memory-bound kernels: f32 math, 16-byte vector loads and stores when the
// sizes and pointers allow, a scalar path otherwise.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "cuda/CudaKernels.h"
#include "cuda/DeviceUtils.cuh"

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

namespace moert {
namespace cuda {

namespace {

unsigned gridFor(const LaunchEnv &env, int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  blocks = std::min<int64_t>(blocks, int64_t(env.smCount) * 16);
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

/// Dispatches on the storage type; `F` is called with a T* null of the type.
template <typename F> Status byDtype(int32_t dtype, const char *op, F &&f) {
  switch (dtype) {
  case MOERT_F32:
    return f(static_cast<float *>(nullptr));
  case MOERT_F16:
    return f(static_cast<__half *>(nullptr));
  case MOERT_BF16:
    return f(static_cast<__nv_bfloat16 *>(nullptr));
  default:
    return error(MOERT_ERR_INVALID,
                 "%s: unsupported dtype %d (%s): expected f32, f16 or bf16", op,
                 dtype, dtypeName(dtype));
  }
}

//===--- rmsnorm
//-------------------------------------------------------------===//

template <typename T, int VEC>
__global__ void rmsnormKernel(const T *x, const T *w, T *y, int64_t rows,
                              int64_t D, float eps) {
  __shared__ float scratch[32];
  const int64_t vecs = D / VEC;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * D;
    T *yr = y + r * D;
    float ss = 0.f;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float f[VEC];
      loadPack<T, VEC>(xr + v * VEC, f);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        ss += f[i] * f[i];
    }
    ss = blockSum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float f[VEC], g[VEC];
      loadPack<T, VEC>(xr + v * VEC, f);
      loadPack<T, VEC>(w + v * VEC, g);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        f[i] = f[i] * inv * g[i];
      storePack<T, VEC>(yr + v * VEC, f);
    }
  }
}

//===--- layernorm
//-----------------------------------------------------------===//

/// One block per row: the mean, then the variance of the centered values
/// (two passes, f32 math, fixed-order block sums), then the output.
template <typename T, int VEC>
__global__ void layernormKernel(const T *x, const T *w, const T *b, T *y,
                                int64_t rows, int64_t D, float eps) {
  __shared__ float scratch[32];
  const int64_t vecs = D / VEC;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * D;
    T *yr = y + r * D;
    float s = 0.f;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float f[VEC];
      loadPack<T, VEC>(xr + v * VEC, f);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        s += f[i];
    }
    const float mean = blockSum(s, scratch) / static_cast<float>(D);
    float ss = 0.f;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float f[VEC];
      loadPack<T, VEC>(xr + v * VEC, f);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        ss += (f[i] - mean) * (f[i] - mean);
    }
    ss = blockSum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float f[VEC], g[VEC], c[VEC] = {};
      loadPack<T, VEC>(xr + v * VEC, f);
      loadPack<T, VEC>(w + v * VEC, g);
      if (b)
        loadPack<T, VEC>(b + v * VEC, c);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        f[i] = (f[i] - mean) * inv * g[i] + (b ? c[i] : 0.f);
      storePack<T, VEC>(yr + v * VEC, f);
    }
  }
}

//===--- flat elementwise
//------------------------------------------------------===//

enum class Binary { Add, Activation, GatedActivation };

__device__ __forceinline__ float geluErf(float v) {
  return 0.5f * v * (1.0f + erff(v * 0.70710678118654752440f));
}
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float activate(float v, int act) {
  switch (act) {
  case MOERT_ACT_RELU:
    return v > 0.f ? v : 0.f;
  case MOERT_ACT_GELU:
  case MOERT_ACT_GEGLU:
    return geluErf(v);
  default: // MOERT_ACT_SWIGLU
    return silu(v);
  }
}

/// y[i] = a[i] + b[i]  |  y[i] = act(a[i])  |  y[i] = act(a[i]) * b[i].
template <typename T, int VEC, Binary OP>
__global__ void flatKernel(const T *a, const T *b, T *y, int64_t n, int act) {
  const int64_t vecs = n / VEC;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vecs;
       v += stride) {
    float fa[VEC], fb[VEC];
    loadPack<T, VEC>(a + v * VEC, fa);
    if (OP != Binary::Activation)
      loadPack<T, VEC>(b + v * VEC, fb);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      if (OP == Binary::Add)
        fa[i] = fa[i] + fb[i];
      else if (OP == Binary::Activation)
        fa[i] = activate(fa[i], act);
      else
        fa[i] = activate(fa[i], act) * fb[i];
    }
    storePack<T, VEC>(y + v * VEC, fa);
  }
  // Tail (n not a multiple of VEC): the first threads take one each.
  const int64_t i = vecs * VEC + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    float va = toFloat(a[i]);
    if (OP == Binary::Add)
      va = va + toFloat(b[i]);
    else if (OP == Binary::Activation)
      va = activate(va, act);
    else
      va = activate(va, act) * toFloat(b[i]);
    y[i] = fromFloat<T>(va);
  }
}

template <typename T, Binary OP>
Status launchFlat(const LaunchEnv &env, const void *a, const void *b, void *y,
                  int64_t n, int act, const char *op) {
  if (n <= 0)
    return Status::ok();
  constexpr int V = vec16<T>();
  const bool vec = aligned16(a) && aligned16(y) &&
                   (OP == Binary::Activation || aligned16(b));
  const int threads = 256;
  const T *ta = static_cast<const T *>(a), *tb = static_cast<const T *>(b);
  T *ty = static_cast<T *>(y);
  if (vec) {
    flatKernel<T, V, OP>
        <<<gridFor(env, n / V + 1, threads), threads, 0, env.stream>>>(
            ta, tb, ty, n, act);
  } else {
    flatKernel<T, 1, OP><<<gridFor(env, n, threads), threads, 0, env.stream>>>(
        ta, tb, ty, n, act);
  }
  MOERT_LAUNCHED(op, "flatKernel");
  return Status::ok();
}

template <typename T>
__global__ void accumulateIntKernel(T *acc, const T *x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    acc[i] += x[i];
}

//===--- sigmoid gate
//-------------------------------------------------------===//

template <typename T, int VEC>
__global__ void sigmoidGateKernel(const T *x, const T *g, T *y, int64_t rows,
                                  int64_t D) {
  __shared__ float scratch[32];
  const int64_t vecs = D / VEC;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float dot = 0.f;
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float fx[VEC], fg[VEC];
      loadPack<T, VEC>(x + r * D + v * VEC, fx);
      loadPack<T, VEC>(g + v * VEC, fg);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        dot += fx[i] * fg[i];
    }
    dot = blockSum(dot, scratch);
    const float s = 1.0f / (1.0f + expf(-dot));
    for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) {
      float fy[VEC];
      loadPack<T, VEC>(y + r * D + v * VEC, fy);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        fy[i] *= s;
      storePack<T, VEC>(y + r * D + v * VEC, fy);
    }
  }
}

int rowThreads(int64_t units) {
  return static_cast<int>(
      std::max<int64_t>(32, std::min<int64_t>(256, (units + 31) / 32 * 32)));
}

} // namespace

Status launchRmsnorm(const LaunchEnv &env, const void *x, const void *w,
                     void *y, int64_t T, int64_t D, float eps, int32_t dtype) {
  const char *op = "moert_rmsnorm";
  if (T == 0)
    return Status::ok();
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec16<T_>();
    const bool vec = D % V == 0 && aligned16(x) && aligned16(w) && aligned16(y);
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>(T, int64_t(INT_MAX)));
    const T_ *tx = static_cast<const T_ *>(x), *tw = static_cast<const T_ *>(w);
    T_ *tyy = static_cast<T_ *>(y);
    if (vec)
      rmsnormKernel<T_, V><<<blocks, rowThreads(D / V), 0, env.stream>>>(
          tx, tw, tyy, T, D, eps);
    else
      rmsnormKernel<T_, 1>
          <<<blocks, rowThreads(D), 0, env.stream>>>(tx, tw, tyy, T, D, eps);
    MOERT_LAUNCHED(op, "rmsnormKernel");
    return Status::ok();
  });
}

Status launchLayernorm(const LaunchEnv &env, const void *x, const void *w,
                       const void *b, void *y, int64_t T, int64_t D, float eps,
                       int32_t dtype) {
  const char *op = "moert_layernorm";
  if (T == 0)
    return Status::ok();
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec16<T_>();
    const bool vec = D % V == 0 && aligned16(x) && aligned16(w) &&
                     (!b || aligned16(b)) && aligned16(y);
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>(T, int64_t(INT_MAX)));
    const T_ *tx = static_cast<const T_ *>(x), *tw = static_cast<const T_ *>(w),
             *tb = static_cast<const T_ *>(b);
    T_ *tyy = static_cast<T_ *>(y);
    if (vec)
      layernormKernel<T_, V><<<blocks, rowThreads(D / V), 0, env.stream>>>(
          tx, tw, tb, tyy, T, D, eps);
    else
      layernormKernel<T_, 1><<<blocks, rowThreads(D), 0, env.stream>>>(
          tx, tw, tb, tyy, T, D, eps);
    MOERT_LAUNCHED(op, "layernormKernel");
    return Status::ok();
  });
}

Status launchAdd(const LaunchEnv &env, const void *a, const void *b, void *y,
                 int64_t n, int32_t dtype) {
  const char *op = "moert_add";
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    return launchFlat<T_, Binary::Add>(env, a, b, y, n, 0, op);
  });
}

Status launchAccumulate(const LaunchEnv &env, void *acc, const void *x,
                        int64_t n, int32_t dtype) {
  const char *op = "accumulate";
  if (n == 0)
    return Status::ok();
  if (dtype == MOERT_I32 || dtype == MOERT_I64) {
    const unsigned blocks = gridFor(env, n, 256);
    if (dtype == MOERT_I32)
      accumulateIntKernel<int32_t><<<blocks, 256, 0, env.stream>>>(
          static_cast<int32_t *>(acc), static_cast<const int32_t *>(x), n);
    else
      accumulateIntKernel<int64_t><<<blocks, 256, 0, env.stream>>>(
          static_cast<int64_t *>(acc), static_cast<const int64_t *>(x), n);
    MOERT_LAUNCHED(op, "accumulateIntKernel");
    return Status::ok();
  }
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    return launchFlat<T_, Binary::Add>(env, acc, x, acc, n, 0, op);
  });
}

Status launchActivation(const LaunchEnv &env, void *h, const void *u, int64_t n,
                        int32_t activation, int32_t dtype, const char *op) {
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    if (u)
      return launchFlat<T_, Binary::GatedActivation>(env, h, u, h, n,
                                                     activation, op);
    return launchFlat<T_, Binary::Activation>(env, h, nullptr, h, n, activation,
                                              op);
  });
}

Status launchSigmoidGateScale(const LaunchEnv &env, const void *x,
                              const void *g, void *y, int64_t T, int64_t D,
                              int32_t dtype) {
  const char *op = "moert_mlp";
  if (T == 0)
    return Status::ok();
  return byDtype(dtype, op, [&](auto *tag) -> Status {
    using T_ = std::remove_pointer_t<decltype(tag)>;
    constexpr int V = vec16<T_>();
    const bool vec = D % V == 0 && aligned16(x) && aligned16(g) && aligned16(y);
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>(T, int64_t(INT_MAX)));
    const T_ *tx = static_cast<const T_ *>(x), *tg = static_cast<const T_ *>(g);
    T_ *tyy = static_cast<T_ *>(y);
    if (vec)
      sigmoidGateKernel<T_, V>
          <<<blocks, rowThreads(D / V), 0, env.stream>>>(tx, tg, tyy, T, D);
    else
      sigmoidGateKernel<T_, 1>
          <<<blocks, rowThreads(D), 0, env.stream>>>(tx, tg, tyy, T, D);
    MOERT_LAUNCHED(op, "sigmoidGateKernel");
    return Status::ok();
  });
}

} // namespace cuda
} // namespace moert
