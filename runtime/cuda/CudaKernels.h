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
Status launchChunkCounts(const LaunchEnv &env, const int32_t *counts,
                         int32_t *out, int64_t n, int64_t index,
                         int64_t chunks);
Status launchChunkRows(const LaunchEnv &env, const void *src, void *dst,
                       const int32_t *counts, int64_t segments,
                       int64_t rowBytes, int64_t srcRows, int64_t dstRows,
                       int64_t index, int64_t chunks, bool join);
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
/// `b` may be null (no bias).
Status launchLayernorm(const LaunchEnv &env, const void *x, const void *w,
                       const void *b, void *y, int64_t T, int64_t D, float eps,
                       int32_t dtype);
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

//===--- Training: backward (Backward.cu), f32 only
//------------------------===//
// Every reduction over tokens runs in a fixed order (no atomics): a run
// repeats bit for bit. Indices and positions live in device memory and are
// not checked (as in the forward kernels), but one out of range is skipped:
// it never makes a kernel read or write outside its buffers.

/// rmsnorm_grad: dx [T,D] and dw [D] (sum over the T rows), overwritten.
/// dx may alias x or dy.
Status launchRmsnormGrad(const LaunchEnv &env, const float *x, const float *w,
                         const float *dy, float *dx, float *dw, int64_t T,
                         int64_t D, float eps);
/// layernorm_grad: dx [T,D], dw [D] and db [D] (sums over the T rows; db may
/// be null), overwritten. dx may alias x or dy.
Status launchLayernormGrad(const LaunchEnv &env, const float *x, const float *w,
                           const float *dy, float *dx, float *dw, float *db,
                           int64_t T, int64_t D, float eps);
Status launchTopkGrad(const LaunchEnv &env, const float *logits,
                      const int32_t *indices, const float *dweights,
                      const float *dscores, float *dlogits, int64_t T,
                      int64_t E, int64_t k, int32_t scoreFn,
                      int32_t renormalize, float scaling);
Status launchDispatchGrad(const LaunchEnv &env, const float *dout,
                          const int32_t *positions, float *dx, int64_t T,
                          int64_t k, int64_t D, int64_t outRows);
Status launchCombineGrad(const LaunchEnv &env, const float *y,
                         const int32_t *positions, const float *weights,
                         const float *passthrough, const float *dout, float *dy,
                         float *dweights, float *dpassthrough, int64_t T,
                         int64_t k, int64_t D, int64_t yRows);
Status launchExpertLoadGrad(const LaunchEnv &env, const float *dstats,
                            float *dscores, int64_t T, int64_t E);
Status launchLoadBalanceLossGrad(const LaunchEnv &env, const float *stats,
                                 const float *dloss, float *dstats, int64_t E,
                                 int64_t tokens, int64_t k, float coeff);
Status launchZLossGrad(const LaunchEnv &env, const float *logits,
                       const float *dloss, float *dlogits, int64_t T, int64_t E,
                       int64_t totalTokens, float coeff);
Status launchMseLoss(const LaunchEnv &env, const float *y, const float *target,
                     float *loss, float *dy, int64_t n, int64_t totalN);

/// The FFN backward's elementwise step over n elements of the packed
/// hidden rows. In: a = x.W1^T, u = x.Wu^T (gated only, else null), mbar =
/// the gradient of the hidden activation m. Out, in place: a <- abar (the
/// gradient of x.W1^T), u <- ubar, mbar <- m = act(a) (* u).
Status launchActivationGrad(const LaunchEnv &env, float *a, float *u,
                            float *mbar, int64_t n, int32_t activation,
                            const char *op);
/// The per-token sigmoid gate o = F * sigmoid(x.g) of moert_mlp, backward:
/// in: f = F(x) [T,D] (the ungated output), dy; out: f <- dy * sigmoid(p)
/// (the gradient of F), pbar [T] = sum_d(dy*F) * s * (1 - s).
Status launchSigmoidGateGrad(const LaunchEnv &env, const float *x,
                             const float *g, const float *dy, float *f,
                             float *pbar, int64_t T, int64_t D);
/// dx[t, :] += pbar[t] * g.
Status launchAddOuter(const LaunchEnv &env, float *dx, const float *pbar,
                      const float *g, int64_t T, int64_t D, const char *op);

/// A run of rows moved between a strided layout and a packed buffer:
/// rows [src, src + rows) of the layout <-> [packed, packed + rows) of the
/// packed buffer. Blocks are sorted by `packed` and tile [0, total).
struct RowBlock {
  int64_t src, packed, rows;
};
/// packed[p] = layout[row of p] (toPacked) or layout[row of p] = packed[p]
/// for every packed row p < total; `blocks` is in device memory.
Status launchMoveRows(const LaunchEnv &env, const RowBlock *blocks,
                      int64_t numBlocks, float *layout, float *packed,
                      int64_t total, int64_t D, bool toPacked, const char *op);

//===--- Training: optimizer (Optimizer.cu)
//--------------------------------===//

/// The scalars of one step, computed on the host from the f32 hparams
/// exactly as the CPU backend computes them.
struct AdamwScalars {
  double decay; // 1 - lr*wd
  double beta1, oneMinusBeta1, beta2, oneMinusBeta2;
  double negStepSize; // -(lr / (1 - beta1^n))
  double sqrtBc2;     // sqrt(1 - beta2^n)
  double eps;
};
struct SgdScalars {
  double negLr, wd, momentum;
  bool first; // n == 1: the buffer starts as d
};
Status launchAdamw(const LaunchEnv &env, const float *w, const float *g,
                   const float *m, const float *v, float *wOut, float *mOut,
                   float *vOut, int64_t n, const AdamwScalars &s);
Status launchSgd(const LaunchEnv &env, const float *w, const float *g,
                 const float *buf, float *wOut, float *bufOut, int64_t n,
                 const SgdScalars &s);
Status launchBiasUpdate(const LaunchEnv &env, const float *bias,
                        const float *load, float *biasOut, int64_t E,
                        double meanLoad, double rate);

} // namespace cuda
} // namespace moert

#endif // MOERT_CUDA_CUDAKERNELS_H
