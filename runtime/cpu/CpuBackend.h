//===- CpuBackend.h - The kernels on host memory ----------------*- C++ -*-===//
//
// f32 kernels on the host: RowGemm (RowGemm.h) for the per-row GEMMs of the
// expert FFN and the MLP (forward, and the backward's recomputation, dh and
// dx), OpenBLAS for the other GEMMs (router, weight gradients),
// OpenMP for everything else. Other dtypes answer
// MOERT_ERR_UNSUPPORTED. Scratch memory is held here and only grows, so
// steady-state calls do not allocate. One backend serves one context and is not
// thread-safe.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPU_CPUBACKEND_H
#define MOERT_CPU_CPUBACKEND_H

#include "core/Backend.h"
#include "cpu/RowGemm.h"

#include <memory>
#include <vector>

namespace moert {

/// A 64-byte aligned float buffer that only ever grows.
class Workspace {
public:
  Workspace() = default;
  Workspace(const Workspace &) = delete;
  Workspace &operator=(const Workspace &) = delete;
  ~Workspace();
  /// Makes room for `n` floats; the contents are not kept.
  Status reserve(int64_t n, const char *fn);
  float *data() const { return data_; }

private:
  float *data_ = nullptr;
  int64_t size_ = 0;
};

/// A run of consecutive live rows of one expert in the FFN input.
struct RowBlock {
  int64_t row;
  int64_t rows;
};

class CpuBackend final : public Backend {
public:
  explicit CpuBackend(int32_t numThreads);

  const char *name() const override { return "cpu"; }
  moert_device_kind kind() const override { return MOERT_DEVICE_CPU; }

  Status alloc(int64_t bytes, void **out) override;
  void free(void *p) override;
  Status copyToDevice(void *dst, const void *src, int64_t bytes) override;
  Status copyToHost(void *dst, const void *src, int64_t bytes) override;
  Status copy(void *dst, const void *src, int64_t bytes) override;
  Status memsetZero(void *dst, int64_t bytes) override;
  Status copy2D(void *dst, int64_t dstPitch, const void *src, int64_t srcPitch,
                int64_t widthBytes, int64_t height) override;
  Status chunkCounts(const int32_t *counts, int32_t *out, int64_t n,
                     int64_t index, int64_t chunks) override;
  Status chunkRowsByCounts(const void *src, void *dst, const int32_t *counts,
                           int64_t segments, int64_t rowBytes, int64_t srcRows,
                           int64_t dstRows, int64_t index, int64_t chunks,
                           bool join) override;
  Status synchronize() override { return Status::ok(); }
  Status holdWeights(bool hold) override;
  Status prepareExpertFfn(const void *gate, const void *up, const void *down,
                          int64_t E, int64_t D, int64_t F) override;
  double now() override;

  Status rmsnorm(const void *x, const void *w, void *y, int64_t T, int64_t D,
                 float eps, int32_t dtype) override;
  Status layernorm(const void *x, const void *w, const void *b, void *y,
                   int64_t T, int64_t D, float eps, int32_t dtype) override;
  Status add(const void *a, const void *b, void *y, int64_t n,
             int32_t dtype) override;
  Status router(const void *x, const void *w, float *logits, int64_t T,
                int64_t D, int64_t E, int32_t dtype) override;
  Status topk(const float *logits, const float *bias, float *weights,
              int32_t *indices, float *scores, int64_t T, int64_t E, int64_t k,
              int32_t scoreFn, int32_t renormalize, float scaling,
              int64_t numGroups, int64_t groupsKept,
              int32_t groupScore) override;
  Status assign(const int32_t *indices, int32_t *positions, int32_t *counts,
                int64_t T, int64_t k, int64_t E, int64_t capacity,
                int64_t groups) override;
  Status dispatch(const void *x, const int32_t *positions, void *out, int64_t T,
                  int64_t k, int64_t D, int64_t outRows,
                  int32_t dtype) override;
  Status expertFfn(const void *x, const int32_t *counts, const void *gate,
                   const void *up, const void *down, void *y, void *saveA,
                   void *saveU, int64_t E, int64_t segments,
                   int64_t rowsPerExpert, int64_t totalRows, int64_t D,
                   int64_t F, int32_t activation, int32_t dtype) override;
  Status combine(const void *y, const int32_t *positions, const float *weights,
                 const void *passthrough, void *out, int64_t T, int64_t k,
                 int64_t D, int32_t dtype) override;
  Status mlp(const void *x, const void *gate, const void *up, const void *down,
             const void *sigmoidGate, void *y, int64_t T, int64_t D, int64_t F,
             int32_t activation, int32_t dtype) override;
  Status expertLoad(const float *scores, const int32_t *indices, float *stats,
                    int64_t T, int64_t k, int64_t E) override;
  Status loadBalanceLoss(const float *stats, float *out, int64_t E,
                         int64_t tokens, int64_t k, float coeff) override;
  Status zLoss(const float *logits, float *out, int64_t T, int64_t E,
               int64_t totalTokens, float coeff) override;
  Status accumulate(void *acc, const void *x, int64_t n,
                    int32_t dtype) override;

