//===- CudaBackendTest.cpp - Every CUDA kernel against the CPU backend ----===//
//
// Random inputs; the CPU backend (f32) on the same values is the reference.
// f32 runs must match element by element (rtol 1e-4); bf16 / f16 runs within
// a relative norm error of 1e-2. Every test skips without a CUDA device.
//
//===----------------------------------------------------------------------===//
#include "CudaTestUtil.h"

#include <cstdlib>

namespace moert_cuda_test {
namespace {

using moert::BackendOptions;

const int32_t kFloatTypes[] = {MOERT_F32, MOERT_BF16, MOERT_F16};

const char *name(int32_t dtype) {
  return dtype == MOERT_F32 ? "f32" : dtype == MOERT_BF16 ? "bf16" : "f16";
}

class CudaBackendTest : public CpuAndCudaTest {};

//===--- Elementwise
//---------------------------------------------------------===//

TEST_F(CudaBackendTest, RmsnormMatchesCpu) {
  const int64_t T = 37;
  for (int64_t D : {256, 250}) {
    for (int32_t dt : kFloatTypes) {
      SCOPED_TRACE(std::string(name(dt)) + " D=" + std::to_string(D));
      auto x = rounded(randomVec(T * D, 1), dt);
      auto w = rounded(randomVec(D, 2, 0.5f, 1.5f), dt);
      auto cx = put(*cpu, x), cw = put(*cpu, w);
      Buf cy(*cpu, T * D * 4);
      ASSERT_OK(
          cpu->rmsnorm(cx->get(), cw->get(), cy.get(), T, D, 1e-6f, MOERT_F32));
      auto gx = putAs(*gpu, x, dt), gw = putAs(*gpu, w, dt);
      Buf gy(*gpu, T * D * elemSize(dt));
      ASSERT_OK(gpu->rmsnorm(gx->get(), gw->get(), gy.get(), T, D, 1e-6f, dt));
      EXPECT_TRUE(close(getAs(gy, dt), cy.download<float>(), dt));
    }
  }
}

TEST_F(CudaBackendTest, LayernormMatchesCpu) {
  const int64_t T = 37;
  for (int64_t D : {256, 250}) {
    for (bool bias : {false, true}) {
      for (int32_t dt : kFloatTypes) {
        SCOPED_TRACE(std::string(name(dt)) + " D=" + std::to_string(D) +
                     (bias ? " bias" : ""));
        auto x = rounded(randomVec(T * D, 1, 1.0f, 3.0f), dt);
        auto w = rounded(randomVec(D, 2, 0.5f, 1.5f), dt);
        auto b = rounded(randomVec(D, 3), dt);
        auto cx = put(*cpu, x), cw = put(*cpu, w), cb = put(*cpu, b);
        Buf cy(*cpu, T * D * 4);
        ASSERT_OK(cpu->layernorm(cx->get(), cw->get(),
                                 bias ? cb->get() : nullptr, cy.get(), T, D,
                                 1e-5f, MOERT_F32));
        auto gx = putAs(*gpu, x, dt), gw = putAs(*gpu, w, dt),
             gb = putAs(*gpu, b, dt);
        Buf gy(*gpu, T * D * elemSize(dt));
        ASSERT_OK(gpu->layernorm(gx->get(), gw->get(),
                                 bias ? gb->get() : nullptr, gy.get(), T, D,
                                 1e-5f, dt));
        EXPECT_TRUE(close(getAs(gy, dt), cy.download<float>(), dt));
      }
    }
  }
}

TEST_F(CudaBackendTest, AddAndAccumulateMatchCpu) {
  const int64_t n = 1003; // not a multiple of any vector width
  for (int32_t dt : kFloatTypes) {
    SCOPED_TRACE(name(dt));
    auto a = rounded(randomVec(n, 3), dt), b = rounded(randomVec(n, 4), dt);
    auto ca = put(*cpu, a), cb = put(*cpu, b);
    Buf cy(*cpu, n * 4);
    ASSERT_OK(cpu->add(ca->get(), cb->get(), cy.get(), n, MOERT_F32));
    auto ga = putAs(*gpu, a, dt), gb = putAs(*gpu, b, dt);
    Buf gy(*gpu, n * elemSize(dt));
    ASSERT_OK(gpu->add(ga->get(), gb->get(), gy.get(), n, dt));
    auto ref = cy.download<float>();
    EXPECT_TRUE(close(getAs(gy, dt), ref, dt));
    ASSERT_OK(gpu->accumulate(ga->get(), gb->get(), n, dt));
    EXPECT_TRUE(close(getAs(*ga, dt), ref, dt));
  }
  std::vector<int32_t> ia(n), ib(n), sum(n);
  for (int64_t i = 0; i < n; ++i) {
    ia[i] = int32_t(i * 7 - 500);
    ib[i] = int32_t(3 - i);
    sum[i] = ia[i] + ib[i];
  }
  auto ga = put(*gpu, ia), gb = put(*gpu, ib);
  ASSERT_OK(gpu->accumulate(ga->get(), gb->get(), n, MOERT_I32));
  EXPECT_EQ(ga->download<int32_t>(), sum);
}

TEST_F(CudaBackendTest, CopiesMoveExactBytes) {
  std::vector<uint8_t> src(4096);
  for (size_t i = 0; i < src.size(); ++i)
    src[i] = uint8_t(i * 131 + 7);
  auto g = put(*gpu, src);
  Buf copy(*gpu, src.size());
  ASSERT_OK(gpu->copy(copy.get(), g->get(), int64_t(src.size())));
  EXPECT_EQ(copy.download<uint8_t>(), src);
  // 2D: 10 rows of 24 bytes out of a pitch of 100 into a pitch of 40.
  Buf packed(*gpu, 400);
  ASSERT_OK(gpu->memsetZero(packed.get(), 400));
  ASSERT_OK(gpu->copy2D(packed.get(), 40, g->get(), 100, 24, 10));
  auto got = packed.download<uint8_t>();
  for (int r = 0; r < 10; ++r)
    for (int c = 0; c < 40; ++c)
      ASSERT_EQ(got[r * 40 + c], c < 24 ? src[r * 100 + c] : 0)
          << "row " << r << " byte " << c;
}

//===--- Routing
//-------------------------------------------------------------===//

TEST_F(CudaBackendTest, RouterMatchesCpu) {
  const int64_t T = 64, D = 96, E = 12;
  for (int32_t dt : kFloatTypes) {
    SCOPED_TRACE(name(dt));
    auto x = rounded(randomVec(T * D, 5), dt);
    auto w = rounded(randomVec(E * D, 6), dt);
    auto cx = put(*cpu, x), cw = put(*cpu, w);
    Buf cl(*cpu, T * E * 4);
    ASSERT_OK(
        cpu->router(cx->get(), cw->get(), cl.as<float>(), T, D, E, MOERT_F32));
    auto gx = putAs(*gpu, x, dt), gw = putAs(*gpu, w, dt);
    Buf gl(*gpu, T * E * 4);
    ASSERT_OK(gpu->router(gx->get(), gw->get(), gl.as<float>(), T, D, E, dt));
    // Same (rounded) inputs, f32 accumulation on both: only the order of
    // the sums differs.
    EXPECT_TRUE(
        close(gl.download<float>(), cl.download<float>(), MOERT_F32, 1e-3));
  }
}

struct TopkCase {
  int64_t T, E, k;
  int32_t scoreFn, renormalize;
  float scaling;
  int64_t groups, kept;
  int32_t groupScore;
  bool bias;
};

TEST_F(CudaBackendTest, TopkMatchesCpu) {
  const TopkCase cases[] = {
      {100, 8, 2, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0, false}, // Mixtral
      {64, 64, 8, MOERT_SCORE_SIGMOID, 1, 2.5f, 8, 4,
       MOERT_GROUP_SCORE_TOP2_SUM, true},
      {64, 16, 3, MOERT_SCORE_SOFTMAX, 0, 1.0f, 4, 2, MOERT_GROUP_SCORE_MAX,
       false},
      {200, 256, 8, MOERT_SCORE_SIGMOID, 1, 2.5f, 8, 4,
       MOERT_GROUP_SCORE_TOP2_SUM, true}, // DeepSeek-V3
      {50, 130, 5, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0, true},
      {33, 60, 32, MOERT_SCORE_SIGMOID, 0, 1.0f, 0, 0, 0, false},
  };
  unsigned seed = 10;
  for (const TopkCase &c : cases) {
    SCOPED_TRACE("E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) +
                 " groups=" + std::to_string(c.groups));
    auto logits = randomVec(c.T * c.E, seed++, -4.0f, 4.0f);
    auto bias = randomVec(c.E, seed++, -0.1f, 0.1f);
    auto cl = put(*cpu, logits), cb = put(*cpu, bias);
    auto gl = put(*gpu, logits), gb = put(*gpu, bias);
    Buf cw(*cpu, c.T * c.k * 4), ci(*cpu, c.T * c.k * 4),
        cs(*cpu, c.T * c.E * 4);
    Buf gw(*gpu, c.T * c.k * 4), gi(*gpu, c.T * c.k * 4),
        gs(*gpu, c.T * c.E * 4);
    ASSERT_OK(cpu->topk(cl->as<float>(), c.bias ? cb->as<float>() : nullptr,
                        cw.as<float>(), ci.as<int32_t>(), cs.as<float>(), c.T,
                        c.E, c.k, c.scoreFn, c.renormalize, c.scaling, c.groups,
                        c.kept, c.groupScore));
    ASSERT_OK(gpu->topk(gl->as<float>(), c.bias ? gb->as<float>() : nullptr,
                        gw.as<float>(), gi.as<int32_t>(), gs.as<float>(), c.T,
                        c.E, c.k, c.scoreFn, c.renormalize, c.scaling, c.groups,
                        c.kept, c.groupScore));
    EXPECT_EQ(gi.download<int32_t>(), ci.download<int32_t>());
    EXPECT_TRUE(
        close(gw.download<float>(), cw.download<float>(), MOERT_F32, 1e-5));
    EXPECT_TRUE(
        close(gs.download<float>(), cs.download<float>(), MOERT_F32, 1e-5));
  }
}

struct AssignCase {
  int64_t T, k, E, capacity, groups;
};

const AssignCase kAssignCases[] = {
    {96, 2, 8, 0, 1},   {1500, 2, 8, 0, 1}, // several chunks per expert
    {200, 8, 64, 0, 1}, {96, 2, 8, 10, 1},
    {96, 2, 8, 3, 4},   {1200, 4, 16, 150, 2},
};

TEST_F(CudaBackendTest, AssignMatchesCpu) {
  unsigned seed = 40;
  for (const AssignCase &c : kAssignCases) {
    SCOPED_TRACE("T=" + std::to_string(c.T) + " k=" + std::to_string(c.k) +
                 " E=" + std::to_string(c.E) +
                 " C=" + std::to_string(c.capacity) +
                 " groups=" + std::to_string(c.groups));
    auto idx = randomIndices(c.T, c.k, c.E, seed++);
    if (c.T == 1500) // skew: expert 0 first choice of most tokens
      for (int64_t t = 0; t < c.T; t += 3)
        if (idx[t * c.k + 1] != 0)
          idx[t * c.k] = 0;
    const int64_t G = c.capacity ? c.groups : 1;
    auto ci = put(*cpu, idx), gi = put(*gpu, idx);
    Buf cp(*cpu, c.T * c.k * 4), cc(*cpu, G * c.E * 4);
    Buf gp(*gpu, c.T * c.k * 4), gc(*gpu, G * c.E * 4);
    ASSERT_OK(cpu->assign(ci->as<int32_t>(), cp.as<int32_t>(), cc.as<int32_t>(),
                          c.T, c.k, c.E, c.capacity, c.groups));
    ASSERT_OK(gpu->assign(gi->as<int32_t>(), gp.as<int32_t>(), gc.as<int32_t>(),
                          c.T, c.k, c.E, c.capacity, c.groups));
    EXPECT_EQ(gp.download<int32_t>(), cp.download<int32_t>());
    EXPECT_EQ(gc.download<int32_t>(), cc.download<int32_t>());
  }
}

TEST_F(CudaBackendTest, ExpertLoadAndLossesMatchCpu) {
  const int64_t T = 300, E = 40, k = 4;
  auto logits = randomVec(T * E, 60, -3.0f, 3.0f);
  auto scores = randomVec(T * E, 61, 0.0f, 1.0f);
  auto idx = randomIndices(T, k, E, 62);
  auto cs = put(*cpu, scores), ci = put(*cpu, idx), cl = put(*cpu, logits);
  auto gs = put(*gpu, scores), gi = put(*gpu, idx), gl = put(*gpu, logits);
  Buf cst(*cpu, 2 * E * 4), gst(*gpu, 2 * E * 4);
  ASSERT_OK(cpu->expertLoad(cs->as<float>(), ci->as<int32_t>(), cst.as<float>(),
                            T, k, E));
  ASSERT_OK(gpu->expertLoad(gs->as<float>(), gi->as<int32_t>(), gst.as<float>(),
                            T, k, E));
  EXPECT_TRUE(
      close(gst.download<float>(), cst.download<float>(), MOERT_F32, 1e-5));
  Buf clb(*cpu, 4), glb(*gpu, 4);
  ASSERT_OK(
      cpu->loadBalanceLoss(cst.as<float>(), clb.as<float>(), E, T, k, 0.01f));
  ASSERT_OK(
      gpu->loadBalanceLoss(gst.as<float>(), glb.as<float>(), E, T, k, 0.01f));
  EXPECT_TRUE(
      close(glb.download<float>(), clb.download<float>(), MOERT_F32, 1e-5));
  Buf cz(*cpu, 4), gz(*gpu, 4);
  ASSERT_OK(cpu->zLoss(cl->as<float>(), cz.as<float>(), T, E, 2 * T, 1e-3f));
  ASSERT_OK(gpu->zLoss(gl->as<float>(), gz.as<float>(), T, E, 2 * T, 1e-3f));
  EXPECT_TRUE(
      close(gz.download<float>(), cz.download<float>(), MOERT_F32, 1e-5));
}

//===--- Permutation
//-----------------------------------------------------------===//

TEST_F(CudaBackendTest, DispatchAndCombineMatchCpu) {
  const int64_t D = 72; // 144 bytes in bf16: 16-byte rows; f32 also
  unsigned seed = 80;
  for (const AssignCase &c : kAssignCases) {
    const int64_t G = c.capacity ? c.groups : 1;
    const int64_t rows = c.capacity ? c.E * G * c.capacity : c.T * c.k;
    auto idx = randomIndices(c.T, c.k, c.E, seed++);
    auto ci = put(*cpu, idx);
    Buf pos(*cpu, c.T * c.k * 4), cnt(*cpu, G * c.E * 4);
    ASSERT_OK(cpu->assign(ci->as<int32_t>(), pos.as<int32_t>(),
                          cnt.as<int32_t>(), c.T, c.k, c.E, c.capacity,
                          c.groups));
    auto positions = pos.download<int32_t>();
    auto weights = randomVec(c.T * c.k, seed++, 0.0f, 1.0f);
    for (int32_t dt : kFloatTypes) {
      for (bool through : {false, true}) {
        SCOPED_TRACE(std::string(name(dt)) + " T=" + std::to_string(c.T) +
                     " C=" + std::to_string(c.capacity) +
                     (through ? " passthrough" : ""));
        auto x = rounded(randomVec(c.T * D, seed++), dt);
        // dispatch is a row copy: compare the stored bytes exactly.
        auto cx = putAs(*cpu, x, dt), gx = putAs(*gpu, x, dt);
        auto gpos = put(*gpu, positions);
        Buf cout(*cpu, rows * D * elemSize(dt)),
            gout(*gpu, rows * D * elemSize(dt));
        ASSERT_OK(cpu->dispatch(cx->get(), pos.as<int32_t>(), cout.get(), c.T,
                                c.k, D, rows, dt));
        ASSERT_OK(gpu->dispatch(gx->get(), gpos->as<int32_t>(), gout.get(), c.T,
                                c.k, D, rows, dt));
        EXPECT_EQ(gout.download<uint8_t>(), cout.download<uint8_t>());

        auto y = rounded(randomVec(rows * D, seed++), dt);
        auto cy = put(*cpu, y), gy = putAs(*gpu, y, dt);
        auto cxf = put(*cpu, x);
        auto cw = put(*cpu, weights), gw = put(*gpu, weights);
        Buf cc(*cpu, c.T * D * 4), gc(*gpu, c.T * D * elemSize(dt));
        ASSERT_OK(cpu->combine(cy->get(), pos.as<int32_t>(), cw->as<float>(),
                               through ? cxf->get() : nullptr, cc.get(), c.T,
                               c.k, D, MOERT_F32));
        ASSERT_OK(gpu->combine(gy->get(), gpos->as<int32_t>(), gw->as<float>(),
                               through ? gx->get() : nullptr, gc.get(), c.T,
                               c.k, D, dt));
        EXPECT_TRUE(close(getAs(gc, dt), cc.download<float>(), dt));
      }
    }
  }
}

TEST_F(CudaBackendTest, CombineHandlesOddRowSizes) {
  // D = 13: no vector path; the scalar kernels must give the same result.
  const int64_t T = 20, k = 2, D = 13, rows = T * k;
  auto idx = randomIndices(T, k, 4, 90);
  auto ci = put(*cpu, idx);
  Buf pos(*cpu, T * k * 4), cnt(*cpu, 16);
  ASSERT_OK(cpu->assign(ci->as<int32_t>(), pos.as<int32_t>(), cnt.as<int32_t>(),
                        T, k, 4, 0, 1));
  auto gpos = put(*gpu, pos.download<int32_t>());
  auto weights = randomVec(T * k, 91);
  auto y = randomVec(rows * D, 92);
  auto cy = put(*cpu, y), gy = put(*gpu, y);
  auto cw = put(*cpu, weights), gw = put(*gpu, weights);
  Buf cc(*cpu, T * D * 4), gc(*gpu, T * D * 4);
  ASSERT_OK(cpu->combine(cy->get(), pos.as<int32_t>(), cw->as<float>(), nullptr,
                         cc.get(), T, k, D, MOERT_F32));
  ASSERT_OK(gpu->combine(gy->get(), gpos->as<int32_t>(), gw->as<float>(),
                         nullptr, gc.get(), T, k, D, MOERT_F32));
  EXPECT_TRUE(close(gc.download<float>(), cc.download<float>(), MOERT_F32));
  Buf cd(*cpu, rows * D * 4), gd(*gpu, rows * D * 4);
  ASSERT_OK(cpu->dispatch(cy->get(), pos.as<int32_t>(), cd.get(), T, k, D, rows,
                          MOERT_F32));
  ASSERT_OK(gpu->dispatch(gy->get(), gpos->as<int32_t>(), gd.get(), T, k, D,
                          rows, MOERT_F32));
  EXPECT_EQ(gd.download<uint8_t>(), cd.download<uint8_t>());
}

//===--- Expert FFN and MLP
//------------------------------------------------------===//

bool gated(int32_t act) {
  return act == MOERT_ACT_SWIGLU || act == MOERT_ACT_GEGLU;
}

struct FfnLayout {
  const char *name;
  int64_t segments, rowsPerExpert; // R = 0: packed
  bool counts;
};

struct FfnDims {
  int64_t E = 4, D = 64, F = 96;
  bool emptyExpert = false; // the last expert gets no rows in any segment
};

/// Runs one expert FFN on the CPU (f32, rounded inputs) and on `g`.
void checkExpertFfn(Backend &cpu, Backend &g, const FfnLayout &L, int32_t act,
                    int32_t dt, unsigned seed,
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
  if (dims.emptyExpert)
    for (int64_t s = 0; s < S; ++s)
      counts[s * E + E - 1] = 0;
  int64_t live = 0;
  for (int32_t c : counts)
    live += c;
  const int64_t totalRows = R ? E * R : live + 5; // packed: 5 dead tail rows
  const float ws = 1.0f / std::sqrt(float(D)), wd = 1.0f / std::sqrt(float(F));
  auto x = rounded(randomVec(totalRows * D, seed + 1), dt);
  auto wg = rounded(randomVec(E * F * D, seed + 2, -ws, ws), dt);
  auto wu = rounded(randomVec(E * F * D, seed + 3, -ws, ws), dt);
  auto wdn = rounded(randomVec(E * D * F, seed + 4, -wd, wd), dt);
  const bool glu = gated(act);

  auto cx = put(cpu, x), cg = put(cpu, wg), cu = put(cpu, wu),
       cd = put(cpu, wdn), cc = put(cpu, counts);
  Buf cy(cpu, totalRows * D * 4);
  ASSERT_OK(cpu.expertFfn(cx->get(), L.counts ? cc->as<int32_t>() : nullptr,
                          glu ? cg->get() : nullptr, cu->get(), cd->get(),
                          cy.get(), nullptr, nullptr, E, S, R, totalRows, D, F,
                          act, MOERT_F32));
  auto gx = putAs(g, x, dt), gg = putAs(g, wg, dt), gu = putAs(g, wu, dt),
       gd = putAs(g, wdn, dt), gc = put(g, counts);
  Buf gy(g, totalRows * D * elemSize(dt));
  ASSERT_OK(g.expertFfn(gx->get(), L.counts ? gc->as<int32_t>() : nullptr,
                        glu ? gg->get() : nullptr, gu->get(), gd->get(),
                        gy.get(), nullptr, nullptr, E, S, R, totalRows, D, F,
                        act, dt));
  EXPECT_TRUE(close(getAs(gy, dt), cy.download<float>(), dt));
}

const FfnLayout kLayouts[] = {
    {"packed", 1, 0, true},
    {"packed, 3 segments", 3, 0, true},
    {"capacity", 2, 14, true},
    {"capacity, no counts", 2, 14, false},
};

TEST_F(CudaBackendTest, ExpertFfnMatchesCpu) {
  unsigned seed = 100;
  for (const FfnLayout &L : kLayouts) {
    for (int32_t act :
         {MOERT_ACT_RELU, MOERT_ACT_GELU, MOERT_ACT_SWIGLU, MOERT_ACT_GEGLU}) {
      for (int32_t dt : kFloatTypes) {
        if (dt != MOERT_F32 && act != MOERT_ACT_SWIGLU && act != MOERT_ACT_GELU)
          continue;
        SCOPED_TRACE(std::string(L.name) + " act=" + std::to_string(act) + " " +
                     name(dt));
        checkExpertFfn(*cpu, *gpu, L, act, dt, seed += 10);
      }
    }
  }
}

TEST_F(CudaBackendTest, ExpertFfnGroupedAndLoopGemmsAgree) {
  unsigned seed = 300;
  for (const char *mode : {"grouped", "loop"}) {
    auto g = gpuWithGemm(mode);
    ASSERT_TRUE(g);
    for (const FfnLayout &L : kLayouts) {
      for (int32_t dt : {MOERT_F32, MOERT_BF16}) {
        SCOPED_TRACE(std::string(mode) + " " + L.name + " " + name(dt));
        checkExpertFfn(*cpu, *g, L, MOERT_ACT_SWIGLU, dt, seed += 10);
      }
    }
  }
}

// Counts live in device memory, so only the backend can check them; the
// checks of the arguments themselves are the context's (ContextTest.cpp).
TEST_F(CudaBackendTest, ExpertFfnRejectsBadCounts) {
  const int64_t E = 2, D = 16, F = 16;
  std::vector<int32_t> counts = {3, 9}; // sums to 12 > total_rows 10
  auto gc = put(*gpu, counts);
  Buf x(*gpu, 10 * D * 4), w(*gpu, E * F * D * 4), y(*gpu, 10 * D * 4);
  Status s = gpu->expertFfn(x.get(), gc->as<int32_t>(), w.get(), w.get(),
                            w.get(), y.get(), nullptr, nullptr, E, 1, 0, 10, D,
                            F, MOERT_ACT_SWIGLU, MOERT_F32);
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
  EXPECT_NE(s.message().find("moert_expert_ffn"), std::string::npos)
      << s.message();
}

TEST_F(CudaBackendTest, MlpMatchesCpu) {
  const int64_t T = 50, D = 64, F = 96;
  unsigned seed = 500;
  for (int32_t act : {MOERT_ACT_RELU, MOERT_ACT_SWIGLU}) {
    for (bool sg : {false, true}) {
      for (int32_t dt : kFloatTypes) {
        SCOPED_TRACE(std::string(name(dt)) + " act=" + std::to_string(act) +
                     (sg ? " sigmoid gate" : ""));
        const float ws = 1.0f / std::sqrt(float(D));
        auto x = rounded(randomVec(T * D, seed++), dt);
        auto wg = rounded(randomVec(F * D, seed++, -ws, ws), dt);
        auto wu = rounded(randomVec(F * D, seed++, -ws, ws), dt);
        auto wd = rounded(randomVec(D * F, seed++, -0.1f, 0.1f), dt);
        auto gate = rounded(randomVec(D, seed++, -ws, ws), dt);
        const bool glu = gated(act);
        auto cx = put(*cpu, x), cg = put(*cpu, wg), cu = put(*cpu, wu),
             cd = put(*cpu, wd), cs = put(*cpu, gate);
        Buf cy(*cpu, T * D * 4);
        ASSERT_OK(cpu->mlp(cx->get(), glu ? cg->get() : nullptr, cu->get(),
                           cd->get(), sg ? cs->get() : nullptr, cy.get(), T, D,
                           F, act, MOERT_F32));
        auto gx = putAs(*gpu, x, dt), gg = putAs(*gpu, wg, dt),
             gu = putAs(*gpu, wu, dt), gd = putAs(*gpu, wd, dt),
             gs = putAs(*gpu, gate, dt);
        Buf gy(*gpu, T * D * elemSize(dt));
        ASSERT_OK(gpu->mlp(gx->get(), glu ? gg->get() : nullptr, gu->get(),
                           gd->get(), sg ? gs->get() : nullptr, gy.get(), T, D,
                           F, act, dt));
        EXPECT_TRUE(close(getAs(gy, dt), cy.download<float>(), dt));
      }
    }
  }
}

//===--- Backend creation
//---------------------------------------------------------===//

TEST_F(CudaBackendTest, DeviceIndexOutOfRangeIsInvalid) {
  int n = 0;
  ASSERT_EQ(cudaGetDeviceCount(&n), cudaSuccess);
  BackendOptions o;
  o.deviceIndex = n;
  std::unique_ptr<Backend> b;
  Status s = moert::createCudaBackend(o, b);
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID) << s.message();
  EXPECT_FALSE(b);
}

TEST_F(CudaBackendTest, AllocatorReusesFreedBlocks) {
  void *a = nullptr, *b = nullptr;
  ASSERT_OK(gpu->alloc(1 << 20, &a));
  gpu->free(a);
  ASSERT_OK(gpu->alloc(1 << 20, &b));
  EXPECT_EQ(a, b); // served from the cache, no new cudaMalloc
  gpu->free(b);
}

//===--- Edge cases (ties, NaN, k > 32, alignment, many groups)
//--------===//

/// Top-k of `logits` / `bias` on both backends: same indices, weights and
/// scores (NaN where the CPU has NaN).
void checkTopk(Backend &cpu, Backend &gpu, const TopkCase &c,
               const std::vector<float> &logits,
               const std::vector<float> &bias) {
  auto cl = put(cpu, logits), cb = put(cpu, bias);
  auto gl = put(gpu, logits), gb = put(gpu, bias);
  Buf cw(cpu, c.T * c.k * 4), ci(cpu, c.T * c.k * 4), cs(cpu, c.T * c.E * 4);
  Buf gw(gpu, c.T * c.k * 4), gi(gpu, c.T * c.k * 4), gs(gpu, c.T * c.E * 4);
  ASSERT_OK(cpu.topk(cl->as<float>(), c.bias ? cb->as<float>() : nullptr,
                     cw.as<float>(), ci.as<int32_t>(), cs.as<float>(), c.T, c.E,
                     c.k, c.scoreFn, c.renormalize, c.scaling, c.groups, c.kept,
                     c.groupScore));
  ASSERT_OK(gpu.topk(gl->as<float>(), c.bias ? gb->as<float>() : nullptr,
                     gw.as<float>(), gi.as<int32_t>(), gs.as<float>(), c.T, c.E,
                     c.k, c.scoreFn, c.renormalize, c.scaling, c.groups, c.kept,
                     c.groupScore));
  EXPECT_EQ(gi.download<int32_t>(), ci.download<int32_t>());
  EXPECT_TRUE(
      close(gw.download<float>(), cw.download<float>(), MOERT_F32, 1e-5));
  EXPECT_TRUE(
      close(gs.download<float>(), cs.download<float>(), MOERT_F32, 1e-5));
}

TEST_F(CudaBackendTest, TopkBreaksTiesTowardsTheLowerIndex) {
  // Logits on a coarse grid: many exact ties in every row (equal logits
  // give bit-equal scores on both backends). E = 70 is not a multiple of 32.
  const TopkCase cases[] = {
      {64, 70, 6, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0, false},
      {64, 70, 7, MOERT_SCORE_SIGMOID, 0, 1.0f, 0, 0, 0, false},
      // Group ties too: groups of 10, every group score on the grid.
      {64, 70, 5, MOERT_SCORE_SIGMOID, 1, 1.0f, 7, 3, MOERT_GROUP_SCORE_MAX,
       false},
      {64, 70, 5, MOERT_SCORE_SOFTMAX, 1, 1.0f, 7, 2,
       MOERT_GROUP_SCORE_TOP2_SUM, false},
  };
  unsigned seed = 900;
  for (const TopkCase &c : cases) {
    SCOPED_TRACE("E=" + std::to_string(c.E) + " k=" + std::to_string(c.k) +
                 " groups=" + std::to_string(c.groups));
    auto logits = randomVec(c.T * c.E, seed++, -2.0f, 2.0f);
    for (float &l : logits)
      l = std::round(l * 2.0f) / 2.0f;
    checkTopk(*cpu, *gpu, c, logits, std::vector<float>(c.E, 0.0f));
  }
}

TEST_F(CudaBackendTest, TopkWithKAbove32) {
  const TopkCase cases[] = {
      {40, 96, 40, MOERT_SCORE_SOFTMAX, 1, 1.0f, 0, 0, 0, true},
      {40, 70, 64, MOERT_SCORE_SIGMOID, 0, 2.0f, 0, 0, 0, false},
      {40, 128, 36, MOERT_SCORE_SIGMOID, 1, 2.5f, 8, 4,
       MOERT_GROUP_SCORE_TOP2_SUM, true},
  };
  unsigned seed = 950;
  for (const TopkCase &c : cases) {
    SCOPED_TRACE("E=" + std::to_string(c.E) + " k=" + std::to_string(c.k));
    // Two statements: the order of the seeds must not depend on the order in
    // which the compiler evaluates function arguments.
    std::vector<float> logits = randomVec(c.T * c.E, seed++, -4.0f, 4.0f);
    std::vector<float> bias = randomVec(c.E, seed++, -0.1f, 0.1f);
    checkTopk(*cpu, *gpu, c, logits, bias);
  }
}

TEST_F(CudaBackendTest, TopkSortsNanLast) {
  // Sigmoid keeps a NaN logit to its own expert: the CPU orders a NaN
  // selection score as -inf (picked last, lower index first).
  const TopkCase c{32, 40, 4, MOERT_SCORE_SIGMOID, 1, 1.0f, 0, 0, 0, true};
  auto logits = randomVec(c.T * c.E, 970, -4.0f, 4.0f);
  for (int64_t t = 0; t < c.T; ++t) {
    logits[t * c.E] = std::nanf("");
    logits[t * c.E + 1 + t % 39] = -std::nanf(""); // negative NaN too
  }
  auto bias = randomVec(c.E, 971, -0.1f, 0.1f);
  bias[7] = std::nanf("");
  checkTopk(*cpu, *gpu, c, logits, bias);
  // Rows that are NaN except for k experts: the NaN experts come last.
  TopkCase few = c;
  few.k = 6;
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t e = 4; e < c.E; ++e)
      logits[t * c.E + e] = std::nanf("");
  checkTopk(*cpu, *gpu, few, logits, std::vector<float>(c.E, 0.0f));
}

