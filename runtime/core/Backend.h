//===- Backend.h - One device's implementation of the kernels ---*- C++ -*-===//
//
// A Backend owns a device's memory and runs the compute kernels of the C ABI
// on it. The context (Context.cpp) validates every argument that can be
// checked without reading device memory (null pointers, shapes, dtypes,
// enum codes, divisibility), checks the sticky error, times the call, and
// forwards here: a backend trusts those arguments and checks only what
// depends on data (counts, positions, indices) or on its own limits. Every
// method returns a Status whose message names the kernel and the offending
// value.
//
// Implementations: CpuBackend (runtime/cpu, C++ + OpenBLAS + OpenMP) and
// CudaBackend (runtime/cuda, CUDA kernels + cuBLAS), created by
// createCpuBackend / createCudaBackend.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CORE_BACKEND_H
#define MOERT_CORE_BACKEND_H

#include "base/Status.h"

#include <cstdint>
#include <memory>

namespace moert {

class Backend {
public:
  virtual ~Backend() = default;

  /// "cpu" or "cuda".
  virtual const char *name() const = 0;
  virtual moert_device_kind kind() const = 0;

  //===--- Memory ---------------------------------------------------------===//
  virtual Status alloc(int64_t bytes, void **out) = 0;
  virtual void free(void *p) = 0;
  virtual Status copyToDevice(void *dst, const void *src, int64_t bytes) = 0;
  virtual Status copyToHost(void *dst, const void *src, int64_t bytes) = 0;
  /// Device-to-device copy.
  virtual Status copy(void *dst, const void *src, int64_t bytes) = 0;
  virtual Status memsetZero(void *dst, int64_t bytes) = 0;
  /// `height` rows of `widthBytes`, row r read at src + r*srcPitch and
  /// written at dst + r*dstPitch (pack / unpack for collectives).
  virtual Status copy2D(void *dst, int64_t dstPitch, const void *src,
                        int64_t srcPitch, int64_t widthBytes,
                        int64_t height) = 0;
  /// moert_chunk_counts / moert_chunk_rows (counts in device memory).
  virtual Status chunkCounts(const int32_t *counts, int32_t *out, int64_t n,
                             int64_t index, int64_t chunks) = 0;
  virtual Status chunkRowsByCounts(const void *src, void *dst,
                                   const int32_t *counts, int64_t segments,
                                   int64_t rowBytes, int64_t srcRows,
                                   int64_t dstRows, int64_t index,
                                   int64_t chunks, bool join) = 0;
  /// Waits for all queued work (no-op where work is synchronous).
  virtual Status synchronize() = 0;
  /// Seconds elapsed on the device between two points; CPU: wall clock.
  /// Used to time phases (see Context.cpp).
  virtual double now() = 0;
  /// The stream the kernels run on (a cudaStream_t), for the communicator
  /// to order its own stream after; null on the CPU.
  virtual void *computeStream() { return nullptr; }
  /// moert_hold_weights: from `hold` = true until false, the expert FFN's
  /// weight buffers are neither written nor freed, so what the backend
  /// prepares from them may be kept for later calls (none by default).
  virtual Status holdWeights(bool hold) {
    (void)hold;
    return Status::ok();
  }
  /// moert_expert_ffn_prepare, the weights held: prepare them now (none by
  /// default).
  virtual Status prepareExpertFfn(const void *gate, const void *up,
                                  const void *down, int64_t E, int64_t D,
                                  int64_t F) {
    return Status::ok();
  }

