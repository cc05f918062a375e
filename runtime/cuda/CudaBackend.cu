//===- CudaBackend.cu - The CUDA implementation of moert::Backend --------===//
//
// One stream per backend; every kernel, copy and cuBLAS call is queued on it,
// so memory released to the caching allocator can be reused at once. Heavy
// math goes to cuBLAS with f32 accumulation (CUBLAS_COMPUTE_32F, never TF32);
// routing, permutation and elementwise work are the kernels of Routing.cu,
// Permute.cu and Elementwise.cu.
//
// Expert FFN: the live rows of each (segment, expert) block form one GEMM
// problem. The per-block counts live on the device; they are copied to the
// host once per call (S*E ints) to size the problems. All problems of a
// layer run as one cublasGemmGroupedBatchedEx call (or a loop of
// cublasGemmEx for few problems, where the grouped form is unsupported, or
// where operands or rows are not 16-byte aligned; MOERT_CUDA_GEMM=
// grouped|loop overrides the choice, alignment permitting). Intermediate
// activations are kept packed (only live rows) in the storage dtype.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "cuda/CudaAllocator.h"
#include "cuda/CudaBackend.h"
#include "cuda/CudaCommon.h"
#include "cuda/CudaKernels.h"

#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace moert {

namespace {

using cuda::DeviceAllocator;
using cuda::LaunchEnv;
using cuda::PinnedBuffer;
using cuda::Scratch;

enum class GemmMode { Auto, Grouped, Loop };

/// Problems of one batched "Y = X . W^T" (row-major) GEMM: Y[m_p, n] =
/// X[m_p, k] . W[n, k]^T for each problem p, with shared n and k.
struct LinearBatch {
  std::vector<const void *> x, w;
  std::vector<void *> y;
  std::vector<int> m;
  void add(const void *xp, const void *wp, void *yp, int rows) {
    x.push_back(xp);
    w.push_back(wp);
    y.push_back(yp);
    m.push_back(rows);
  }
  size_t size() const { return m.size(); }
};

/// Row-major f32 C[m,n] = op(A)[m,k] . op(B)[k,n]; op = transpose when ta /
/// tb; lda, ldb, ldc are the stored row lengths.
struct GemmProblem {
  const float *a, *b;
  float *c;
  int m, n, k, lda, ldb, ldc;
  bool ta, tb;
};

struct FfnSlice;
struct FfnGradArgs;

class CudaBackend final : public Backend {
public:
  explicit CudaBackend(int device) : device_(device) {}
  ~CudaBackend() override;

  Status init();

  const char *name() const override { return "cuda"; }
  moert_device_kind kind() const override { return MOERT_DEVICE_CUDA; }
  cudaStream_t stream() const { return stream_; }
  void *computeStream() override { return stream_; }

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
  Status synchronize() override;
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
  // Training kernels (f32): Backward.cu, Optimizer.cu and the GEMMs below.
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

  Status accumulate(void *acc, const void *x, int64_t n,
                    int32_t dtype) override;

private:
  /// Makes this backend's device current (another context of the process
  /// may have switched it).
  Status enter(const char *op);
  Status blockingCopy(const char *op, void *dst, const void *src,
                      int64_t bytes);
  LaunchEnv env() { return LaunchEnv{stream_, allocator_.get(), smCount_}; }

  /// Y[m, n] = X[m, k] . W[n, k]^T, row-major, leading dims = row lengths.
  Status linear(const char *op, const void *x, const void *w, void *y,
                int64_t m, int64_t n, int64_t k, cudaDataType_t abType,
                cudaDataType_t yType);
  /// Every problem of `batch` (shared n, k; storage type `type`).
  Status linearBatch(const char *op, const LinearBatch &batch, int64_t n,
                     int64_t k, cudaDataType_t type);
  Status linearLoop(const char *op, const LinearBatch &batch, int64_t n,
                    int64_t k, cudaDataType_t type);
  Status linearGrouped(const char *op, const LinearBatch &batch, int64_t n,
                       int64_t k, cudaDataType_t type, bool &unsupported);

  /// One row-major f32 GEMM C = op(A) op(B) (beta 0: overwrite, 1: add).
  Status gemm(const char *op, const GemmProblem &p, float beta);
  /// Independent problems (no two write the same C), grouped or looped as
  /// linearBatch decides.
  Status gemmBatch(const char *op, const std::vector<GemmProblem> &ps,
                   float beta);
  Status readHparams(const float *hparams, const char *op, float (&out)[8]);
  Status ffnRecompute(const char *op, const FfnGradArgs &g,
                      const std::vector<FfnSlice> &slices);
  Status ffnBackprop(const char *op, const FfnGradArgs &g,
                     const std::vector<FfnSlice> &slices);
  Status ffnBackpropRows(const char *op, const FfnGradArgs &g,
                         const std::vector<FfnSlice> &slices);
  Status ffnBackpropWeights(const char *op, const FfnGradArgs &g,
                            const std::vector<FfnSlice> &slices);
  /// expertFfnGrad (Fused), expertFfnGradData (Rows: hidden, dpre* out) or
  /// expertFfnGradWeight (Weights: hidden, dpre* in).
  enum class FfnGradPart { Fused, Rows, Weights };
  Status ffnGradPart(const char *op, FfnGradPart part, const void *x,
                     const int32_t *counts, const void *gate, const void *up,
                     const void *down, const void *dy, const void *savedA,
                     const void *savedU, void *dx, void *dgate, void *dup,
                     void *ddown, float *hidden, float *dpreGate, float *dpreUp,
                     bool gated, int64_t E, int64_t S, int64_t R,
                     int64_t totalRows, int64_t D, int64_t F,
                     int32_t activation, int32_t dtype);

  int device_;
  int smCount_ = 1;
  int maxPitch_ = INT_MAX;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::unique_ptr<DeviceAllocator> allocator_;
  void *cublasWorkspace_ = nullptr;
  GemmMode gemmMode_ = GemmMode::Auto;
  bool groupedUnsupported_ = false;

  PinnedBuffer countsHost_;
  PinnedBuffer hparamsHost_;
  PinnedBuffer pointersHost_;
  /// Recorded after the last copy out of pointersHost_: the buffer may be
  /// rewritten once it has completed.
  cudaEvent_t pointersCopied_ = nullptr;
  bool pointersPending_ = false;

