//===- Routing.cu - top-k routing, assignment, aux losses on CUDA --------===//
//
// topk: one warp per token; the row's keys live in shared memory, so the
//   group-limited mask and the k rounds of warp argmax cost no global traffic
//   (any k <= E: the picks are kept in shared memory too).
// assign: device-side prefix sums in three passes over chunks of the
//   assignment sequence (count per chunk, scan chunks per expert, place in
//   order with warp match), so no host round trip and a deterministic result.
// expert_load / losses: fixed-order reductions (deterministic).
//
//===----------------------------------------------------------------------===//
#include "cuda/CudaKernels.h"
#include "cuda/DeviceUtils.cuh"

#include <algorithm>
#include <climits>
#include <cmath>

namespace moert {
namespace cuda {

namespace {

//===--- top-k
//-------------------------------------------------------------===//

struct TopkArgs {
  const float *logits;
  const float *bias;
  float *weights;
  int32_t *indices;
  float *scores;
  int64_t T;
  int E, k, groups, groupsKept;
  int softmax, renormalize, top2Sum;
  float scaling;
  int warpsPerBlock;
  int warpSmemBytes;
};

__global__ void topkKernel(TopkArgs a) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t t = int64_t(blockIdx.x) * a.warpsPerBlock + warp;
  if (t >= a.T)
    return; // whole warps leave; no block-wide barrier below
  const int E = a.E;
  unsigned long long *key =
      reinterpret_cast<unsigned long long *>(smem + warp * a.warpSmemBytes);
  unsigned long long *groupKey = key + E;
  float *score =
      reinterpret_cast<float *>(groupKey + (a.groups > 0 ? a.groups : 1));
  int *pick = reinterpret_cast<int *>(score + E); // [k] chosen experts
  const float *row = a.logits + t * E;

