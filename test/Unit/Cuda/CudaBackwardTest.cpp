//===- CudaBackwardTest.cpp - The CUDA training kernels against the CPU ---===//
//
// Every backward, loss and optimizer kernel of the CUDA backend runs on the
// same random inputs as the CPU backend (the reference behaviour), f32 only
// (training is f32). Outputs start as NaN (Buf's poison), so an element a
// kernel fails to write shows as a mismatch. Tolerances:
//  - sums of products (GEMMs, dot products, softmax): rtol 1e-4 plus an
//    absolute floor of rtol/10 of the largest reference magnitude
//    (docs/spec.md section 6);
//  - bit for bit where both backends do the same f32 / f64 operations in the
//    same order: dispatch_grad (a sum in increasing j), combine_grad's dy
//    (one product), expert_load_grad (a copy), and the optimizer kernels
//    (AdamW, SGD, bias update: double math with explicit rounding, docs/
//    spec.md 7.3 / 7.4), also with every output aliasing its input;
//  - repeat runs of the CUDA kernels that reduce over tokens (rmsnorm's dw,
//    the router's and the experts' weight gradients): bit for bit.
// Every test skips without a CUDA device.
//
//===----------------------------------------------------------------------===//
#include "CudaTestUtil.h"

#include "moert/moert.h"

#include <cstdlib>
#include <sstream>