  // Host-side arrays of the grouped GEMM (kept to avoid reallocation).
  std::vector<cublasOperation_t> transA_, transB_;
  std::vector<int> mArr_, nArr_, kArr_, ldaArr_, ldbArr_, ldcArr_, sizeArr_;
  std::vector<float> alphaArr_, betaArr_;
};

constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

Status CudaBackend::init() {
  const char *op = "createCudaBackend";
  MOERT_CUDA(op, cudaSetDevice(device_));
  MOERT_CUDA(op, cudaDeviceGetAttribute(
                     &smCount_, cudaDevAttrMultiProcessorCount, device_));
  MOERT_CUDA(op,
             cudaDeviceGetAttribute(&maxPitch_, cudaDevAttrMaxPitch, device_));
  // A blocking stream: work that others queue on the legacy default stream
  // (e.g. NCCL given a null stream, or a caller's events) is ordered with it.
  MOERT_CUDA(op, cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
  MOERT_CUDA(
      op, cudaEventCreateWithFlags(&pointersCopied_, cudaEventDisableTiming));
  allocator_ = std::make_unique<DeviceAllocator>(stream_);
  MOERT_CUBLAS(op, cublasCreate(&cublas_));
  MOERT_CUBLAS(op, cublasSetStream(cublas_, stream_));
  MOERT_CUBLAS(op, cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  MOERT_TRY(allocator_->allocate(kCublasWorkspaceBytes, &cublasWorkspace_,
                                 "cuBLAS workspace"));
  MOERT_CUBLAS(
      op, cublasSetWorkspace(cublas_, cublasWorkspace_, kCublasWorkspaceBytes));
  if (const char *mode = std::getenv("MOERT_CUDA_GEMM")) {
    if (!std::strcmp(mode, "grouped"))
      gemmMode_ = GemmMode::Grouped;
    else if (!std::strcmp(mode, "loop"))
      gemmMode_ = GemmMode::Loop;
    else if (std::strcmp(mode, "auto") && *mode)
      return error(MOERT_ERR_INVALID,
                   "%s: MOERT_CUDA_GEMM='%s' (expected grouped, loop or auto)",
                   op, mode);
  }
  return Status::ok();
}

CudaBackend::~CudaBackend() {
  // Nothing here can report: finish queued work, then release in reverse.
  if (stream_)
    (void)cudaStreamSynchronize(stream_);
  if (cublas_)
    (void)cublasDestroy(cublas_);
  allocator_.reset();
  if (pointersCopied_)
    (void)cudaEventDestroy(pointersCopied_);
  if (stream_)
    (void)cudaStreamDestroy(stream_);
}

Status CudaBackend::enter(const char *op) {
  int current = -1;
  MOERT_CUDA(op, cudaGetDevice(&current));
  if (current != device_)
    MOERT_CUDA(op, cudaSetDevice(device_));
  return Status::ok();
}

//===--- Memory
//-------------------------------------------------------------===//

Status CudaBackend::alloc(int64_t bytes, void **out) {
  MOERT_TRY(enter("moert_alloc"));
  return allocator_->allocate(bytes, out, "moert_alloc");
}

void CudaBackend::free(void *p) {
  if (p && enter("moert_free").isOk())
    allocator_->release(p);
}

/// Host<->device copies are the same call (cudaMemcpyDefault infers the
/// direction); they block because the host buffer may be reused at once.
Status CudaBackend::blockingCopy(const char *op, void *dst, const void *src,
                                 int64_t bytes) {
  if (bytes <= 0)
    return Status::ok();
  MOERT_TRY(enter(op));
  MOERT_CUDA(op, cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                 cudaMemcpyDefault, stream_));
  MOERT_CUDA(op, cudaStreamSynchronize(stream_));
  return Status::ok();
}

Status CudaBackend::copyToDevice(void *dst, const void *src, int64_t bytes) {
  return blockingCopy("moert_copy_to_device", dst, src, bytes);
}

Status CudaBackend::copyToHost(void *dst, const void *src, int64_t bytes) {
  return blockingCopy("moert_copy_to_host", dst, src, bytes);
}

Status CudaBackend::copy(void *dst, const void *src, int64_t bytes) {
  const char *op = "moert_copy";
  if (bytes <= 0 || dst == src)
    return Status::ok();
  MOERT_TRY(enter(op));
  // The CPU backend copies with memmove; cudaMemcpy* is undefined on
  // overlapping ranges, so those go through a scratch block.
  const char *d = static_cast<const char *>(dst);
  const char *s = static_cast<const char *>(src);
  if (d < s + bytes && s < d + bytes) {
    Scratch tmp(*allocator_);
    MOERT_TRY(tmp.allocate(bytes, op));
    MOERT_CUDA(op, cudaMemcpyAsync(tmp.get(), src, static_cast<size_t>(bytes),
                                   cudaMemcpyDefault, stream_));
    MOERT_CUDA(op, cudaMemcpyAsync(dst, tmp.get(), static_cast<size_t>(bytes),
                                   cudaMemcpyDefault, stream_));
    return Status::ok();
  }
  MOERT_CUDA(op, cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                 cudaMemcpyDefault, stream_));
  return Status::ok();
}

Status CudaBackend::memsetZero(void *dst, int64_t bytes) {
  const char *op = "memsetZero";
  if (bytes <= 0)
    return Status::ok();
  MOERT_TRY(enter(op));
  MOERT_CUDA(op, cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), stream_));
  return Status::ok();
}

Status CudaBackend::copy2D(void *dst, int64_t dstPitch, const void *src,
                           int64_t srcPitch, int64_t widthBytes,
                           int64_t height) {
  const char *op = "copy2D";
  if (widthBytes <= 0 || height <= 0)
    return Status::ok();
  MOERT_TRY(enter(op));
  // One row (Collectives.cpp passes pitch 0 then, which cudaMemcpy2DAsync
  // rejects with cudaErrorInvalidPitchValue) or rows that are contiguous on
  // both sides: one plain copy.
  if (height == 1 || (dstPitch == widthBytes && srcPitch == widthBytes)) {
    MOERT_CUDA(op, cudaMemcpyAsync(dst, src,
                                   static_cast<size_t>(widthBytes * height),
                                   cudaMemcpyDefault, stream_));
    return Status::ok();
  }
  if (dstPitch <= maxPitch_ && srcPitch <= maxPitch_ &&
      widthBytes <= maxPitch_) {
    MOERT_CUDA(op, cudaMemcpy2DAsync(dst, static_cast<size_t>(dstPitch), src,
                                     static_cast<size_t>(srcPitch),
                                     static_cast<size_t>(widthBytes),
                                     static_cast<size_t>(height),
                                     cudaMemcpyDefault, stream_));
    return Status::ok();
  }
  // Pitches beyond what cudaMemcpy2D accepts: one copy per row.
  for (int64_t r = 0; r < height; ++r)
    MOERT_CUDA(op,
               cudaMemcpyAsync(static_cast<char *>(dst) + r * dstPitch,
                               static_cast<const char *>(src) + r * srcPitch,
                               static_cast<size_t>(widthBytes),
                               cudaMemcpyDefault, stream_));
  return Status::ok();
}

Status CudaBackend::synchronize() {
  const char *op = "moert_synchronize";
  MOERT_TRY(enter(op));
  MOERT_CUDA(op, cudaStreamSynchronize(stream_));
  return Status::ok();
}

