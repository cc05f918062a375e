// ffn_gemm: the expert FFN with the runtime's row-independent GEMM (RowGemm,
// runtime/cpu/RowGemm.h) against the same FFN with OpenBLAS, in one process.
//
// The layer of bench/cpu/run.sh by default: T=2048 tokens, D=1024, F=3584,
// E=8, top-2, SwiGLU, dropless (packed rows), f32; the tokens are routed to
// top-k distinct experts drawn uniformly from a fixed seed. Contenders, each
// on the same inputs and weights, interleaved by round so that load from
// other processes hits all of them alike:
//   ffn_row    CpuBackend::expertFfn with FfnGemm::RowIndependent (default)
//   ffn_blas   CpuBackend::expertFfn with FfnGemm::Blas (cblas_sgemm)
//   gemm_row   the FFN's three NT GEMMs per expert alone, RowGemm::nt
//   gemm_blas  the same through cblas_sgemm
//   ffn_chunks       ffn_row in --chunks N calls, chunk i taking rows
//                    [c*i/N, c*(i+1)/N) of each expert's c (moe-overlap's
//                    dropless chunks), each call packing the weights again
//   ffn_chunks_held  the same between moert_hold_weights 1 and 0
//                    (CpuBackend::holdWeights): the weights packed once
// Prints per contender the median and the best of all timed runs (wall
// clock) and the median process CPU time, and the ratios row / blas; the two
// FFN outputs must agree to rounding (max |difference| / max |y| printed, at
// most 1e-5), and both chunked outputs must be ffn_row's bit for bit.
//
// usage: ffn_gemm [--tokens T] [--d D] [--f F] [--experts E] [--top K]
//                 [--threads N] [--rounds R] [--repeat N] [--chunks N]
//                 [--json FILE]
#include "cpu/CpuBackend.h"
#include "cpu/RowGemm.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

double now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// CPU seconds of the whole process (all threads): less sensitive than the
/// wall clock to other processes on the cores, and meaningful with
/// --threads 1 (with more threads it also counts OpenMP workers spinning).
double cpuNow() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

[[noreturn]] void usage(const char *why) {
  std::fprintf(stderr,
               "ffn_gemm: %s\nusage: ffn_gemm [--tokens T] [--d D] [--f F] "
               "[--experts E] [--top K] [--threads N] [--rounds R] "
               "[--repeat N] [--chunks N] [--json FILE]\n",
               why);
  std::exit(2);
}

std::vector<float> random(size_t n, unsigned seed, float scale) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(gen);
  return v;
}

struct Contender {
  std::string name;
  std::function<void()> run;
  std::vector<double> times, cpu;
};

} // namespace