  //===--- Kernels (semantics: moert.h and docs/dialect.md) ---------------===//
  virtual Status rmsnorm(const void *x, const void *w, void *y, int64_t T,
                         int64_t D, float eps, int32_t dtype) = 0;
  /// `b` may be null (no bias).
  virtual Status layernorm(const void *x, const void *w, const void *b, void *y,
                           int64_t T, int64_t D, float eps, int32_t dtype) = 0;
  virtual Status add(const void *a, const void *b, void *y, int64_t n,
                     int32_t dtype) = 0;
  virtual Status router(const void *x, const void *w, float *logits, int64_t T,
                        int64_t D, int64_t E, int32_t dtype) = 0;
  virtual Status topk(const float *logits, const float *bias, float *weights,
                      int32_t *indices, float *scores, int64_t T, int64_t E,
                      int64_t k, int32_t scoreFn, int32_t renormalize,
                      float scaling, int64_t numGroups, int64_t groupsKept,
                      int32_t groupScore) = 0;
  virtual Status assign(const int32_t *indices, int32_t *positions,
                        int32_t *counts, int64_t T, int64_t k, int64_t E,
                        int64_t capacity, int64_t groups) = 0;
  virtual Status dispatch(const void *x, const int32_t *positions, void *out,
                          int64_t T, int64_t k, int64_t D, int64_t outRows,
                          int32_t dtype) = 0;
  /// saveA / saveU: NULL (moert_expert_ffn) or moert_expert_ffn_train's
  /// save_a / save_u (dtype is then MOERT_F32).
  virtual Status expertFfn(const void *x, const int32_t *counts,
                           const void *gate, const void *up, const void *down,
                           void *y, void *saveA, void *saveU, int64_t E,
                           int64_t segments, int64_t rowsPerExpert,
                           int64_t totalRows, int64_t D, int64_t F,
                           int32_t activation, int32_t dtype) = 0;
  virtual Status combine(const void *y, const int32_t *positions,
                         const float *weights, const void *passthrough,
                         void *out, int64_t T, int64_t k, int64_t D,
                         int32_t dtype) = 0;
  virtual Status mlp(const void *x, const void *gate, const void *up,
                     const void *down, const void *sigmoidGate, void *y,
                     int64_t T, int64_t D, int64_t F, int32_t activation,
                     int32_t dtype) = 0;
  virtual Status expertLoad(const float *scores, const int32_t *indices,
                            float *stats, int64_t T, int64_t k, int64_t E) = 0;
  virtual Status loadBalanceLoss(const float *stats, float *out, int64_t E,
                                 int64_t tokens, int64_t k, float coeff) = 0;
  virtual Status zLoss(const float *logits, float *out, int64_t T, int64_t E,
                       int64_t totalTokens, float coeff) = 0;
  //===--- Training kernels (semantics: moert_kernels.def, docs/spec.md 7) ===//
  // Reached only with dtype == MOERT_F32 (the context refuses the others).
  virtual Status rmsnormGrad(const void *x, const void *w, const void *dy,
                             void *dx, void *dw, int64_t T, int64_t D,
                             float eps, int32_t dtype) = 0;
  /// `db` may be null (the forward has no bias).
  virtual Status layernormGrad(const void *x, const void *w, const void *dy,
                               void *dx, void *dw, void *db, int64_t T,
                               int64_t D, float eps, int32_t dtype) = 0;
  virtual Status routerGrad(const void *x, const void *w, const float *dlogits,
                            void *dx, void *dw, int64_t T, int64_t D, int64_t E,
                            int32_t dtype) = 0;
  virtual Status topkGrad(const float *logits, const int32_t *indices,
                          const float *dweights, const float *dscores,
                          float *dlogits, int64_t T, int64_t E, int64_t k,
                          int32_t scoreFn, int32_t renormalize,
                          float scaling) = 0;
  virtual Status dispatchGrad(const void *dout, const int32_t *positions,
                              void *dx, int64_t T, int64_t k, int64_t D,
                              int64_t outRows, int32_t dtype) = 0;
  virtual Status combineGrad(const void *y, const int32_t *positions,
                             const float *weights, const void *passthrough,
                             const void *dout, void *dy, float *dweights,
                             void *dpassthrough, int64_t T, int64_t k,
                             int64_t D, int64_t yRows, int32_t dtype) = 0;
  virtual Status expertFfnGrad(const void *x, const int32_t *counts,
                               const void *gate, const void *up,
                               const void *down, const void *dy,
                               const void *savedA, const void *savedU, void *dx,
                               void *dgate, void *dup, void *ddown, int64_t E,
                               int64_t segments, int64_t rowsPerExpert,
                               int64_t totalRows, int64_t D, int64_t F,
                               int32_t activation, int32_t dtype) = 0;
  /// moert_expert_ffn_grad_data / _weight: expertFfnGrad in two parts (the
  /// rows, then the sums over them), for moe-overlap's chunked backward.
  virtual Status expertFfnGradData(
      const void *x, const int32_t *counts, const void *gate, const void *up,
      const void *down, const void *dy, const void *savedA, const void *savedU,
      void *dx, void *hidden, void *dpreGate, void *dpreUp, int64_t E,
      int64_t segments, int64_t rowsPerExpert, int64_t totalRows, int64_t D,
      int64_t F, int32_t activation, int32_t dtype) = 0;
  virtual Status expertFfnGradWeight(const void *x, const int32_t *counts,
                                     const void *dy, const void *hidden,
                                     const void *dpreGate, const void *dpreUp,
                                     void *dgate, void *dup, void *ddown,
                                     int64_t E, int64_t segments,
                                     int64_t rowsPerExpert, int64_t totalRows,
                                     int64_t D, int64_t F, int32_t dtype) = 0;
  virtual Status mlpGrad(const void *x, const void *gate, const void *up,
                         const void *down, const void *sigmoidGate,
                         const void *dy, void *dx, void *dgate, void *dup,
                         void *ddown, void *dsigmoidGate, int64_t T, int64_t D,
                         int64_t F, int32_t activation, int32_t dtype) = 0;
  virtual Status expertLoadGrad(const float *dstats, float *dscores, int64_t T,
                                int64_t E) = 0;
  virtual Status loadBalanceLossGrad(const float *stats, const float *dloss,
                                     float *dstats, int64_t E, int64_t tokens,
                                     int64_t k, float coeff) = 0;
  virtual Status zLossGrad(const float *logits, const float *dloss,
                           float *dlogits, int64_t T, int64_t E,
                           int64_t totalTokens, float coeff) = 0;
  virtual Status mseLoss(const void *y, const void *target, float *loss,
                         void *dy, int64_t n, int64_t totalN,
                         int32_t dtype) = 0;
  virtual Status adamw(const float *w, const float *g, const float *m,
                       const float *v, const float *hparams, float *wOut,
                       float *mOut, float *vOut, int64_t n) = 0;
  virtual Status sgd(const float *w, const float *g, const float *buf,
                     const float *hparams, float *wOut, float *bufOut,
                     int64_t n) = 0;
  virtual Status biasUpdate(const float *bias, const float *load,
                            const float *hparams, float *biasOut, int64_t E,
                            int64_t tokens, int64_t k) = 0;

  /// Elementwise sum of `n` elements into `acc` (used by reduce-scatter /
  /// all-reduce on communicators without a native reduction).
  virtual Status accumulate(void *acc, const void *x, int64_t n,
                            int32_t dtype) = 0;
};

/// SwiGLU and GEGLU take a gate weight; ReLU and GeLU do not.
inline bool isGatedActivation(int32_t act) {
  return act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
}

struct BackendOptions {
  int32_t numThreads = 0; // CPU threads; 0 = default
  int32_t deviceIndex = -1;
  int32_t localRank = 0;
};

/// Creates the CPU backend (always available).
Status createCpuBackend(const BackendOptions &opts,
                        std::unique_ptr<Backend> &out);
/// Creates the CUDA backend, or MOERT_ERR_UNSUPPORTED when the runtime was
/// built without CUDA or no device is present.
Status createCudaBackend(const BackendOptions &opts,
                         std::unique_ptr<Backend> &out);

} // namespace moert

#endif // MOERT_CORE_BACKEND_H