namespace moert_cuda_test {
namespace {

using moert::BackendOptions;

/// The same host data on the CPU and on the CUDA backend.
struct Twin {
  std::unique_ptr<Buf> c, g;
  float *cf() const { return c->as<float>(); }
  float *gf() const { return g->as<float>(); }
  int32_t *ci() const { return c->as<int32_t>(); }
  int32_t *gi() const { return g->as<int32_t>(); }
};

template <typename T>
Twin twin(Backend &cpu, Backend &gpu, const std::vector<T> &v) {
  return Twin{put(cpu, v), put(gpu, v)};
}

/// Uninitialized (NaN-poisoned) outputs of `bytes` on both backends.
Twin outputs(Backend &cpu, Backend &gpu, size_t bytes) {
  return Twin{std::make_unique<Buf>(cpu, bytes),
              std::make_unique<Buf>(gpu, bytes)};
}

::testing::AssertionResult matches(const Twin &t, double rtol = 1e-4) {
  return close(t.g->download<float>(), t.c->download<float>(), MOERT_F32, rtol);
}

::testing::AssertionResult sameBits(const std::vector<float> &got,
                                    const std::vector<float> &ref) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << ref.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &ref[i], sizeof(float)) != 0) {
      std::ostringstream os;
      os.precision(9);
      os << "element " << i << ": got " << got[i] << ", expected " << ref[i]
         << " (not bit for bit)";
      return ::testing::AssertionFailure() << os.str();
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult sameBits(const Twin &t) {
  return sameBits(t.g->download<float>(), t.c->download<float>());
}

bool gated(int32_t act) {
  return act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
}

const char *actName(int32_t act) {
  switch (act) {
  case MOERT_ACT_RELU:
    return "relu";
  case MOERT_ACT_GELU:
    return "gelu";
  case MOERT_ACT_SWIGLU:
    return "swiglu";
  default:
    return "geglu";
  }
}

const int32_t kActivations[] = {MOERT_ACT_RELU, MOERT_ACT_GELU,
                                MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU};

class CudaBackwardTest : public CpuAndCudaTest {};

//===--- rmsnorm, router
//--------------------------------------------------------===//

TEST_F(CudaBackwardTest, RmsnormGradMatchesCpu) {
  unsigned seed = 1;
  // T = 300 and 600: more than one chunk of the deterministic dw sum.
  for (int64_t T : {37, 300, 600}) {
    for (int64_t D : {256, 250, 13}) {
      SCOPED_TRACE("T=" + std::to_string(T) + " D=" + std::to_string(D));
      auto x = twin(*cpu, *gpu, randomVec(T * D, seed++));
      auto w = twin(*cpu, *gpu, randomVec(D, seed++, 0.5f, 1.5f));
      auto dy = twin(*cpu, *gpu, randomVec(T * D, seed++));
      auto dx = outputs(*cpu, *gpu, T * D * 4), dw = outputs(*cpu, *gpu, D * 4);
      ASSERT_OK(cpu->rmsnormGrad(x.cf(), w.cf(), dy.cf(), dx.cf(), dw.cf(), T,
                                 D, 1e-6f, MOERT_F32));
      ASSERT_OK(gpu->rmsnormGrad(x.gf(), w.gf(), dy.gf(), dx.gf(), dw.gf(), T,
                                 D, 1e-6f, MOERT_F32));
      EXPECT_TRUE(matches(dx)) << "dx";
      EXPECT_TRUE(matches(dw)) << "dw";
      // A second run gives the same bits (no order-dependent atomics).
      auto first = dw.g->download<float>();
      ASSERT_OK(gpu->rmsnormGrad(x.gf(), w.gf(), dy.gf(), dx.gf(), dw.gf(), T,
                                 D, 1e-6f, MOERT_F32));
      EXPECT_TRUE(sameBits(dw.g->download<float>(), first)) << "dw, rerun";
    }
  }
}

TEST_F(CudaBackwardTest, LayernormGradMatchesCpu) {
  unsigned seed = 100;
  // T = 300 and 600: more than one chunk of the deterministic dw, db sums.
  for (int64_t T : {37, 300, 600}) {
    for (int64_t D : {256, 250, 13}) {
      SCOPED_TRACE("T=" + std::to_string(T) + " D=" + std::to_string(D));
      auto x = twin(*cpu, *gpu, randomVec(T * D, seed++));
      auto w = twin(*cpu, *gpu, randomVec(D, seed++, 0.5f, 1.5f));
      auto dy = twin(*cpu, *gpu, randomVec(T * D, seed++));
      auto dx = outputs(*cpu, *gpu, T * D * 4), dw = outputs(*cpu, *gpu, D * 4),
           db = outputs(*cpu, *gpu, D * 4);
      ASSERT_OK(cpu->layernormGrad(x.cf(), w.cf(), dy.cf(), dx.cf(), dw.cf(),
                                   db.cf(), T, D, 1e-5f, MOERT_F32));
      ASSERT_OK(gpu->layernormGrad(x.gf(), w.gf(), dy.gf(), dx.gf(), dw.gf(),
                                   db.gf(), T, D, 1e-5f, MOERT_F32));
      EXPECT_TRUE(matches(dx)) << "dx";
      EXPECT_TRUE(matches(dw)) << "dw";
      EXPECT_TRUE(matches(db)) << "db";
      auto first = dw.g->download<float>();
      ASSERT_OK(gpu->layernormGrad(x.gf(), w.gf(), dy.gf(), dx.gf(), dw.gf(),
                                   nullptr, T, D, 1e-5f, MOERT_F32));
      EXPECT_TRUE(sameBits(dw.g->download<float>(), first)) << "dw, rerun";
    }
  }
}

TEST_F(CudaBackwardTest, RouterGradMatchesCpu) {
  struct Case {
    int64_t T, D, E;
  };
  unsigned seed = 20;
  for (Case c : {Case{64, 96, 12}, Case{300, 40, 64}, Case{7, 13, 5}}) {
    SCOPED_TRACE("T=" + std::to_string(c.T) + " D=" + std::to_string(c.D) +
                 " E=" + std::to_string(c.E));
    auto x = twin(*cpu, *gpu, randomVec(c.T * c.D, seed++));
    auto w = twin(*cpu, *gpu, randomVec(c.E * c.D, seed++));
    auto dl = twin(*cpu, *gpu, randomVec(c.T * c.E, seed++));
    auto dx = outputs(*cpu, *gpu, c.T * c.D * 4),
         dw = outputs(*cpu, *gpu, c.E * c.D * 4);
    ASSERT_OK(cpu->routerGrad(x.cf(), w.cf(), dl.cf(), dx.cf(), dw.cf(), c.T,
                              c.D, c.E, MOERT_F32));
    ASSERT_OK(gpu->routerGrad(x.gf(), w.gf(), dl.gf(), dx.gf(), dw.gf(), c.T,
                              c.D, c.E, MOERT_F32));
    EXPECT_TRUE(matches(dx)) << "dx";
    EXPECT_TRUE(matches(dw)) << "dw";
    auto first = dw.g->download<float>();
    ASSERT_OK(gpu->routerGrad(x.gf(), w.gf(), dl.gf(), dx.gf(), dw.gf(), c.T,
                              c.D, c.E, MOERT_F32));
    EXPECT_TRUE(sameBits(dw.g->download<float>(), first)) << "dw, rerun";
  }
}

//===--- top-k
//------------------------------------------------------------------===//

struct TopkGradCase {
  int64_t T, E, k;
  int32_t scoreFn, renormalize;
  float scaling;
  bool dscores;
};

TEST_F(CudaBackwardTest, TopkGradMatchesCpu) {
  const TopkGradCase cases[] = {
      {100, 8, 2, MOERT_SCORE_SOFTMAX, 1, 1.0f, false}, // Mixtral
      {100, 8, 2, MOERT_SCORE_SOFTMAX, 1, 1.0f, true},
      {64, 64, 8, MOERT_SCORE_SIGMOID, 1, 2.5f, true}, // DeepSeek-V3
      {64, 64, 8, MOERT_SCORE_SIGMOID, 1, 2.5f, false},
      {64, 16, 3, MOERT_SCORE_SOFTMAX, 0, 1.0f, true}, // no renormalize
      {64, 16, 3, MOERT_SCORE_SIGMOID, 0, 16.0f, false},
      {50, 130, 5, MOERT_SCORE_SOFTMAX, 1, 1.0f, true}, // E > 128
      {33, 60, 40, MOERT_SCORE_SIGMOID, 0, 1.0f, true}, // k > 32
      {33, 60, 40, MOERT_SCORE_SOFTMAX, 1, 1.0f, false},
      {40, 8, 1, MOERT_SCORE_SOFTMAX, 1, 1.0f, true}, // Switch: k = 1
  };
  unsigned seed = 40;
  for (const TopkGradCase &c : cases) {
    SCOPED_TRACE("E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) +
                 (c.scoreFn == MOERT_SCORE_SOFTMAX ? " softmax" : " sigmoid") +
                 (c.renormalize ? " renormalize" : "") +
                 " scaling=" + std::to_string(c.scaling) +
                 (c.dscores ? " with dscores" : ""));
    auto logits = randomVec(c.T * c.E, seed++, -4.0f, 4.0f);
    // The indices moert_topk picks, from the CPU backend.
    auto cl = put(*cpu, logits);
    Buf w(*cpu, c.T * c.k * 4), idx(*cpu, c.T * c.k * 4),
        sc(*cpu, c.T * c.E * 4);
    ASSERT_OK(cpu->topk(cl->as<float>(), nullptr, w.as<float>(),
                        idx.as<int32_t>(), sc.as<float>(), c.T, c.E, c.k,
                        c.scoreFn, c.renormalize, c.scaling, 0, 0, 0));
    auto l = twin(*cpu, *gpu, logits);
    auto i = twin(*cpu, *gpu, idx.download<int32_t>());
    auto dw = twin(*cpu, *gpu, randomVec(c.T * c.k, seed++));
    auto ds = twin(*cpu, *gpu, randomVec(c.T * c.E, seed++));
    auto dl = outputs(*cpu, *gpu, c.T * c.E * 4);
    ASSERT_OK(cpu->topkGrad(l.cf(), i.ci(), dw.cf(),
                            c.dscores ? ds.cf() : nullptr, dl.cf(), c.T, c.E,
                            c.k, c.scoreFn, c.renormalize, c.scaling));
    ASSERT_OK(gpu->topkGrad(l.gf(), i.gi(), dw.gf(),
                            c.dscores ? ds.gf() : nullptr, dl.gf(), c.T, c.E,
                            c.k, c.scoreFn, c.renormalize, c.scaling));
    EXPECT_TRUE(matches(dl)) << "dlogits";
  }
}

//===--- dispatch / combine
//-----------------------------------------------------===//

struct RouteCase {
  int64_t T, k, E, capacity, groups;
};

// Dropless; capacity with drops; capacity with token groups and drops.
const RouteCase kRouteCases[] = {
    {96, 2, 8, 0, 1}, {96, 2, 8, 10, 1}, {96, 2, 8, 3, 4}, {60, 1, 4, 8, 1}};

/// Positions and the buffer rows of moert_assign on the CPU backend.
void assignOnCpu(Backend &cpu, const RouteCase &c, unsigned seed,
                 std::vector<int32_t> &positions, int64_t &rows) {
  const int64_t G = c.capacity ? c.groups : 1;
  rows = c.capacity ? c.E * G * c.capacity : c.T * c.k;
  auto ci = put(cpu, randomIndices(c.T, c.k, c.E, seed));
  Buf pos(cpu, c.T * c.k * 4), cnt(cpu, G * c.E * 4);
  Status s = cpu.assign(ci->as<int32_t>(), pos.as<int32_t>(), cnt.as<int32_t>(),
                        c.T, c.k, c.E, c.capacity, c.groups);
  ASSERT_TRUE(s.isOk()) << s.message();
  positions = pos.download<int32_t>();
}

std::string routeName(const RouteCase &c, int64_t D) {
  return "T=" + std::to_string(c.T) + " k=" + std::to_string(c.k) +
         " E=" + std::to_string(c.E) + " C=" + std::to_string(c.capacity) +
         " G=" + std::to_string(c.groups) + " D=" + std::to_string(D);
}

TEST_F(CudaBackwardTest, DispatchGradMatchesCpu) {
  unsigned seed = 60;
  for (const RouteCase &c : kRouteCases) {
    for (int64_t D : {72, 13}) {
      SCOPED_TRACE(routeName(c, D));
      std::vector<int32_t> positions;
      int64_t rows = 0;
      ASSERT_NO_FATAL_FAILURE(assignOnCpu(*cpu, c, seed++, positions, rows));
      auto pos = twin(*cpu, *gpu, positions);
      auto dout = twin(*cpu, *gpu, randomVec(rows * D, seed++));
      auto dx = outputs(*cpu, *gpu, c.T * D * 4);
      ASSERT_OK(cpu->dispatchGrad(dout.cf(), pos.ci(), dx.cf(), c.T, c.k, D,
                                  rows, MOERT_F32));
      ASSERT_OK(gpu->dispatchGrad(dout.gf(), pos.gi(), dx.gf(), c.T, c.k, D,
                                  rows, MOERT_F32));
      // The same f32 additions in the same order (increasing j).
      EXPECT_TRUE(sameBits(dx)) << "dx";
    }
  }
}

TEST_F(CudaBackwardTest, CombineGradMatchesCpu) {
  unsigned seed = 80;
  for (const RouteCase &c : kRouteCases) {
    for (int64_t D : {72, 13}) {
      for (bool through : {false, true}) {
        SCOPED_TRACE(routeName(c, D) + (through ? " passthrough" : " zero"));
        std::vector<int32_t> positions;
        int64_t rows = 0;
        ASSERT_NO_FATAL_FAILURE(assignOnCpu(*cpu, c, seed++, positions, rows));
        if (c.capacity && c.k > 1) {
          ASSERT_NE(std::count(positions.begin(), positions.end(), -1), 0)
              << "the case is meant to drop assignments";
        }
        auto pos = twin(*cpu, *gpu, positions);
        auto y = twin(*cpu, *gpu, randomVec(rows * D, seed++));
        auto w = twin(*cpu, *gpu, randomVec(c.T * c.k, seed++, 0.0f, 1.0f));
        auto x = twin(*cpu, *gpu, randomVec(c.T * D, seed++));
        auto dout = twin(*cpu, *gpu, randomVec(c.T * D, seed++));
        auto dy = outputs(*cpu, *gpu, rows * D * 4),
             dw = outputs(*cpu, *gpu, c.T * c.k * 4),
             dp = outputs(*cpu, *gpu, c.T * D * 4);
        ASSERT_OK(cpu->combineGrad(
            y.cf(), pos.ci(), w.cf(), through ? x.cf() : nullptr, dout.cf(),
            dy.cf(), dw.cf(), through ? dp.cf() : nullptr, c.T, c.k, D, rows,
            MOERT_F32));
        ASSERT_OK(gpu->combineGrad(
            y.gf(), pos.gi(), w.gf(), through ? x.gf() : nullptr, dout.gf(),
            dy.gf(), dw.gf(), through ? dp.gf() : nullptr, c.T, c.k, D, rows,
            MOERT_F32));
        // dy: one product per element (or 0 for unused rows).
        EXPECT_TRUE(sameBits(dy)) << "dy";
        EXPECT_TRUE(matches(dw)) << "dweights";
        if (through) {
          EXPECT_TRUE(matches(dp, 1e-5)) << "dpassthrough";
        }
      }
    }
  }
}

//===--- expert FFN
//------------------------------------------------------------===//

struct FfnLayout {
  const char *name;
  int64_t segments, rowsPerExpert; // R = 0: packed
  bool counts;
};

const FfnLayout kLayouts[] = {
    {"packed", 1, 0, true},
    {"packed, 3 segments", 3, 0, true},
    {"capacity", 2, 14, true},
    {"capacity, no counts", 2, 14, false},
};

struct FfnDims {
  int64_t E = 4, D = 64, F = 96;
  bool emptyExpert = true; // the last expert gets no rows in any segment
  /// The GPU runs moert_expert_ffn_train first and its gradient reads the
  /// saved pre-activations (the CPU recomputes them).
  bool saved = false;
};

/// expert_ffn_grad on the CPU and on `g` (same inputs); every output
/// compared; an expert without rows must get exactly 0 on the GPU; a rerun
/// on `g` must give the same bits.
void checkExpertFfnGrad(Backend &cpu, Backend &g, const FfnLayout &L,
                        int32_t act, unsigned seed,
                        const FfnDims &dims = FfnDims()) {
  const int64_t E = dims.E, D = dims.D, F = dims.F, S = L.segments;
  const int64_t R = L.rowsPerExpert, C = R ? R / S : 0;
  std::mt19937 gen(seed);
  std::vector<int32_t> counts(S * E);
  for (int32_t &c : counts)
    c = int32_t(gen() % (R ? C + 1 : 40));
  counts[1] = 0; // an empty block
  if (R)
    counts[2] = int32_t(C); // a full one
  const bool empty = dims.emptyExpert && L.counts;
  if (empty)
    for (int64_t s = 0; s < S; ++s)
      counts[s * E + E - 1] = 0;
  int64_t live = 0;
  for (int32_t c : counts)
    live += c;
  const int64_t rows = R ? E * R : live + 5; // packed: 5 dead tail rows
  const float ws = 1.0f / std::sqrt(float(D)), wd = 1.0f / std::sqrt(float(F));
  const bool glu = gated(act);
  // Dead rows of x and dy hold random values too: they must not leak.
  auto x = twin(cpu, g, randomVec(rows * D, seed + 1));
  auto wg = twin(cpu, g, randomVec(E * F * D, seed + 2, -ws, ws));
  auto wu = twin(cpu, g, randomVec(E * F * D, seed + 3, -ws, ws));
  auto wdn = twin(cpu, g, randomVec(E * D * F, seed + 4, -wd, wd));
  auto dy = twin(cpu, g, randomVec(rows * D, seed + 5));
  auto cnt = twin(cpu, g, counts);
  auto dx = outputs(cpu, g, rows * D * 4);
  auto dgate = outputs(cpu, g, E * F * D * 4),
       dup = outputs(cpu, g, E * F * D * 4),
       ddown = outputs(cpu, g, E * D * F * 4);
  auto y = outputs(cpu, g, rows * D * 4), sa = outputs(cpu, g, rows * F * 4),
       su = outputs(cpu, g, rows * F * 4);
  auto run = [&](Backend &b, bool onCpu) {
    auto f = [&](const Twin &t) -> float * { return onCpu ? t.cf() : t.gf(); };
    const bool save = dims.saved && !onCpu;
    const int32_t *c = L.counts ? (onCpu ? cnt.ci() : cnt.gi()) : nullptr;
    if (save) {
      Status s = b.expertFfn(f(x), c, glu ? f(wg) : nullptr, f(wu), f(wdn),
                             f(y), glu ? f(sa) : nullptr, f(su), E, S, R, rows,
                             D, F, act, MOERT_F32);
      if (!s.isOk())
        return s;
    }
    return b.expertFfnGrad(f(x), c, glu ? f(wg) : nullptr, f(wu), f(wdn), f(dy),
                           save && glu ? f(sa) : nullptr,
                           save ? f(su) : nullptr, f(dx),
                           glu ? f(dgate) : nullptr, f(dup), f(ddown), E, S, R,
                           rows, D, F, act, MOERT_F32);
  };
  ASSERT_OK(run(cpu, true));
  ASSERT_OK(run(g, false));
  EXPECT_TRUE(matches(dx)) << "dx";
  EXPECT_TRUE(matches(dup)) << "dup";
  EXPECT_TRUE(matches(ddown)) << "ddown";
  if (glu) {
    EXPECT_TRUE(matches(dgate)) << "dgate";
  }
  if (empty) {
    auto zeroBlock = [&](const Twin &t, const char *what) {
      auto v = t.g->download<float>();
      const int64_t per = F * D;
      for (int64_t i = (E - 1) * per; i < E * per; ++i)
        if (std::memcmp(&v[i], "\0\0\0\0", 4) != 0) {
          ADD_FAILURE() << what << " of expert " << E - 1
                        << " (no rows) is not exactly +0 at element "
                        << i - (E - 1) * per << ": " << v[i];
          return;
        }
    };
    zeroBlock(dup, "dup");
    zeroBlock(ddown, "ddown");
    if (glu)
      zeroBlock(dgate, "dgate");
  }
  if (dims.saved && L.counts) {
    // moert_expert_ffn_train zeroes the saved rows of no expert (as the CPU
    // backend does: BackwardTest's ExpertFfnSaved).
    std::vector<bool> dead(rows, false);
    if (R)
      for (int64_t e = 0; e < E; ++e)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t j = counts[s * E + e]; j < C; ++j)
            dead[e * R + s * C + j] = true;
    else
      for (int64_t r = live; r < rows; ++r)
        dead[r] = true;
    auto zeroRows = [&](const Twin &t, const char *what) {
      auto v = t.g->download<float>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t f = 0; dead[r] && f < F; ++f)
          if (v[r * F + f] != 0.0f) {
            ADD_FAILURE() << what << ": dead row " << r << " is "
                          << v[r * F + f];
            return;
          }
    };
    zeroRows(su, "saved u");
    if (glu)
      zeroRows(sa, "saved a");
  }
  // Deterministic: the same bits again.
  auto dupFirst = dup.g->download<float>(), dxFirst = dx.g->download<float>();
  ASSERT_OK(run(g, false));
  EXPECT_TRUE(sameBits(dup.g->download<float>(), dupFirst)) << "dup, rerun";
  EXPECT_TRUE(sameBits(dx.g->download<float>(), dxFirst)) << "dx, rerun";
}

