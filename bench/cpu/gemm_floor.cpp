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
// With --train, each run times one training step's expert GEMMs instead: the
// forward's three above, then per expert the backward's, in the order and
// layout of the runtime's expert_ffn_grad (runtime/cpu/CpuFfn.cpp), with
// dy [n_e, D] the output gradient and a, u, h, da, du [n_e, F]:
//   recompute: a = x.gate^T, u = x.up^T      (NT, as the forward's gate, up)
//   data:      dh = dy.down       [n_e,D]x[D,F]     (NN)
//              dx = du.up         [n_e,F]x[F,D]     (NN)
//              dx += da.gate      [n_e,F]x[F,D]     (NN)
//   weight:    ddown = dy^T.h     [D,n_e]x[n_e,F]   (TN)
//              dup   = du^T.x     [F,n_e]x[n_e,D]   (TN)
//              dgate = da^T.x     [F,n_e]x[n_e,D]   (TN)
// (issued recompute, dh, ddown, dx, dup, dx, dgate as the runtime does). The
// backward floor is data + weight (six GEMMs per expert) without recomputing
// the hidden activations, and data + weight + recompute (eight) with it.
//
// usage: gemm_floor COUNTS_FILE D F [--train] [--warmup W] [--repeat N]
//                   [--threads T] [--json FILE]
// COUNTS_FILE holds the per-expert row counts (whitespace separated integers).
// Prints one line per timed run and a summary; --json writes
//   {"runs_s": [...], "gate_s": [...], "up_s": [...], "down_s": [...],
//    "flops": ..., "counts": [...], "threads": ...}
// and with --train also "forward_s", "recompute_s", "data_s", "weight_s",
// "backward_s" (data + weight), "backward_recompute_s" (+ recompute) and
// "backward_flops" (data + weight); runs_s is then forward + backward with
// recomputation. Operand values are random (timing does not depend on them).
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

// c[m,n] = a[m,k] . b[k,n] + beta c (data gradients).
void gemmNN(const float *a, const float *b, float *c, long m, long n, long k,
            float beta) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b,
              n, beta, c, n);
}

