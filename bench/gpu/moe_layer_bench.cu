//===- moe_layer_bench.cu - A whole MoE layer through the C ABI on CUDA ---===//
//
// 1. Correctness: small Mixtral- and DeepSeek-V3-shaped layers (dropless and
//    with capacity) run on a CUDA context and on a CPU context (the
//    reference, f32 on the same rounded inputs); outputs are poisoned (NaN)
//    before each run. f32: every element within rtol 1e-4; bf16: relative
//    norm error < 1e-2. Tokens whose top-k differs (a near tie decided
//    differently by f32 rounding) are counted and left out of the element
//    check; more than 1% of them fails the check.
// 2. Speed (bf16): Mixtral-8x7B-shaped layer (D=4096, F=14336, E=8, top-2)
//    at T=4096 and T=16384, DeepSeek-V3-shaped layer (D=7168, F=2048,
//    E=256, top-8, sigmoid + bias, 8 groups keep 4, one shared expert) at
//    T=4096. Per-phase CUDA-event times (median of many runs) for each
//    expert-GEMM mode (MOERT_CUDA_GEMM auto / grouped / loop), the expert
//    GEMM rate against a dense bf16 cublasGemmEx of the same FLOPs, and the
//    effective bandwidth of routing + permutation + combine.
// 3. Cross-check data for torch_ref.py: the first tokens' outputs and top-k
//    indices of each large layer (weights come from a hash of the element
//    index that torch_ref.py reproduces bit for bit).
//
// Usage: moe-gpu-bench [--json FILE] [--dump DIR] [--runs N] [--quick]
//                      [--only NAME]   (NAME: mixtral_t4096 | mixtral_t16384
//                                      | dsv3_t4096; checks always run)
// Exit status: 0 all checks passed, 1 a check failed or an error, 2 no GPU.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

//===--- Checks: every failure names the call and exits
//----------------------===//

[[noreturn]] void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "moe-gpu-bench: error: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
  std::exit(1);
}

#define CUDA_CHECK(call)                                                       \
  do {                                                                         \
    cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess)                                                     \
      die("%s:%d: %s failed: %s (%s)", __FILE__, __LINE__, #call,              \
          cudaGetErrorString(e_), cudaGetErrorName(e_));                       \
  } while (0)

#define CUBLAS_CHECK(call)                                                     \
  do {                                                                         \
    cublasStatus_t s_ = (call);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                           \
      die("%s:%d: %s failed: cublas status %d", __FILE__, __LINE__, #call,     \
          int(s_));                                                            \
  } while (0)

#define MOERT_CHECK(call)                                                      \
  do {                                                                         \
    moert_status s_ = (call);                                                  \
    if (s_ != MOERT_OK)                                                        \
      die("%s:%d: %s failed (%d): %s", __FILE__, __LINE__, #call, int(s_),     \
          moert_last_error());                                                 \
  } while (0)

void checkCtx(moert_ctx *ctx, const char *where) {
  if (moert_ctx_status(ctx) != MOERT_OK)
    die("%s: context error %d: %s", where, int(moert_ctx_status(ctx)),
        moert_ctx_error(ctx));
}

//===--- Deterministic weights (mirrored in torch_ref.py)
//---------------------===//

__host__ __device__ inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

/// Element i of tensor `seed`: uniform in [-scale, scale) (f32 math).
__host__ __device__ inline float hashValue(uint32_t seed, uint64_t i,
                                           float scale) {
  uint32_t h = mix32(static_cast<uint32_t>(i) + mix32(seed));
  float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
  return (2.0f * u - 1.0f) * scale;
}

template <typename T> __device__ inline T fromF(float v);
template <> __device__ inline float fromF<float>(float v) { return v; }
template <> __device__ inline __nv_bfloat16 fromF<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void hashInitKernel(T *dst, uint64_t n, uint32_t seed, float scale) {
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += uint64_t(gridDim.x) * blockDim.x)
    dst[i] = fromF<T>(hashValue(seed, i, scale));
}