TEST_F(CudaBackendTest, TopkNeverPicksMaskedGroups) {
  // Groups {0,1} {2,3} {4,5} {6,7}, keep 2 by max score, k = 4 = every kept
  // expert. Expert 5 (kept group) has a -inf / NaN selection score: it must
  // still be picked (4th) rather than masked expert 2 of equal key value.
  const TopkCase c{4,    8, 4, MOERT_SCORE_SIGMOID,   1,
                   1.0f, 4, 2, MOERT_GROUP_SCORE_MAX, true};
  const float row[8] = {3.0f, 2.0f, -3.0f, -3.0f, 2.5f, 0.0f, -3.0f, -3.0f};
  std::vector<float> logits;
  for (int64_t t = 0; t < c.T; ++t)
    logits.insert(logits.end(), row, row + 8);
  for (float bad : {-INFINITY, std::nanf("")}) {
    SCOPED_TRACE(bad);
    std::vector<float> bias(8, 0.0f);
    bias[5] = bad;
    checkTopk(*cpu, *gpu, c, logits, bias);
  }
}

TEST_F(CudaBackendTest, AssignEdgeCases) {
  const AssignCase cases[] = {
      {700, 3, 70, 0, 1},      // E not a multiple of 32, empty experts
      {257, 2, 70, 0, 1},      // T*k just past one 512-assignment chunk
      {1000, 3, 70, 20, 2},    // capacity, 3 chunks per group
      {70000, 1, 2, 1, 70000}, // more token groups than gridDim.y allows
  };
  unsigned seed = 990;
  for (const AssignCase &c : cases) {
    SCOPED_TRACE("T=" + std::to_string(c.T) + " k=" + std::to_string(c.k) +
                 " E=" + std::to_string(c.E) +
                 " C=" + std::to_string(c.capacity) +
                 " groups=" + std::to_string(c.groups));
    auto idx = randomIndices(c.T, c.k, c.E, seed++);
    if (c.E == 70) { // skew: experts 0 and 69 take most first choices
      for (int64_t t = 0; t < c.T; ++t) {
        const int32_t hot = t % 2 ? 0 : 69;
        bool taken = false; // keep the k experts of a token distinct
        for (int64_t j = 1; j < c.k; ++j)
          taken = taken || idx[t * c.k + j] == hot;
        if (t % 4 != 0 && !taken)
          idx[t * c.k] = hot;
      }
    }
    const int64_t G = c.capacity ? c.groups : 1;
    auto ci = put(*cpu, idx), gi = put(*gpu, idx);
    Buf cp(*cpu, c.T * c.k * 4), cc(*cpu, G * c.E * 4);
    Buf gp(*gpu, c.T * c.k * 4), gc(*gpu, G * c.E * 4);
    ASSERT_OK(cpu->assign(ci->as<int32_t>(), cp.as<int32_t>(), cc.as<int32_t>(),
                          c.T, c.k, c.E, c.capacity, c.groups));
    ASSERT_OK(gpu->assign(gi->as<int32_t>(), gp.as<int32_t>(), gc.as<int32_t>(),
                          c.T, c.k, c.E, c.capacity, c.groups));
    EXPECT_EQ(gp.download<int32_t>(), cp.download<int32_t>());
    EXPECT_EQ(gc.download<int32_t>(), cc.download<int32_t>());
  }
}