double CudaBackend::now() {
  // Phases are timed by the context from two now() calls: waiting for the
  // stream makes the wall-clock difference the device time of the phase.
  // An error here shows up again at the next checked call.
  (void)cudaStreamSynchronize(stream_);
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

//===--- cuBLAS
//---------------------------------------------------------------===//

Status CudaBackend::linear(const char *op, const void *x, const void *w,
                           void *y, int64_t m, int64_t n, int64_t k,
                           cudaDataType_t abType, cudaDataType_t yType) {
  if (m == 0 || n == 0)
    return Status::ok();
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
    return error(MOERT_ERR_INVALID,
                 "%s: GEMM of %lld x %lld x %lld exceeds cuBLAS's int sizes",
                 op, (long long)m, (long long)n, (long long)k);
  const float alpha = 1.0f, beta = 0.0f;
  // Row-major Y = X W^T is column-major Y^T (n x m) = W^T(op T) X^T.
  MOERT_CUBLAS(op, cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(n),
                                int(m), int(k), &alpha, w, abType, int(k), x,
                                abType, int(k), &beta, y, yType, int(n),
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::ok();
}

Status CudaBackend::linearLoop(const char *op, const LinearBatch &batch,
                               int64_t n, int64_t k, cudaDataType_t type) {
  for (size_t p = 0; p < batch.size(); ++p)
    MOERT_TRY(linear(op, batch.x[p], batch.w[p], batch.y[p], batch.m[p], n, k,
                     type, type));
  return Status::ok();
}

Status CudaBackend::linearGrouped(const char *op, const LinearBatch &batch,
                                  int64_t n, int64_t k, cudaDataType_t type,
                                  bool &unsupported) {
  unsupported = false;
  const size_t P = batch.size();
  // Device arrays of A (= W), B (= X) and C (= Y) pointers, staged through
  // pinned memory that the previous call's copy must be done with.
  if (pointersPending_) {
    MOERT_CUDA(op, cudaEventSynchronize(pointersCopied_));
    pointersPending_ = false;
  }
  const size_t bytes = 3 * P * sizeof(void *);
  MOERT_TRY(pointersHost_.reserve(bytes, op));
  const void **host = pointersHost_.as<const void *>();
  for (size_t p = 0; p < P; ++p) {
    host[p] = batch.w[p];
    host[P + p] = batch.x[p];
    host[2 * P + p] = batch.y[p];
  }
  Scratch dev(*allocator_);
  MOERT_TRY(dev.allocate(static_cast<int64_t>(bytes), op));
  MOERT_CUDA(op, cudaMemcpyAsync(dev.get(), host, bytes, cudaMemcpyHostToDevice,
                                 stream_));
  MOERT_CUDA(op, cudaEventRecord(pointersCopied_, stream_));
  pointersPending_ = true;

  transA_.assign(P, CUBLAS_OP_T);
  transB_.assign(P, CUBLAS_OP_N);
  mArr_.assign(P, int(n));
  nArr_.assign(batch.m.begin(), batch.m.end());
  kArr_.assign(P, int(k));
  ldaArr_.assign(P, int(k));
  ldbArr_.assign(P, int(k));
  ldcArr_.assign(P, int(n));
  sizeArr_.assign(P, 1);
  alphaArr_.assign(P, 1.0f);
  betaArr_.assign(P, 0.0f);
  void *const *devPtrs = dev.as<void *>();
  cublasStatus_t st = cublasGemmGroupedBatchedEx(
      cublas_, transA_.data(), transB_.data(), mArr_.data(), nArr_.data(),
      kArr_.data(), alphaArr_.data(), devPtrs, type, ldaArr_.data(),
      devPtrs + P, type, ldbArr_.data(), betaArr_.data(), devPtrs + 2 * P, type,
      ldcArr_.data(), int(P), sizeArr_.data(), CUBLAS_COMPUTE_32F);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_ARCH_MISMATCH) {
    unsupported = true;
    return Status::ok();
  }
  return cuda::cublasCheck(st, op,
                           "cublasGemmGroupedBatchedEx(group_count=P, "
                           "CUBLAS_COMPUTE_32F)");
}

/// See linearBatch: true when a grouped GEMM may read `batch` safely. The
/// documented rule covers f16 / bf16 only; f32 is held to it as well, since
/// a wrong guess costs the CUDA context and the loop costs little.
static bool groupedAligned(const LinearBatch &batch, int64_t n, int64_t k,
                           cudaDataType_t type) {
  const int64_t es = type == CUDA_R_32F ? 4 : 2;
  if ((k * es) % 16 != 0 || (n * es) % 16 != 0)
    return false;
  auto ok = [](const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
  };
  for (size_t p = 0; p < batch.size(); ++p)
    if (!ok(batch.x[p]) || !ok(batch.w[p]) || !ok(batch.y[p]))
      return false;
  return true;
}

Status CudaBackend::linearBatch(const char *op, const LinearBatch &batch,
                                int64_t n, int64_t k, cudaDataType_t type) {
  if (batch.size() == 0 || n == 0)
    return Status::ok();
  if (n > INT_MAX || k > INT_MAX || batch.size() > size_t(INT_MAX))
    return error(MOERT_ERR_INVALID,
                 "%s: GEMM sizes n=%lld k=%lld or %zu problems exceed "
                 "cuBLAS's int sizes",
                 op, (long long)n, (long long)k, batch.size());
  bool grouped = false;
  // The operands of the grouped GEMM are read through pointers cuBLAS
  // cannot check (they are in device memory); misaligned 16-bit ones are a
  // device fault that ends the CUDA context (cuBLAS docs: "properly aligned
  // ... ideally at least 16 bytes"). Group only batches whose every pointer
  // and row is 16-byte aligned; the others run as a loop of cublasGemmEx,
  // which sees the pointers and picks kernels that fit them.
  const bool aligned = groupedAligned(batch, n, k, type);
  switch (gemmMode_) {
  case GemmMode::Grouped:
    grouped = true;
    break;
  case GemmMode::Loop:
    grouped = false;
    break;
  case GemmMode::Auto:
    // A few large GEMMs run as fast one by one (each gets its own tuned
    // kernel); many small ones need the single grouped launch.
    grouped = batch.size() > 16;
    break;
  }
  if (grouped && aligned && !groupedUnsupported_) {
    bool unsupported = false;
    MOERT_TRY(linearGrouped(op, batch, n, k, type, unsupported));
    if (!unsupported)
      return Status::ok();
    groupedUnsupported_ = true; // e.g. f32 on a cuBLAS without it: loop
  }
  return linearLoop(op, batch, n, k, type);
}

//===--- Kernels
//----------------------------------------------------------------===//

Status CudaBackend::rmsnorm(const void *x, const void *w, void *y, int64_t T,
                            int64_t D, float eps, int32_t dtype) {
  MOERT_TRY(enter("moert_rmsnorm"));
  return cuda::launchRmsnorm(env(), x, w, y, T, D, eps, dtype);
}

Status CudaBackend::layernorm(const void *x, const void *w, const void *b,
                              void *y, int64_t T, int64_t D, float eps,
                              int32_t dtype) {
  MOERT_TRY(enter("moert_layernorm"));
  return cuda::launchLayernorm(env(), x, w, b, y, T, D, eps, dtype);
}

Status CudaBackend::add(const void *a, const void *b, void *y, int64_t n,
                        int32_t dtype) {
  MOERT_TRY(enter("moert_add"));
  return cuda::launchAdd(env(), a, b, y, n, dtype);
}

Status CudaBackend::router(const void *x, const void *w, float *logits,
                           int64_t T, int64_t D, int64_t E, int32_t dtype) {
  const char *op = "moert_router";
  MOERT_TRY(enter(op));
  cudaDataType_t type;
  MOERT_TRY(cuda::cudaDataTypeOf(dtype, op, type));
  return linear(op, x, w, logits, T, E, D, type, CUDA_R_32F);
}

Status CudaBackend::topk(const float *logits, const float *bias, float *weights,
                         int32_t *indices, float *scores, int64_t T, int64_t E,
                         int64_t k, int32_t scoreFn, int32_t renormalize,
                         float scaling, int64_t numGroups, int64_t groupsKept,
                         int32_t groupScore) {
  MOERT_TRY(enter("moert_topk"));
  return cuda::launchTopk(env(), logits, bias, weights, indices, scores, T, E,
                          k, scoreFn, renormalize, scaling, numGroups,
                          groupsKept, groupScore);
}

Status CudaBackend::assign(const int32_t *indices, int32_t *positions,
                           int32_t *counts, int64_t T, int64_t k, int64_t E,
                           int64_t capacity, int64_t groups) {
  MOERT_TRY(enter("moert_assign"));
  return cuda::launchAssign(env(), indices, positions, counts, T, k, E,
                            capacity, groups);
}

Status CudaBackend::chunkCounts(const int32_t *counts, int32_t *out, int64_t n,
                                int64_t index, int64_t chunks) {
  MOERT_TRY(enter("moert_chunk_counts"));
  return cuda::launchChunkCounts(env(), counts, out, n, index, chunks);
}

Status CudaBackend::chunkRowsByCounts(const void *src, void *dst,
                                      const int32_t *counts, int64_t segments,
                                      int64_t rowBytes, int64_t srcRows,
                                      int64_t dstRows, int64_t index,
                                      int64_t chunks, bool join) {
  MOERT_TRY(enter("moert_chunk_rows"));
  return cuda::launchChunkRows(env(), src, dst, counts, segments, rowBytes,
                               srcRows, dstRows, index, chunks, join);
}

Status CudaBackend::dispatch(const void *x, const int32_t *positions, void *out,
                             int64_t T, int64_t k, int64_t D, int64_t outRows,
                             int32_t dtype) {
  MOERT_TRY(enter("moert_dispatch"));
  return cuda::launchDispatch(env(), x, positions, out, T, k, D, outRows,
                              dtype);
}

Status CudaBackend::combine(const void *y, const int32_t *positions,
                            const float *weights, const void *passthrough,
                            void *out, int64_t T, int64_t k, int64_t D,
                            int32_t dtype) {
  MOERT_TRY(enter("moert_combine"));
  return cuda::launchCombine(env(), y, positions, weights, passthrough, out, T,
                             k, D, dtype);
}

Status CudaBackend::expertFfn(const void *x, const int32_t *counts,
                              const void *gate, const void *up,
                              const void *down, void *y, void *saveA,
                              void *saveU, int64_t E, int64_t S, int64_t R,
                              int64_t totalRows, int64_t D, int64_t F,
                              int32_t activation, int32_t dtype) {
  const char *op = "moert_expert_ffn";
  MOERT_TRY(enter(op));
  cudaDataType_t type;
  MOERT_TRY(cuda::cudaDataTypeOf(dtype, op, type));
  const int64_t es = static_cast<int64_t>(dtypeSize(dtype));
  const bool gated = isGatedActivation(activation);

  // 1. The live blocks: (expert, first row of x / y, rows).
  struct Block {
    int64_t expert, row, rows;
  };
  std::vector<Block> blocks;
  const int64_t C = R > 0 ? R / S : 0;
  int64_t live = 0;
  if (counts) {
    MOERT_TRY(countsHost_.reserve(sizeof(int32_t) * S * E, op));
    MOERT_CUDA(op, cudaMemcpyAsync(countsHost_.as<int32_t>(), counts,
                                   sizeof(int32_t) * S * E,
                                   cudaMemcpyDeviceToHost, stream_));
    MOERT_CUDA(op, cudaStreamSynchronize(stream_));
    pointersPending_ = false; // the stream is idle
    const int32_t *c = countsHost_.as<int32_t>();
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = c[s * E + e];
        if (n < 0 || (R > 0 && n > C))
          return error(MOERT_ERR_INVALID,
                       "%s: counts[%lld,%lld]=%lld outside [0, %lld]", op,
                       (long long)s, (long long)e, (long long)n,
                       (long long)(R > 0 ? C : totalRows));
        if (n == 0) {
          continue;
        }
        const int64_t row = R > 0 ? e * R + s * C : live;
        blocks.push_back({e, row, n});
        live += n;
      }
    }
    if (R == 0 && live > totalRows)
      return error(MOERT_ERR_INVALID,
                   "%s: counts sum to %lld rows, more than total_rows=%lld", op,
                   (long long)live, (long long)totalRows);
  } else {
    for (int64_t e = 0; e < E && R > 0; ++e)
      blocks.push_back({e, e * R, R});
    live = E * R;
  }
  if (live > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: %lld live rows exceed int32", op,
                 (long long)live);

  // 2. Rows that no block covers are zero.
  if (R == 0 && totalRows > live)
    MOERT_CUDA(op,
               cudaMemsetAsync(static_cast<char *>(y) + live * D * es, 0,
                               static_cast<size_t>((totalRows - live) * D * es),
                               stream_));
  if (R > 0 && counts)
    MOERT_TRY(cuda::launchZeroDeadRows(env(), y, counts, E, S, C, D, dtype));
  // moert_expert_ffn_train: the same rows of the saved pre-activations
  // ([totalRows, F], f32) are zero too, so that its results are defined
  // everywhere.
  for (void *saved : {saveA, saveU}) {
    if (!saved)
      continue;
    if (R == 0 && totalRows > live)
      MOERT_CUDA(
          op, cudaMemsetAsync(
                  static_cast<char *>(saved) + live * F * sizeof(float), 0,
                  static_cast<size_t>((totalRows - live) * F * sizeof(float)),
                  stream_));
    if (R > 0 && counts)
      MOERT_TRY(cuda::launchZeroDeadRows(env(), saved, counts, E, S, C, F,
                                         MOERT_F32));
  }
  if (blocks.empty())
    return Status::ok();

  // 3. h = x W1^T (and u = x Wu^T) for the live rows, packed.
  Scratch hBuf(*allocator_), uBuf(*allocator_);
  MOERT_TRY(hBuf.allocate(live * F * es, op));
  if (gated)
    MOERT_TRY(uBuf.allocate(live * F * es, op));
  const char *xb = static_cast<const char *>(x);
  char *yb = static_cast<char *>(y);
  const char *w1 = static_cast<const char *>(gated ? gate : up);
  const char *wu = static_cast<const char *>(up);
  const char *wd = static_cast<const char *>(down);
  LinearBatch first, second;
  int64_t packed = 0;
  for (const Block &b : blocks) {
    first.add(xb + b.row * D * es, w1 + b.expert * F * D * es,
              hBuf.as<char>() + packed * F * es, int(b.rows));
    packed += b.rows;
  }
  if (gated) {
    packed = 0;
    for (const Block &b : blocks) {
      first.add(xb + b.row * D * es, wu + b.expert * F * D * es,
                uBuf.as<char>() + packed * F * es, int(b.rows));
      packed += b.rows;
    }
  }
  MOERT_TRY(linearBatch(op, first, F, D, type));
  // 3b. moert_expert_ffn_train: the pre-activations into the layout's rows
  // (hBuf holds x.gate^T when gated, x.up^T otherwise).
  Scratch table(*allocator_);
  if (saveU) {
    std::vector<cuda::RowBlock> moves;
    packed = 0;
    for (const Block &b : blocks) {
      moves.push_back({b.row, packed, b.rows});
      packed += b.rows;
    }
    const int64_t bytes =
        static_cast<int64_t>(sizeof(cuda::RowBlock) * moves.size());
    MOERT_TRY(table.allocate(bytes, op));
    MOERT_CUDA(op, cudaMemcpyAsync(table.get(), moves.data(), bytes,
                                   cudaMemcpyHostToDevice, stream_));
    const auto *tb = table.as<const cuda::RowBlock>();
    const int64_t nb = static_cast<int64_t>(moves.size());
    MOERT_TRY(cuda::launchMoveRows(env(), tb, nb,
                                   static_cast<float *>(gated ? saveA : saveU),
                                   hBuf.as<float>(), live, F, false, op));
    if (gated)
      MOERT_TRY(cuda::launchMoveRows(env(), tb, nb, static_cast<float *>(saveU),
                                     uBuf.as<float>(), live, F, false, op));
  }
  // 4. h = act(h) (* u), one pass over the packed rows.
  MOERT_TRY(cuda::launchActivation(env(), hBuf.get(),
                                   gated ? uBuf.get() : nullptr, live * F,
                                   activation, dtype, op));
  // 5. y = h Wd^T into the blocks' own rows.
  packed = 0;
  for (const Block &b : blocks) {
    second.add(hBuf.as<char>() + packed * F * es, wd + b.expert * D * F * es,
               yb + b.row * D * es, int(b.rows));
    packed += b.rows;
  }
  return linearBatch(op, second, D, F, type);
}