  // 1. scores = softmax | sigmoid (each lane owns experts lane + 32 i).
  if (a.softmax) {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32)
      m = fmaxf(m, row[e]);
    m = warpMax(m);
    float s = 0.f;
    for (int e = lane; e < E; e += 32) {
      float ex = expf(row[e] - m);
      score[e] = ex;
      s += ex;
    }
    const float inv = 1.0f / warpSum(s);
    for (int e = lane; e < E; e += 32)
      score[e] *= inv;
  } else {
    for (int e = lane; e < E; e += 32)
      score[e] = 1.0f / (1.0f + expf(-row[e]));
  }
  // 2. selection keys = scores + bias.
  for (int e = lane; e < E; e += 32) {
    float s = score[e];
    if (a.scores)
      a.scores[t * E + e] = s;
    key[e] = makeKey(a.bias ? s + a.bias[e] : s, e);
  }
  // 3. group-limited routing: keep the best groupsKept groups.
  if (a.groups > 1 && a.groupsKept < a.groups) {
    const int G = a.groups, per = E / G;
    __syncwarp();
    for (int g = lane; g < G; g += 32) {
      unsigned long long best = 0, second = 0;
      for (int i = 0; i < per; ++i) {
        unsigned long long kk = key[g * per + i];
        if (kk > best) {
          second = best;
          best = kk;
        } else if (kk > second) {
          second = kk;
        }
      }
      float v = keyValue(best);
      if (a.top2Sum && per >= 2)
        v += keyValue(second);
      groupKey[g] = makeKey(v, g);
    }
    __syncwarp();
    for (int r = 0; r < a.groupsKept; ++r) {
      unsigned long long b = 0;
      for (int g = lane; g < G; g += 32)
        b = groupKey[g] > b ? groupKey[g] : b;
      b = warpMaxU64(b);
      __syncwarp();
      if (lane == 0)
        groupKey[keyIndex(b)] = 0; // 0 = kept
      __syncwarp();
    }
    // Masked experts go below every allowed one, -inf and NaN included:
    // the CPU never picks them, and k <= kept experts (checked).
    for (int e = lane; e < E; e += 32)
      if (groupKey[e / per] != 0)
        key[e] = maskedKey(e);
  }
  // 4. k rounds of warp argmax; each lane caches the best of its experts.
  unsigned long long local = 0;
  for (int e = lane; e < E; e += 32)
    local = key[e] > local ? key[e] : local;
  for (int j = 0; j < a.k; ++j) {
    unsigned long long w = warpMaxU64(local);
    int e = keyIndex(w);
    if (lane == 0)
      pick[j] = e;
    if ((e & 31) == lane) {
      key[e] = 0;
      local = 0;
      for (int x = lane; x < E; x += 32)
        local = key[x] > local ? key[x] : local;
    }
  }
  // 5. weights = scores at the chosen experts, renormalized, scaled.
  __syncwarp(); // pick[] (lane 0) and score[] (all lanes) are read below
  float part = 0.f;
  for (int j = lane; j < a.k; j += 32)
    part += score[pick[j]];
  // A zero sum (every picked score underflowed) keeps the raw weights.
  const float sum = a.renormalize ? warpSum(part) : 0.f;
  const float norm = sum > 0.f ? 1.0f / sum : 1.0f;
  for (int j = lane; j < a.k; j += 32) {
    const int e = pick[j];
    a.weights[t * a.k + j] = score[e] * norm * a.scaling;
    a.indices[t * a.k + j] = e;
  }
}

//===--- assign
//------------------------------------------------------------===//

constexpr int kAssignChunk = 512;

/// The assignment sequence: dropless = (token, choice) row-major over all
/// tokens; capacity = per token group, slot-major (choice, then token).
struct AssignArgs {
  const int32_t *indices;
  int32_t *positions;
  int32_t *counts;
  int32_t *chunkBase; // [numChunks, E]
  int32_t *offsets;   // [E] (dropless)
  int64_t k, E, capacity, groups, groupTokens, perGroup, chunksPerGroup;
};

__device__ __forceinline__ int64_t flatIndex(const AssignArgs &a, int64_t g,
                                             int64_t l) {
  if (a.capacity == 0)
    return l;
  int64_t j = l / a.groupTokens, tl = l - j * a.groupTokens;
  return (g * a.groupTokens + tl) * a.k + j;
}

__global__ void assignCountKernel(AssignArgs a) {
  extern __shared__ int hist[];
  const int64_t c = blockIdx.x, g = c / a.chunksPerGroup;
  const int64_t start = (c - g * a.chunksPerGroup) * kAssignChunk;
  const int64_t end = min(start + int64_t(kAssignChunk), a.perGroup);
  for (int64_t e = threadIdx.x; e < a.E; e += blockDim.x)
    hist[e] = 0;
  __syncthreads();
  for (int64_t l = start + threadIdx.x; l < end; l += blockDim.x) {
    int e = a.indices[flatIndex(a, g, l)];
    if (e >= 0 && e < a.E)
      atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < a.E; e += blockDim.x)
    a.chunkBase[c * a.E + e] = hist[e];
}

/// Per (group, expert): exclusive scan over the group's chunks, in place.
/// One thread per (g, e) on a 1-D grid (groups may exceed gridDim.y's 65535).
__global__ void assignScanKernel(AssignArgs a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.groups * a.E)
    return;
  const int64_t g = i / a.E, e = i - g * a.E;
  int32_t run = 0;
  for (int64_t cl = 0; cl < a.chunksPerGroup; ++cl) {
    int32_t *p = a.chunkBase + (g * a.chunksPerGroup + cl) * a.E + e;
    int32_t v = *p;
    *p = run;
    run += v;
  }
  if (a.capacity > 0)
    a.counts[g * a.E + e] = static_cast<int32_t>(min(int64_t(run), a.capacity));
  else
    a.counts[e] = run;
}