TEST_F(CudaBackendTest, RowChunksMatchCpu) {
  // moe.chunk_counts / chunk_rows / join_rows: 6 segments (one empty, one
  // smaller than the chunks), rows of 40 bytes (4-byte units) and 6 bytes
  // (2-byte units), 3 chunks; every chunk and the join byte for byte.
  const std::vector<int32_t> counts = {5, 0, 2, 9, 1, 7};
  const int64_t segments = int64_t(counts.size()), chunks = 3;
  const int64_t rows = 30, part = (rows + segments * (chunks - 1)) / chunks;
  auto cc = put(*cpu, counts), gc = put(*gpu, counts);
  for (int64_t rowBytes : {int64_t(40), int64_t(6)}) {
    SCOPED_TRACE(rowBytes);
    std::vector<uint8_t> src(size_t(rows * rowBytes));
    for (size_t i = 0; i < src.size(); ++i)
      src[i] = uint8_t(i * 29 + 7);
    auto cs = put(*cpu, src), gs = put(*gpu, src);
    Buf cj(*cpu, rows * rowBytes), gj(*gpu, rows * rowBytes);
    std::vector<std::unique_ptr<Buf>> cparts, gparts;
    for (int64_t i = 0; i < chunks; ++i) {
      Buf cn(*cpu, segments * 4), gn(*gpu, segments * 4);
      ASSERT_OK(cpu->chunkCounts(cc->as<int32_t>(), cn.as<int32_t>(), segments,
                                 i, chunks));
      ASSERT_OK(gpu->chunkCounts(gc->as<int32_t>(), gn.as<int32_t>(), segments,
                                 i, chunks));
      EXPECT_EQ(gn.download<int32_t>(), cn.download<int32_t>());
      cparts.push_back(std::make_unique<Buf>(*cpu, part * rowBytes));
      gparts.push_back(std::make_unique<Buf>(*gpu, part * rowBytes));
      ASSERT_OK(cpu->chunkRowsByCounts(cs->get(), cparts.back()->get(),
                                       cc->as<int32_t>(), segments, rowBytes,
                                       rows, part, i, chunks, false));
      ASSERT_OK(gpu->chunkRowsByCounts(gs->get(), gparts.back()->get(),
                                       gc->as<int32_t>(), segments, rowBytes,
                                       rows, part, i, chunks, false));
      EXPECT_EQ(gparts.back()->download<uint8_t>(),
                cparts.back()->download<uint8_t>());
    }
    for (int64_t i = 0; i < chunks; ++i) {
      ASSERT_OK(cpu->chunkRowsByCounts(cparts[i]->get(), cj.get(),
                                       cc->as<int32_t>(), segments, rowBytes,
                                       part, rows, i, chunks, true));
      ASSERT_OK(gpu->chunkRowsByCounts(gparts[i]->get(), gj.get(),
                                       gc->as<int32_t>(), segments, rowBytes,
                                       part, rows, i, chunks, true));
    }
    std::vector<uint8_t> want = src; // 24 counted rows, then zeros
    std::fill(want.begin() + 24 * rowBytes, want.end(), uint8_t(0));
    EXPECT_EQ(cj.download<uint8_t>(), want);
    EXPECT_EQ(gj.download<uint8_t>(), want);
  }
}