Status CudaBackend::mlp(const void *x, const void *gate, const void *up,
                        const void *down, const void *sigmoidGate, void *y,
                        int64_t T, int64_t D, int64_t F, int32_t activation,
                        int32_t dtype) {
  const char *op = "moert_mlp";
  MOERT_TRY(enter(op));
  cudaDataType_t type;
  MOERT_TRY(cuda::cudaDataTypeOf(dtype, op, type));
  const bool gated = isGatedActivation(activation);
  if (T == 0)
    return Status::ok();
  const int64_t es = static_cast<int64_t>(dtypeSize(dtype));
  Scratch hBuf(*allocator_), uBuf(*allocator_);
  MOERT_TRY(hBuf.allocate(T * F * es, op));
  MOERT_TRY(linear(op, x, gated ? gate : up, hBuf.get(), T, F, D, type, type));
  if (gated) {
    MOERT_TRY(uBuf.allocate(T * F * es, op));
    MOERT_TRY(linear(op, x, up, uBuf.get(), T, F, D, type, type));
  }
  MOERT_TRY(cuda::launchActivation(env(), hBuf.get(),
                                   gated ? uBuf.get() : nullptr, T * F,
                                   activation, dtype, op));
  MOERT_TRY(linear(op, hBuf.get(), down, y, T, D, F, type, type));
  if (sigmoidGate)
    MOERT_TRY(
        cuda::launchSigmoidGateScale(env(), x, sigmoidGate, y, T, D, dtype));
  return Status::ok();
}

Status CudaBackend::expertLoad(const float *scores, const int32_t *indices,
                               float *stats, int64_t T, int64_t k, int64_t E) {
  MOERT_TRY(enter("moert_expert_load"));
  return cuda::launchExpertLoad(env(), scores, indices, stats, T, k, E);
}

Status CudaBackend::loadBalanceLoss(const float *stats, float *out, int64_t E,
                                    int64_t tokens, int64_t k, float coeff) {
  MOERT_TRY(enter("moert_load_balance_loss"));
  return cuda::launchLoadBalanceLoss(env(), stats, out, E, tokens, k, coeff);
}

Status CudaBackend::zLoss(const float *logits, float *out, int64_t T, int64_t E,
                          int64_t totalTokens, float coeff) {
  MOERT_TRY(enter("moert_z_loss"));
  return cuda::launchZLoss(env(), logits, out, T, E, totalTokens, coeff);
}

Status CudaBackend::accumulate(void *acc, const void *x, int64_t n,
                               int32_t dtype) {
  MOERT_TRY(enter("accumulate"));
  return cuda::launchAccumulate(env(), acc, x, n, dtype);
}

//===--- Training kernels
//----------------------------------------------------------===//
// f32 only (the context refuses other dtypes before calling here). The
// GEMMs of the backward run on cuBLAS (CUBLAS_COMPUTE_32F); cuBLAS gives the
// same bits at every run on one device and library, and no GEMM below sums
// into an output that another problem of the same launch writes, so the
// weight gradients repeat bit for bit.

static Status requireF32(int32_t dtype, const char *op) {
  if (dtype != MOERT_F32)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: dtype %d (%s): training kernels are f32 only", op, dtype,
                 dtypeName(dtype));
  return Status::ok();
}