/// offsets = exclusive scan of counts[0, n); one block of 1024 threads.
__global__ void exclusiveScanKernel(const int32_t *in, int32_t *out,
                                    int64_t n) {
  __shared__ int32_t partial[1024];
  const int64_t per = (n + blockDim.x - 1) / blockDim.x;
  const int64_t begin = threadIdx.x * per, end = min(begin + per, n);
  int32_t s = 0;
  for (int64_t i = begin; i < end; ++i)
    s += in[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  // Hillis-Steele inclusive scan over the per-thread sums.
  for (int o = 1; o < blockDim.x; o <<= 1) {
    int32_t v = threadIdx.x >= o ? partial[threadIdx.x - o] : 0;
    __syncthreads();
    partial[threadIdx.x] += v;
    __syncthreads();
  }
  int32_t run = partial[threadIdx.x] - s;
  for (int64_t i = begin; i < end; ++i) {
    int32_t v = in[i];
    out[i] = run;
    run += v;
  }
}

/// One warp per chunk walks it in order: ranks within the chunk come from
/// __match_any_sync, the chunk's base rank from the scan.
__global__ void assignPlaceKernel(AssignArgs a) {
  extern __shared__ int run[];
  const int lane = threadIdx.x;
  const int64_t c = blockIdx.x, g = c / a.chunksPerGroup;
  const int64_t start = (c - g * a.chunksPerGroup) * kAssignChunk;
  const int64_t end = min(start + int64_t(kAssignChunk), a.perGroup);
  for (int64_t e = lane; e < a.E; e += 32)
    run[e] = a.chunkBase[c * a.E + e];
  __syncwarp();
  const unsigned lower = (1u << lane) - 1u;
  for (int64_t base = start; base < end; base += 32) {
    const int64_t l = base + lane;
    const bool in = l < end;
    const int64_t i = in ? flatIndex(a, g, l) : 0;
    int e = in ? a.indices[i] : -1;
    if (in && (e < 0 || e >= a.E))
      e = -2; // invalid expert: dropped
    const unsigned peers = __match_any_sync(kFullMask, e);
    int rank = 0;
    if (e >= 0)
      rank = run[e] + __popc(peers & lower);
    __syncwarp();
    if (e >= 0 && lane == 31 - __clz(peers))
      run[e] += __popc(peers);
    __syncwarp();
    if (!in)
      continue;
    int32_t pos = -1;
    if (e >= 0) {
      if (a.capacity == 0)
        pos = a.offsets[e] + rank;
      else if (rank < a.capacity)
        pos = static_cast<int32_t>(e * a.groups * a.capacity + g * a.capacity +
                                   rank);
    }
    a.positions[i] = pos;
  }
}

//===--- expert load and losses
//---------------------------------------------===//

/// 32 experts per block: 32 rows of threads sum scores down the tokens.
__global__ void expertLoadKernel(const float *scores, const int32_t *indices,
                                 float *stats, int64_t T, int64_t k,
                                 int64_t E) {
  __shared__ float part[32][33];
  __shared__ int count[32];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 32 + tx;
  const int64_t e0 = int64_t(blockIdx.x) * 32, e = e0 + tx;
  if (tid < 32)
    count[tid] = 0;
  __syncthreads();
  float s = 0.f;
  if (e < E)
    for (int64_t t = ty; t < T; t += 32)
      s += scores[t * E + e];
  part[ty][tx] = s;
  for (int64_t i = tid; i < T * k; i += 1024) {
    int64_t x = indices[i];
    if (x >= e0 && x < e0 + 32 && x < E)
      atomicAdd(&count[x - e0], 1);
  }
  __syncthreads();
  if (ty == 0 && e < E) {
    float total = 0.f;
    for (int r = 0; r < 32; ++r)
      total += part[r][tx];
    stats[e] = static_cast<float>(count[tx]);
    stats[E + e] = total;
  }
}

__global__ void loadBalanceLossKernel(const float *stats, float *out, int64_t E,
                                      int64_t tokens, int64_t k, float coeff) {
  __shared__ float scratch[32];
  const float assignments = static_cast<float>(tokens * k);
  const float ntok = static_cast<float>(tokens);
  float acc = 0.f;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    acc += (stats[e] / assignments) * (stats[E + e] / ntok);
  float total = blockSum(acc, scratch);
  if (threadIdx.x == 0)
    out[0] = coeff * static_cast<float>(E) * total;
}

constexpr int kZLossWarps = 8;

/// Per block: sum over its rows of logsumexp(row)^2 (warp per row).
__global__ void zLossRowsKernel(const float *logits, float *partials, int64_t T,
                                int64_t E) {
  __shared__ float warpTotals[kZLossWarps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float acc = 0.f;
  for (int64_t t = int64_t(blockIdx.x) * kZLossWarps + warp; t < T;
       t += int64_t(gridDim.x) * kZLossWarps) {
    const float *row = logits + t * E;
    float m = -INFINITY;
    for (int64_t e = lane; e < E; e += 32)
      m = fmaxf(m, row[e]);
    m = warpMax(m);
    float s = 0.f;
    for (int64_t e = lane; e < E; e += 32)
      s += expf(row[e] - m);
    s = warpSum(s);
    float lse = m + logf(s);
    acc += lse * lse;
  }
  if (lane == 0)
    warpTotals[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kZLossWarps; ++w)
      total += warpTotals[w];
    partials[blockIdx.x] = total;
  }
}

__global__ void zLossFinalKernel(const float *partials, int n, float *out,
                                 float coeff, float totalTokens) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    acc += partials[i];
  float total = blockSum(acc, scratch);
  if (threadIdx.x == 0)
    out[0] = coeff * total / totalTokens;
}

} // namespace

