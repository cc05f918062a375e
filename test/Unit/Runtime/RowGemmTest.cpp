//===- RowGemmTest.cpp - The row-independent SGEMM of the expert FFN ------===//
//
// RowGemm (runtime/cpu/RowGemm.h) against a float64 reference, and its
// contract bit for bit: every element is the ascending fma chain over k, so
// a row does not depend on the call's row count, its offset in the call, the
// thread count or the kernel path (AVX2 or portable); then the expert FFN
// built on it, cut into chunks as the backend and moe-overlap cut it.
//
//===----------------------------------------------------------------------===//
#include "cpu/RowGemm.h"
#include "RuntimeTestUtil.h"
#include "cpu/CpuBackend.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

using namespace moert_test;
using moert::cpu::RowGemm;
using moert::cpu::RowGemmPath;

namespace {

std::vector<RowGemmPath> paths() {
  std::vector<RowGemmPath> p{RowGemmPath::Portable};
  if (moert::cpu::rowGemmHasAvx2())
    p.push_back(RowGemmPath::Avx2);
  return p;
}

/// c = a . b^T through RowGemm.
std::vector<float> nt(RowGemm &g, const float *a, const float *b, int64_t M,
                      int64_t N, int64_t K, int threads, RowGemmPath path) {
  std::vector<float> c(M * N, std::numeric_limits<float>::quiet_NaN());
  moert::Status s = g.nt(a, b, c.data(), M, N, K, threads, "test", path);
  EXPECT_TRUE(s.isOk()) << s.message();
  return c;
}

/// The element the contract names: acc = fma(a[m,k], b[n,k], acc) for
/// k = 0 .. K-1 from acc = 0.
float fmaChain(const float *a, const float *b, int64_t K) {
  float acc = 0.0f;
  for (int64_t k = 0; k < K; ++k)
    acc = std::fma(a[k], b[k], acc);
  return acc;
}

bool sameBits(const float *x, const float *y, int64_t n) {
  return n == 0 || std::memcmp(x, y, n * sizeof(float)) == 0;
}

// Shapes around every edge: the 6 x 16 register tile, the 96-row packing
// block and the 256-wide k block.
const int64_t kSizes[] = {1, 7, 13, 33};
const std::tuple<int64_t, int64_t, int64_t> kLarge[] = {
    {97, 35, 257}, {200, 50, 600}, {6, 16, 256}, {96, 17, 512}};

class RowGemmShapes
    : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(RowGemmShapes, MatchesFloat64AndTheFmaChainOnEveryPath) {
  auto [M, N, K] = GetParam();
  std::vector<float> a = randomVec(M * K, 1), b = randomVec(N * K, 2);
  RowGemm g;
  for (RowGemmPath path : paths())
    for (int threads : {1, 3}) {
      SCOPED_TRACE(std::string(moert::cpu::rowGemmPathName(path)) + ", " +
                   std::to_string(threads) + " threads");
      std::vector<float> c = nt(g, a.data(), b.data(), M, N, K, threads, path);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double ref = 0, mag = 0;
          for (int64_t k = 0; k < K; ++k) {
            ref += double(a[m * K + k]) * b[n * K + k];
            mag += std::fabs(double(a[m * K + k]) * b[n * K + k]);
          }
          float got = c[m * N + n];
          ASSERT_NEAR(got, ref, (K + 1) * 1.2e-7 * mag + 1e-30)
              << "c[" << m << "," << n << "]";
          float want = fmaChain(&a[m * K], &b[n * K], K);
          ASSERT_EQ(std::memcmp(&got, &want, sizeof got), 0)
              << "c[" << m << "," << n << "] = " << got
              << " is not the fma chain's " << want;
        }
    }
}

std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes() {
  std::vector<std::tuple<int64_t, int64_t, int64_t>> s;
  for (int64_t M : kSizes)
    for (int64_t N : kSizes)
      for (int64_t K : kSizes)
        s.emplace_back(M, N, K);
  for (auto t : kLarge)
    s.push_back(t);
  return s;
}