Status CudaBackend::gemm(const char *op, const GemmProblem &p, float beta) {
  if (p.m == 0 || p.n == 0)
    return Status::ok();
  const float alpha = 1.0f;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, where
  // the column-major view of a row-major matrix is its transpose.
  MOERT_CUBLAS(op, cublasGemmEx(cublas_, p.tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                p.ta ? CUBLAS_OP_T : CUBLAS_OP_N, p.n, p.m, p.k,
                                &alpha, p.b, CUDA_R_32F, p.ldb, p.a, CUDA_R_32F,
                                p.lda, &beta, p.c, CUDA_R_32F, p.ldc,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return Status::ok();
}

/// See groupedAligned: every pointer and leading dimension 16-byte aligned.
static bool gemmsAligned(const std::vector<GemmProblem> &ps) {
  auto ok = [](const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
  };
  for (const GemmProblem &p : ps)
    if (!ok(p.a) || !ok(p.b) || !ok(p.c) || p.lda % 4 || p.ldb % 4 || p.ldc % 4)
      return false;
  return true;
}

Status CudaBackend::gemmBatch(const char *op,
                              const std::vector<GemmProblem> &all, float beta) {
  std::vector<GemmProblem> ps;
  for (const GemmProblem &p : all)
    if (p.m > 0 && p.n > 0)
      ps.push_back(p);
  if (ps.empty())
    return Status::ok();
  const bool grouped = gemmMode_ == GemmMode::Grouped ||
                       (gemmMode_ == GemmMode::Auto && ps.size() > 16);
  if (grouped && !groupedUnsupported_ && gemmsAligned(ps)) {
    const size_t P = ps.size();
    if (pointersPending_) {
      MOERT_CUDA(op, cudaEventSynchronize(pointersCopied_));
      pointersPending_ = false;
    }
    const size_t bytes = 3 * P * sizeof(void *);
    MOERT_TRY(pointersHost_.reserve(bytes, op));
    const void **host = pointersHost_.as<const void *>();
    transA_.resize(P);
    transB_.resize(P);
    mArr_.resize(P);
    nArr_.resize(P);
    kArr_.resize(P);
    ldaArr_.resize(P);
    ldbArr_.resize(P);
    ldcArr_.resize(P);
    // Column-major C^T = op(B)^T op(A)^T, as in gemm().
    for (size_t i = 0; i < P; ++i) {
      const GemmProblem &p = ps[i];
      host[i] = p.b;
      host[P + i] = p.a;
      host[2 * P + i] = p.c;
      transA_[i] = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
      transB_[i] = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
      mArr_[i] = p.n;
      nArr_[i] = p.m;
      kArr_[i] = p.k;
      ldaArr_[i] = p.ldb;
      ldbArr_[i] = p.lda;
      ldcArr_[i] = p.ldc;
    }
    sizeArr_.assign(P, 1);
    alphaArr_.assign(P, 1.0f);
    betaArr_.assign(P, beta);
    Scratch dev(*allocator_);
    MOERT_TRY(dev.allocate(static_cast<int64_t>(bytes), op));
    MOERT_CUDA(op, cudaMemcpyAsync(dev.get(), host, bytes,
                                   cudaMemcpyHostToDevice, stream_));
    MOERT_CUDA(op, cudaEventRecord(pointersCopied_, stream_));
    pointersPending_ = true;
    void *const *devPtrs = dev.as<void *>();
    cublasStatus_t st = cublasGemmGroupedBatchedEx(
        cublas_, transA_.data(), transB_.data(), mArr_.data(), nArr_.data(),
        kArr_.data(), alphaArr_.data(), devPtrs, CUDA_R_32F, ldaArr_.data(),
        devPtrs + P, CUDA_R_32F, ldbArr_.data(), betaArr_.data(),
        devPtrs + 2 * P, CUDA_R_32F, ldcArr_.data(), int(P), sizeArr_.data(),
        CUBLAS_COMPUTE_32F);
    if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_ARCH_MISMATCH)
      return cuda::cublasCheck(st, op,
                               "cublasGemmGroupedBatchedEx(group_count=P, "
                               "CUBLAS_COMPUTE_32F)");
    groupedUnsupported_ = true; // fall back to the loop from now on
  }
  for (const GemmProblem &p : ps)
    MOERT_TRY(gemm(op, p, beta));
  return Status::ok();
}

Status CudaBackend::readHparams(const float *hparams, const char *op,
                                float (&out)[8]) {
  MOERT_TRY(hparamsHost_.reserve(sizeof(float) * 8, op));
  MOERT_CUDA(op, cudaMemcpyAsync(hparamsHost_.as<float>(), hparams,
                                 sizeof(float) * 8, cudaMemcpyDeviceToHost,
                                 stream_));
  MOERT_CUDA(op, cudaStreamSynchronize(stream_));
  pointersPending_ = false; // the stream is idle
  std::memcpy(out, hparamsHost_.as<float>(), sizeof(out));
  return Status::ok();
}

Status CudaBackend::rmsnormGrad(const void *x, const void *w, const void *dy,
                                void *dx, void *dw, int64_t T, int64_t D,
                                float eps, int32_t dtype) {
  const char *op = "moert_rmsnorm_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  return cuda::launchRmsnormGrad(
      env(), static_cast<const float *>(x), static_cast<const float *>(w),
      static_cast<const float *>(dy), static_cast<float *>(dx),
      static_cast<float *>(dw), T, D, eps);
}

Status CudaBackend::layernormGrad(const void *x, const void *w, const void *dy,
                                  void *dx, void *dw, void *db, int64_t T,
                                  int64_t D, float eps, int32_t dtype) {
  const char *op = "moert_layernorm_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  return cuda::launchLayernormGrad(
      env(), static_cast<const float *>(x), static_cast<const float *>(w),
      static_cast<const float *>(dy), static_cast<float *>(dx),
      static_cast<float *>(dw), static_cast<float *>(db), T, D, eps);
}

Status CudaBackend::routerGrad(const void *x, const void *w,
                               const float *dlogits, void *dx, void *dw,
                               int64_t T, int64_t D, int64_t E, int32_t dtype) {
  const char *op = "moert_router_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  if (T > INT_MAX || D > INT_MAX || E > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: sizes exceed cuBLAS's int sizes", op);
  if (T == 0 || E == 0) {
    // Empty sums: dw is 0 (and dx, when E == 0).
    MOERT_CUDA(op, cudaMemsetAsync(dw, 0, sizeof(float) * E * D, stream_));
    MOERT_CUDA(op, cudaMemsetAsync(dx, 0, sizeof(float) * T * D, stream_));
    return Status::ok();
  }
  const int t = int(T), d = int(D), e = int(E);
  const float *xf = static_cast<const float *>(x);
  const float *wf = static_cast<const float *>(w);
  // dw [E,D] = dlogits^T . x ;  dx [T,D] = dlogits . w.
  MOERT_TRY(gemm(
      op,
      {dlogits, xf, static_cast<float *>(dw), e, d, t, e, d, d, true, false},
      0.f));
  return gemm(
      op,
      {dlogits, wf, static_cast<float *>(dx), t, d, e, e, d, d, false, false},
      0.f);
}

Status CudaBackend::topkGrad(const float *logits, const int32_t *indices,
                             const float *dweights, const float *dscores,
                             float *dlogits, int64_t T, int64_t E, int64_t k,
                             int32_t scoreFn, int32_t renormalize,
                             float scaling) {
  MOERT_TRY(enter("moert_topk_grad"));
  return cuda::launchTopkGrad(env(), logits, indices, dweights, dscores,
                              dlogits, T, E, k, scoreFn, renormalize, scaling);
}

Status CudaBackend::dispatchGrad(const void *dout, const int32_t *positions,
                                 void *dx, int64_t T, int64_t k, int64_t D,
                                 int64_t outRows, int32_t dtype) {
  const char *op = "moert_dispatch_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  return cuda::launchDispatchGrad(env(), static_cast<const float *>(dout),
                                  positions, static_cast<float *>(dx), T, k, D,
                                  outRows);
}

Status CudaBackend::combineGrad(const void *y, const int32_t *positions,
                                const float *weights, const void *passthrough,
                                const void *dout, void *dy, float *dweights,
                                void *dpassthrough, int64_t T, int64_t k,
                                int64_t D, int64_t yRows, int32_t dtype) {
  const char *op = "moert_combine_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  return cuda::launchCombineGrad(
      env(), static_cast<const float *>(y), positions, weights,
      static_cast<const float *>(passthrough), static_cast<const float *>(dout),
      static_cast<float *>(dy), dweights, static_cast<float *>(dpassthrough), T,
      k, D, yRows);
}

/// The FFN backward over packed rows, expert by expert: `slices` give each
/// expert's rows [off, off + rows) of the packed x / dO / dX (rows > 0).
/// a and u are [live, F] buffers; recompute() fills them with x.W1^T and
/// x.Wu^T, backprop() does everything after: mbar = dO.Wd, the activation
/// backward, the weight gradients (beta 0: each expert's are overwritten)
/// and dX = abar.W1 + ubar.Wu.
struct FfnSlice {
  int64_t expert, off, rows;
};

struct FfnGradArgs {
  const float *x;            // packed rows [live, D]
  const float *dO;           // gradient of the FFN output, packed [live, D]
  float *dX;                 // packed [live, D]
  const float *w1, *wu, *wd; // w1 = gate (gated) or up; wu = up or null
  float *dw1, *dwu, *dwd;
  float *a, *u, *m; // [live, F] work buffers (u null when ungated)
  int64_t live, D, F;
  int32_t activation;
};

Status CudaBackend::ffnRecompute(const char *op, const FfnGradArgs &g,
                                 const std::vector<FfnSlice> &slices) {
  const int D = int(g.D), F = int(g.F);
  std::vector<GemmProblem> ps;
  for (const FfnSlice &s : slices) {
    const int n = int(s.rows);
    const int64_t w = s.expert * g.F * g.D;
    ps.push_back({g.x + s.off * g.D, g.w1 + w, g.a + s.off * g.F, n, F, D, D, D,
                  F, false, true});
    if (g.u)
      ps.push_back({g.x + s.off * g.D, g.wu + w, g.u + s.off * g.F, n, F, D, D,
                    D, F, false, true});
  }
  return gemmBatch(op, ps, 0.f);
}

Status CudaBackend::ffnBackprop(const char *op, const FfnGradArgs &g,
                                const std::vector<FfnSlice> &slices) {
  MOERT_TRY(ffnBackpropRows(op, g, slices));
  return ffnBackpropWeights(op, g, slices);
}

