//===- Optimizer.cu - AdamW, SGD and the selection-bias update on CUDA ----===//
//
// docs/spec.md 7.3 / 7.4: each element is updated in double from its f32
// values; the new state is rounded to f32 before the weight update reads
// it; the new weight is rounded to f32 once. The per-step scalars (bias
// corrections, ...) come from the host (CudaBackend.cu), computed there as
// the CPU backend computes them. Every operation below is an explicitly
// rounded IEEE double operation (__dmul_rn, __dadd_rn, ...): the compiler
// may not fuse them into FMAs, so the results equal the CPU backend's bit
// for bit. Elementwise, so each *_out may alias its input.
//
//===----------------------------------------------------------------------===//
#include "cuda/CudaKernels.h"

#include <algorithm>

namespace moert {
namespace cuda {

namespace {

unsigned gridFor(const LaunchEnv &env, int64_t work, int threads) {
  int64_t blocks = (work + threads - 1) / threads;
  blocks = std::min<int64_t>(blocks, int64_t(env.smCount) * 16);
  return static_cast<unsigned>(std::max<int64_t>(blocks, 1));
}

__global__ void adamwKernel(const float *w, const float *g, const float *m,
                            const float *v, float *wOut, float *mOut,
                            float *vOut, int64_t n, AdamwScalars s) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double gi = g[i];
    // p = p * (1 - lr*wd)
    double p = __dmul_rn(double(w[i]), s.decay);
    // m = f32(m*b1 + g*(1-b1)); v = f32(v*b2 + g*g*(1-b2))
    const float mf = static_cast<float>(__dadd_rn(
        __dmul_rn(double(m[i]), s.beta1), __dmul_rn(gi, s.oneMinusBeta1)));
    const float vf = static_cast<float>(
        __dadd_rn(__dmul_rn(double(v[i]), s.beta2),
                  __dmul_rn(__dmul_rn(gi, gi), s.oneMinusBeta2)));
    // p = p + (-step_size) * (m / (sqrt(v) / sqrt(1 - b2^n) + eps))
    const double denom =
        __dadd_rn(__ddiv_rn(__dsqrt_rn(double(vf)), s.sqrtBc2), s.eps);
    p = __dadd_rn(p, __dmul_rn(s.negStepSize, __ddiv_rn(double(mf), denom)));
    mOut[i] = mf;
    vOut[i] = vf;
    wOut[i] = static_cast<float>(p);
  }
}

__global__ void sgdKernel(const float *w, const float *g, const float *buf,
                          float *wOut, float *bufOut, int64_t n, SgdScalars s) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const double p = w[i];
    // d = g + p*wd (wd != 0)
    double d = g[i];
    if (s.wd != 0.0)
      d = __dadd_rn(d, __dmul_rn(p, s.wd));
    // With momentum the buffer is state: the update reads it stored.
    if (s.momentum != 0.0)
      d = double(static_cast<float>(
          s.first ? d : __dadd_rn(__dmul_rn(double(buf[i]), s.momentum), d)));
    bufOut[i] = static_cast<float>(d);
    wOut[i] = static_cast<float>(__dadd_rn(p, __dmul_rn(d, s.negLr)));
  }
}

__global__ void biasUpdateKernel(const float *bias, const float *load,
                                 float *biasOut, int64_t E, double meanLoad,
                                 double rate) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < E;
       e += int64_t(gridDim.x) * blockDim.x) {
    const double diff = __dadd_rn(meanLoad, -double(load[e]));
    const double sign = diff > 0.0 ? 1.0 : diff < 0.0 ? -1.0 : 0.0;
    biasOut[e] =
        static_cast<float>(__dadd_rn(double(bias[e]), __dmul_rn(rate, sign)));
  }
}

} // namespace

Status launchAdamw(const LaunchEnv &env, const float *w, const float *g,
                   const float *m, const float *v, float *wOut, float *mOut,
                   float *vOut, int64_t n, const AdamwScalars &s) {
  if (n == 0)
    return Status::ok();
  adamwKernel<<<gridFor(env, n, 256), 256, 0, env.stream>>>(w, g, m, v, wOut,
                                                            mOut, vOut, n, s);
  MOERT_LAUNCHED("moert_adamw", "adamwKernel");
  return Status::ok();
}

Status launchSgd(const LaunchEnv &env, const float *w, const float *g,
                 const float *buf, float *wOut, float *bufOut, int64_t n,
                 const SgdScalars &s) {
  if (n == 0)
    return Status::ok();
  sgdKernel<<<gridFor(env, n, 256), 256, 0, env.stream>>>(w, g, buf, wOut,
                                                          bufOut, n, s);
  MOERT_LAUNCHED("moert_sgd", "sgdKernel");
  return Status::ok();
}

Status launchBiasUpdate(const LaunchEnv &env, const float *bias,
                        const float *load, float *biasOut, int64_t E,
                        double meanLoad, double rate) {
  if (E == 0)
    return Status::ok();
  biasUpdateKernel<<<gridFor(env, E, 256), 256, 0, env.stream>>>(
      bias, load, biasOut, E, meanLoad, rate);
  MOERT_LAUNCHED("moert_bias_update", "biasUpdateKernel");
  return Status::ok();
}

} // namespace cuda
} // namespace moert