TEST_F(CudaBackendTest, CopiesAsCollectivesIssueThem) {
  std::vector<uint8_t> src(1000);
  for (size_t i = 0; i < src.size(); ++i)
    src[i] = uint8_t(i * 37 + 1);
  auto g = put(*gpu, src);
  // One row with pitch 0 (Collectives.cpp's plain staging copy).
  Buf one(*gpu, src.size());
  ASSERT_OK(gpu->copy2D(one.get(), 0, g->get(), 0, int64_t(src.size()), 1));
  EXPECT_EQ(one.download<uint8_t>(), src);
  // Contiguous rows (pitch == width).
  Buf rows(*gpu, src.size());
  ASSERT_OK(gpu->copy2D(rows.get(), 100, g->get(), 100, 100, 10));
  EXPECT_EQ(rows.download<uint8_t>(), src);
  // Overlapping copies behave like memmove (the CPU backend's copy).
  for (int64_t shift : {int64_t(8), int64_t(-8)}) {
    SCOPED_TRACE(shift);
    auto m = put(*gpu, src);
    char *base = m->as<char>() + 16;
    ASSERT_OK(gpu->copy(base + shift, base, 900));
    std::vector<uint8_t> want = src;
    std::memmove(want.data() + 16 + shift, src.data() + 16, 900);
    EXPECT_EQ(m->download<uint8_t>(), want);
  }
}