INSTANTIATE_TEST_SUITE_P(Shapes, RowGemmShapes, ::testing::ValuesIn(shapes()),
                         [](const auto &i) {
                           return "M" + std::to_string(std::get<0>(i.param)) +
                                  "N" + std::to_string(std::get<1>(i.param)) +
                                  "K" + std::to_string(std::get<2>(i.param));
                         });

TEST(RowGemm, RowsAreTheSameBitsInCallsOfAnySizeOffsetAndThreads) {
  // 200 rows in one call, then in pieces of every size listed starting at
  // offsets that are and are not multiples of any row block.
  const int64_t M = 200, N = 45, K = 300;
  std::vector<float> a = randomVec(M * K, 3), b = randomVec(N * K, 4);
  RowGemm g;
  std::vector<float> whole =
      nt(g, a.data(), b.data(), M, N, K, 1, RowGemmPath::Portable);
  for (RowGemmPath path : paths())
    for (int threads : {1, 2, 3, 4})
      for (int64_t rows : {1, 5, 6, 7, 12, 13, 95, 96, 97, 199}) {
        SCOPED_TRACE(std::string(moert::cpu::rowGemmPathName(path)) + ", " +
                     std::to_string(threads) + " threads, " +
                     std::to_string(rows) + " rows a call");
        for (int64_t off = 0; off < M; off += rows) {
          int64_t m = std::min(rows, M - off);
          std::vector<float> part =
              nt(g, a.data() + off * K, b.data(), m, N, K, threads, path);
          ASSERT_TRUE(sameBits(part.data(), whole.data() + off * N, m * N))
              << "rows " << off << ".." << off + m;
        }
        // And a call that starts at an odd offset and stops short of M.
        std::vector<float> mid =
            nt(g, a.data() + 37 * K, b.data(), 101, N, K, threads, path);
        ASSERT_TRUE(sameBits(mid.data(), whole.data() + 37 * N, 101 * N));
      }
}

TEST(RowGemm, NnIsNtOfTheTransposeAndAccumulatesFromC) {
  // c = a . b with b [K, N] (the backward's dh = dy.down, dx = du.up): the
  // bits of nt with b^T, on every path, thread count and row split; with
  // accumulate, each element's fma chain starts from c's value.
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{13, 33, 7},
                         {97, 35, 257},
                         {6, 16, 256},
                         {200, 17, 300}}) {
    SCOPED_TRACE("M" + std::to_string(M) + "N" + std::to_string(N) + "K" +
                 std::to_string(K));
    std::vector<float> a = randomVec(M * K, 5), b = randomVec(K * N, 6),
                       c0 = randomVec(M * N, 7);
    std::vector<float> bt(N * K);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < N; ++n)
        bt[n * K + k] = b[k * N + n];
    RowGemm g;
    std::vector<float> want =
        nt(g, a.data(), bt.data(), M, N, K, 1, RowGemmPath::Portable);
    for (RowGemmPath path : paths())
      for (int threads : {1, 3})
        for (int64_t rows : {M, int64_t(5)}) {
          std::vector<float> c(M * N, std::numeric_limits<float>::quiet_NaN());
          std::vector<float> acc = c0;
          for (int64_t off = 0; off < M; off += rows) {
            int64_t m = std::min(rows, M - off);
            ASSERT_TRUE(g.nn(a.data() + off * K, b.data(), c.data() + off * N,
                             m, N, K, threads, "test", false, path)
                            .isOk());
            ASSERT_TRUE(g.nn(a.data() + off * K, b.data(), acc.data() + off * N,
                             m, N, K, threads, "test", true, path)
                            .isOk());
          }
          ASSERT_TRUE(sameBits(c.data(), want.data(), M * N))
              << moert::cpu::rowGemmPathName(path) << ", " << threads
              << " threads, " << rows << " rows a call";
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              float chain = c0[m * N + n];
              for (int64_t k = 0; k < K; ++k)
                chain = std::fma(a[m * K + k], b[k * N + n], chain);
              ASSERT_EQ(std::memcmp(&chain, &acc[m * N + n], sizeof chain), 0)
                  << "accumulated c[" << m << "," << n << "]";
            }
        }
  }
}