TEST_F(CudaBackwardTest, ExpertFfnGradMatchesCpu) {
  unsigned seed = 100;
  for (const FfnLayout &L : kLayouts) {
    for (int32_t act : kActivations) {
      SCOPED_TRACE(std::string(L.name) + " " + actName(act));
      checkExpertFfnGrad(*cpu, *gpu, L, act, seed += 10);
    }
  }
}

TEST_F(CudaBackwardTest, ExpertFfnGradFromSavedActivationsMatchesCpu) {
  // moert_expert_ffn_train on the GPU, then the gradient from what it saved,
  // against the CPU's recomputing gradient.
  FfnDims dims;
  dims.saved = true;
  unsigned seed = 700;
  for (const FfnLayout &L : kLayouts) {
    for (int32_t act : kActivations) {
      SCOPED_TRACE(std::string(L.name) + " " + actName(act));
      checkExpertFfnGrad(*cpu, *gpu, L, act, seed += 10, dims);
    }
  }
}

TEST_F(CudaBackwardTest, ExpertFfnGradDataAndWeightMatchCpu) {
  // moe-overlap's split of the gradient: moert_expert_ffn_grad_data (dx and
  // the rows' h, du, da, dead rows 0) then moert_expert_ffn_grad_weight on
  // them, on the GPU against the CPU, in every layout and activation.
  const int64_t E = 4, D = 64, F = 96;
  unsigned seed = 900;
  for (const FfnLayout &L : kLayouts) {
    for (int32_t act : kActivations) {
      SCOPED_TRACE(std::string(L.name) + " " + actName(act));
      const int64_t S = L.segments, R = L.rowsPerExpert, C = R ? R / S : 0;
      std::mt19937 gen(seed += 10);
      std::vector<int32_t> counts(S * E);
      for (int32_t &c : counts)
        c = int32_t(gen() % (R ? C + 1 : 40));
      counts[1] = 0;
      int64_t live = 0;
      for (int32_t c : counts)
        live += c;
      const int64_t rows = R ? E * R : live + 5;
      const bool glu = gated(act);
      const float ws = 1.0f / std::sqrt(float(D)),
                  wd = 1.0f / std::sqrt(float(F));
      auto x = twin(*cpu, *gpu, randomVec(rows * D, seed + 1));
      auto wg = twin(*cpu, *gpu, randomVec(E * F * D, seed + 2, -ws, ws));
      auto wu = twin(*cpu, *gpu, randomVec(E * F * D, seed + 3, -ws, ws));
      auto wdn = twin(*cpu, *gpu, randomVec(E * D * F, seed + 4, -wd, wd));
      auto dy = twin(*cpu, *gpu, randomVec(rows * D, seed + 5));
      auto cnt = twin(*cpu, *gpu, counts);
      auto dx = outputs(*cpu, *gpu, rows * D * 4);
      auto h = outputs(*cpu, *gpu, rows * F * 4),
           pu = outputs(*cpu, *gpu, rows * F * 4),
           pg = outputs(*cpu, *gpu, rows * F * 4);
      auto dgate = outputs(*cpu, *gpu, E * F * D * 4),
           dup = outputs(*cpu, *gpu, E * F * D * 4),
           ddown = outputs(*cpu, *gpu, E * D * F * 4);
      auto run = [&](Backend &b, bool onCpu) {
        auto f = [&](const Twin &t) -> float * {
          return onCpu ? t.cf() : t.gf();
        };
        const int32_t *c = L.counts ? (onCpu ? cnt.ci() : cnt.gi()) : nullptr;
        Status st = b.expertFfnGradData(f(x), c, glu ? f(wg) : nullptr, f(wu),
                                        f(wdn), f(dy), nullptr, nullptr, f(dx),
                                        f(h), glu ? f(pg) : nullptr, f(pu), E,
                                        S, R, rows, D, F, act, MOERT_F32);
        if (!st.isOk())
          return st;
        return b.expertFfnGradWeight(f(x), c, f(dy), f(h),
                                     glu ? f(pg) : nullptr, f(pu),
                                     glu ? f(dgate) : nullptr, f(dup), f(ddown),
                                     E, S, R, rows, D, F, MOERT_F32);
      };
      ASSERT_OK(run(*cpu, true));
      ASSERT_OK(run(*gpu, false));
      EXPECT_TRUE(matches(dx)) << "dx";
      EXPECT_TRUE(matches(h)) << "hidden";
      EXPECT_TRUE(matches(pu)) << "dpre_up";
      EXPECT_TRUE(matches(dup)) << "dup";
      EXPECT_TRUE(matches(ddown)) << "ddown";
      if (glu) {
        EXPECT_TRUE(matches(pg)) << "dpre_gate";
        EXPECT_TRUE(matches(dgate)) << "dgate";
      }
    }
  }
}