uint16_t toBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float fromBf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

//===--- Layers
//-------------------------------------------------------------------===//

struct LayerCfg {
  std::string name;
  int64_t T, D, F, E, k;
  int32_t scoreFn;
  int32_t renormalize;
  float scaling;
  int64_t groups, kept;
  int32_t groupScore;
  bool bias;
  int64_t sharedF;       // 0: no shared expert
  double capacityFactor; // 0: dropless
  int64_t capacity() const {
    return capacityFactor > 0
               ? int64_t(std::ceil(capacityFactor * double(T * k) / double(E)))
               : 0;
  }
  int64_t rows() const { return capacityFactor > 0 ? E * capacity() : T * k; }
};

enum Seed : uint32_t {
  kSeedX = 1,
  kSeedRouter,
  kSeedGate,
  kSeedUp,
  kSeedDown,
  kSeedBias,
  kSeedSharedGate,
  kSeedSharedUp,
  kSeedSharedDown
};

struct Tensor {
  const char *name;
  uint32_t seed;
  uint64_t n;
  float scale;
  int32_t dtype; // storage dtype of the layer, or MOERT_F32 for routing
};

std::vector<Tensor> tensorsOf(const LayerCfg &c, int32_t dt) {
  const float sd = 1.0f / std::sqrt(float(c.D));
  const float sf = 1.0f / std::sqrt(float(c.F));
  std::vector<Tensor> t = {
      {"x", kSeedX, uint64_t(c.T * c.D), 1.0f, dt},
      {"router", kSeedRouter, uint64_t(c.E * c.D), sd, dt},
      {"gate", kSeedGate, uint64_t(c.E * c.F * c.D), sd, dt},
      {"up", kSeedUp, uint64_t(c.E * c.F * c.D), sd, dt},
      {"down", kSeedDown, uint64_t(c.E * c.D * c.F), sf, dt},
  };
  if (c.bias)
    t.push_back({"bias", kSeedBias, uint64_t(c.E), 0.1f, MOERT_F32});
  if (c.sharedF) {
    const float ss = 1.0f / std::sqrt(float(c.sharedF));
    t.push_back(
        {"shared_gate", kSeedSharedGate, uint64_t(c.sharedF * c.D), sd, dt});
    t.push_back(
        {"shared_up", kSeedSharedUp, uint64_t(c.sharedF * c.D), sd, dt});
    t.push_back(
        {"shared_down", kSeedSharedDown, uint64_t(c.D * c.sharedF), ss, dt});
  }
  return t;
}

size_t esize(int32_t dt) { return dt == MOERT_F32 ? 4 : 2; }

/// One layer's buffers on one context.
struct Layer {
  moert_ctx *ctx = nullptr;
  LayerCfg c;
  int32_t dt; // storage dtype
  void *x = nullptr, *wr = nullptr, *wg = nullptr, *wu = nullptr, *wd = nullptr,
       *bias = nullptr, *sg = nullptr, *su = nullptr, *sd = nullptr;
  float *logits = nullptr, *scores = nullptr, *weights = nullptr;
  int32_t *idx = nullptr, *pos = nullptr, *counts = nullptr;
  void *xe = nullptr, *ye = nullptr, *out = nullptr, *shared = nullptr;
  std::vector<void *> owned;