TEST(RowGemm, PackedBGivesTheSameBits) {
  // b packed once (RowGemm::pack, on any threads) for calls of any rows:
  // the bits of the call that packs b itself. N = 45 ends in a partial
  // panel, K = 600 in a partial k block.
  const int64_t M = 40, N = 45, K = 600;
  std::vector<float> a = randomVec(M * K, 21), b = randomVec(N * K, 22);
  RowGemm g;
  for (RowGemmPath path : paths())
    for (int packThreads : {1, 3}) {
      moert::cpu::PackedB packed;
      ASSERT_TRUE(
          RowGemm::pack(b.data(), N, K, packThreads, "test", packed, path)
              .isOk());
      EXPECT_EQ(packed.source(), b.data());
      for (int threads : {1, 2})
        for (int64_t rows : {1, 6, 13, 40}) {
          SCOPED_TRACE(std::string(moert::cpu::rowGemmPathName(path)) +
                       ", pack on " + std::to_string(packThreads) + ", " +
                       std::to_string(threads) + " threads, " +
                       std::to_string(rows) + " rows");
          std::vector<float> want =
              nt(g, a.data(), b.data(), rows, N, K, threads, path);
          std::vector<float> got(rows * N,
                                 std::numeric_limits<float>::quiet_NaN());
          ASSERT_TRUE(
              g.nt(a.data(), packed, got.data(), rows, threads, "test", path)
                  .isOk());
          ASSERT_TRUE(sameBits(got.data(), want.data(), rows * N));
        }
    }
}

TEST(RowGemm, ANonFiniteRowStaysInItsRow) {
  // The padding of edge tiles multiplies zeros with other rows' values: a
  // NaN or infinity must reach only its own row.
  const int64_t M = 9, N = 20, K = 40;
  std::vector<float> a = randomVec(M * K, 5), b = randomVec(N * K, 6);
  RowGemm g;
  std::vector<float> clean =
      nt(g, a.data(), b.data(), M, N, K, 1, RowGemmPath::Portable);
  a[7 * K + 3] = std::numeric_limits<float>::quiet_NaN();
  a[8 * K + 5] = std::numeric_limits<float>::infinity();
  for (RowGemmPath path : paths()) {
    std::vector<float> c = nt(g, a.data(), b.data(), M, N, K, 2, path);
    ASSERT_TRUE(sameBits(c.data(), clean.data(), 7 * N));
    for (int64_t n = 0; n < N; ++n)
      EXPECT_TRUE(std::isnan(c[7 * N + n]));
  }
}

TEST(RowGemm, AutoPathFollowsTheEnvironment) {
  // MOERT_ROWGEMM=portable (ctest moe-unittests-rowgemm-portable) forces the
  // portable path; otherwise AVX2 wherever the CPU has it.
  const char *v = std::getenv("MOERT_ROWGEMM");
  bool portable =
      (v && std::string(v) == "portable") || !moert::cpu::rowGemmHasAvx2();
  EXPECT_EQ(moert::cpu::rowGemmAutoPath(),
            portable ? RowGemmPath::Portable : RowGemmPath::Avx2);
}

TEST(RowGemm, EmptyShapes) {
  RowGemm g;
  std::vector<float> a(12, 1.0f), b(12, 1.0f), c(4, 5.0f);
  ASSERT_TRUE(g.nt(a.data(), b.data(), c.data(), 0, 4, 3, 2, "t").isOk());
  ASSERT_TRUE(g.nt(a.data(), b.data(), c.data(), 2, 2, 0, 2, "t").isOk());
  EXPECT_EQ(c, std::vector<float>(4, 0.0f)); // the empty sum
}