TEST_F(CudaBackendTest, DispatchAndCombineUnalignedRows) {
  // Row sizes that are not multiples of 16 bytes, and base pointers that
  // are only element-aligned: every copy and load width must still be right.
  const int64_t T = 40, k = 2, E = 6, rows = T * k;
  auto idx = randomIndices(T, k, E, 1100);
  auto ci = put(*cpu, idx);
  Buf pos(*cpu, T * k * 4), cnt(*cpu, E * 4);
  ASSERT_OK(cpu->assign(ci->as<int32_t>(), pos.as<int32_t>(), cnt.as<int32_t>(),
                        T, k, E, 0, 1));
  auto gpos = put(*gpu, pos.download<int32_t>());
  auto weights = randomVec(T * k, 1101, 0.0f, 1.0f);
  auto cw = put(*cpu, weights), gw = put(*gpu, weights);
  struct Case {
    int32_t dt;
    int64_t D, offsetElems;
  };
  for (Case c : {Case{MOERT_BF16, 13, 0}, Case{MOERT_BF16, 36, 0},
                 Case{MOERT_BF16, 64, 1}, Case{MOERT_F32, 64, 1},
                 Case{MOERT_F32, 6, 0}, Case{MOERT_F16, 40, 3}}) {
    SCOPED_TRACE(std::string(name(c.dt)) + " D=" + std::to_string(c.D) +
                 " offset=" + std::to_string(c.offsetElems));
    const int64_t es = int64_t(elemSize(c.dt)), off = c.offsetElems * es;
    auto x = rounded(randomVec(T * c.D, 1102 + unsigned(c.D)), c.dt);
    auto y = rounded(randomVec(rows * c.D, 1103 + unsigned(c.D)), c.dt);
    auto cx = put(*cpu, x), cy = put(*cpu, y);
    // Device copies at byte offset `off` of their blocks.
    auto at = [&](const std::vector<float> &v, std::unique_ptr<Buf> &b) {
      auto bytes = encode(v, c.dt);
      b = std::make_unique<Buf>(*gpu, bytes.size() + 64);
      EXPECT_TRUE(gpu->copyToDevice(b->as<char>() + off, bytes.data(),
                                    int64_t(bytes.size()))
                      .isOk());
      return b->as<char>() + off;
    };
    std::unique_ptr<Buf> gxb, gyb;
    char *gx = at(x, gxb), *gy = at(y, gyb);
    Buf gdb(*gpu, rows * c.D * es + 64), gcb(*gpu, T * c.D * es + 64);
    char *gd = gdb.as<char>() + off, *gc = gcb.as<char>() + off;

    Buf cd(*cpu, rows * c.D * 4);
    ASSERT_OK(cpu->dispatch(cx->get(), pos.as<int32_t>(), cd.get(), T, k, c.D,
                            rows, MOERT_F32));
    ASSERT_OK(
        gpu->dispatch(gx, gpos->as<int32_t>(), gd, T, k, c.D, rows, c.dt));
    std::vector<uint8_t> got(size_t(rows * c.D * es));
    ASSERT_OK(gpu->copyToHost(got.data(), gd, int64_t(got.size())));
    EXPECT_EQ(decode(got, c.dt), cd.download<float>());

    Buf cc(*cpu, T * c.D * 4);
    ASSERT_OK(cpu->combine(cy->get(), pos.as<int32_t>(), cw->as<float>(),
                           cx->get(), cc.get(), T, k, c.D, MOERT_F32));
    ASSERT_OK(gpu->combine(gy, gpos->as<int32_t>(), gw->as<float>(), gx, gc, T,
                           k, c.D, c.dt));
    std::vector<uint8_t> comb(size_t(T * c.D * es));
    ASSERT_OK(gpu->copyToHost(comb.data(), gc, int64_t(comb.size())));
    EXPECT_TRUE(close(decode(comb, c.dt), cc.download<float>(), c.dt));
  }
}