  void *alloc(int64_t bytes) {
    void *p = nullptr;
    MOERT_CHECK(moert_alloc(ctx, std::max<int64_t>(bytes, 16), &p));
    owned.push_back(p);
    return p;
  }
  void **slot(const std::string &n) {
    if (n == "x")
      return &x;
    if (n == "router")
      return &wr;
    if (n == "gate")
      return &wg;
    if (n == "up")
      return &wu;
    if (n == "down")
      return &wd;
    if (n == "bias")
      return &bias;
    if (n == "shared_gate")
      return &sg;
    if (n == "shared_up")
      return &su;
    return &sd;
  }
  void allocate() {
    for (const Tensor &t : tensorsOf(c, dt))
      *slot(t.name) = alloc(int64_t(t.n * esize(t.dtype)));
    const int64_t T = c.T, E = c.E, k = c.k, D = c.D;
    logits = static_cast<float *>(alloc(T * E * 4));
    scores = static_cast<float *>(alloc(T * E * 4));
    weights = static_cast<float *>(alloc(T * k * 4));
    idx = static_cast<int32_t *>(alloc(T * k * 4));
    pos = static_cast<int32_t *>(alloc(T * k * 4));
    counts = static_cast<int32_t *>(alloc(E * 4));
    xe = alloc(c.rows() * D * int64_t(esize(dt)));
    ye = alloc(c.rows() * D * int64_t(esize(dt)));
    out = alloc(T * D * int64_t(esize(dt)));
    if (c.sharedF)
      shared = alloc(T * D * int64_t(esize(dt)));
  }
  void release() {
    for (void *p : owned)
      moert_free(ctx, p);
    owned.clear();
  }

  /// One forward pass; `mark(i)` is called before phase i and at the end.
  template <typename Mark> void run(Mark &&mark) {
    const int64_t T = c.T, D = c.D, E = c.E, k = c.k;
    const int64_t C = c.capacity(), rows = c.rows();
    mark(0);
    moert_router(ctx, x, wr, logits, T, D, E, dt);
    mark(1);
    moert_topk(ctx, logits, static_cast<const float *>(bias), weights, idx,
               scores, T, E, k, c.scoreFn, c.renormalize, c.scaling, c.groups,
               c.kept, c.groupScore);
    mark(2);
    moert_assign(ctx, idx, pos, counts, T, k, E, C, 1);
    mark(3);
    moert_dispatch(ctx, x, pos, xe, T, k, D, rows, dt);
    mark(4);
    moert_expert_ffn(ctx, xe, counts, wg, wu, wd, ye, E, 1, C, rows, D, c.F,
                     MOERT_ACT_SWIGLU, dt);
    mark(5);
    moert_combine(ctx, ye, pos, weights, nullptr, out, T, k, D, dt);
    mark(6);
    if (c.sharedF) {
      moert_mlp(ctx, x, sg, su, sd, nullptr, shared, T, D, c.sharedF,
                MOERT_ACT_SWIGLU, dt);
      moert_add(ctx, out, shared, out, T * D, dt);
    }
    mark(7);
  }
  void run() {
    run([](int) {});
  }
};

const char *kPhases[] = {"router",     "topk",    "assign",       "dispatch",
                         "expert_ffn", "combine", "shared_expert"};
constexpr int kNumPhases = 7;

moert_ctx *makeCtx(int32_t device, const char *gemmMode) {
  if (gemmMode)
    setenv("MOERT_CUDA_GEMM", gemmMode, 1);
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = device;
  o.device_index = -1;
  moert_ctx *ctx = nullptr;
  moert_status s = moert_ctx_create(&o, &ctx);
  unsetenv("MOERT_CUDA_GEMM");
  if (s != MOERT_OK)
    die("moert_ctx_create(%s) failed (%d): %s",
        device == MOERT_DEVICE_CUDA ? "cuda" : "cpu", int(s),
        moert_last_error());
  return ctx;
}

/// Host values of every tensor (rounded to the storage dtype).
std::vector<float> hostValues(const Tensor &t) {
  std::vector<float> v(t.n);
  for (uint64_t i = 0; i < t.n; ++i) {
    float f = hashValue(t.seed, i, t.scale);
    v[i] = t.dtype == MOERT_BF16 ? fromBf16(toBf16(f)) : f;
  }
  return v;
}

