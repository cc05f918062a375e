//===- Calibrate.cpp - moe-run --calibrate: measure this machine ----------===//
#include "Calibrate.h"

#include "Session.h"
#include "World.h"

#include "moert/moert.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <unistd.h>
#include <vector>

using namespace moert;

namespace moe_run {

namespace {

struct Mesh {
  std::vector<std::string> axes;
  std::vector<int64_t> shape;
};

/// `axis=size[,axis=size...]`: names of letters, digits and '_', sizes >= 1,
/// no axis twice.
Status parseMesh(const std::string &text, Mesh &m) {
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string part = text.substr(
        pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = part.find('=');
    std::string name = part.substr(0, eq);
    bool nameOk =
        !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
        });
    if (eq == std::string::npos || !nameOk)
      return supportError(MOERT_ERR_INVALID,
                          "--mesh: '%s' is not axis=size (in '%s')",
                          part.c_str(), text.c_str());
    std::string size = part.substr(eq + 1);
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(size.c_str(), &end, 10);
    if (size.empty() || *end || errno || v < 1 || v > (1LL << 31))
      return supportError(MOERT_ERR_INVALID,
                          "--mesh: the size of axis '%s' must be a positive "
                          "integer, got '%s'",
                          name.c_str(), size.c_str());
    if (std::find(m.axes.begin(), m.axes.end(), name) != m.axes.end())
      return supportError(MOERT_ERR_INVALID, "--mesh: axis '%s' given twice",
                          name.c_str());
    m.axes.push_back(name);
    m.shape.push_back(v);
    if (comma == std::string::npos)
      break;
    pos = comma + 1;
  }
  return Status::ok();
}

/// Least squares of y = a + b x relative to y (weights 1/y^2), so that the
/// small sizes, which carry the latency, count as much as the large ones.
void fitLine(const std::vector<double> &x, const std::vector<double> &y,
             double &a, double &b) {
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double w = y[i] > 0 ? 1 / (y[i] * y[i]) : 1;
    sw += w;
    sx += w * x[i];
    sy += w * y[i];
    sxx += w * x[i] * x[i];
    sxy += w * x[i] * y[i];
  }
  double den = sw * sxx - sx * sx;
  b = den > 0 ? (sw * sxy - sx * sy) / den : 0;
  a = (sy - b * sx) / sw;
}

class Calibrator {
public:
  explicit Calibrator(const Options &o) : opt_(o) {}
  ~Calibrator() {
    for (void *p : buffers_)
      moert_free(ctx_, p);
    if (ctx_)
      moert_ctx_destroy(ctx_);
  }
  int run();

private:
  void createContext();
  void *alloc(int64_t bytes, float value);
  void check(const char *what);
  template <typename F>
  double timeMin(int reps, bool barrierEach, F body, bool median = false);
  template <typename F> double timeSustained(double window, F body);
  void measureGemm();
  void measureCopy();
  struct Link {
    std::string name;
    int64_t ranks;
    double alpha, bandwidth;
  };
  Link measureLink(const std::string &name, int64_t mask, int64_t ranks);
  std::string json() const;
  void printTable() const;

  const Options &opt_;
  Mesh mesh_;
  moert_ctx *ctx_ = nullptr;
  std::vector<void *> buffers_;
  double gemmFlops_ = 0, gemmLatency_ = 0, copyBandwidth_ = 0;
  double memoryBytes_ = 0;
  std::vector<Link> axes_;
  Link world_{"", 1, 0, 0};
  bool worldMeasured_ = false;
};

void Calibrator::createContext() {
  bool cuda = opt_.device == "cuda";
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = cuda ? MOERT_DEVICE_CUDA : MOERT_DEVICE_CPU;
  o.comm = world().size > 1 ? (cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI)
                            : MOERT_COMM_SINGLE;
  o.num_threads = static_cast<int32_t>(opt_.threads);
  std::vector<const char *> axes;
  for (const std::string &a : mesh_.axes)
    axes.push_back(a.c_str());
  o.mesh_rank = static_cast<int32_t>(axes.size());
  o.mesh_shape = mesh_.shape.data();
  o.mesh_axes = axes.data();
  // Under --net the calibration measures the emulated links.
  o.net = opt_.net.empty() ? nullptr : opt_.net.c_str();
  o.timeout_s = opt_.timeout;
  if (moert_ctx_create(&o, &ctx_) != MOERT_OK)
    fatal(supportError(MOERT_ERR_INVALID,
                       "cannot create the runtime context: %s",
                       moert_last_error()));
}

