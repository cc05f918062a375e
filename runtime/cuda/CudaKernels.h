//===- CudaKernels.h - Host-side launchers of the CUDA kernels --*- C++ -*-===//
//
// Each launcher trusts its arguments (the context, core/Context.cpp, has
// validated them), enqueues its kernels on `env.stream` and checks every
// launch; it fails only on device limits (shared memory, int32 grid sizes).
// Messages name the C ABI function. None of them synchronizes. Semantics:
// moert.h.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_CUDAKERNELS_H
#define MOERT_CUDA_CUDAKERNELS_H

#include "cuda/CudaAllocator.h"

#include <cstdint>

namespace moert {
namespace cuda {

struct LaunchEnv {
  cudaStream_t stream = nullptr;
  DeviceAllocator *alloc = nullptr; // workspaces
  int smCount = 1;
};

//===--- Routing (Routing.cu) ---------------------------------------------===//
Status launchTopk(const LaunchEnv &env, const float *logits, const float *bias,
                  float *weights, int32_t *indices, float *scores, int64_t T,
                  int64_t E, int64_t k, int32_t scoreFn, int32_t renormalize,
                  float scaling, int64_t numGroups, int64_t groupsKept,
                  int32_t groupScore);
Status launchAssign(const LaunchEnv &env, const int32_t *indices,
                    int32_t *positions, int32_t *counts, int64_t T, int64_t k,
                    int64_t E, int64_t capacity, int64_t groups);
Status launchExpertLoad(const LaunchEnv &env, const float *scores,
                        const int32_t *indices, float *stats, int64_t T,
                        int64_t k, int64_t E);
Status launchLoadBalanceLoss(const LaunchEnv &env, const float *stats,
                             float *out, int64_t E, int64_t tokens, int64_t k,
                             float coeff);
Status launchZLoss(const LaunchEnv &env, const float *logits, float *out,
                   int64_t T, int64_t E, int64_t totalTokens, float coeff);

//===--- Permutation (Permute.cu) -----------------------------------------===//
Status launchDispatch(const LaunchEnv &env, const void *x,
                      const int32_t *positions, void *out, int64_t T, int64_t k,
                      int64_t D, int64_t outRows, int32_t dtype);
Status launchCombine(const LaunchEnv &env, const void *y,
                     const int32_t *positions, const float *weights,
                     const void *passthrough, void *out, int64_t T, int64_t k,
                     int64_t D, int32_t dtype);
/// Capacity layout: zero rows e*R + s*C + [counts[s,e], C) of y ([E*R, D]).
Status launchZeroDeadRows(const LaunchEnv &env, void *y, const int32_t *counts,
                          int64_t E, int64_t S, int64_t C, int64_t D,
                          int32_t dtype);

//===--- Elementwise (Elementwise.cu) -------------------------------------===//
Status launchRmsnorm(const LaunchEnv &env, const void *x, const void *w,
                     void *y, int64_t T, int64_t D, float eps, int32_t dtype);
Status launchAdd(const LaunchEnv &env, const void *a, const void *b, void *y,
                 int64_t n, int32_t dtype);
Status launchAccumulate(const LaunchEnv &env, void *acc, const void *x,
                        int64_t n, int32_t dtype);
/// h[i] = act(h[i]) * u[i] for the gated activations (u != null), else
/// h[i] = act(h[i]); n elements, f32 math. `op` names the caller.
Status launchActivation(const LaunchEnv &env, void *h, const void *u, int64_t n,
                        int32_t activation, int32_t dtype, const char *op);
/// y[t] *= sigmoid(x[t] . g) for t < T.
Status launchSigmoidGateScale(const LaunchEnv &env, const void *x,
                              const void *g, void *y, int64_t T, int64_t D,
                              int32_t dtype);

} // namespace cuda
} // namespace moert

#endif // MOERT_CUDA_CUDAKERNELS_H