TEST_F(CudaBackendTest, ElementwiseOnUnalignedPointers) {
  const int64_t T = 9, D = 24, n = T * D;
  for (int32_t dt : kFloatTypes) {
    SCOPED_TRACE(name(dt));
    const int64_t es = int64_t(elemSize(dt));
    auto a = rounded(randomVec(n, 1200), dt),
         b = rounded(randomVec(n, 1201), dt);
    auto w = rounded(randomVec(D, 1202, 0.5f, 1.5f), dt);
    auto ca = put(*cpu, a), cb = put(*cpu, b), cw = put(*cpu, w);
    Buf cy(*cpu, n * 4), cr(*cpu, n * 4);
    ASSERT_OK(cpu->add(ca->get(), cb->get(), cy.get(), n, MOERT_F32));
    ASSERT_OK(
        cpu->rmsnorm(ca->get(), cw->get(), cr.get(), T, D, 1e-6f, MOERT_F32));
    // Everything one element past a 16-byte boundary.
    Buf ga(*gpu, (n + 8) * es), gb(*gpu, (n + 8) * es), gy(*gpu, (n + 8) * es);
    Buf gwb(*gpu, (D + 8) * es);
    char *pa = ga.as<char>() + es, *pb = gb.as<char>() + es,
         *py = gy.as<char>() + es, *pw = gwb.as<char>() + es;
    auto ea = encode(a, dt), eb = encode(b, dt), ew = encode(w, dt);
    ASSERT_OK(gpu->copyToDevice(pa, ea.data(), int64_t(ea.size())));
    ASSERT_OK(gpu->copyToDevice(pb, eb.data(), int64_t(eb.size())));
    ASSERT_OK(gpu->copyToDevice(pw, ew.data(), int64_t(ew.size())));
    std::vector<uint8_t> got(size_t(n * es));
    ASSERT_OK(gpu->add(pa, pb, py, n, dt));
    ASSERT_OK(gpu->copyToHost(got.data(), py, int64_t(got.size())));
    EXPECT_TRUE(close(decode(got, dt), cy.download<float>(), dt));
    ASSERT_OK(gpu->rmsnorm(pa, pw, py, T, D, 1e-6f, dt));
    ASSERT_OK(gpu->copyToHost(got.data(), py, int64_t(got.size())));
    EXPECT_TRUE(close(decode(got, dt), cr.download<float>(), dt));
  }
}