int main(int argc, char **argv) {
  int64_t T = 2048, D = 1024, F = 3584, E = 8, K = 2;
  int threads = 0, rounds = 3, repeat = 3, chunks = 8;
  const char *json = nullptr;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc)
      usage(("missing value after " + a).c_str());
    const char *v = argv[++i];
    long n = std::strtol(v, nullptr, 10);
    if (a == "--json") {
      json = v;
      continue;
    }
    if (n <= 0)
      usage((a + " needs a positive integer").c_str());
    if (a == "--tokens")
      T = n;
    else if (a == "--d")
      D = n;
    else if (a == "--f")
      F = n;
    else if (a == "--experts")
      E = n;
    else if (a == "--top")
      K = n;
    else if (a == "--threads")
      threads = int(n);
    else if (a == "--rounds")
      rounds = int(n);
    else if (a == "--repeat")
      repeat = int(n);
    else if (a == "--chunks")
      chunks = int(n);
    else
      usage(("unknown argument " + a).c_str());
  }
  if (K > E)
    usage("--top exceeds --experts");

  // Routing: top-K distinct experts per token, packed expert-major.
  std::mt19937 gen(7);
  std::vector<int32_t> counts(E, 0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> experts(E);
    for (int64_t e = 0; e < E; ++e)
      experts[e] = e;
    std::shuffle(experts.begin(), experts.end(), gen);
    for (int64_t j = 0; j < K; ++j)
      ++counts[experts[j]];
  }
  const int64_t rows = T * K;
  std::vector<float> x = random(rows * D, 1, 1.0f);
  std::vector<float> gate = random(E * F * D, 2, 0.05f);
  std::vector<float> up = random(E * F * D, 3, 0.05f);
  std::vector<float> down = random(E * D * F, 4, 0.05f);
  std::vector<float> yRow(rows * D), yBlas(rows * D), h(rows * F), u(rows * F),
      yg(rows * D);

  moert::CpuBackend backend(threads);
  threads = threads > 0 ? threads : omp_get_max_threads();
  moert::cpu::RowGemm rowGemm;
  auto ffn = [&](moert::CpuBackend::FfnGemm g, std::vector<float> &y) {
    backend.setFfnGemm(g);
    moert::Status s = backend.expertFfn(
        x.data(), counts.data(), gate.data(), up.data(), down.data(), y.data(),
        nullptr, nullptr, E, 1, 0, rows, D, F, MOERT_ACT_SWIGLU, MOERT_F32);
    if (!s.isOk()) {
      std::fprintf(stderr, "ffn_gemm: %s\n", s.message());
      std::exit(1);
    }
  };
  auto gemms = [&](bool row) {
    auto nt = [&](const float *a, const float *b, float *c, int64_t m,
                  int64_t n, int64_t k) {
      if (row) {
        if (!rowGemm.nt(a, b, c, m, n, k, threads, "ffn_gemm").isOk())
          std::exit(1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a,
                    k, b, k, 0.0f, c, n);
      }
    };
    for (int64_t e = 0, r = 0; e < E; r += counts[e++]) {
      nt(x.data() + r * D, gate.data() + e * F * D, h.data() + r * F, counts[e],
         F, D);
      nt(x.data() + r * D, up.data() + e * F * D, u.data() + r * F, counts[e],
         F, D);
      nt(h.data() + r * F, down.data() + e * D * F, yg.data() + r * D,
         counts[e], D, F);
    }
  };
  // Chunk i of every expert's rows, gathered into xc (packed by cc), run,
  // and scattered back into y.
  std::vector<float> xc(rows * D), yc(rows * D), yChunks(rows * D),
      yHeld(rows * D);
  std::vector<int32_t> cc(E);
  auto chunked = [&](bool held, std::vector<float> &y) {
    backend.setFfnGemm(moert::CpuBackend::FfnGemm::RowIndependent);
    auto check = [](moert::Status s) {
      if (!s.isOk()) {
        std::fprintf(stderr, "ffn_gemm: %s\n", s.message());
        std::exit(1);
      }
    };
    if (held)
      check(backend.holdWeights(true));
    for (int64_t i = 0; i < chunks; ++i) {
      int64_t at = 0;
      for (int64_t e = 0, r = 0; e < E; r += counts[e++]) {
        int64_t c = counts[e], b = c * i / chunks, n = c * (i + 1) / chunks - b;
        cc[e] = int32_t(n);
        std::memcpy(xc.data() + at * D, x.data() + (r + b) * D,
                    n * D * sizeof(float));
        at += n;
      }
      check(backend.expertFfn(xc.data(), cc.data(), gate.data(), up.data(),
                              down.data(), yc.data(), nullptr, nullptr, E, 1, 0,
                              rows, D, F, MOERT_ACT_SWIGLU, MOERT_F32));
      at = 0;
      for (int64_t e = 0, r = 0; e < E; r += counts[e++]) {
        int64_t c = counts[e], b = c * i / chunks, n = c * (i + 1) / chunks - b;
        std::memcpy(y.data() + (r + b) * D, yc.data() + at * D,
                    n * D * sizeof(float));
        at += n;
      }
    }
    if (held)
      check(backend.holdWeights(false));
  };
  using G = moert::CpuBackend::FfnGemm;
  std::vector<Contender> cs{
      {"ffn_row", [&] { ffn(G::RowIndependent, yRow); }, {}},
      {"ffn_blas", [&] { ffn(G::Blas, yBlas); }, {}},
      {"gemm_row", [&] { gemms(true); }, {}},
      {"gemm_blas", [&] { gemms(false); }, {}},
      {"ffn_chunks", [&] { chunked(false, yChunks); }, {}},
      {"ffn_chunks_held", [&] { chunked(true, yHeld); }, {}},
  };
  std::printf("T=%lld D=%lld F=%lld E=%lld top-%lld, threads %d, row path %s,"
              " counts",
              (long long)T, (long long)D, (long long)F, (long long)E,
              (long long)K, threads,
              moert::cpu::rowGemmPathName(moert::cpu::rowGemmAutoPath()));
  for (int32_t c : counts)
    std::printf(" %d", c);
  std::printf("\n");
  for (int r = 0; r < rounds; ++r)
    for (Contender &c : cs) {
      c.run(); // warm-up: workspaces, page faults, thread pools
      for (int i = 0; i < repeat; ++i) {
        double t0 = now(), c0 = cpuNow();
        c.run();
        c.times.push_back(now() - t0);
        c.cpu.push_back(cpuNow() - c0);
      }
    }
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < rows * D; ++i) {
    diff = std::max(diff, std::fabs(double(yRow[i]) - yBlas[i]));
    scale = std::max(scale, std::fabs(double(yBlas[i])));
  }
  diff /= scale;
  double flops = 2.0 * 3 * rows * D * F;
  for (const Contender &c : cs)
    std::printf("%-10s median %8.2f ms  best %8.2f ms  (%6.1f GFLOP/s at the "
                "median); CPU time median %8.2f ms\n",
                c.name.c_str(), median(c.times) * 1e3,
                *std::min_element(c.times.begin(), c.times.end()) * 1e3,
                flops / median(c.times) * 1e-9, median(c.cpu) * 1e3);
  auto ratio = [&](int a, int b, bool best) {
    auto pick = [&](const Contender &c) {
      return best ? *std::min_element(c.times.begin(), c.times.end())
                  : median(c.times);
    };
    return pick(cs[a]) / pick(cs[b]);
  };
  std::printf("ratio row/blas: expert FFN %.3f (median) %.3f (best); GEMMs "
              "alone %.3f (median) %.3f (best)\n",
              ratio(0, 1, false), ratio(0, 1, true), ratio(2, 3, false),
              ratio(2, 3, true));
  std::printf("ratio row/blas of the CPU time medians: expert FFN %.3f; GEMMs "
              "alone %.3f\n",
              median(cs[0].cpu) / median(cs[1].cpu),
              median(cs[2].cpu) / median(cs[3].cpu));
  std::printf("max |difference| of the two FFN outputs / max |y|: %.2e\n",
              diff);
  bool sameBits =
      std::memcmp(yChunks.data(), yRow.data(), rows * D * sizeof(float)) == 0 &&
      std::memcmp(yHeld.data(), yRow.data(), rows * D * sizeof(float)) == 0;
  std::printf("%d chunks / whole, CPU time medians: packed per call %.3f, "
              "weights held %.3f; outputs %s\n",
              chunks, median(cs[4].cpu) / median(cs[0].cpu),
              median(cs[5].cpu) / median(cs[0].cpu),
              sameBits ? "bit for bit ffn_row's" : "DIFFER from ffn_row's");
  if (json) {
    FILE *f = std::fopen(json, "w");
    if (!f) {
      std::fprintf(stderr, "ffn_gemm: cannot write %s\n", json);
      return 1;
    }
    std::fprintf(f,
                 "{\"tokens\": %lld, \"D\": %lld, \"F\": %lld, "
                 "\"experts\": %lld, \"top\": %lld, \"threads\": %d, ",
                 (long long)T, (long long)D, (long long)F, (long long)E,
                 (long long)K, threads);
    for (const Contender &c : cs) {
      std::fprintf(f, "\"%s_s\": [", c.name.c_str());
      for (size_t i = 0; i < c.times.size(); ++i)
        std::fprintf(f, "%s%.6f", i ? ", " : "", c.times[i]);
      std::fprintf(f, "], \"%s_cpu_s\": [", c.name.c_str());
      for (size_t i = 0; i < c.cpu.size(); ++i)
        std::fprintf(f, "%s%.6f", i ? ", " : "", c.cpu[i]);
      std::fprintf(f, "], ");
    }
    std::fprintf(f,
                 "\"ffn_ratio_median\": %.4f, \"gemm_ratio_median\": %.4f, "
                 "\"chunks\": %d, \"chunks_ratio_cpu\": %.4f, "
                 "\"chunks_held_ratio_cpu\": %.4f, \"chunks_same_bits\": %s, "
                 "\"max_rel_diff\": %.3e}\n",
                 ratio(0, 1, false), ratio(2, 3, false), chunks,
                 median(cs[4].cpu) / median(cs[0].cpu),
                 median(cs[5].cpu) / median(cs[0].cpu),
                 sameBits ? "true" : "false", diff);
    std::fclose(f);
  }
  return diff < 1e-5 && sameBits ? 0 : 1;
}