Status CudaBackend::ffnBackpropRows(const char *op, const FfnGradArgs &g,
                                    const std::vector<FfnSlice> &slices) {
  const int D = int(g.D), F = int(g.F);
  // mbar = dO . Wd  ([rows, D] . [D, F]).
  std::vector<GemmProblem> ps;
  for (const FfnSlice &s : slices)
    ps.push_back({g.dO + s.off * g.D, g.wd + s.expert * g.D * g.F,
                  g.m + s.off * g.F, int(s.rows), F, D, D, F, F, false, false});
  MOERT_TRY(gemmBatch(op, ps, 0.f));
  // a <- abar, u <- ubar, m <- act(a) (* u).
  MOERT_TRY(cuda::launchActivationGrad(env(), g.a, g.u, g.m, g.live * g.F,
                                       g.activation, op));
  // dX = abar . W1 (+ ubar . Wu, a second launch accumulating into it).
  ps.clear();
  for (const FfnSlice &s : slices)
    ps.push_back({g.a + s.off * g.F, g.w1 + s.expert * g.F * g.D,
                  g.dX + s.off * g.D, int(s.rows), D, F, F, D, D, false,
                  false});
  MOERT_TRY(gemmBatch(op, ps, 0.f));
  if (!g.u)
    return Status::ok();
  ps.clear();
  for (const FfnSlice &s : slices)
    ps.push_back({g.u + s.off * g.F, g.wu + s.expert * g.F * g.D,
                  g.dX + s.off * g.D, int(s.rows), D, F, F, D, D, false,
                  false});
  return gemmBatch(op, ps, 1.f);
}

Status CudaBackend::ffnBackpropWeights(const char *op, const FfnGradArgs &g,
                                       const std::vector<FfnSlice> &slices) {
  const int D = int(g.D), F = int(g.F);
  // Weight gradients: dWd = dO^T . m, dW1 = abar^T . x, dWu = ubar^T . x.
  std::vector<GemmProblem> ps;
  for (const FfnSlice &s : slices) {
    const int n = int(s.rows);
    const int64_t w = s.expert * g.F * g.D;
    ps.push_back({g.dO + s.off * g.D, g.m + s.off * g.F, g.dwd + w, D, F, n, D,
                  F, F, true, false});
    ps.push_back({g.a + s.off * g.F, g.x + s.off * g.D, g.dw1 + w, F, D, n, F,
                  D, D, true, false});
    if (g.u)
      ps.push_back({g.u + s.off * g.F, g.x + s.off * g.D, g.dwu + w, F, D, n, F,
                    D, D, true, false});
  }
  return gemmBatch(op, ps, 0.f);
}

Status CudaBackend::expertFfnGrad(const void *x, const int32_t *counts,
                                  const void *gate, const void *up,
                                  const void *down, const void *dy,
                                  const void *savedA, const void *savedU,
                                  void *dx, void *dgate, void *dup, void *ddown,
                                  int64_t E, int64_t S, int64_t R,
                                  int64_t totalRows, int64_t D, int64_t F,
                                  int32_t activation, int32_t dtype) {
  return ffnGradPart("moert_expert_ffn_grad", FfnGradPart::Fused, x, counts,
                     gate, up, down, dy, savedA, savedU, dx, dgate, dup, ddown,
                     nullptr, nullptr, nullptr, isGatedActivation(activation),
                     E, S, R, totalRows, D, F, activation, dtype);
}

Status CudaBackend::expertFfnGradData(
    const void *x, const int32_t *counts, const void *gate, const void *up,
    const void *down, const void *dy, const void *savedA, const void *savedU,
    void *dx, void *hidden, void *dpreGate, void *dpreUp, int64_t E, int64_t S,
    int64_t R, int64_t totalRows, int64_t D, int64_t F, int32_t activation,
    int32_t dtype) {
  return ffnGradPart(
      "moert_expert_ffn_grad_data", FfnGradPart::Rows, x, counts, gate, up,
      down, dy, savedA, savedU, dx, nullptr, nullptr, nullptr,
      static_cast<float *>(hidden), static_cast<float *>(dpreGate),
      static_cast<float *>(dpreUp), isGatedActivation(activation), E, S, R,
      totalRows, D, F, activation, dtype);
}

Status CudaBackend::expertFfnGradWeight(const void *x, const int32_t *counts,
                                        const void *dy, const void *hidden,
                                        const void *dpreGate,
                                        const void *dpreUp, void *dgate,
                                        void *dup, void *ddown, int64_t E,
                                        int64_t S, int64_t R, int64_t totalRows,
                                        int64_t D, int64_t F, int32_t dtype) {
  auto in = [](const void *p) {
    return const_cast<float *>(static_cast<const float *>(p));
  };
  return ffnGradPart("moert_expert_ffn_grad_weight", FfnGradPart::Weights, x,
                     counts, nullptr, nullptr, nullptr, dy, nullptr, nullptr,
                     nullptr, dgate, dup, ddown, in(hidden), in(dpreGate),
                     in(dpreUp), dpreGate != nullptr, E, S, R, totalRows, D, F,
                     MOERT_ACT_RELU, dtype);
}