TEST_F(CudaBackwardTest, ExpertFfnGradOddSizesAndManySegments) {
  // D = 13, F = 7: rows not 16-byte aligned (the GEMMs loop); 8 segments
  // and 16 experts: more than 16 problems (the grouped GEMM in auto mode).
  FfnDims odd;
  odd.D = 13;
  odd.F = 7;
  FfnDims many;
  many.E = 16;
  many.D = 32;
  many.F = 24;
  const FfnLayout packed8{"packed, 8 segments", 8, 0, true};
  const FfnLayout cap8{"capacity, 8 segments", 8, 24, true};
  unsigned seed = 400;
  for (const FfnDims &dims : {odd, many}) {
    for (const FfnLayout &L : {kLayouts[0], kLayouts[2], packed8, cap8}) {
      for (int32_t act : {MOERT_ACT_GELU, MOERT_ACT_SWIGLU}) {
        SCOPED_TRACE(std::string(L.name) + " " + actName(act) + " E=" +
                     std::to_string(dims.E) + " D=" + std::to_string(dims.D) +
                     " F=" + std::to_string(dims.F));
        checkExpertFfnGrad(*cpu, *gpu, L, act, seed += 10, dims);
      }
    }
  }
}

TEST_F(CudaBackwardTest, ExpertFfnGradGroupedAndLoopGemmsAgree) {
  unsigned seed = 600;
  for (const char *mode : {"grouped", "loop"}) {
    auto g = gpuWithGemm(mode);
    ASSERT_TRUE(g);
    for (const FfnLayout &L : kLayouts) {
      for (int32_t act : {MOERT_ACT_RELU, MOERT_ACT_SWIGLU}) {
        SCOPED_TRACE(std::string(mode) + " " + L.name + " " + actName(act));
        checkExpertFfnGrad(*cpu, *g, L, act, seed += 10);
      }
    }
  }
}

TEST_F(CudaBackwardTest, ExpertFfnGradRejectsBadCounts) {
  const int64_t E = 2, D = 16, F = 16;
  std::vector<int32_t> counts = {3, 9}; // sums to 12 > total_rows 10
  auto gc = put(*gpu, counts);
  Buf x(*gpu, 10 * D * 4), w(*gpu, E * F * D * 4), dw(*gpu, E * F * D * 4),
      dx(*gpu, 10 * D * 4);
  Status s = gpu->expertFfnGrad(x.get(), gc->as<int32_t>(), w.get(), w.get(),
                                w.get(), x.get(), nullptr, nullptr, dx.get(),
                                dw.get(), dw.get(), dw.get(), E, 1, 0, 10, D, F,
                                MOERT_ACT_SWIGLU, MOERT_F32);
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
  EXPECT_NE(s.message().find("moert_expert_ffn_grad"), std::string::npos)
      << s.message();
}