void Calibrator::check(const char *what) {
  if (moert_ctx_status(ctx_) != MOERT_OK)
    fatal(supportError(moert_ctx_status(ctx_), "calibration: %s: %s", what,
                       moert_ctx_error(ctx_)));
}

void *Calibrator::alloc(int64_t bytes, float value) {
  void *p = nullptr;
  if (moert_alloc(ctx_, bytes, &p) != MOERT_OK)
    fatal(supportError(MOERT_ERR_NOMEM, "calibration: allocating %lld bytes",
                       static_cast<long long>(bytes)));
  buffers_.push_back(p);
  std::vector<float> host(static_cast<size_t>(bytes / 4), value);
  if (moert_copy_to_device(ctx_, p, host.data(), bytes) != MOERT_OK)
    check("filling a buffer");
  return p;
}

/// The fastest (with `median`: the median) of `reps` runs of `body` on this
/// rank; then the slowest rank's figure (every rank runs at once, as in a
/// real step).
template <typename F>
double Calibrator::timeMin(int reps, bool barrierEach, F body, bool median) {
  std::vector<double> times;
  moert_world_barrier(ctx_);
  for (int i = 0; i < reps; ++i) {
    if (barrierEach)
      moert_world_barrier(ctx_);
    double start = now();
    body();
    moert_synchronize(ctx_);
    times.push_back(now() - start);
  }
  std::sort(times.begin(), times.end());
  double best = median ? times[times.size() / 2] : times.front();
  std::vector<double> all(static_cast<size_t>(world().size));
  if (moert_world_allgather(ctx_, &best, all.data(), sizeof best) != MOERT_OK)
    check("gathering timings");
  return *std::max_element(all.begin(), all.end());
}

void Calibrator::measureGemm() {
  // One expert, relu: 2 GEMMs of R x D x F. The rate is sustained: the large
  // problem repeated for at least half a second on every rank at once (a
  // shared or CPU-quota-limited machine runs a short burst much faster than
  // a step: the fastest of a few short repeats was 6x too optimistic here);
  // the call overhead is what the small problem takes beyond its flops at
  // that rate (the median of its repeats).
  struct Size {
    int64_t r, d, f;
  };
  double secs[2] = {0, 0}, flops[2] = {0, 0};
  int i = 0;
  for (Size s : {Size{32, 128, 128}, Size{512, 1024, 1024}}) {
    void *x = alloc(s.r * s.d * 4, 0.01f);
    void *up = alloc(s.f * s.d * 4, 0.01f);
    void *down = alloc(s.d * s.f * 4, 0.01f);
    void *y = alloc(s.r * s.d * 4, 0);
    auto body = [&] {
      moert_expert_ffn(ctx_, x, nullptr, nullptr, up, down, y, 1, 1, s.r, s.r,
                       s.d, s.f, MOERT_ACT_RELU, MOERT_F32);
    };
    secs[i] = i == 0 ? timeMin(21, true, body, /*median=*/true)
                     : timeSustained(0.5, body);
    check("timing the expert FFN");
    flops[i] = 4.0 * static_cast<double>(s.r * s.d * s.f);
    ++i;
  }
  gemmFlops_ = flops[1] / secs[1];
  gemmLatency_ = std::max(secs[0] - flops[0] / gemmFlops_, 0.0);
}

/// Seconds per call of `body` run back to back for at least `window`
/// seconds on every rank at once; the slowest rank's figure.
template <typename F> double Calibrator::timeSustained(double window, F body) {
  moert_world_barrier(ctx_);
  double start = now(), elapsed = 0;
  int64_t calls = 0;
  do {
    body();
    moert_synchronize(ctx_);
    ++calls;
    elapsed = now() - start;
  } while (elapsed < window);
  double per = elapsed / static_cast<double>(calls);
  std::vector<double> all(static_cast<size_t>(world().size));
  if (moert_world_allgather(ctx_, &per, all.data(), sizeof per) != MOERT_OK)
    check("gathering timings");
  return *std::max_element(all.begin(), all.end());
}