Status CudaBackend::ffnGradPart(
    const char *op, FfnGradPart part, const void *x, const int32_t *counts,
    const void *gate, const void *up, const void *down, const void *dy,
    const void *savedA, const void *savedU, void *dx, void *dgate, void *dup,
    void *ddown, float *hidden, float *dpreGate, float *dpreUp, bool gated,
    int64_t E, int64_t S, int64_t R, int64_t totalRows, int64_t D, int64_t F,
    int32_t activation, int32_t dtype) {
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  if (D > INT_MAX || F > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: D=%lld or F=%lld exceed int32", op,
                 (long long)D, (long long)F);
  const bool doRows = part != FfnGradPart::Weights;
  const bool doWeights = part != FfnGradPart::Rows;
  const int64_t rows = R > 0 ? E * R : totalRows; // rows of x, y, dx
  const int64_t C = R > 0 ? R / S : 0;
  // Rows: the per-row values returned ([rows, F]); Weights: read.
  float *outA = gated ? dpreGate : dpreUp; // abar: at gate (or up) input
  float *outU = gated ? dpreUp : nullptr;  // ubar: at up input (gated)

  // 1. Each expert's live blocks, in segment order: (expert, row, rows).
  std::vector<std::vector<std::pair<int64_t, int64_t>>> perExpert(E);
  if (counts) {
    MOERT_TRY(countsHost_.reserve(sizeof(int32_t) * S * E, op));
    MOERT_CUDA(op, cudaMemcpyAsync(countsHost_.as<int32_t>(), counts,
                                   sizeof(int32_t) * S * E,
                                   cudaMemcpyDeviceToHost, stream_));
    MOERT_CUDA(op, cudaStreamSynchronize(stream_));
    pointersPending_ = false; // the stream is idle
    const int32_t *c = countsHost_.as<int32_t>();
    int64_t packedRow = 0;
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t e = 0; e < E; ++e) {
        const int64_t n = c[s * E + e];
        if (n < 0 || (R > 0 && n > C))
          return error(MOERT_ERR_INVALID,
                       "%s: counts[%lld,%lld]=%lld outside [0, %lld]", op,
                       (long long)s, (long long)e, (long long)n,
                       (long long)(R > 0 ? C : totalRows));
        if (n == 0)
          continue;
        perExpert[e].push_back({R > 0 ? e * R + s * C : packedRow, n});
        packedRow += n;
      }
    }
    if (R == 0 && packedRow > totalRows)
      return error(MOERT_ERR_INVALID,
                   "%s: counts sum to %lld rows, more than total_rows=%lld", op,
                   (long long)packedRow, (long long)totalRows);
  } else {
    for (int64_t e = 0; e < E && R > 0; ++e)
      perExpert[e].push_back({e * R, R});
  }

  // 2. Expert-major packing: expert e's rows, all its segments, in one run.
  std::vector<cuda::RowBlock> blocks;
  std::vector<FfnSlice> slices;
  int64_t live = 0;
  bool identity = true; // the live rows are already [0, live) in this order
  for (int64_t e = 0; e < E; ++e) {
    const int64_t start = live;
    for (const auto &[row, n] : perExpert[e]) {
      blocks.push_back({row, live, n});
      identity = identity && row == live;
      live += n;
    }
    if (live > start)
      slices.push_back({e, start, live - start});
  }
  if (live > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: %lld live rows exceed int32", op,
                 (long long)live);

  // 3. Weight gradients of experts without rows are exactly 0; so are the
  // dead rows of dx (and of the per-row values).
  if (doWeights) {
    MOERT_CUDA(op,
               cudaMemsetAsync(ddown, 0, sizeof(float) * E * D * F, stream_));
    MOERT_CUDA(op, cudaMemsetAsync(dup, 0, sizeof(float) * E * F * D, stream_));
    if (gated)
      MOERT_CUDA(op,
                 cudaMemsetAsync(dgate, 0, sizeof(float) * E * F * D, stream_));
  }
  if (live == 0) {
    if (doRows)
      MOERT_CUDA(op, cudaMemsetAsync(dx, 0, sizeof(float) * rows * D, stream_));
    if (part == FfnGradPart::Rows)
      for (float *out : {hidden, outA, outU})
        if (out)
          MOERT_CUDA(
              op, cudaMemsetAsync(out, 0, sizeof(float) * rows * F, stream_));
    return Status::ok();
  }

  // 4. Packed x, dy and dx (the layout itself when it is already packed).
  Scratch xs(*allocator_), dys(*allocator_), dxs(*allocator_),
      table(*allocator_);
  const float *xp = static_cast<const float *>(x);
  const float *dyp = static_cast<const float *>(dy);
  float *dxp = static_cast<float *>(dx);
  const auto *tb = static_cast<const cuda::RowBlock *>(nullptr);
  const int64_t nb = static_cast<int64_t>(blocks.size());
  if (!identity) {
    MOERT_TRY(table.allocate(
        static_cast<int64_t>(sizeof(cuda::RowBlock) * blocks.size()), op));
    // From pageable memory: returns once `blocks` has been staged.
    MOERT_CUDA(op, cudaMemcpyAsync(table.get(), blocks.data(),
                                   sizeof(cuda::RowBlock) * blocks.size(),
                                   cudaMemcpyHostToDevice, stream_));
    tb = table.as<const cuda::RowBlock>();
    MOERT_TRY(xs.allocate(sizeof(float) * live * D, op));
    MOERT_TRY(dys.allocate(sizeof(float) * live * D, op));
    MOERT_TRY(cuda::launchMoveRows(env(), tb, nb, const_cast<float *>(xp),
                                   xs.as<float>(), live, D, true, op));
    MOERT_TRY(cuda::launchMoveRows(env(), tb, nb, const_cast<float *>(dyp),
                                   dys.as<float>(), live, D, true, op));
    xp = xs.as<float>();
    dyp = dys.as<float>();
    if (doRows) {
      MOERT_TRY(dxs.allocate(sizeof(float) * live * D, op));
      dxp = dxs.as<float>();
    }
  }

  // 5. The FFN backward on the packed rows. The per-row values of the split
  // kernels are the layout's own rows when it is packed already.
  Scratch aBuf(*allocator_), uBuf(*allocator_), mBuf(*allocator_);
  FfnGradArgs g;
  bool direct = part != FfnGradPart::Fused && identity;
  if (direct) {
    g.a = outA;
    g.u = outU;
    g.m = hidden;
  } else {
    MOERT_TRY(aBuf.allocate(sizeof(float) * live * F, op));
    MOERT_TRY(mBuf.allocate(sizeof(float) * live * F, op));
    if (gated)
      MOERT_TRY(uBuf.allocate(sizeof(float) * live * F, op));
    g.a = aBuf.as<float>();
    g.u = gated ? uBuf.as<float>() : nullptr;
    g.m = mBuf.as<float>();
  }
  g.x = xp;
  g.dO = dyp;
  g.dX = dxp;
  g.w1 = static_cast<const float *>(gated ? gate : up);
  g.wu = gated ? static_cast<const float *>(up) : nullptr;
  g.wd = static_cast<const float *>(down);
  g.dw1 = static_cast<float *>(gated ? dgate : dup);
  g.dwu = gated ? static_cast<float *>(dup) : nullptr;
  g.dwd = static_cast<float *>(ddown);
  g.live = live;
  g.D = D;
  g.F = F;
  g.activation = activation;
  if (part == FfnGradPart::Weights) {
    if (!direct) { // the rows' values, packed like x
      MOERT_TRY(
          cuda::launchMoveRows(env(), tb, nb, outA, g.a, live, F, true, op));
      MOERT_TRY(
          cuda::launchMoveRows(env(), tb, nb, hidden, g.m, live, F, true, op));
      if (gated)
        MOERT_TRY(
            cuda::launchMoveRows(env(), tb, nb, outU, g.u, live, F, true, op));
    }
    return ffnBackpropWeights(op, g, slices);
  }
  if (savedU) { // a (x.gate^T, or x.up^T ungated) and u as the forward kept
    auto *sa = const_cast<float *>(
        static_cast<const float *>(gated ? savedA : savedU));
    auto *su = const_cast<float *>(static_cast<const float *>(savedU));
    if (identity) {
      MOERT_CUDA(op, cudaMemcpyAsync(g.a, sa, sizeof(float) * live * F,
                                     cudaMemcpyDeviceToDevice, stream_));
      if (gated)
        MOERT_CUDA(op, cudaMemcpyAsync(g.u, su, sizeof(float) * live * F,
                                       cudaMemcpyDeviceToDevice, stream_));
    } else {
      MOERT_TRY(
          cuda::launchMoveRows(env(), tb, nb, sa, g.a, live, F, true, op));
      if (gated)
        MOERT_TRY(
            cuda::launchMoveRows(env(), tb, nb, su, g.u, live, F, true, op));
    }
  } else {
    MOERT_TRY(ffnRecompute(op, g, slices));
  }
  MOERT_TRY(part == FfnGradPart::Fused ? ffnBackprop(op, g, slices)
                                       : ffnBackpropRows(op, g, slices));

  // 6. dx (and the per-row values): the live rows back in place, every
  // other row 0.
  if (identity) {
    if (rows > live) {
      MOERT_CUDA(op,
                 cudaMemsetAsync(static_cast<float *>(dx) + live * D, 0,
                                 sizeof(float) * (rows - live) * D, stream_));
      if (part == FfnGradPart::Rows)
        for (float *out : {hidden, outA, outU})
          if (out)
            MOERT_CUDA(op, cudaMemsetAsync(out + live * F, 0,
                                           sizeof(float) * (rows - live) * F,
                                           stream_));
    }
    return Status::ok();
  }
  MOERT_CUDA(op, cudaMemsetAsync(dx, 0, sizeof(float) * rows * D, stream_));
  MOERT_TRY(cuda::launchMoveRows(env(), tb, nb, static_cast<float *>(dx),
                                 dxs.as<float>(), live, D, false, op));
  if (part != FfnGradPart::Rows)
    return Status::ok();
  for (auto [out, packed] :
       {std::pair{hidden, g.m}, {outA, g.a}, {outU, g.u}}) {
    if (!out)
      continue;
    MOERT_CUDA(op, cudaMemsetAsync(out, 0, sizeof(float) * rows * F, stream_));
    MOERT_TRY(
        cuda::launchMoveRows(env(), tb, nb, out, packed, live, F, false, op));
  }
  return Status::ok();
}