TEST_F(CudaBackwardTest, ExpertFfnGradWithoutLiveRowsIsZero) {
  // Every count 0: every weight gradient and every row of dx is exactly +0
  // (the outputs start as NaN).
  const int64_t E = 3, S = 2, D = 16, F = 8;
  for (int64_t R : {int64_t(0), int64_t(4)}) {
    SCOPED_TRACE(R ? "capacity" : "packed");
    const int64_t rows = R ? E * R : 6;
    Buf x(*gpu, rows * D * 4), dy(*gpu, rows * D * 4), w(*gpu, E * F * D * 4);
    ASSERT_OK(gpu->memsetZero(x.get(), rows * D * 4));
    auto counts = put(*gpu, std::vector<int32_t>(S * E, 0));
    Buf dx(*gpu, rows * D * 4), dg(*gpu, E * F * D * 4),
        du(*gpu, E * F * D * 4), dd(*gpu, E * D * F * 4);
    ASSERT_OK(gpu->expertFfnGrad(x.get(), counts->as<int32_t>(), w.get(),
                                 w.get(), w.get(), dy.get(), nullptr, nullptr,
                                 dx.get(), dg.get(), du.get(), dd.get(), E, S,
                                 R, rows, D, F, MOERT_ACT_SWIGLU, MOERT_F32));
    for (const Buf *b : {&dx, &dg, &du, &dd})
      EXPECT_EQ(b->download<uint32_t>(),
                std::vector<uint32_t>(b->bytes() / 4, 0u));
  }
}

//===--- mlp
//-------------------------------------------------------------------===//

TEST_F(CudaBackwardTest, MlpGradMatchesCpu) {
  struct Dims {
    int64_t T, D, F;
  };
  unsigned seed = 700;
  for (Dims d : {Dims{50, 64, 96}, Dims{37, 13, 7}}) {
    for (int32_t act : kActivations) {
      for (bool sg : {false, true}) {
        SCOPED_TRACE(std::string(actName(act)) + (sg ? " sigmoid gate" : "") +
                     " T=" + std::to_string(d.T) + " D=" + std::to_string(d.D) +
                     " F=" + std::to_string(d.F));
        const int64_t T = d.T, D = d.D, F = d.F;
        const float ws = 1.0f / std::sqrt(float(D));
        const bool glu = gated(act);
        auto x = twin(*cpu, *gpu, randomVec(T * D, seed++));
        auto wg = twin(*cpu, *gpu, randomVec(F * D, seed++, -ws, ws));
        auto wu = twin(*cpu, *gpu, randomVec(F * D, seed++, -ws, ws));
        auto wd = twin(*cpu, *gpu, randomVec(D * F, seed++, -0.1f, 0.1f));
        auto gate = twin(*cpu, *gpu, randomVec(D, seed++, -ws, ws));
        auto dy = twin(*cpu, *gpu, randomVec(T * D, seed++));
        auto dx = outputs(*cpu, *gpu, T * D * 4),
             dg = outputs(*cpu, *gpu, F * D * 4),
             du = outputs(*cpu, *gpu, F * D * 4),
             dd = outputs(*cpu, *gpu, D * F * 4),
             dsg = outputs(*cpu, *gpu, D * 4);
        ASSERT_OK(cpu->mlpGrad(x.cf(), glu ? wg.cf() : nullptr, wu.cf(),
                               wd.cf(), sg ? gate.cf() : nullptr, dy.cf(),
                               dx.cf(), glu ? dg.cf() : nullptr, du.cf(),
                               dd.cf(), sg ? dsg.cf() : nullptr, T, D, F, act,
                               MOERT_F32));
        ASSERT_OK(gpu->mlpGrad(x.gf(), glu ? wg.gf() : nullptr, wu.gf(),
                               wd.gf(), sg ? gate.gf() : nullptr, dy.gf(),
                               dx.gf(), glu ? dg.gf() : nullptr, du.gf(),
                               dd.gf(), sg ? dsg.gf() : nullptr, T, D, F, act,
                               MOERT_F32));
        EXPECT_TRUE(matches(dx)) << "dx";
        EXPECT_TRUE(matches(du)) << "dup";
        EXPECT_TRUE(matches(dd)) << "ddown";
        if (glu) {
          EXPECT_TRUE(matches(dg)) << "dgate";
        }
        if (sg) {
          EXPECT_TRUE(matches(dsg)) << "dsigmoid_gate";
        }
      }
    }
  }
}

//===--- losses
//----------------------------------------------------------------===//

TEST_F(CudaBackwardTest, LossGradsMatchCpu) {
  const int64_t T = 300, E = 40, k = 4;
  auto logits = twin(*cpu, *gpu, randomVec(T * E, 800, -3.0f, 3.0f));
  // stats: row 0 counts (integers), row 1 score sums.
  std::vector<float> st(2 * E);
  std::mt19937 gen(801);
  for (int64_t e = 0; e < E; ++e) {
    st[e] = float(gen() % 60);
    st[E + e] = float(gen() % 1000) / 37.0f;
  }
  auto stats = twin(*cpu, *gpu, st);
  auto dstats = twin(*cpu, *gpu, randomVec(2 * E, 802));
  auto dloss = twin(*cpu, *gpu, std::vector<float>{0.75f});

  auto dscores = outputs(*cpu, *gpu, T * E * 4);
  ASSERT_OK(cpu->expertLoadGrad(dstats.cf(), dscores.cf(), T, E));
  ASSERT_OK(gpu->expertLoadGrad(dstats.gf(), dscores.gf(), T, E));
  EXPECT_TRUE(sameBits(dscores)) << "expert_load_grad dscores";

  auto dst = outputs(*cpu, *gpu, 2 * E * 4);
  ASSERT_OK(cpu->loadBalanceLossGrad(stats.cf(), dloss.cf(), dst.cf(), E, T, k,
                                     0.01f));
  ASSERT_OK(gpu->loadBalanceLossGrad(stats.gf(), dloss.gf(), dst.gf(), E, T, k,
                                     0.01f));
  EXPECT_TRUE(matches(dst, 1e-6)) << "load_balance_loss_grad dstats";

  auto dl = outputs(*cpu, *gpu, T * E * 4);
  ASSERT_OK(
      cpu->zLossGrad(logits.cf(), dloss.cf(), dl.cf(), T, E, 2 * T, 1e-3f));
  ASSERT_OK(
      gpu->zLossGrad(logits.gf(), dloss.gf(), dl.gf(), T, E, 2 * T, 1e-3f));
  EXPECT_TRUE(matches(dl, 1e-5)) << "z_loss_grad dlogits";
}

TEST_F(CudaBackwardTest, MseLossMatchesCpu) {
  unsigned seed = 900;
  // n = 3 (one partial), 100003 (many partials of the double sum).
  for (int64_t n : {3, 1000, 100003}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    auto y = twin(*cpu, *gpu, randomVec(n, seed++));
    auto t = twin(*cpu, *gpu, randomVec(n, seed++));
    auto loss = outputs(*cpu, *gpu, 4), dy = outputs(*cpu, *gpu, n * 4);
    const int64_t total = 4 * n; // this rank's share of a larger batch
    ASSERT_OK(
        cpu->mseLoss(y.cf(), t.cf(), loss.cf(), dy.cf(), n, total, MOERT_F32));
    ASSERT_OK(
        gpu->mseLoss(y.gf(), t.gf(), loss.gf(), dy.gf(), n, total, MOERT_F32));
    // Both accumulate in double: the f32 losses agree to rounding.
    EXPECT_TRUE(matches(loss, 1e-6)) << "loss";
    EXPECT_TRUE(matches(dy, 1e-6)) << "dy";
    auto first = loss.g->download<float>();
    ASSERT_OK(
        gpu->mseLoss(y.gf(), t.gf(), loss.gf(), dy.gf(), n, total, MOERT_F32));
    EXPECT_TRUE(sameBits(loss.g->download<float>(), first)) << "loss, rerun";
    // dy may be y itself.
    ASSERT_OK(
        gpu->mseLoss(y.gf(), t.gf(), loss.gf(), y.gf(), n, total, MOERT_F32));
    EXPECT_TRUE(sameBits(y.g->download<float>(), dy.g->download<float>()))
        << "dy in place of y";
    EXPECT_TRUE(sameBits(loss.g->download<float>(), first)) << "loss, in place";
  }
}