// c[m,n] = a[k,m]^T . b[k,n] (weight gradients: a sum over the k rows).
void gemmTN(const float *a, const float *b, float *c, long m, long n, long k) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, a, m, b,
              n, 0.0f, c, n);
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
    std::fprintf(stderr, "usage: gemm_floor COUNTS_FILE D F [--train] "
                         "[--warmup W] [--repeat N] [--threads T] "
                         "[--json FILE]\n");
    return 2;
  }
  const char *countsPath = argv[1];
  long D = parseInt("D", argv[2]), F = parseInt("F", argv[3]);
  long warmup = 1, repeat = 5, threads = 0;
  bool train = false;
  std::string json;
  for (int i = 4; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--train") {
      train = true;
      continue;
    }
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
  size_t allRows = size_t(std::max(rows, 1L));
  std::vector<float> x(allRows * D), h(size_t(maxRows) * F),
      u(size_t(maxRows) * F), y(allRows * D);
  fill(x, 1.0f);
  fill(h, 0.5f);
  fill(u, 0.5f);
  // --train: the backward's operands. dy and dx per routed row; a, dh the
  // other [n_e, F] buffers of one expert; the weight gradients of all experts
  // (as the module holds them).
  std::vector<float> dy, dx, a, dh, dwg, dwu, dwd;
  if (train) {
    dy.resize(allRows * D);
    dx.resize(allRows * D);
    a.resize(size_t(maxRows) * F);
    dh.resize(size_t(maxRows) * F);
    dwg.resize(size_t(E) * F * D);
    dwu.resize(size_t(E) * F * D);
    dwd.resize(size_t(E) * D * F);
    fill(dy, 1e-3f);
    fill(a, 0.5f);
  }

  double flops = 0;
  for (long c : counts)
    flops += 2.0 * c * D * F * 3;
  const double backwardFlops = 2 * flops; // six GEMMs of the same size

  std::vector<double> runs, gateS, upS, downS;
  std::vector<double> fwdS, recS, dataS, weightS, bwdS, bwdRecS;
  for (long it = 0; it < warmup + repeat; ++it) {
    double tg = 0, tu = 0, td = 0, tr = 0, tdata = 0, tw = 0;
    double t0 = now();
    long row = 0;
    for (long e = 0; e < E; ++e) {
      long n = counts[e];
      if (n == 0)
        continue;
      const float *xe = x.data() + size_t(row) * D;
      double a0 = now();
      gemmNT(xe, wg.data() + size_t(e) * F * D, h.data(), n, F, D);
      double b = now();
      gemmNT(xe, wu.data() + size_t(e) * F * D, u.data(), n, F, D);
      double c = now();
      gemmNT(h.data(), wd.data() + size_t(e) * D * F,
             y.data() + size_t(row) * D, n, D, F);
      double d = now();
      tg += b - a0;
      tu += c - b;
      td += d - c;
      row += n;
    }
    double tFwd = now() - t0;
    if (train) {
      row = 0;
      for (long e = 0; e < E; ++e) {
        long n = counts[e];
        if (n == 0)
          continue;
        size_t o = size_t(e) * F * D;
        const float *xe = x.data() + size_t(row) * D;
        const float *dye = dy.data() + size_t(row) * D;
        float *dxe = dx.data() + size_t(row) * D;
        double t1 = now();
        gemmNT(xe, wg.data() + o, a.data(), n, F, D); // recompute a
        gemmNT(xe, wu.data() + o, u.data(), n, F, D); // recompute u
        double t2 = now();
        gemmNN(dye, wd.data() + o, dh.data(), n, F, D, 0.0f); // dh
        double t3 = now();
        gemmTN(dye, h.data(), dwd.data() + o, D, F, n); // ddown
        double t4 = now();
        gemmNN(u.data(), wu.data() + o, dxe, n, D, F, 0.0f); // dx (up)
        double t5 = now();
        gemmTN(u.data(), xe, dwu.data() + o, F, D, n); // dup
        double t6 = now();
        gemmNN(a.data(), wg.data() + o, dxe, n, D, F, 1.0f); // dx += (gate)
        double t7 = now();
        gemmTN(a.data(), xe, dwg.data() + o, F, D, n); // dgate
        double t8 = now();
        tr += t2 - t1;
        tdata += (t3 - t2) + (t5 - t4) + (t7 - t6);
        tw += (t4 - t3) + (t6 - t5) + (t8 - t7);
        row += n;
      }
    }
    double t = now() - t0;
    if (it >= warmup) {
      runs.push_back(t);
      gateS.push_back(tg);
      upS.push_back(tu);
      downS.push_back(td);
      if (!train) {
        std::printf("run %ld: %.3f ms (gate %.3f, up %.3f, down %.3f), %.1f "
                    "GFLOP/s\n",
                    it - warmup, t * 1e3, tg * 1e3, tu * 1e3, td * 1e3,
                    flops / t * 1e-9);
        continue;
      }
      fwdS.push_back(tFwd);
      recS.push_back(tr);
      dataS.push_back(tdata);
      weightS.push_back(tw);
      bwdS.push_back(tdata + tw);
      bwdRecS.push_back(tdata + tw + tr);
      std::printf("run %ld: %.3f ms: forward %.3f, backward %.3f (data %.3f, "
                  "weight %.3f), recompute %.3f; backward %.1f GFLOP/s\n",
                  it - warmup, t * 1e3, tFwd * 1e3, (tdata + tw) * 1e3,
                  tdata * 1e3, tw * 1e3, tr * 1e3,
                  backwardFlops / (tdata + tw) * 1e-9);
    }
  }
  double med = median(runs);
  if (train)
    std::printf("gemm floor (train): E=%ld rows=%ld D=%ld F=%ld threads=%d: "
                "median forward %.3f ms, backward %.3f ms, + recompute %.3f "
                "ms over %ld runs\n",
                E, rows, D, F, openblas_get_num_threads(), median(fwdS) * 1e3,
                median(bwdS) * 1e3, median(bwdRecS) * 1e3, repeat);
  else
    std::printf("gemm floor: E=%ld rows=%ld D=%ld F=%ld threads=%d: median "
                "%.3f ms over %ld runs, %.1f GFLOP/s\n",
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
                 "\"D\": %ld, \"F\": %ld",
                 list(runs).c_str(), list(gateS).c_str(), list(upS).c_str(),
                 list(downS).c_str(), flops, list(cs).c_str(),
                 openblas_get_num_threads(), D, F);
    if (train)
      std::fprintf(f,
                   ", \"forward_s\": %s, \"recompute_s\": %s, \"data_s\": %s, "
                   "\"weight_s\": %s, \"backward_s\": %s, "
                   "\"backward_recompute_s\": %s, \"backward_flops\": %.17g",
                   list(fwdS).c_str(), list(recS).c_str(), list(dataS).c_str(),
                   list(weightS).c_str(), list(bwdS).c_str(),
                   list(bwdRecS).c_str(), backwardFlops);
    std::fprintf(f, "}\n");
    std::fclose(f);
  }
  return 0;
}