void uploadHost(Layer &L, const Tensor &t, const std::vector<float> &v,
                int32_t dt) {
  if (dt == MOERT_F32) {
    MOERT_CHECK(moert_copy_to_device(L.ctx, *L.slot(t.name), v.data(),
                                     int64_t(v.size() * 4)));
    return;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    h[i] = toBf16(v[i]);
  MOERT_CHECK(moert_copy_to_device(L.ctx, *L.slot(t.name), h.data(),
                                   int64_t(h.size() * 2)));
}

void poison(Layer &L, void *p, int64_t bytes) {
  std::vector<uint8_t> ff(size_t(bytes), 0xff); // NaN in f32 and bf16
  MOERT_CHECK(moert_copy_to_device(L.ctx, p, ff.data(), bytes));
}

std::vector<float> download(Layer &L, const void *p, int64_t n, int32_t dt) {
  std::vector<float> out(static_cast<size_t>(n));
  if (dt == MOERT_F32) {
    MOERT_CHECK(moert_copy_to_host(L.ctx, out.data(), p, n * 4));
  } else {
    std::vector<uint16_t> h(static_cast<size_t>(n));
    MOERT_CHECK(moert_copy_to_host(L.ctx, h.data(), p, n * 2));
    for (int64_t i = 0; i < n; ++i)
      out[i] = fromBf16(h[i]);
  }
  return out;
}

//===--- JSON output
//-----------------------------------------------------------===//

std::string jsonOut;
void emit(const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  jsonOut += buf;
}

//===--- 1. Correctness against the CPU context
//----------------------------------===//

struct CheckResult {
  double metric = 0; // max scaled error (f32) or relative norm error (bf16)
  int64_t routeMismatch = 0;
  bool pass = false;
};

CheckResult checkLayer(const LayerCfg &c, int32_t dt) {
  Layer cpu, gpu;
  cpu.ctx = makeCtx(MOERT_DEVICE_CPU, nullptr);
  gpu.ctx = makeCtx(MOERT_DEVICE_CUDA, nullptr);
  cpu.c = gpu.c = c;
  cpu.dt = MOERT_F32;
  gpu.dt = dt;
  cpu.allocate();
  gpu.allocate();
  for (const Tensor &t : tensorsOf(c, dt)) {
    std::vector<float> v = hostValues(t);
    uploadHost(cpu, t, v, MOERT_F32);
    uploadHost(gpu, t, v, t.dtype);
  }
  for (Layer *L : {&cpu, &gpu}) {
    const int64_t es = int64_t(esize(L->dt));
    poison(*L, L->out, c.T * c.D * es);
    poison(*L, L->xe, c.rows() * c.D * es);
    poison(*L, L->ye, c.rows() * c.D * es);
    poison(*L, L->weights, c.T * c.k * 4);
    poison(*L, L->idx, c.T * c.k * 4);
    if (c.sharedF)
      poison(*L, L->shared, c.T * c.D * es);
    L->run();
    MOERT_CHECK(moert_synchronize(L->ctx));
    checkCtx(L->ctx, L == &cpu ? "cpu layer" : "cuda layer");
  }
  std::vector<float> ref = download(cpu, cpu.out, c.T * c.D, MOERT_F32);
  std::vector<float> got = download(gpu, gpu.out, c.T * c.D, dt);
  std::vector<int32_t> ri(c.T * c.k), gi(c.T * c.k);
  MOERT_CHECK(moert_copy_to_host(cpu.ctx, ri.data(), cpu.idx, c.T * c.k * 4));
  MOERT_CHECK(moert_copy_to_host(gpu.ctx, gi.data(), gpu.idx, c.T * c.k * 4));

  CheckResult r;
  double maxAbs = 0, num = 0, den = 0, worst = 0;
  bool finite = true;
  std::vector<bool> same(c.T, true);
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t j = 0; j < c.k; ++j)
      if (ri[t * c.k + j] != gi[t * c.k + j])
        same[t] = false;
  for (int64_t t = 0; t < c.T; ++t) {
    if (!same[t]) {
      ++r.routeMismatch;
      continue;
    }
    for (int64_t d = 0; d < c.D; ++d)
      maxAbs = std::max(maxAbs, std::fabs(double(ref[t * c.D + d])));
  }
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t d = 0; d < c.D; ++d) {
      const double g = got[t * c.D + d], e = ref[t * c.D + d];
      if (!std::isfinite(g))
        finite = false;
      if (!same[t])
        continue;
      num += (g - e) * (g - e);
      den += e * e;
      // scaled error: |g - e| / (rtol |e| + atol), pass when <= 1
      worst = std::max(worst, std::fabs(g - e) / (1e-4 * std::fabs(e) +
                                                  1e-5 * maxAbs + 1e-30));
    }
  }
  const bool routingOk = r.routeMismatch * 100 <= c.T;
  if (dt == MOERT_F32) {
    r.metric = worst;
    r.pass = finite && routingOk && worst <= 1.0;
  } else {
    r.metric = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    r.pass = finite && routingOk && r.metric < 1e-2;
  }
  std::printf("check %-22s %-4s %s: %s %.3g, %lld of %lld tokens routed "
              "differently%s\n",
              c.name.c_str(), dt == MOERT_F32 ? "f32" : "bf16",
              r.pass ? "PASS" : "FAIL",
              dt == MOERT_F32 ? "max scaled error (<= 1 passes)"
                              : "relative norm error",
              r.metric, (long long)r.routeMismatch, (long long)c.T,
              finite ? "" : ", NON-FINITE OUTPUT");
  cpu.release();
  gpu.release();
  moert_ctx_destroy(cpu.ctx);
  moert_ctx_destroy(gpu.ctx);
  return r;
}