TEST_F(CudaBackendTest, ExpertFfnOddSizesAndManySegments) {
  unsigned seed = 1300;
  // bf16 rows of 40 and 72 bytes: a forced grouped GEMM must fall back to
  // the loop (misaligned 16-bit operands are a device fault in grouped
  // form). Many segments: 40 GEMM problems, grouped in auto mode, with an
  // expert that gets no rows at all.
  FfnDims odd;
  odd.E = 3;
  odd.D = 20;
  odd.F = 36;
  FfnDims many;
  many.E = 5;
  many.emptyExpert = true;
  const FfnLayout packed8{"packed, 8 segments", 8, 0, true};
  const FfnLayout cap8{"capacity, 8 segments", 8, 24, true};
  for (const char *mode : {"grouped", "auto"}) {
    auto g = gpuWithGemm(mode);
    ASSERT_TRUE(g);
    for (int32_t dt : {MOERT_F32, MOERT_BF16}) {
      for (const FfnLayout &L : {kLayouts[0], kLayouts[2], packed8, cap8}) {
        SCOPED_TRACE(std::string(mode) + " " + L.name + " " + name(dt));
        checkExpertFfn(*cpu, *g, L, MOERT_ACT_SWIGLU, dt, seed += 10, odd);
        checkExpertFfn(*cpu, *g, L, MOERT_ACT_GELU, dt, seed += 10, many);
      }
    }
  }
}

} // namespace
} // namespace moert_cuda_test