//===--- Launchers
//----------------------------------------------------------===//

Status launchTopk(const LaunchEnv &env, const float *logits, const float *bias,
                  float *weights, int32_t *indices, float *scores, int64_t T,
                  int64_t E, int64_t k, int32_t scoreFn, int32_t renormalize,
                  float scaling, int64_t numGroups, int64_t groupsKept,
                  int32_t groupScore) {
  const char *op = "moert_topk";
  if (T == 0)
    return Status::ok();

  TopkArgs a;
  a.logits = logits;
  a.bias = bias;
  a.weights = weights;
  a.indices = indices;
  a.scores = scores;
  a.T = T;
  a.E = static_cast<int>(E);
  a.k = static_cast<int>(k);
  a.groups = static_cast<int>(numGroups);
  a.groupsKept = static_cast<int>(groupsKept);
  a.softmax = scoreFn == MOERT_SCORE_SOFTMAX;
  a.renormalize = renormalize != 0;
  a.top2Sum = groupScore == MOERT_GROUP_SCORE_TOP2_SUM;
  a.scaling = scaling;
  int64_t G = numGroups > 0 ? numGroups : 1;
  // keys [E] + group keys [G] + scores [E] + picks [k]
  int64_t perWarp = (8 * E + 8 * G + 4 * E + 4 * k + 15) / 16 * 16;
  constexpr int64_t kSmemLimit = 48 * 1024;
  if (perWarp > kSmemLimit)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: E=%lld experts need %lld bytes of shared memory per "
                 "token, more than the CUDA top-k kernel's %lld",
                 op, (long long)E, (long long)perWarp, (long long)kSmemLimit);
  int warps = static_cast<int>(std::min<int64_t>(4, kSmemLimit / perWarp));
  a.warpsPerBlock = warps;
  a.warpSmemBytes = static_cast<int>(perWarp);
  int64_t blocks = (T + warps - 1) / warps;
  if (blocks > INT_MAX)
    return error(MOERT_ERR_INVALID, "%s: T=%lld too large", op, (long long)T);
  topkKernel<<<static_cast<unsigned>(blocks), 32 * warps,
               static_cast<size_t>(perWarp * warps), env.stream>>>(a);
  MOERT_LAUNCHED(op, "topkKernel");
  return Status::ok();
}