  // Training (CpuBackward.cpp, CpuOptimizer.cpp).
  Status rmsnormGrad(const void *x, const void *w, const void *dy, void *dx,
                     void *dw, int64_t T, int64_t D, float eps,
                     int32_t dtype) override;
  Status layernormGrad(const void *x, const void *w, const void *dy, void *dx,
                       void *dw, void *db, int64_t T, int64_t D, float eps,
                       int32_t dtype) override;
  Status routerGrad(const void *x, const void *w, const float *dlogits,
                    void *dx, void *dw, int64_t T, int64_t D, int64_t E,
                    int32_t dtype) override;
  Status topkGrad(const float *logits, const int32_t *indices,
                  const float *dweights, const float *dscores, float *dlogits,
                  int64_t T, int64_t E, int64_t k, int32_t scoreFn,
                  int32_t renormalize, float scaling) override;
  Status dispatchGrad(const void *dout, const int32_t *positions, void *dx,
                      int64_t T, int64_t k, int64_t D, int64_t outRows,
                      int32_t dtype) override;
  Status combineGrad(const void *y, const int32_t *positions,
                     const float *weights, const void *passthrough,
                     const void *dout, void *dy, float *dweights,
                     void *dpassthrough, int64_t T, int64_t k, int64_t D,
                     int64_t yRows, int32_t dtype) override;
  Status expertFfnGrad(const void *x, const int32_t *counts, const void *gate,
                       const void *up, const void *down, const void *dy,
                       const void *savedA, const void *savedU, void *dx,
                       void *dgate, void *dup, void *ddown, int64_t E,
                       int64_t segments, int64_t rowsPerExpert,
                       int64_t totalRows, int64_t D, int64_t F,
                       int32_t activation, int32_t dtype) override;
  Status expertFfnGradData(const void *x, const int32_t *counts,
                           const void *gate, const void *up, const void *down,
                           const void *dy, const void *savedA,
                           const void *savedU, void *dx, void *hidden,
                           void *dpreGate, void *dpreUp, int64_t E,
                           int64_t segments, int64_t rowsPerExpert,
                           int64_t totalRows, int64_t D, int64_t F,
                           int32_t activation, int32_t dtype) override;
  Status expertFfnGradWeight(const void *x, const int32_t *counts,
                             const void *dy, const void *hidden,
                             const void *dpreGate, const void *dpreUp,
                             void *dgate, void *dup, void *ddown, int64_t E,
                             int64_t segments, int64_t rowsPerExpert,
                             int64_t totalRows, int64_t D, int64_t F,
                             int32_t dtype) override;
  Status mlpGrad(const void *x, const void *gate, const void *up,
                 const void *down, const void *sigmoidGate, const void *dy,
                 void *dx, void *dgate, void *dup, void *ddown,
                 void *dsigmoidGate, int64_t T, int64_t D, int64_t F,
                 int32_t activation, int32_t dtype) override;
  Status expertLoadGrad(const float *dstats, float *dscores, int64_t T,
                        int64_t E) override;
  Status loadBalanceLossGrad(const float *stats, const float *dloss,
                             float *dstats, int64_t E, int64_t tokens,
                             int64_t k, float coeff) override;
  Status zLossGrad(const float *logits, const float *dloss, float *dlogits,
                   int64_t T, int64_t E, int64_t totalTokens,
                   float coeff) override;
  Status mseLoss(const void *y, const void *target, float *loss, void *dy,
                 int64_t n, int64_t totalN, int32_t dtype) override;
  Status adamw(const float *w, const float *g, const float *m, const float *v,
               const float *hparams, float *wOut, float *mOut, float *vOut,
               int64_t n) override;
  Status sgd(const float *w, const float *g, const float *buf,
             const float *hparams, float *wOut, float *bufOut,
             int64_t n) override;
  Status biasUpdate(const float *bias, const float *load, const float *hparams,
                    float *biasOut, int64_t E, int64_t tokens,
                    int64_t k) override;