//===--- optimizers
//------------------------------------------------------------===//

/// [0] lr, [1] beta1, [2] beta2, [3] eps, [4] weight_decay, [5] momentum,
/// [6] step n, [7] bias update rate.
using Hparams = std::vector<float>;

/// Runs `step` (one optimizer kernel on backend b, given its buffers) on
/// the CPU, on the GPU into separate outputs, and on the GPU in place
/// (each output aliasing its input); all three must agree bit for bit.
/// `in` are the tensors the kernel updates (w, then state), `extra` the
/// ones it only reads (g, load).
template <typename Step>
void checkOptimizer(Backend &cpu, Backend &gpu,
                    const std::vector<std::vector<float>> &in,
                    const std::vector<float> &extra, const Hparams &hp,
                    Step step) {
  std::vector<Twin> ins, outs;
  for (const auto &v : in) {
    ins.push_back(twin(cpu, gpu, v));
    outs.push_back(outputs(cpu, gpu, v.size() * 4));
  }
  auto ex = twin(cpu, gpu, extra);
  auto h = twin(cpu, gpu, hp);
  auto ptrs = [](const std::vector<Twin> &ts, bool onCpu) {
    std::vector<float *> p;
    for (const Twin &t : ts)
      p.push_back(onCpu ? t.cf() : t.gf());
    return p;
  };
  ASSERT_OK(step(cpu, ptrs(ins, true), ex.cf(), h.cf(), ptrs(outs, true)));
  ASSERT_OK(step(gpu, ptrs(ins, false), ex.gf(), h.gf(), ptrs(outs, false)));
  for (size_t i = 0; i < outs.size(); ++i)
    EXPECT_TRUE(sameBits(outs[i])) << "output " << i;
  // In place on the GPU: out == in.
  ASSERT_OK(step(gpu, ptrs(ins, false), ex.gf(), h.gf(), ptrs(ins, false)));
  for (size_t i = 0; i < outs.size(); ++i)
    EXPECT_TRUE(
        sameBits(ins[i].g->download<float>(), outs[i].c->download<float>()))
        << "output " << i << " in place";
}

TEST_F(CudaBackwardTest, AdamwMatchesCpuBitForBit) {
  const int64_t n = 4099;
  auto w = randomVec(n, 1000), g = randomVec(n, 1001, -0.1f, 0.1f);
  for (int64_t i = 0; i < n; i += 17)
    g[i] = 0.0f; // a zero gradient still decays the moments and the weight
  auto m = randomVec(n, 1002, -0.01f, 0.01f);
  auto v = randomVec(n, 1003, 0.0f, 1e-4f);
  const Hparams cases[] = {
      {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, 1.0f, 0.0f}, // torch defaults
      {0.05f, 0.8f, 0.99f, 1e-6f, 0.0f, 0.0f, 7.0f, 0.0f},
      {3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.0f, 1000.0f, 0.0f},
  };
  for (const Hparams &hp : cases) {
    SCOPED_TRACE("lr=" + std::to_string(hp[0]) +
                 " step=" + std::to_string(hp[6]));
    checkOptimizer(*cpu, *gpu, {w, m, v}, g, hp,
                   [&](Backend &b, std::vector<float *> in, float *grad,
                       float *h, std::vector<float *> out) {
                     return b.adamw(in[0], grad, in[1], in[2], h, out[0],
                                    out[1], out[2], n);
                   });
  }
}

TEST_F(CudaBackwardTest, SgdMatchesCpuBitForBit) {
  const int64_t n = 4099;
  auto w = randomVec(n, 1100), g = randomVec(n, 1101, -0.1f, 0.1f);
  auto buf = randomVec(n, 1102, -0.1f, 0.1f);
  const Hparams cases[] = {
      {1e-3f, 0, 0, 0, 0.0f, 0.0f, 1.0f, 0},  // the defaults: w - lr*g
      {1e-2f, 0, 0, 0, 0.01f, 0.9f, 1.0f, 0}, // first step: buf = d
      {1e-2f, 0, 0, 0, 0.01f, 0.9f, 3.0f, 0}, // later: buf = mu*buf + d
      {1e-2f, 0, 0, 0, 0.0f, 0.5f, 2.0f, 0},
      {1e-2f, 0, 0, 0, 0.1f, 0.0f, 5.0f, 0}, // no momentum: buf records d
  };
  for (const Hparams &hp : cases) {
    SCOPED_TRACE("lr=" + std::to_string(hp[0]) + " wd=" +
                 std::to_string(hp[4]) + " momentum=" + std::to_string(hp[5]) +
                 " step=" + std::to_string(hp[6]));
    checkOptimizer(*cpu, *gpu, {w, buf}, g, hp,
                   [&](Backend &b, std::vector<float *> in, float *grad,
                       float *h, std::vector<float *> out) {
                     return b.sgd(in[0], grad, in[1], h, out[0], out[1], n);
                   });
  }
  // With the defaults one step writes exactly f32(w - lr*g).
  auto gw = put(*gpu, w), gg = put(*gpu, g), gb = put(*gpu, buf);
  auto gh = put(*gpu, Hparams{1e-3f, 0, 0, 0, 0, 0, 1.0f, 0});
  Buf wOut(*gpu, n * 4), bOut(*gpu, n * 4);
  ASSERT_OK(gpu->sgd(gw->as<float>(), gg->as<float>(), gb->as<float>(),
                     gh->as<float>(), wOut.as<float>(), bOut.as<float>(), n));
  std::vector<float> expect(n);
  for (int64_t i = 0; i < n; ++i)
    expect[i] = float(double(w[i]) - double(1e-3f) * double(g[i]));
  EXPECT_TRUE(sameBits(wOut.download<float>(), expect)) << "w - lr*g";
  EXPECT_TRUE(sameBits(bOut.download<float>(), g)) << "buffer records g";
}

TEST_F(CudaBackwardTest, BiasUpdateMatchesCpuBitForBit) {
  const int64_t E = 16, T = 40, k = 2; // mean load 5
  std::vector<float> load(E);
  for (int64_t e = 0; e < E; ++e)
    load[e] = float((e * 7) % 11); // 5 appears: sign 0
  auto bias = randomVec(E, 1200, -0.1f, 0.1f);
  const Hparams hp = {0, 0, 0, 0, 0, 0, 1.0f, 1e-3f};
  checkOptimizer(*cpu, *gpu, {bias}, load, hp,
                 [&](Backend &b, std::vector<float *> in, float *ld, float *h,
                     std::vector<float *> out) {
                   return b.biasUpdate(in[0], ld, h, out[0], E, T, k);
                 });
  // And the formula itself: bias + rate*sign(mean - load), 0 at the mean.
  auto gbias = put(*gpu, bias), gl = put(*gpu, load), gh = put(*gpu, hp);
  Buf out(*gpu, E * 4);
  ASSERT_OK(gpu->biasUpdate(gbias->as<float>(), gl->as<float>(),
                            gh->as<float>(), out.as<float>(), E, T, k));
  auto got = out.download<float>();
  for (int64_t e = 0; e < E; ++e) {
    const double sign = load[e] < 5 ? 1 : load[e] > 5 ? -1 : 0;
    EXPECT_EQ(got[e], float(double(bias[e]) + double(1e-3f) * sign))
        << "expert " << e << " load " << load[e];
  }
}