void Calibrator::measureCopy() {
  const int64_t bytes = 32 << 20;
  void *src = alloc(bytes, 1);
  void *dst = alloc(bytes, 0);
  double t = timeSustained(0.3, [&] { moert_copy(ctx_, src, dst, bytes); });
  check("timing the copy");
  copyBandwidth_ = static_cast<double>(bytes) / t;
}

/// All-to-alls over the group of `mask` at three sizes: time = (p-1) alpha +
/// bytes sent / bandwidth.
Calibrator::Link Calibrator::measureLink(const std::string &name, int64_t mask,
                                         int64_t ranks) {
  std::vector<double> sent, secs;
  struct Size {
    int64_t perPeer; // bytes this rank sends to each peer
    int reps;
  };
  for (Size s : {Size{1 << 10, 20}, Size{64 << 10, 10}, Size{1 << 20, 4}}) {
    int64_t bytes = s.perPeer * ranks;
    void *in = alloc(bytes, 1);
    void *out = alloc(bytes, 0);
    double t = timeMin(s.reps, true, [&] {
      moert_all_to_all(ctx_, mask, in, out, 4, bytes / 4, 1, 1, 1, 0, 0);
    });
    check(format("timing the all-to-all over %s", name.c_str()).c_str());
    sent.push_back(static_cast<double>(s.perPeer * (ranks - 1)));
    secs.push_back(t);
  }
  double a, b;
  fitLine(sent, secs, a, b);
  Link l{name, ranks, std::max(a, 0.0) / static_cast<double>(ranks - 1),
         b > 0 ? 1 / b : sent.back() / secs.back()};
  return l;
}

std::string linkJson(double alpha, double bandwidth) {
  return format("{\"alpha_s\": %.6g, \"bandwidth_bytes_per_s\": %.6g}", alpha,
                bandwidth);
}

std::string Calibrator::json() const {
  std::string meshText;
  for (size_t i = 0; i < mesh_.axes.size(); ++i)
    meshText += format("%s%s=%lld", i ? "," : "", mesh_.axes[i].c_str(),
                       static_cast<long long>(mesh_.shape[i]));
  // One node: the ranks of this job; with a single rank nothing was sent,
  // and the intra-node link is estimated from the copy rate.
  std::string intra = worldMeasured_ ? linkJson(world_.alpha, world_.bandwidth)
                                     : linkJson(1e-6, copyBandwidth_ / 2);
  std::string s = "{\n";
  s += "  \"version\": 1,\n";
  s += format("  \"name\": \"calibrated by moe-run: %d rank(s), mesh %s, "
              "%s\",\n",
              world().size, meshText.c_str(), opt_.device.c_str());
  s += "  \"nodes\": 1,\n";
  s += format("  \"devices_per_node\": %d,\n", world().size);
  s += "  \"device\": {\n";
  s += format("    \"gemm_flop_per_s\": %.6g,\n", gemmFlops_);
  s += format("    \"gemm_latency_s\": %.6g,\n", gemmLatency_);
  s += format("    \"copy_bytes_per_s\": %.6g,\n", copyBandwidth_);
  s += format("    \"memory_bytes\": %.6g\n", memoryBytes_);
  s += "  },\n";
  s += "  \"links\": {\n";
  s += "    \"intra_node\": " + intra + "\n";
  s += "  }";
  if (!axes_.empty()) {
    s += ",\n  \"axes\": {\n";
    for (size_t i = 0; i < axes_.size(); ++i)
      s += format("    \"%s\": ", axes_[i].name.c_str()) +
           linkJson(axes_[i].alpha, axes_[i].bandwidth) +
           (i + 1 < axes_.size() ? ",\n" : "\n");
    s += "  }";
  }
  s += "\n}\n";
  return s;
}