  /// Most rows of one FFN chunk; 0 (the default) sizes chunks to keep the
  /// workspace under kFfnWorkspaceBytes. For tests and benchmarks.
  void setFfnChunkRows(int64_t rows) { ffnChunkRows_ = rows; }
  static constexpr int64_t kFfnWorkspaceBytes = int64_t(256) << 20;

  /// The per-row GEMMs of the FFN (the forward's c = a.w^T, also where the
  /// backward recomputes them, and the backward's dh and dx): RowGemm (the
  /// default: a row's bits do not depend on the rows around it) or OpenBLAS
  /// (bench/cpu/ffn_gemm.sh compares the two).
  enum class FfnGemm { RowIndependent, Blas };
  void setFfnGemm(FfnGemm gemm) { ffnGemm_ = gemm; }

private:
  /// The FFN weights of one expert (gate is null for ungated activations).
  struct FfnWeights {
    const float *gate;
    const float *up;
    const float *down;
  };

  /// The FFN weight gradients of one expert (gate null when ungated).
  struct FfnGrads {
    float *gate;
    float *up;
    float *down;
  };

  /// Zeroes the rows of buf ([totalRows, width]) outside blocks_.
  void zeroUncoveredRows(float *buf, int64_t width, int64_t totalRows) const;
  /// `fn` names the kernel in error messages; y may be null (nothing to
  /// zero).
  Status collectBlocks(const char *fn, const int32_t *counts, float *y,
                       int64_t E, int64_t S, int64_t R, int64_t totalRows,
                       int64_t D);
  /// Rows of one FFN chunk (equal chunks) when each row needs `rowFloats`
  /// floats of workspace.
  int64_t chunkRows(int64_t live, int64_t rowFloats) const;
  /// Rows of one chunk of runFfnGrad; runFfn uses it too when it saves the
  /// pre-activations, so that both compute them with the same GEMM calls.
  int64_t gradChunkRows(int64_t live, int64_t D, int64_t F, bool gated) const;
  /// The FFN over the live rows in `blocks`. saveU (and saveA, gated) not
  /// null: a = x.gate^T and u = x.up^T of those rows are kept there
  /// ([rows of x, F]).
  Status runFfn(const float *x, float *y, const RowBlock *blocks,
                int64_t numBlocks, const FfnWeights &w, int64_t D, int64_t F,
                int32_t activation, float *saveA, float *saveU);
  Status ffnChunk(const float *x, float *y, int64_t rows, const FfnWeights &w,
                  int64_t D, int64_t F, int32_t activation, float *saveA,
                  float *saveU);
  /// c[m,n] = a[m,kk] . b[n,kk]^T (weights are stored [out, in]), with the
  /// FfnGemm chosen.
  Status gemmNT(const float *a, const float *b, float *c, int64_t m, int64_t n,
                int64_t kk);
  /// b packed while the weights are held (moert_hold_weights), packed now
  /// if it was not yet; null when not held or past kHeldBytes (the caller
  /// packs per call).
  Status heldWeight(const float *b, int64_t n, int64_t kk,
                    const cpu::PackedB *&out);
  /// Backward of the FFN over the live rows in `blocks`: dx of those rows
  /// and the weight gradients (overwritten: 0 without live rows). When
  /// `fOut` is not null, the FFN's output of those rows is written there.
  /// savedU not null: a (savedA, gated) and u are read from runFfn's saveA /
  /// saveU instead of recomputed.
  Status runFfnGrad(const float *x, const float *dy, float *dx,
                    const RowBlock *blocks, int64_t numBlocks,
                    const FfnWeights &w, const FfnGrads &g, int64_t D,
                    int64_t F, int32_t activation, float *fOut,
                    const float *savedA = nullptr,
                    const float *savedU = nullptr);
  /// c[m,n] (+)= a[m,kk] . b[kk,n] with the FfnGemm chosen: the backward's
  /// row-wise GEMMs (dh = dy.down, dx = du.up + da.gate).
  Status gemmNNRows(const float *a, const float *b, float *c, int64_t m,
                    int64_t n, int64_t kk, bool accumulate);
  /// moert_expert_ffn_grad_data over the live rows in `blocks`: dx and the
  /// rows' h, du (dpreUp) and da (dpreGate, gated) ([rows of x, F]).
  Status runFfnGradData(const float *x, const float *dy, float *dx,
                        float *hidden, float *dpreGate, float *dpreUp,
                        const RowBlock *blocks, int64_t numBlocks,
                        const FfnWeights &w, int64_t D, int64_t F,
                        int32_t activation, const float *savedA,
                        const float *savedU);
  /// moert_expert_ffn_grad_weight over the live rows in `blocks`, in the
  /// chunks of runFfnGrad (gated when g.gate is not null).
  Status runFfnGradWeight(const float *x, const float *dy, const float *hidden,
                          const float *dpreGate, const float *dpreUp,
                          const RowBlock *blocks, int64_t numBlocks,
                          const FfnGrads &g, int64_t D, int64_t F);
  /// How ffnGradChunk gets a and u.
  enum class Hidden { Recompute, Copy, Loaded };
  /// The row-wise part of ffnGradChunk: dx (and fOut) written, and in the
  /// workspace ([a | u | h | dh], each [rows, F], a only when gated) da in
  /// a, du in u and the hidden activation in h.
  Status ffnGradRows(const float *x, const float *dy, float *dx, float *fOut,
                     int64_t rows, const FfnWeights &w, int64_t D, int64_t F,
                     int32_t activation, Hidden hidden, const float *savedA,
                     const float *savedU);
  /// The weight gradients of rows (+= when beta is 1): ddown = dy^T.h,
  /// dup = du^T.x, dgate = da^T.x (when g.gate).
  void ffnGradWeights(const float *x, const float *dy, const float *h,
                      const float *du, const float *da, int64_t rows,
                      const FfnGrads &g, float beta, int64_t D, int64_t F);
  Status ffnGradChunk(const float *x, const float *dy, float *dx, float *fOut,
                      int64_t rows, const FfnWeights &w, const FfnGrads &g,
                      float beta, int64_t D, int64_t F, int32_t activation,
                      Hidden hidden, const float *savedA, const float *savedU);