// The hyperparameters live in device memory: the backend checks them (the
// context cannot), with the CPU backend's codes and messages.
TEST_F(CudaBackwardTest, OptimizersRejectBadHparams) {
  const int64_t n = 8;
  struct Case {
    const char *kernel;
    int index;
    float value;
    const char *name;
  };
  const float nan = std::nanf("");
  const Case cases[] = {
      {"moert_adamw", 0, nan, "lr"},
      {"moert_adamw", 0, -1e-3f, "lr"},
      {"moert_adamw", 1, 1.0f, "beta1"},
      {"moert_adamw", 6, 0.0f, "step"},
      {"moert_adamw", 6, 1.5f, "step"},
      {"moert_sgd", 0, 0.0f, "lr"},
      {"moert_sgd", 5, -0.9f, "momentum"},
      {"moert_bias_update", 7, INFINITY, "bias_update_rate"},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(std::string(c.kernel) + " hparams[" + std::to_string(c.index) +
                 "] = " + std::to_string(c.value));
    Hparams hp = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.9f, 1.0f, 1e-3f};
    hp[c.index] = c.value;
    for (Backend *b : {cpu.get(), gpu.get()}) {
      auto h = put(*b, hp);
      auto w = put(*b, randomVec(n, 1300));
      Buf g(*b, n * 4), m(*b, n * 4), v(*b, n * 4);
      Status s = Status::ok();
      if (!std::strcmp(c.kernel, "moert_adamw"))
        s = b->adamw(w->as<float>(), g.as<float>(), m.as<float>(),
                     v.as<float>(), h->as<float>(), w->as<float>(),
                     m.as<float>(), v.as<float>(), n);
      else if (!std::strcmp(c.kernel, "moert_sgd"))
        s = b->sgd(w->as<float>(), g.as<float>(), m.as<float>(), h->as<float>(),
                   w->as<float>(), m.as<float>(), n);
      else
        s = b->biasUpdate(w->as<float>(), g.as<float>(), h->as<float>(),
                          w->as<float>(), n, 4, 2);
      EXPECT_EQ(s.code(), MOERT_ERR_INVALID)
          << b->name() << ": " << s.message();
      EXPECT_NE(s.message().find(c.kernel), std::string::npos)
          << b->name() << ": " << s.message();
      EXPECT_NE(s.message().find(std::string("(") + c.name + ")"),
                std::string::npos)
          << b->name() << ": " << s.message();
    }
  }
}

//===--- Through the C ABI
//------------------------------------------------------===//

/// One context's run of a small layer's forward and backward chain and an
/// AdamW step, through the C ABI (the context's validation and phases, then
/// the backend).
struct AbiChain {
  std::vector<float> loss, dweights, dh, dwn, dgate, up;
  std::string stats;
};

void runAbiChain(int32_t device, AbiChain &r, bool held = false) {
  const int64_t T = 24, D = 32, F = 48, E = 4, k = 2, rows = T * k;
  const float eps = 1e-6f;
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = device;
  o.num_threads = 2;
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  std::vector<void *> owned;
  auto alloc = [&](int64_t bytes) {
    void *p = nullptr;
    EXPECT_EQ(moert_alloc(ctx, bytes, &p), MOERT_OK);
    owned.push_back(p);
    return p;
  };
  auto in = [&](const auto &v) {
    const int64_t bytes = int64_t(v.size() * sizeof(v[0]));
    void *p = alloc(bytes);
    EXPECT_EQ(moert_copy_to_device(ctx, p, v.data(), bytes), MOERT_OK);
    return p;
  };
  auto out = [&](const void *p, int64_t n) {
    std::vector<float> v(n);
    EXPECT_EQ(moert_copy_to_host(ctx, v.data(), p, n * 4), MOERT_OK);
    return v;
  };
  const float ws = 1.0f / std::sqrt(float(D));
  void *h = in(randomVec(T * D, 1400)),
       *wn = in(randomVec(D, 1401, 0.5f, 1.5f));
  void *idx = in(randomIndices(T, k, E, 1402));
  void *gate = in(randomVec(E * F * D, 1403, -ws, ws));
  void *up = in(randomVec(E * F * D, 1404, -ws, ws));
  void *down = in(randomVec(E * D * F, 1405, -0.1f, 0.1f));
  void *w = in(randomVec(T * k, 1406, 0.0f, 1.0f));
  void *target = in(randomVec(T * D, 1407));
  void *m = in(std::vector<float>(E * F * D, 0.0f));
  void *v = in(std::vector<float>(E * F * D, 0.0f));
  void *hp = in(
      std::vector<float>{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.0f, 1.0f, 0.0f});
  auto *x = static_cast<float *>(alloc(T * D * 4));
  auto *pos = static_cast<int32_t *>(alloc(rows * 4));
  auto *cnt = static_cast<int32_t *>(alloc(E * 4));
  void *buf = alloc(rows * D * 4), *eo = alloc(rows * D * 4);
  void *y = alloc(T * D * 4), *dy = alloc(T * D * 4);
  auto *loss = static_cast<float *>(alloc(4));
  void *deo = alloc(rows * D * 4), *dbuf = alloc(rows * D * 4);
  auto *dw = static_cast<float *>(alloc(T * k * 4));
  void *dg = alloc(E * F * D * 4), *du = alloc(E * F * D * 4),
       *dd = alloc(E * D * F * 4);
  void *dx = alloc(T * D * 4), *dh = alloc(T * D * 4), *dwn = alloc(D * 4);
  // Forward.
  moert_rmsnorm(ctx, h, wn, x, T, D, eps, MOERT_F32);
  moert_assign(ctx, static_cast<int32_t *>(idx), pos, cnt, T, k, E, 0, 1);
  moert_dispatch(ctx, x, pos, buf, T, k, D, rows, MOERT_F32);
  if (held) // moe-overlap's calls around its chunks (docs/runtime.md, ABI 13)
    moert_expert_ffn_prepare(ctx, gate, up, down, E, D, F, MOERT_ACT_SWIGLU,
                             MOERT_F32);
  moert_expert_ffn(ctx, buf, cnt, gate, up, down, eo, E, 1, 0, rows, D, F,
                   MOERT_ACT_SWIGLU, MOERT_F32);
  if (held)
    moert_hold_weights(ctx, 0);
  moert_combine(ctx, eo, pos, static_cast<float *>(w), nullptr, y, T, k, D,
                MOERT_F32);
  // Backward and one AdamW step of the experts' up weights, in place.
  moert_mse_loss(ctx, y, target, nullptr, nullptr, loss, dy, T, T * D, T * D,
                 MOERT_F32);
  moert_combine_grad(ctx, eo, pos, static_cast<float *>(w), nullptr, dy, deo,
                     dw, nullptr, T, k, D, rows, MOERT_F32);
  moert_expert_ffn_grad(ctx, buf, cnt, gate, up, down, deo, nullptr, nullptr,
                        dbuf, dg, du, dd, E, 1, 0, rows, D, F, MOERT_ACT_SWIGLU,
                        MOERT_F32);
  moert_dispatch_grad(ctx, dbuf, pos, dx, T, k, D, rows, MOERT_F32);
  moert_rmsnorm_grad(ctx, h, wn, dx, dh, dwn, T, D, eps, MOERT_F32);
  moert_adamw(ctx, static_cast<float *>(up), static_cast<float *>(du),
              static_cast<float *>(m), static_cast<float *>(v),
              static_cast<float *>(hp), static_cast<float *>(up),
              static_cast<float *>(m), static_cast<float *>(v), E * F * D);
  EXPECT_EQ(moert_synchronize(ctx), MOERT_OK);
  EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  r.loss = out(loss, 1);
  r.dweights = out(dw, T * k);
  r.dh = out(dh, T * D);
  r.dwn = out(dwn, D);
  r.dgate = out(dg, E * F * D);
  r.up = out(up, E * F * D);
  r.stats = moert_ctx_stats_json(ctx);
  for (void *p : owned)
    moert_free(ctx, p);
  moert_ctx_destroy(ctx);
}