//===--- The expert FFN on it ---------------------------------------------===//

/// [E, F, D] / [E, D, F] SwiGLU weights.
struct Weights {
  Weights(int64_t E, int64_t D, int64_t F)
      : gate(randomVec(E * F * D, 11, -0.3f, 0.3f)),
        up(randomVec(E * F * D, 12, -0.3f, 0.3f)),
        down(randomVec(E * D * F, 13, -0.3f, 0.3f)) {}
  std::vector<float> gate, up, down;
};

TEST(RowGemmFfn, ChunksOfAnySizeGiveTheSameBits) {
  // The backend's own chunks (its workspace budget) start and end inside
  // segments; the rows must not notice. F = 44 is not a multiple of the
  // vector width.
  std::vector<int32_t> counts{40, 0, 13, 25, 1, 30, 0, 22, 9}; // [S=3, E=3]
  int64_t total = 0;
  for (int32_t c : counts)
    total += c;
  const int64_t E = 3, D = 24, F = 44;
  Weights w(E, D, F);
  std::vector<float> x = randomVec(total * D, 14), first;
  for (int threads : {1, 2, 3})
    for (int64_t chunk : {0, 1, 7, 16, 64}) {
      SCOPED_TRACE(std::to_string(threads) + " threads, chunk rows " +
                   std::to_string(chunk));
      moert::CpuBackend backend(threads);
      backend.setFfnChunkRows(chunk);
      std::vector<float> y(total * D);
      moert::Status s =
          backend.expertFfn(x.data(), counts.data(), w.gate.data(), w.up.data(),
                            w.down.data(), y.data(), nullptr, nullptr, E, 3, 0,
                            total, D, F, MOERT_ACT_SWIGLU, MOERT_F32);
      ASSERT_TRUE(s.isOk()) << s.message();
      if (first.empty())
        first = y;
      ASSERT_TRUE(sameBits(y.data(), first.data(), total * D));
    }
}

TEST(RowGemmFfn, CyclicChunksOfTheSlotsGiveTheSameBits) {
  // What moe-overlap does to a capacity buffer [E, S*C, D]: chunk i holds
  // slots i, i+n, ... of each segment, and its counts are the live slots
  // among them. Each chunk's FFN, interleaved back, is the whole buffer's,
  // bit for bit, for every degree n.
  const int64_t E = 4, S = 3, C = 24, D = 20, F = 52, R = S * C;
  const std::vector<int32_t> counts{24, 0,  17, 5, 3,  24,
                                    11, 20, 1,  9, 24, 23}; // [S, E]
  Weights w(E, D, F);
  std::vector<float> x = randomVec(E * R * D, 15);
  for (int64_t e = 0; e < E; ++e) // padding slots are zero rows
    for (int64_t s = 0; s < S; ++s)
      for (int64_t c = counts[s * E + e]; c < C; ++c)
        std::fill_n(&x[((e * R) + s * C + c) * D], D, 0.0f);
  moert::CpuBackend backend(2);
  auto ffn = [&](const std::vector<float> &in, const int32_t *cnt, int64_t c,
                 std::vector<float> &out) {
    out.assign(E * S * c * D, std::numeric_limits<float>::quiet_NaN());
    moert::Status st =
        backend.expertFfn(in.data(), cnt, w.gate.data(), w.up.data(),
                          w.down.data(), out.data(), nullptr, nullptr, E, S,
                          S * c, E * S * c, D, F, MOERT_ACT_SWIGLU, MOERT_F32);
    ASSERT_TRUE(st.isOk()) << st.message();
  };
  std::vector<float> whole;
  ffn(x, counts.data(), C, whole);
  // Also with the weights held across the chunks (moert_hold_weights, as
  // moe-overlap emits it): packed once, the same bits.
  for (bool held : {false, true})
    for (int64_t n : {2, 3, 4, 8}) {
      SCOPED_TRACE("degree " + std::to_string(n) + (held ? ", held" : ""));
      int64_t cc = C / n; // slots of a chunk per segment
      if (held) {
        ASSERT_TRUE(backend.holdWeights(true).isOk());
      }
      for (int64_t i = 0; i < n; ++i) {
        std::vector<float> in(E * S * cc * D), out;
        std::vector<int32_t> cnt(S * E);
        for (int64_t s = 0; s < S; ++s)
          for (int64_t e = 0; e < E; ++e) {
            int64_t live = counts[s * E + e] - i;
            cnt[s * E + e] = live > 0 ? int32_t((live + n - 1) / n) : 0;
            for (int64_t j = 0; j < cc; ++j)
              std::copy_n(&x[(e * R + s * C + i + j * n) * D], D,
                          &in[(e * S * cc + s * cc + j) * D]);
          }
        ffn(in, cnt.data(), cc, out);
        for (int64_t e = 0; e < E; ++e)
          for (int64_t s = 0; s < S; ++s)
            for (int64_t j = 0; j < cc; ++j)
              ASSERT_TRUE(sameBits(&out[(e * S * cc + s * cc + j) * D],
                                   &whole[(e * R + s * C + i + j * n) * D], D))
                  << "chunk " << i << ", expert " << e << ", segment " << s
                  << ", slot " << i + j * n;
      }
      if (held) {
        ASSERT_TRUE(backend.holdWeights(false).isOk());
      }
    }
}