//===--- 2. Timing
//------------------------------------------------------------------===//

double median(std::vector<double> v) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void deviceInit(Layer &L) {
  for (const Tensor &t : tensorsOf(L.c, L.dt)) {
    void *p = *L.slot(t.name);
    const unsigned blocks = 132 * 8;
    if (t.dtype == MOERT_F32)
      hashInitKernel<float>
          <<<blocks, 256>>>(static_cast<float *>(p), t.n, t.seed, t.scale);
    else
      hashInitKernel<__nv_bfloat16><<<blocks, 256>>>(
          static_cast<__nv_bfloat16 *>(p), t.n, t.seed, t.scale);
    CUDA_CHECK(cudaGetLastError());
  }
  CUDA_CHECK(cudaDeviceSynchronize());
}

struct Timing {
  double phaseMs[kNumPhases] = {};
  double totalMs = 0;
};

Timing timeLayer(Layer &L, int warmup, int runs) {
  std::vector<cudaEvent_t> ev(size_t(runs) * (kNumPhases + 1));
  for (cudaEvent_t &e : ev)
    CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < warmup; ++i)
    L.run();
  MOERT_CHECK(moert_synchronize(L.ctx));
  checkCtx(L.ctx, "warm-up");
  // The backend's stream is a blocking stream: events on the legacy default
  // stream are ordered with its work.
  for (int r = 0; r < runs; ++r)
    L.run([&](int i) {
      CUDA_CHECK(cudaEventRecord(ev[size_t(r) * (kNumPhases + 1) + i], 0));
    });
  CUDA_CHECK(cudaDeviceSynchronize());
  checkCtx(L.ctx, "timed runs");
  Timing t;
  std::vector<double> per[kNumPhases], total;
  for (int r = 0; r < runs; ++r) {
    cudaEvent_t *e = &ev[size_t(r) * (kNumPhases + 1)];
    for (int i = 0; i < kNumPhases; ++i) {
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, e[i], e[i + 1]));
      per[i].push_back(ms);
    }
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e[0], e[kNumPhases]));
    total.push_back(ms);
  }
  for (int i = 0; i < kNumPhases; ++i)
    t.phaseMs[i] = median(per[i]);
  t.totalMs = median(total);
  for (cudaEvent_t &e : ev)
    CUDA_CHECK(cudaEventDestroy(e));
  return t;
}