void Calibrator::printTable() const {
  std::printf("calibration (%d rank(s), %s):\n", world().size,
              opt_.device.c_str());
  std::printf("  GEMM       %10.3g flop/s  %10.3g s per call\n", gemmFlops_,
              gemmLatency_);
  std::printf("  copy       %10.3g B/s\n", copyBandwidth_);
  std::printf("  memory     %10.3g B per rank\n", memoryBytes_);
  if (worldMeasured_)
    std::printf("  world      %10.3g B/s     %10.3g s per message (%lld "
                "ranks)\n",
                world_.bandwidth, world_.alpha,
                static_cast<long long>(world_.ranks));
  for (const Link &l : axes_)
    std::printf("  axis %-5s %10.3g B/s     %10.3g s per message (%lld "
                "ranks)\n",
                l.name.c_str(), l.bandwidth, l.alpha,
                static_cast<long long>(l.ranks));
  std::printf("wrote %s\n", opt_.calibrate.c_str());
}

int Calibrator::run() {
  if (opt_.mesh.empty()) {
    mesh_.axes = {"ep"};
    mesh_.shape = {world().size};
  } else {
    Status s = parseMesh(opt_.mesh, mesh_);
    int64_t n = 1;
    for (int64_t v : mesh_.shape)
      n *= v;
    if (s.isOk() && n != world().size)
      s = supportError(
          MOERT_ERR_INVALID, "--mesh %s has %lld ranks but the job has %d",
          opt_.mesh.c_str(), static_cast<long long>(n), world().size);
    if (!s.isOk()) {
      report("error: %s", s.message().c_str());
      return 2;
    }
  }
  if (world().rank == 0) {
    Status s = probeWritable(opt_.calibrate);
    if (!s.isOk())
      fatal(s);
  }
  createContext();
  measureGemm();
  measureCopy();
  long pages = sysconf(_SC_PHYS_PAGES), pageSize = sysconf(_SC_PAGE_SIZE);
  memoryBytes_ = pages > 0 && pageSize > 0
                     ? static_cast<double>(pages) * pageSize / world().size
                     : 1;
  int64_t nontrivial = 0, mask = 0;
  for (size_t i = 0; i < mesh_.axes.size(); ++i) {
    mask |= int64_t(1) << i;
    if (mesh_.shape[i] > 1) {
      ++nontrivial;
      axes_.push_back(
          measureLink(mesh_.axes[i], int64_t(1) << i, mesh_.shape[i]));
    }
  }
  if (world().size > 1) {
    // The whole job on this node: the intra-node link (the same group as
    // a single axis when only one axis has several ranks).
    world_ = nontrivial == 1 ? axes_.front()
                             : measureLink("world", mask, world().size);
    world_.name = "world";
    worldMeasured_ = true;
  }
  if (world().rank != 0)
    return 0;
  std::string text = json();
  std::string tmp = opt_.calibrate + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "w");
  bool ok = f && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = f && std::fclose(f) == 0 && ok;
  if (!ok || std::rename(tmp.c_str(), opt_.calibrate.c_str()) != 0) {
    std::remove(tmp.c_str());
    report("error: cannot write %s", opt_.calibrate.c_str());
    return 1;
  }
  if (!opt_.quiet)
    printTable();
  return 0;
}

} // namespace

Status checkCalibrateOptions(const Options &o) {
  if (o.calibrate.empty())
    return supportError(MOERT_ERR_INVALID,
                        "--mesh needs --calibrate (a module's mesh is in its "
                        "manifest)");
  if (!o.outDir.empty())
    return supportError(MOERT_ERR_INVALID,
                        "--calibrate takes no OUT_DIR (got '%s')",
                        o.outDir.c_str());
  if (o.train || !o.weights.empty() || !o.inputs.empty() || !o.output.empty() ||
      !o.check.empty() || !o.stats.empty() || !o.trace.empty())
    return supportError(MOERT_ERR_INVALID,
                        "--calibrate runs no module: it takes only --mesh, "
                        "--device, --threads, --timeout and --quiet");
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    return supportError(MOERT_ERR_INVALID,
                        "--device must be cpu or cuda, got '%s'",
                        o.device.c_str());
  if (!o.mesh.empty()) {
    Mesh m;
    MOERT_TRY(parseMesh(o.mesh, m));
  }
  return Status::ok();
}

int runCalibration(const Options &o) {
  Options withDevice = o;
  if (withDevice.device.empty())
    withDevice.device = "cpu";
  Calibrator c(withDevice);
  return c.run();
}

} // namespace moe_run