TEST(RowGemmFfn, HeldWeightsFollowTheirBuffersAndEndWithTheHold) {
  // While held, each weight buffer is packed once and found again by its
  // address; another set of weights in the same hold gets its own. After
  // the hold ends, weights changed in place are read afresh.
  const int64_t E = 2, D = 20, F = 36, rows = 30;
  std::vector<int32_t> counts{17, 13};
  Weights w1(E, D, F), w2(E, D, F);
  for (float &v : w2.up)
    v *= -0.5f;
  std::vector<float> x = randomVec(rows * D, 31);
  auto ffn = [&](moert::CpuBackend &b, const Weights &w) {
    std::vector<float> y(rows * D, std::numeric_limits<float>::quiet_NaN());
    moert::Status st =
        b.expertFfn(x.data(), counts.data(), w.gate.data(), w.up.data(),
                    w.down.data(), y.data(), nullptr, nullptr, E, 1, 0, rows, D,
                    F, MOERT_ACT_SWIGLU, MOERT_F32);
    EXPECT_TRUE(st.isOk()) << st.message();
    return y;
  };
  moert::CpuBackend plain(1), held(1);
  std::vector<float> y1 = ffn(plain, w1), y2 = ffn(plain, w2);
  ASSERT_FALSE(sameBits(y1.data(), y2.data(), rows * D));
  ASSERT_TRUE(held.holdWeights(true).isOk());
  // moert_expert_ffn_prepare's work ahead of the calls (and again: a no-op).
  for (int twice = 0; twice < 2; ++twice)
    ASSERT_TRUE(held.prepareExpertFfn(w1.gate.data(), w1.up.data(),
                                      w1.down.data(), E, D, F)
                    .isOk());
  for (int round = 0; round < 2; ++round) {
    std::vector<float> h1 = ffn(held, w1), h2 = ffn(held, w2);
    ASSERT_TRUE(sameBits(h1.data(), y1.data(), rows * D)) << round;
    ASSERT_TRUE(sameBits(h2.data(), y2.data(), rows * D)) << round;
  }
  ASSERT_TRUE(held.holdWeights(false).isOk());
  for (float &v : w1.down)
    v *= 2.0f;
  std::vector<float> fresh = ffn(plain, w1), after = ffn(held, w1);
  ASSERT_FALSE(sameBits(fresh.data(), y1.data(), rows * D));
  ASSERT_TRUE(sameBits(after.data(), fresh.data(), rows * D));
}

} // namespace