/// Dense bf16 GEMMs with the expert FFN's FLOPs: [M, D] x [D, F] twice and
/// [M, F] x [F, D], M = T*k, on the legacy stream, median of `runs`.
double denseMs(const LayerCfg &c, int warmup, int runs, void *a, void *w,
               void *h, void *y) {
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  const float alpha = 1.0f, beta = 0.0f;
  const int M = int(c.T * c.k), D = int(c.D), F = int(c.F);
  auto once = [&]() {
    for (int g = 0; g < 2; ++g)
      CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, F, M, D,
                                &alpha, w, CUDA_R_16BF, D, a, CUDA_R_16BF, D,
                                &beta, h, CUDA_R_16BF, F, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, D, M, F, &alpha,
                              w, CUDA_R_16BF, F, h, CUDA_R_16BF, F, &beta, y,
                              CUDA_R_16BF, D, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  };
  for (int i = 0; i < warmup; ++i)
    once();
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int r = 0; r < runs; ++r) {
    CUDA_CHECK(cudaEventRecord(e0, 0));
    once();
    CUDA_CHECK(cudaEventRecord(e1, 0));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUBLAS_CHECK(cublasDestroy(handle));
  return median(ms);
}

/// Bytes the routing, permutation and combine phases must move at least.
struct Traffic {
  double router, topk, assign, dispatch, combine;
  double total() const { return router + topk + assign + dispatch + combine; }
};

Traffic trafficOf(const LayerCfg &c, int32_t dt) {
  const double es = double(esize(dt)), T = double(c.T), D = double(c.D),
               E = double(c.E), k = double(c.k), rows = double(c.rows());
  Traffic t;
  t.router = T * D * es + E * D * es + T * E * 4;
  t.topk = T * E * 4 + (c.bias ? E * 4 : 0) + T * E * 4 + T * k * 8;
  t.assign = T * k * 4 + T * k * 4 + E * 4;
  t.dispatch = T * D * es + T * k * 4 + rows * D * es;
  t.combine = rows * D * es + T * k * 8 + T * D * es;
  return t;
}