Status CudaBackend::mlpGrad(const void *x, const void *gate, const void *up,
                            const void *down, const void *sigmoidGate,
                            const void *dy, void *dx, void *dgate, void *dup,
                            void *ddown, void *dsigmoidGate, int64_t T,
                            int64_t D, int64_t F, int32_t activation,
                            int32_t dtype) {
  const char *op = "moert_mlp_grad";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  if (T > INT_MAX || D > INT_MAX || F > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: sizes exceed cuBLAS's int sizes", op);
  const bool gated = isGatedActivation(activation);
  if (T == 0) { // every gradient is an empty sum
    MOERT_CUDA(op, cudaMemsetAsync(ddown, 0, sizeof(float) * D * F, stream_));
    MOERT_CUDA(op, cudaMemsetAsync(dup, 0, sizeof(float) * F * D, stream_));
    if (gated)
      MOERT_CUDA(op, cudaMemsetAsync(dgate, 0, sizeof(float) * F * D, stream_));
    if (sigmoidGate)
      MOERT_CUDA(op,
                 cudaMemsetAsync(dsigmoidGate, 0, sizeof(float) * D, stream_));
    return Status::ok();
  }
  Scratch aBuf(*allocator_), uBuf(*allocator_), mBuf(*allocator_),
      fBuf(*allocator_), pBuf(*allocator_);
  MOERT_TRY(aBuf.allocate(sizeof(float) * T * F, op));
  MOERT_TRY(mBuf.allocate(sizeof(float) * T * F, op));
  if (gated)
    MOERT_TRY(uBuf.allocate(sizeof(float) * T * F, op));
  FfnGradArgs g;
  g.x = static_cast<const float *>(x);
  g.dO = static_cast<const float *>(dy);
  g.dX = static_cast<float *>(dx);
  g.w1 = static_cast<const float *>(gated ? gate : up);
  g.wu = gated ? static_cast<const float *>(up) : nullptr;
  g.wd = static_cast<const float *>(down);
  g.dw1 = static_cast<float *>(gated ? dgate : dup);
  g.dwu = gated ? static_cast<float *>(dup) : nullptr;
  g.dwd = static_cast<float *>(ddown);
  g.a = aBuf.as<float>();
  g.u = gated ? uBuf.as<float>() : nullptr;
  g.m = mBuf.as<float>();
  g.live = T;
  g.D = D;
  g.F = F;
  g.activation = activation;
  const std::vector<FfnSlice> all = {{0, 0, T}};
  MOERT_TRY(ffnRecompute(op, g, all));
  const float *sg = static_cast<const float *>(sigmoidGate);
  if (sg) {
    // o = F(x) * sigmoid(x.g): recompute F(x) = act(a) (* u) . Wd^T, then
    // F's output gradient dy*s replaces dy, and pbar [T] is kept for dx
    // and dg.
    MOERT_TRY(fBuf.allocate(sizeof(float) * T * D, op));
    MOERT_TRY(pBuf.allocate(sizeof(float) * T, op));
    MOERT_CUDA(op, cudaMemcpyAsync(g.m, g.a, sizeof(float) * T * F,
                                   cudaMemcpyDeviceToDevice, stream_));
    MOERT_TRY(cuda::launchActivation(env(), g.m, g.u, T * F, activation,
                                     MOERT_F32, op));
    MOERT_TRY(gemm(op,
                   {g.m, g.wd, fBuf.as<float>(), int(T), int(D), int(F), int(F),
                    int(F), int(D), false, true},
                   0.f));
    MOERT_TRY(cuda::launchSigmoidGateGrad(
        env(), g.x, sg, static_cast<const float *>(dy), fBuf.as<float>(),
        pBuf.as<float>(), T, D));
    g.dO = fBuf.as<float>();
  }
  MOERT_TRY(ffnBackprop(op, g, all));
  if (!sg)
    return Status::ok();
  // dg [1,D] = pbar^T . x ;  dx += pbar g.
  MOERT_TRY(gemm(op,
                 {pBuf.as<float>(), g.x, static_cast<float *>(dsigmoidGate), 1,
                  int(D), int(T), int(T), int(D), int(D), false, false},
                 0.f));
  return cuda::launchAddOuter(env(), static_cast<float *>(dx), pBuf.as<float>(),
                              sg, T, D, op);
}

Status CudaBackend::expertLoadGrad(const float *dstats, float *dscores,
                                   int64_t T, int64_t E) {
  MOERT_TRY(enter("moert_expert_load_grad"));
  return cuda::launchExpertLoadGrad(env(), dstats, dscores, T, E);
}

Status CudaBackend::loadBalanceLossGrad(const float *stats, const float *dloss,
                                        float *dstats, int64_t E,
                                        int64_t tokens, int64_t k,
                                        float coeff) {
  MOERT_TRY(enter("moert_load_balance_loss_grad"));
  return cuda::launchLoadBalanceLossGrad(env(), stats, dloss, dstats, E, tokens,
                                         k, coeff);
}

Status CudaBackend::zLossGrad(const float *logits, const float *dloss,
                              float *dlogits, int64_t T, int64_t E,
                              int64_t totalTokens, float coeff) {
  MOERT_TRY(enter("moert_z_loss_grad"));
  return cuda::launchZLossGrad(env(), logits, dloss, dlogits, T, E, totalTokens,
                               coeff);
}

Status CudaBackend::mseLoss(const void *y, const void *target, float *loss,
                            void *dy, int64_t n, int64_t totalN,
                            int32_t dtype) {
  const char *op = "moert_mse_loss";
  MOERT_TRY(enter(op));
  MOERT_TRY(requireF32(dtype, op));
  return cuda::launchMseLoss(env(), static_cast<const float *>(y),
                             static_cast<const float *>(target), loss,
                             static_cast<float *>(dy), n, totalN);
}

// The optimizer reads its 8 hyperparameters on the host (one 32-byte copy
// and a stream synchronization per call): their values live in device
// memory, so the context cannot check them and the backend does (as the CPU
// backend, with its messages), and the per-step scalars are computed by the
// host's libm exactly as the CPU backend computes them (the device's pow is
// not correctly rounded).

enum HParam {
  kLr,
  kBeta1,
  kBeta2,
  kEps,
  kWeightDecay,
  kMomentum,
  kStep,
  kRate
};

static Status checkHParam(const char *fn, const float *h, HParam i,
                          const char *name, bool ok, const char *rule) {
  if (std::isfinite(h[i]) && ok)
    return Status::ok();
  return error(MOERT_ERR_INVALID,
               "%s: hparams[%d] (%s) = %g must be a finite number %s", fn,
               int(i), name, double(h[i]), rule);
}

static Status checkStep(const char *fn, const float *h) {
  const float n = h[kStep];
  return checkHParam(fn, h, kStep, "step", n >= 1 && n == std::floor(n),
                     "that is a whole number >= 1");
}

Status CudaBackend::adamw(const float *w, const float *g, const float *m,
                          const float *v, const float *hparams, float *wOut,
                          float *mOut, float *vOut, int64_t n) {
  const char *op = "moert_adamw";
  MOERT_TRY(enter(op));
  float h[8];
  MOERT_TRY(readHparams(hparams, op, h));
  MOERT_TRY(checkHParam(op, h, kLr, "lr", h[kLr] > 0, "> 0"));
  MOERT_TRY(checkHParam(op, h, kBeta1, "beta1", h[kBeta1] >= 0 && h[kBeta1] < 1,
                        "in [0, 1)"));
  MOERT_TRY(checkHParam(op, h, kBeta2, "beta2", h[kBeta2] >= 0 && h[kBeta2] < 1,
                        "in [0, 1)"));
  MOERT_TRY(checkHParam(op, h, kEps, "eps", h[kEps] >= 0, ">= 0"));
  MOERT_TRY(checkHParam(op, h, kWeightDecay, "weight_decay",
                        h[kWeightDecay] >= 0, ">= 0"));
  MOERT_TRY(checkStep(op, h));
  const double lr = h[kLr], b1 = h[kBeta1], b2 = h[kBeta2], eps = h[kEps],
               wd = h[kWeightDecay], step = h[kStep];
  cuda::AdamwScalars s;
  s.decay = 1.0 - lr * wd;
  s.beta1 = b1;
  s.oneMinusBeta1 = 1.0 - b1;
  s.beta2 = b2;
  s.oneMinusBeta2 = 1.0 - b2;
  s.negStepSize = -(lr / (1.0 - std::pow(b1, step)));
  s.sqrtBc2 = std::sqrt(1.0 - std::pow(b2, step));
  s.eps = eps;
  return cuda::launchAdamw(env(), w, g, m, v, wOut, mOut, vOut, n, s);
}

Status CudaBackend::sgd(const float *w, const float *g, const float *buf,
                        const float *hparams, float *wOut, float *bufOut,
                        int64_t n) {
  const char *op = "moert_sgd";
  MOERT_TRY(enter(op));
  float h[8];
  MOERT_TRY(readHparams(hparams, op, h));
  MOERT_TRY(checkHParam(op, h, kLr, "lr", h[kLr] > 0, "> 0"));
  MOERT_TRY(checkHParam(op, h, kWeightDecay, "weight_decay",
                        h[kWeightDecay] >= 0, ">= 0"));
  MOERT_TRY(
      checkHParam(op, h, kMomentum, "momentum", h[kMomentum] >= 0, ">= 0"));
  MOERT_TRY(checkStep(op, h));
  cuda::SgdScalars s;
  s.negLr = -double(h[kLr]);
  s.wd = h[kWeightDecay];
  s.momentum = h[kMomentum];
  s.first = h[kStep] == 1.0f; // the buffer starts as d
  return cuda::launchSgd(env(), w, g, buf, wOut, bufOut, n, s);
}

Status CudaBackend::biasUpdate(const float *bias, const float *load,
                               const float *hparams, float *biasOut, int64_t E,
                               int64_t tokens, int64_t k) {
  const char *op = "moert_bias_update";
  MOERT_TRY(enter(op));
  float h[8];
  MOERT_TRY(readHparams(hparams, op, h));
  MOERT_TRY(checkHParam(op, h, kRate, "bias_update_rate", true, "of any sign"));
  const double meanLoad = double(tokens * k) / double(E);
  return cuda::launchBiasUpdate(env(), bias, load, biasOut, E, meanLoad,
                                double(h[kRate]));
}

} // namespace

void *cudaBackendStream(Backend &backend) {
  if (backend.kind() != MOERT_DEVICE_CUDA)
    return nullptr;
  return static_cast<CudaBackend &>(backend).stream();
}

Status createCudaBackend(const BackendOptions &opts,
                         std::unique_ptr<Backend> &out) {
  const char *op = "createCudaBackend";
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: no usable CUDA device: cudaGetDeviceCount failed: %s "
                 "(%s)",
                 op, cudaGetErrorString(err), cudaGetErrorName(err));
  }
  if (count == 0)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: cudaGetDeviceCount reports no CUDA device", op);
  int device = opts.deviceIndex >= 0 ? opts.deviceIndex
                                     : (opts.localRank % count + count) % count;
  if (device >= count)
    return error(MOERT_ERR_INVALID,
                 "%s: device_index %d, but only %d CUDA device(s) are visible",
                 op, device, count);
  auto backend = std::make_unique<CudaBackend>(device);
  MOERT_TRY(backend->init());
  out = std::move(backend);
  return Status::ok();
}

} // namespace moert