Status launchAssign(const LaunchEnv &env, const int32_t *indices,
                    int32_t *positions, int32_t *counts, int64_t T, int64_t k,
                    int64_t E, int64_t capacity, int64_t groups) {
  const char *op = "moert_assign";
  if (E * 4 > 48 * 1024)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: E=%lld exceeds the CUDA assign kernel's 12288 experts",
                 op, (long long)E);
  const int64_t G = capacity > 0 ? groups : 1;
  if (T == 0) {
    MOERT_CUDA(op,
               cudaMemsetAsync(counts, 0, sizeof(int32_t) * G * E, env.stream));
    return Status::ok();
  }
  AssignArgs a;
  a.indices = indices;
  a.positions = positions;
  a.counts = counts;
  a.k = k;
  a.E = E;
  a.capacity = capacity;
  a.groups = G;
  a.groupTokens = T / G;
  a.perGroup = a.groupTokens * k;
  a.chunksPerGroup = (a.perGroup + kAssignChunk - 1) / kAssignChunk;
  const int64_t chunks = G * a.chunksPerGroup;
  Scratch ws(*env.alloc);
  MOERT_TRY(ws.allocate(sizeof(int32_t) * (chunks * E + E), op));
  a.chunkBase = ws.as<int32_t>();
  a.offsets = a.chunkBase + chunks * E;
  const size_t histBytes = sizeof(int32_t) * E;

  assignCountKernel<<<static_cast<unsigned>(chunks), 256, histBytes,
                      env.stream>>>(a);
  MOERT_LAUNCHED(op, "assignCountKernel");
  assignScanKernel<<<static_cast<unsigned>((G * E + 255) / 256), 256, 0,
                     env.stream>>>(a);
  MOERT_LAUNCHED(op, "assignScanKernel");
  if (capacity == 0) {
    exclusiveScanKernel<<<1, 1024, 0, env.stream>>>(counts, a.offsets, E);
    MOERT_LAUNCHED(op, "exclusiveScanKernel");
  }
  assignPlaceKernel<<<static_cast<unsigned>(chunks), 32, histBytes,
                      env.stream>>>(a);
  MOERT_LAUNCHED(op, "assignPlaceKernel");
  return Status::ok();
}

Status launchExpertLoad(const LaunchEnv &env, const float *scores,
                        const int32_t *indices, float *stats, int64_t T,
                        int64_t k, int64_t E) {
  const char *op = "moert_expert_load";
  unsigned blocks = static_cast<unsigned>((E + 31) / 32);
  expertLoadKernel<<<blocks, dim3(32, 32), 0, env.stream>>>(scores, indices,
                                                            stats, T, k, E);
  MOERT_LAUNCHED(op, "expertLoadKernel");
  return Status::ok();
}

Status launchLoadBalanceLoss(const LaunchEnv &env, const float *stats,
                             float *out, int64_t E, int64_t tokens, int64_t k,
                             float coeff) {
  const char *op = "moert_load_balance_loss";
  loadBalanceLossKernel<<<1, 256, 0, env.stream>>>(stats, out, E, tokens, k,
                                                   coeff);
  MOERT_LAUNCHED(op, "loadBalanceLossKernel");
  return Status::ok();
}

Status launchZLoss(const LaunchEnv &env, const float *logits, float *out,
                   int64_t T, int64_t E, int64_t totalTokens, float coeff) {
  const char *op = "moert_z_loss";
  int blocks = static_cast<int>(std::max<int64_t>(
      1,
      std::min<int64_t>((T + kZLossWarps - 1) / kZLossWarps, 4 * env.smCount)));
  Scratch ws(*env.alloc);
  MOERT_TRY(ws.allocate(sizeof(float) * blocks, op));
  zLossRowsKernel<<<blocks, 32 * kZLossWarps, 0, env.stream>>>(
      logits, ws.as<float>(), T, E);
  MOERT_LAUNCHED(op, "zLossRowsKernel");
  zLossFinalKernel<<<1, 256, 0, env.stream>>>(
      ws.as<float>(), blocks, out, coeff, static_cast<float>(totalTokens));
  MOERT_LAUNCHED(op, "zLossFinalKernel");
  return Status::ok();
}

} // namespace cuda
} // namespace moert