bool benchLayer(const LayerCfg &c, int runs, const std::string &dumpDir,
                bool first) {
  const int32_t dt = MOERT_BF16;
  const int warmup = 3;
  const double ffnFlops =
      2.0 * double(c.T * c.k) * double(c.D) * double(c.F) * 3.0;
  Traffic traffic = trafficOf(c, dt);
  emit("%s{\"name\": \"%s\", \"dtype\": \"bf16\", \"T\": %lld, \"D\": %lld, "
       "\"F\": %lld, \"E\": %lld, \"k\": %lld, \"shared_F\": %lld, "
       "\"expert_flops\": %.6g, \"modes\": [",
       first ? "" : ", ", c.name.c_str(), (long long)c.T, (long long)c.D,
       (long long)c.F, (long long)c.E, (long long)c.k, (long long)c.sharedF,
       ffnFlops);
  bool ok = true;
  double dense = 0;
  const char *modes[] = {"auto", "grouped", "loop"};
  for (int m = 0; m < 3; ++m) {
    Layer L;
    L.ctx = makeCtx(MOERT_DEVICE_CUDA, modes[m]);
    L.c = c;
    L.dt = dt;
    L.allocate();
    deviceInit(L);
    // Validate the first (poisoned) run before timing.
    poison(L, L.out, c.T * c.D * 2);
    L.run();
    MOERT_CHECK(moert_synchronize(L.ctx));
    checkCtx(L.ctx, c.name.c_str());
    std::vector<float> out = download(L, L.out, c.T * c.D, dt);
    int64_t bad = 0;
    for (float v : out)
      bad += !std::isfinite(v);
    if (bad) {
      std::printf("bench %s [%s]: FAIL: %lld non-finite outputs\n",
                  c.name.c_str(), modes[m], (long long)bad);
      ok = false;
    }
    if (m == 0 && !dumpDir.empty()) {
      const int64_t tc = std::min<int64_t>(c.T, 128);
      std::vector<int32_t> idx(size_t(tc * c.k));
      MOERT_CHECK(moert_copy_to_host(L.ctx, idx.data(), L.idx, tc * c.k * 4));
      std::string base = dumpDir + "/" + c.name;
      FILE *f = std::fopen((base + ".out.f32").c_str(), "wb");
      FILE *g = std::fopen((base + ".idx.i32").c_str(), "wb");
      if (!f || !g)
        die("cannot write %s.*", base.c_str());
      std::fwrite(out.data(), 4, size_t(tc * c.D), f);
      std::fwrite(idx.data(), 4, idx.size(), g);
      std::fclose(f);
      std::fclose(g);
    }
    Timing t = timeLayer(L, warmup, runs);
    if (m == 0) {
      // The dense reference reuses this context's buffers: xe is [T*k, D],
      // expert 0's gate [F, D] / down [D, F], ye is [T*k, D]; h gets its own.
      void *h = nullptr;
      MOERT_CHECK(moert_alloc(L.ctx, c.T * c.k * c.F * 2, &h));
      dense = denseMs(c, warmup, runs, L.xe, L.wg, h, L.ye);
      moert_free(L.ctx, h);
    }
    const double ffnMs = t.phaseMs[4];
    const double moveMs = t.phaseMs[0] + t.phaseMs[1] + t.phaseMs[2] +
                          t.phaseMs[3] + t.phaseMs[5];
    std::printf("bench %-15s gemm=%-7s total %8.3f ms |", c.name.c_str(),
                modes[m], t.totalMs);
    for (int i = 0; i < kNumPhases; ++i)
      std::printf(" %s %.3f", kPhases[i], t.phaseMs[i]);
    std::printf(" | expert GEMM %.1f TFLOP/s | route+permute+combine %.1f "
                "GB/s\n",
                ffnFlops / (ffnMs * 1e-3) / 1e12,
                traffic.total() / (moveMs * 1e-3) / 1e9);
    emit("%s{\"gemm\": \"%s\", \"total_ms\": %.6g, \"phases_ms\": {",
         m ? ", " : "", modes[m], t.totalMs);
    for (int i = 0; i < kNumPhases; ++i)
      emit("%s\"%s\": %.6g", i ? ", " : "", kPhases[i], t.phaseMs[i]);
    emit("}, \"expert_tflops\": %.6g, \"move_bytes\": %.6g, \"move_ms\": "
         "%.6g, \"move_gbps\": %.6g, \"finite\": %s}",
         ffnFlops / (ffnMs * 1e-3) / 1e12, traffic.total(), moveMs,
         traffic.total() / (moveMs * 1e-3) / 1e9, bad ? "false" : "true");
    L.release();
    moert_ctx_destroy(L.ctx);
  }
  std::printf("bench %-15s dense bf16 GEMMs of the same FLOPs: %.3f ms, %.1f "
              "TFLOP/s\n",
              c.name.c_str(), dense, ffnFlops / (dense * 1e-3) / 1e12);
  emit("], \"dense_ms\": %.6g, \"dense_tflops\": %.6g, \"traffic_bytes\": "
       "{\"router\": %.6g, \"topk\": %.6g, \"assign\": %.6g, \"dispatch\": "
       "%.6g, \"combine\": %.6g}}",
       dense, ffnFlops / (dense * 1e-3) / 1e12, traffic.router, traffic.topk,
       traffic.assign, traffic.dispatch, traffic.combine);
  return ok;
}