TEST(CudaBackwardAbiTest, BackwardChainMatchesCpuContext) {
  SKIP_WITHOUT_CUDA();
  AbiChain c, g;
  ASSERT_NO_FATAL_FAILURE(runAbiChain(MOERT_DEVICE_CPU, c));
  ASSERT_NO_FATAL_FAILURE(runAbiChain(MOERT_DEVICE_CUDA, g));
  EXPECT_TRUE(close(g.loss, c.loss, MOERT_F32, 1e-5)) << "loss";
  EXPECT_TRUE(close(g.dweights, c.dweights, MOERT_F32)) << "dweights";
  EXPECT_TRUE(close(g.dh, c.dh, MOERT_F32)) << "dh";
  EXPECT_TRUE(close(g.dwn, c.dwn, MOERT_F32)) << "dwn";
  EXPECT_TRUE(close(g.dgate, c.dgate, MOERT_F32)) << "dgate";
  EXPECT_TRUE(close(g.up, c.up, MOERT_F32)) << "up after AdamW";
  for (const char *phase :
       {"\"mse_loss\"", "\"combine_grad\"", "\"expert_ffn_grad\"",
        "\"dispatch_grad\"", "\"rmsnorm_grad\"", "\"adamw\""})
    EXPECT_NE(g.stats.find(phase), std::string::npos)
        << phase << " missing from " << g.stats;
}

TEST(CudaBackwardAbiTest, HeldAndPreparedWeightsMatchCpuContext) {
  // moert_expert_ffn_prepare / moert_hold_weights: nothing to prepare on
  // CUDA, the calls succeed and change nothing.
  SKIP_WITHOUT_CUDA();
  AbiChain c, g;
  ASSERT_NO_FATAL_FAILURE(runAbiChain(MOERT_DEVICE_CPU, c));
  ASSERT_NO_FATAL_FAILURE(runAbiChain(MOERT_DEVICE_CUDA, g, /*held=*/true));
  EXPECT_TRUE(close(g.loss, c.loss, MOERT_F32, 1e-5)) << "loss";
  EXPECT_TRUE(close(g.dh, c.dh, MOERT_F32)) << "dh";
  EXPECT_TRUE(close(g.up, c.up, MOERT_F32)) << "up after AdamW";
}

//===--- Token mask (backend-neutral kernels, docs/spec.md 3.11)
//------------===//

/// The token mask's kernels on one context: mask_rows (f32 and i32),
/// token_count, assign and expert_load with unrouted tokens, and the masked
/// losses with their gradients; every result copied back.
struct MaskRun {
  std::vector<float> rows, count, stats, z, dz, lb, dlb, mse, dy;
  std::vector<int32_t> idx, pos, cnt;
};

void runMaskChain(int32_t device, MaskRun &r) {
  const int64_t T = 40, E = 8, k = 2, D = 12, C = 4;
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = device;
  o.num_threads = 2;
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  std::vector<void *> owned;
  auto alloc = [&](int64_t bytes) {
    void *p = nullptr;
    EXPECT_EQ(moert_alloc(ctx, bytes, &p), MOERT_OK);
    owned.push_back(p);
    return p;
  };
  auto in = [&](const auto &v) {
    const int64_t bytes = int64_t(v.size() * sizeof(v[0]));
    void *p = alloc(bytes);
    EXPECT_EQ(moert_copy_to_device(ctx, p, v.data(), bytes), MOERT_OK);
    return p;
  };
  auto out = [&](auto &v, const void *p, int64_t n) {
    v.resize(n);
    EXPECT_EQ(moert_copy_to_host(ctx, v.data(), p, n * sizeof(v[0])), MOERT_OK);
  };
  std::vector<int32_t> mask(T, 1);
  for (int64_t t : {0, 3, 4, 5, 17, 30, 39})
    mask[t] = 0;
  auto *m = static_cast<int32_t *>(in(mask));
  auto *x = static_cast<float *>(in(randomVec(T * D, 1500)));
  auto *logits = static_cast<float *>(in(randomVec(T * E, 1501, -2, 2)));
  auto *scores = static_cast<float *>(in(randomVec(T * E, 1502, 0, 1)));
  auto *idx = static_cast<int32_t *>(in(randomIndices(T, k, E, 1503)));
  auto *target = static_cast<float *>(in(randomVec(T * D, 1504)));
  auto *one = static_cast<float *>(in(std::vector<float>{1.0f}));
  auto *rows = static_cast<float *>(alloc(T * D * 4));
  auto *midx = static_cast<int32_t *>(alloc(T * k * 4));
  auto *pos = static_cast<int32_t *>(alloc(T * k * 4));
  auto *cnt = static_cast<int32_t *>(alloc(E * 4));
  auto *count = static_cast<float *>(alloc(4));
  auto *stats = static_cast<float *>(alloc(2 * E * 4));
  auto *z = static_cast<float *>(alloc(4)),
       *lb = static_cast<float *>(alloc(4));
  auto *dz = static_cast<float *>(alloc(T * E * 4));
  auto *dlb = static_cast<float *>(alloc(2 * E * 4));
  auto *loss = static_cast<float *>(alloc(4));
  auto *dy = static_cast<float *>(alloc(T * D * 4));
  moert_mask_rows(ctx, x, m, rows, T, D * 4, 0);
  moert_mask_rows(ctx, idx, m, midx, T, k * 4, 255);
  moert_token_count(ctx, m, count, T);
  moert_assign(ctx, midx, pos, cnt, T, k, E, C, 1);
  moert_expert_load(ctx, scores, midx, stats, T, k, E);
  moert_z_loss(ctx, logits, m, count, z, T, E, T, 1e-3f);
  moert_z_loss_grad(ctx, logits, one, m, count, dz, T, E, T, 1e-3f);
  moert_load_balance_loss(ctx, stats, count, lb, E, T, k, 1e-2f);
  moert_load_balance_loss_grad(ctx, stats, one, count, dlb, E, T, k, 1e-2f);
  moert_mse_loss(ctx, x, target, m, count, loss, dy, T, T * D, T * D,
                 MOERT_F32);
  ASSERT_EQ(moert_synchronize(ctx), MOERT_OK) << moert_ctx_error(ctx);
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  out(r.rows, rows, T * D);
  out(r.idx, midx, T * k);
  out(r.count, count, 1);
  out(r.pos, pos, T * k);
  out(r.cnt, cnt, E);
  out(r.stats, stats, 2 * E);
  out(r.z, z, 1);
  out(r.dz, dz, T * E);
  out(r.lb, lb, 1);
  out(r.dlb, dlb, 2 * E);
  out(r.mse, loss, 1);
  out(r.dy, dy, T * D);
  for (void *p : owned)
    moert_free(ctx, p);
  moert_ctx_destroy(ctx);
}

TEST(CudaTokenMaskTest, MaskKernelsMatchCpuContext) {
  SKIP_WITHOUT_CUDA();
  MaskRun c, g;
  ASSERT_NO_FATAL_FAILURE(runMaskChain(MOERT_DEVICE_CPU, c));
  ASSERT_NO_FATAL_FAILURE(runMaskChain(MOERT_DEVICE_CUDA, g));
  EXPECT_EQ(g.rows, c.rows);
  EXPECT_EQ(g.idx, c.idx);
  EXPECT_EQ(g.count, c.count);
  EXPECT_EQ(g.pos, c.pos);
  EXPECT_EQ(g.cnt, c.cnt);
  EXPECT_TRUE(close(g.stats, c.stats, MOERT_F32, 1e-5)) << "stats";
  EXPECT_TRUE(close(g.z, c.z, MOERT_F32, 1e-5)) << "z_loss";
  EXPECT_TRUE(close(g.dz, c.dz, MOERT_F32)) << "z_loss_grad";
  EXPECT_TRUE(close(g.lb, c.lb, MOERT_F32, 1e-5)) << "load_balance_loss";
  EXPECT_TRUE(close(g.dlb, c.dlb, MOERT_F32)) << "load_balance_loss_grad";
  EXPECT_TRUE(close(g.mse, c.mse, MOERT_F32, 1e-5)) << "mse_loss";
  EXPECT_TRUE(close(g.dy, c.dy, MOERT_F32)) << "mse dy";
}

} // namespace
} // namespace moert_cuda_test