  int threads_;
  int64_t ffnChunkRows_ = 0;
  FfnGemm ffnGemm_ = FfnGemm::RowIndependent;
  cpu::RowGemm rowGemm_;
  Workspace ffnWork_;
  /// moert_hold_weights: the expert FFN's weight matrices packed once while
  /// held (inExpertFfn_: inside moert_expert_ffn / _train), dropped when
  /// released. At most kHeldBytes are kept.
  static constexpr int64_t kHeldBytes = int64_t(1) << 30;
  bool holding_ = false, inExpertFfn_ = false;
  std::vector<std::unique_ptr<cpu::PackedB>> held_;
  int64_t heldBytes_ = 0;
  /// Live row blocks of every expert: blocks of e are
  /// blocks_[blockStart_[e] .. blockStart_[e+1]).
  std::vector<RowBlock> blocks_;
  std::vector<int64_t> blockStart_;
  std::vector<int32_t> rowSource_;  // dispatch: source token of each out row
  std::vector<int64_t> cursor_;     // next row of each expert / (s, e) block
  std::vector<double> sums_;        // expert_load: per-expert sums
  std::vector<float> groupScratch_; // topk: group scores; topk_grad: scores
  Workspace trainWork_;             // mlp_grad: the sigmoid gate's rows
  std::vector<double> rowScratch_;  // topk_grad / z_loss_grad: per thread
  std::vector<int32_t> rowOwner_;   // combine_grad: the (t, j) of each row
};

} // namespace moert

#endif // MOERT_CPU_CPUBACKEND_H