LayerCfg mixtral(int64_t T, int64_t D, int64_t F, const char *name,
                 double cf = 0) {
  return {name, T, D, F,     8, 2, MOERT_SCORE_SOFTMAX, 1, 1.0f,
          0,    0, 0, false, 0, cf};
}
LayerCfg dsv3(int64_t T, int64_t D, int64_t F, int64_t E, const char *name) {
  return {name,
          T,
          D,
          F,
          E,
          8,
          MOERT_SCORE_SIGMOID,
          1,
          2.5f,
          8,
          4,
          MOERT_GROUP_SCORE_TOP2_SUM,
          true,
          F,
          0};
}

} // namespace

int main(int argc, char **argv) {
  std::string jsonPath, dumpDir, only;
  int runs = 20;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc)
        die("%s needs a value", a.c_str());
      return argv[++i];
    };
    if (a == "--json")
      jsonPath = next();
    else if (a == "--dump")
      dumpDir = next();
    else if (a == "--runs")
      runs = std::max(1, std::atoi(next().c_str()));
    else if (a == "--only")
      only = next();
    else if (a == "--quick")
      quick = true;
    else
      die("unknown argument %s", a.c_str());
  }
  int devices = 0;
  cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::printf("moe-gpu-bench: no CUDA device (%s); nothing to do\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return 2;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d, %d SMs, %.1f GiB)\n", prop.name, prop.major,
              prop.minor, prop.multiProcessorCount,
              double(prop.totalGlobalMem) / (1 << 30));
  emit("{\"device\": \"%s\", \"checks\": [", prop.name);

  // 1. Correctness against the CPU context.
  const LayerCfg checks[] = {
      mixtral(256, 256, 512, "mixtral_small"),
      mixtral(256, 256, 512, "mixtral_small_cap1.25", 1.25),
      dsv3(256, 256, 128, 64, "dsv3_small"),
  };
  bool ok = true;
  bool firstCheck = true;
  for (const LayerCfg &c : checks) {
    for (int32_t dt : {MOERT_F32, MOERT_BF16}) {
      CheckResult r = checkLayer(c, dt);
      ok = ok && r.pass;
      emit("%s{\"layer\": \"%s\", \"dtype\": \"%s\", \"metric\": \"%s\", "
           "\"value\": %.6g, \"route_mismatch\": %lld, \"pass\": %s}",
           firstCheck ? "" : ", ", c.name.c_str(),
           dt == MOERT_F32 ? "f32" : "bf16",
           dt == MOERT_F32 ? "max_scaled_error" : "rel_norm_error", r.metric,
           (long long)r.routeMismatch, r.pass ? "true" : "false");
      firstCheck = false;
    }
  }
  emit("], \"layers\": [");

  // 2. Timing of the full-size layers.
  std::vector<LayerCfg> layers = {
      mixtral(4096, 4096, 14336, "mixtral_t4096"),
      mixtral(16384, 4096, 14336, "mixtral_t16384"),
      dsv3(4096, 7168, 2048, 256, "dsv3_t4096"),
  };
  if (quick) // small stand-ins, for a smoke test of the timing path
    layers = {mixtral(512, 1024, 2048, "mixtral_t4096"),
              dsv3(512, 1024, 256, 64, "dsv3_t4096")};
  bool firstLayer = true;
  for (const LayerCfg &c : layers) {
    if (!only.empty() && c.name != only)
      continue;
    ok = benchLayer(c, runs, dumpDir, firstLayer) && ok;
    firstLayer = false;
    std::fflush(stdout);
  }
  emit("], \"pass\": %s}\n", ok ? "true" : "false");
  if (!jsonPath.empty()) {
    FILE *f = std::fopen(jsonPath.c_str(), "w");
    if (!f)
      die("cannot write %s", jsonPath.c_str());
    std::fputs(jsonOut.c_str(), f);
    std::fclose(f);
  } else {
    std::fputs(jsonOut.c_str(), stdout);
  }
  std::printf("moe-gpu-bench: %s\n",
              ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
