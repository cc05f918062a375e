// gemm_floor: the expert GEMMs of one MoE layer alone, through OpenBLAS.
//
// The lower bound that a grouped expert FFN on CPU can reach with this BLAS:
// for every expert e with n_e routed rows, the three GEMMs a SwiGLU expert
// needs, in the layout the runtime and Hugging Face use (weights [out, in],
// so C = A . W^T):
//   gate: [n_e, D] x [F, D]^T -> [n_e, F]
//   up:   [n_e, D] x [F, D]^T -> [n_e, F]
//   down: [n_e, F] x [D, F]^T -> [n_e, D]
// Nothing else: no routing, no gather/scatter, no activation, no combine.
//
// usage: gemm_floor COUNTS_FILE D F [--warmup W] [--repeat N] [--threads T]
//                   [--json FILE]
// COUNTS_FILE holds the per-expert row counts (whitespace separated integers).
// Prints one line per timed run and a summary; --json writes
//   {"runs_s": [...], "gate_s": [...], "up_s": [...], "down_s": [...],
//    "flops": ..., "counts": [...], "threads": ...}
// Operand values are random (timing does not depend on them).
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);

namespace {

double now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

[[noreturn]] void die(const std::string &msg) {
  std::fprintf(stderr, "gemm_floor: %s\n", msg.c_str());
  std::exit(1);
}

long parseInt(const char *flag, const char *v) {
  char *end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (!end || *end || x < 0)
    die(std::string(flag) + ": expected a non-negative integer, got '" + v +
        "'");
  return x;
}

void gemmNT(const float *a, const float *b, float *c, long m, long n, long k) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, k, b,
              k, 0.0f, c, n);
}

std::string list(const std::vector<double> &v) {
  std::string s = "[";
  char buf[64];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.9g", i ? ", " : "", v[i]);
    s += buf;
  }
  return s + "]";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: gemm_floor COUNTS_FILE D F [--warmup W] "
                         "[--repeat N] [--threads T] [--json FILE]\n");
    return 2;
  }
  const char *countsPath = argv[1];
  long D = parseInt("D", argv[2]), F = parseInt("F", argv[3]);
  long warmup = 1, repeat = 5, threads = 0;
  std::string json;
  for (int i = 4; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc)
      die("missing value after " + a);
    if (a == "--warmup")
      warmup = parseInt("--warmup", argv[++i]);
    else if (a == "--repeat")
      repeat = std::max(1L, parseInt("--repeat", argv[++i]));
    else if (a == "--threads")
      threads = parseInt("--threads", argv[++i]);
    else if (a == "--json")
      json = argv[++i];
    else
      die("unknown option " + a);
  }
  if (D <= 0 || F <= 0)
    die("D and F must be positive");

  std::vector<long> counts;
  {
    std::ifstream in(countsPath);
    if (!in)
      die(std::string("cannot read ") + countsPath);
    long c;
    while (in >> c) {
      if (c < 0)
        die("negative count in " + std::string(countsPath));
      counts.push_back(c);
    }
    if (!in.eof())
      die(std::string("bad number in ") + countsPath);
  }
  if (counts.empty())
    die(std::string("no counts in ") + countsPath);
  const long E = static_cast<long>(counts.size());
  long maxRows = 0, rows = 0;
  for (long c : counts) {
    maxRows = std::max(maxRows, c);
    rows += c;
  }
  if (threads > 0)
    openblas_set_num_threads(static_cast<int>(threads));

  // Weights of all experts (as the module holds them), one activation buffer
  // of the largest expert's rows (the GEMM input), outputs.
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::vector<float> &v, float scale) {
    for (float &x : v)
      x = nd(rng) * scale;
  };
  std::vector<float> wg(size_t(E) * F * D), wu(size_t(E) * F * D),
      wd(size_t(E) * D * F);
  fill(wg, 1.0f / std::sqrt(float(D)));
  fill(wu, 1.0f / std::sqrt(float(D)));
  fill(wd, 1.0f / std::sqrt(float(F)));
  // Inputs of every expert, contiguous and expert-major (a dispatched buffer).
  std::vector<float> x(size_t(std::max(rows, 1L)) * D), h(size_t(maxRows) * F),
      u(size_t(maxRows) * F), y(size_t(std::max(rows, 1L)) * D);
  fill(x, 1.0f);
  fill(h, 0.5f);
  fill(u, 0.5f);

  double flops = 0;
  for (long c : counts)
    flops += 2.0 * c * D * F * 3;

  std::vector<double> runs, gateS, upS, downS;
  for (long it = 0; it < warmup + repeat; ++it) {
    double tg = 0, tu = 0, td = 0;
    double t0 = now();
    long row = 0;
    for (long e = 0; e < E; ++e) {
      long n = counts[e];
      if (n == 0)
        continue;
      const float *xe = x.data() + size_t(row) * D;
      double a = now();
      gemmNT(xe, wg.data() + size_t(e) * F * D, h.data(), n, F, D);
      double b = now();
      gemmNT(xe, wu.data() + size_t(e) * F * D, u.data(), n, F, D);
      double c = now();
      gemmNT(h.data(), wd.data() + size_t(e) * D * F,
             y.data() + size_t(row) * D, n, D, F);
      double d = now();
      tg += b - a;
      tu += c - b;
      td += d - c;
      row += n;
    }
    double t = now() - t0;
    if (it >= warmup) {
      runs.push_back(t);
      gateS.push_back(tg);
      upS.push_back(tu);
      downS.push_back(td);
      std::printf("run %ld: %.3f ms (gate %.3f, up %.3f, down %.3f), %.1f "
                  "GFLOP/s\n",
                  it - warmup, t * 1e3, tg * 1e3, tu * 1e3, td * 1e3,
                  flops / t * 1e-9);
    }
  }
  double med = median(runs);
  std::printf("gemm floor: E=%ld rows=%ld D=%ld F=%ld threads=%d: median %.3f "
              "ms over %ld runs, %.1f GFLOP/s\n",
              E, rows, D, F, openblas_get_num_threads(), med * 1e3, repeat,
              flops / med * 1e-9);
  if (!json.empty()) {
    FILE *f = std::fopen(json.c_str(), "w");
    if (!f)
      die("cannot write " + json);
    std::vector<double> cs(counts.begin(), counts.end());
    std::fprintf(f,
                 "{\"runs_s\": %s, \"gate_s\": %s, \"up_s\": %s, \"down_s\": "
                 "%s, \"flops\": %.17g, \"counts\": %s, \"threads\": %d, "
                 "\"D\": %ld, \"F\": %ld}\n",
                 list(runs).c_str(), list(gateS).c_str(), list(upS).c_str(),
                 list(downS).c_str(), flops, list(cs).c_str(),
                 openblas_get_num_threads(), D, F);
    std::fclose(f);
  }
  return 0;
}
