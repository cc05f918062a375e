//===- Context.cpp - Host API and compute entry points of the C ABI -------===//
//
// The context owns a backend (the device), a world communicator and one
// sub-communicator per set of mesh axes. Compute entry points share one shape:
// skip when the sticky error is set, validate the arguments (everything that
// does not depend on the device or on data), time the backend call and record
// it as a phase; the first failure becomes the sticky error. The collective
// entry points live in Collectives.cpp, in this layer too.
//
// This is the one place where the arguments of the C ABI are checked: the
// backends trust what reaches them and check only what depends on data in
// device memory (counts, positions, indices) or on device limits.
//
//===----------------------------------------------------------------------===//
#include "core/Context.h"
#include "base/CheckedMath.h"
#include "base/Dtype.h"

#include <algorithm>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <sched.h>
#include <unistd.h>
#include <vector>

using namespace moert;

namespace {

thread_local std::string lastError;

void setLastError(const Status &s) { lastError = s.message(); }

/// Validates the arguments of one entry point; the first failed check wins
/// and every message starts with the entry point's name.
class Args {
public:
  explicit Args(const char *fn) : fn_(fn) {}

  using Pointers = std::initializer_list<std::pair<const char *, const void *>>;
  using Dims = std::initializer_list<std::pair<const char *, int64_t>>;

  Args &ptr(const char *name, const void *p) {
    return require(p != nullptr, "%s is null", name);
  }
  Args &ptrs(Pointers list) {
    for (const auto &[name, p] : list)
      ptr(name, p);
    return *this;
  }
  Args &positive(const char *name, int64_t v) {
    return require(v > 0, "%s (%" PRId64 ") must be positive", name, v);
  }
  Args &positive(Dims list) {
    for (const auto &[name, v] : list)
      positive(name, v);
    return *this;
  }
  Args &nonNegative(const char *name, int64_t v) {
    return require(v >= 0, "%s (%" PRId64 ") must not be negative", name, v);
  }
  Args &dtype(int32_t d) {
    return require(dtypeSize(d) != 0, "unknown dtype %d", d);
  }
  /// The training kernels compute in f32 only: another known dtype is
  /// MOERT_ERR_UNSUPPORTED, an unknown one invalid.
  Args &f32(int32_t d) {
    dtype(d);
    return requireCode(MOERT_ERR_UNSUPPORTED, d == MOERT_F32 || !dtypeSize(d),
                       "dtype %s is not supported by the training kernels "
                       "(only f32)",
                       dtypeName(d));
  }
  /// `out` may be `in` itself (an update in place) or another buffer, but
  /// not overlap it in part (`bytes` each).
  Args &inPlaceOrApart(const char *outName, const void *out, const char *inName,
                       const void *in, int64_t bytes) {
    auto o = reinterpret_cast<uintptr_t>(out);
    auto i = reinterpret_cast<uintptr_t>(in);
    auto b = static_cast<uintptr_t>(bytes);
    bool apart = o + b <= i || i + b <= o;
    return require(o == i || apart,
                   "%s overlaps %s in part (it must be the same buffer or "
                   "another one)",
                   outName, inName);
  }
  Args &require(bool ok, const char *fmt, ...)
      __attribute__((format(printf, 3, 4))) {
    va_list args;
    va_start(args, fmt);
    vrequire(MOERT_ERR_INVALID, ok, fmt, args);
    va_end(args);
    return *this;
  }
  Args &requireCode(moert_status code, bool ok, const char *fmt, ...)
      __attribute__((format(printf, 4, 5))) {
    va_list args;
    va_start(args, fmt);
    vrequire(code, ok, fmt, args);
    va_end(args);
    return *this;
  }
  Status status() const { return status_; }

private:
  void vrequire(moert_status code, bool ok, const char *fmt, va_list args) {
    if (ok || !status_.isOk())
      return;
    status_ = Status(code, std::string(fn_) + ": " + vformat(fmt, args));
  }

  const char *fn_;
  Status status_;
};

/// Checks the activation and that `gate` is given exactly for GLU forms.
Args &checkFfnWeights(Args &a, int32_t act, const void *gate, const void *up,
                      const void *down) {
  a.require(act >= MOERT_ACT_RELU && act <= MOERT_ACT_GEGLU,
            "unknown activation %d (expected 0 = relu, 1 = gelu, 2 = swiglu, "
            "3 = geglu)",
            act);
  a.require(!isGatedActivation(act) || gate,
            "gate is null but activation %d is gated", act);
  a.require(isGatedActivation(act) || !gate,
            "gate must be null for the ungated activation %d", act);
  return a.ptr("up", up).ptr("down", down);
}

/// Runs one compute entry point: no-op under a sticky error, otherwise
/// `body` validates and calls the backend, and the call is timed as the
/// phase named after `fn`.
template <typename Body>
void runKernel(moert_ctx *ctx, const char *fn, Body &&body) {
  if (!ctx) {
    setLastError(error(MOERT_ERR_INVALID, "%s: null context", fn));
    return;
  }
  if (!ctx->sticky.isOk())
    return;
  double start = ctx->backend->now();
  Status s = body();
  if (fail(ctx, s))
    return;
  // The phase is the entry point's name without the "moert_" prefix.
  recordPhase(ctx, fn + 6, start, ctx->backend->now() - start);
}

/// Result of a host API call with a context: failures are also sticky so
/// that the driver finds them in moert_ctx_error().
moert_status hostResult(moert_ctx *ctx, const Status &s) {
  if (s.isOk())
    return MOERT_OK;
  setLastError(s);
  if (ctx)
    fail(ctx, s);
  return s.code();
}

Status checkCtx(const moert_ctx *ctx, const char *fn) {
  if (!ctx)
    return error(MOERT_ERR_INVALID, "%s: null context", fn);
  return Status::ok();
}

std::string jsonEscape(const std::string &s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

//===--- Context creation -------------------------------------------------===//

Status validateOptions(const moert_ctx_options &o) {
  Args a("moert_ctx_create");
  a.require(o.device == MOERT_DEVICE_CPU || o.device == MOERT_DEVICE_CUDA,
            "unknown device %d (expected 0 = cpu or 1 = cuda)", o.device);
  a.require(o.comm >= MOERT_COMM_SINGLE && o.comm <= MOERT_COMM_NCCL,
            "unknown communicator %d (expected 0 = single, 1 = mpi, 2 = nccl)",
            o.comm);
  a.require(o.comm != MOERT_COMM_NCCL || o.device == MOERT_DEVICE_CUDA,
            "the nccl communicator needs the cuda device (device is %d)",
            o.device);
  a.nonNegative("num_threads", o.num_threads);
  // One sub-communicator per axis subset is made eagerly: keep that small.
  a.require(o.mesh_rank >= 0 && o.mesh_rank <= 8,
            "mesh_rank (%d) must be in [0, 8]", o.mesh_rank);
  a.require(o.mesh_rank == 0 || o.mesh_shape, "mesh_shape is null");
  for (int32_t i = 0; a.status().isOk() && i < o.mesh_rank; ++i)
    a.require(o.mesh_shape[i] > 0, "mesh axis %d has size %" PRId64, i,
              o.mesh_shape[i]);
  return a.status();
}

/// Local rank as set by common launchers; selects the CUDA device.
int32_t localRankFromEnv() {
  for (const char *var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                          "SLURM_LOCALID", "LOCAL_RANK"})
    if (const char *v = std::getenv(var))
      return static_cast<int32_t>(std::atoi(v));
  return 0;
}

/// CPUs this process may run on (its affinity mask), or the online ones.
int32_t usableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int32_t>(n) : 1;
}

/// Threads per rank: --threads (num_threads), else OMP_NUM_THREADS, else
/// the node's cores divided among the ranks on the node (at least 1), so
/// that ranks sharing a node do not oversubscribe its cores.
int32_t defaultThreads(const moert_ctx &ctx) {
  if (ctx.options.num_threads > 0)
    return ctx.options.num_threads;
  if (const char *v = std::getenv("OMP_NUM_THREADS"))
    if (std::atoi(v) > 0)
      return std::atoi(v);
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  int32_t cores = online > 0 ? static_cast<int32_t>(online) : 1;
  int32_t share = std::max<int32_t>(1, cores / std::max(1, ctx.localRanks));
  return std::min(share, usableCpus());
}

Status createBackend(moert_ctx &ctx) {
  BackendOptions bo;
  ctx.threads = defaultThreads(ctx);
  bo.numThreads = ctx.threads;
  bo.deviceIndex = ctx.options.device_index;
  bo.localRank = localRankFromEnv();
  if (ctx.options.device == MOERT_DEVICE_CUDA)
    return createCudaBackend(bo, ctx.backend);
  return createCpuBackend(bo, ctx.backend);
}

Status createWorld(moert_ctx &ctx) {
  CommOptions co;
  co.timeoutSeconds = ctx.options.timeout_s > 0 ? ctx.options.timeout_s : 300;
  switch (ctx.options.comm) {
  case MOERT_COMM_MPI:
    return createMpiCommunicator(co, ctx.world);
  case MOERT_COMM_NCCL:
    // NCCL runs on a stream of its own, ordered after the backend's.
    return createNcclCommunicator(co, ctx.backend->computeStream(), ctx.world);
  default:
    return createSingleCommunicator(co, ctx.world);
  }
}

/// Copies the mesh out of the caller's arrays, checks it covers the world
/// and computes this rank's coordinates (row-major, last axis fastest).
Status setUpMesh(moert_ctx &ctx) {
  const moert_ctx_options &o = ctx.options;
  int64_t ranks = 1;
  std::string shape;
  for (int32_t i = 0; i < o.mesh_rank; ++i) {
    ctx.meshShape.push_back(o.mesh_shape[i]);
    ctx.meshAxes.push_back(o.mesh_axes && o.mesh_axes[i]
                               ? o.mesh_axes[i]
                               : "axis" + std::to_string(i));
    ranks *= o.mesh_shape[i];
    shape += (i ? "x" : "") + std::to_string(o.mesh_shape[i]);
  }
  int world = ctx.world->size();
  if (ranks != world)
    return error(MOERT_ERR_INVALID,
                 "moert_ctx_create: the mesh [%s] has %" PRId64
                 " ranks but the world has %d",
                 shape.c_str(), ranks, world);
  ctx.coords.assign(ctx.meshShape.size(), 0);
  int64_t rest = ctx.world->rank();
  for (size_t i = ctx.meshShape.size(); i-- > 0;) {
    ctx.coords[i] = rest % ctx.meshShape[i];
    rest /= ctx.meshShape[i];
  }
  ctx.options.mesh_shape = ctx.meshShape.data();
  ctx.options.mesh_axes = nullptr; // the names live in ctx.meshAxes
  return Status::ok();
}

/// Ranks that agree on the axes outside `mask` share a group; inside it they
/// are ordered row-major by their coordinates on the axes in `mask`.
Status createGroups(moert_ctx &ctx) {
  int64_t axes = static_cast<int64_t>(ctx.meshShape.size());
  for (int64_t mask = 1; mask < (int64_t(1) << axes); ++mask) {
    int64_t color = 0, key = 0;
    for (int64_t i = 0; i < axes; ++i) {
      if (mask & (int64_t(1) << i))
        key = key * ctx.meshShape[i] + ctx.coords[i];
      else
        color = color * ctx.meshShape[i] + ctx.coords[i];
    }
    std::unique_ptr<Communicator> group;
    MOERT_TRY(ctx.world->split(static_cast<int>(color), static_cast<int>(key),
                               group));
    ctx.groups[mask] = std::move(group);
  }
  return Status::ok();
}

/// Wraps the group of every axis set that contains an axis of options.net
/// in a link emulator; a set of several such axes gets the largest alpha
/// and the smallest bandwidth among them (docs/runtime.md).
Status emulateNetwork(moert_ctx &ctx) {
  if (ctx.netSpec.empty())
    return Status::ok();
  std::vector<AxisLink> links;
  MOERT_TRY(parseLinkSpec(ctx.netSpec, links));
  int64_t axes = static_cast<int64_t>(ctx.meshAxes.size());
  std::vector<int> axisOf(links.size(), -1);
  for (size_t l = 0; l < links.size(); ++l) {
    for (int64_t i = 0; i < axes; ++i)
      if (ctx.meshAxes[i] == links[l].axis)
        axisOf[l] = static_cast<int>(i);
    if (axisOf[l] < 0) {
      std::string names;
      for (const std::string &a : ctx.meshAxes)
        names += (names.empty() ? "" : ", ") + a;
      return error(MOERT_ERR_INVALID,
                   "--net: '%s' is not an axis of the mesh [%s]",
                   links[l].axis.c_str(), names.c_str());
    }
  }
  for (auto &[mask, group] : ctx.groups) {
    bool any = false;
    LinkModel m;
    for (size_t l = 0; l < links.size(); ++l) {
      if (!(mask & (int64_t(1) << axisOf[l])))
        continue;
      const LinkModel &x = links[l].model;
      m.alphaSeconds =
          any ? std::max(m.alphaSeconds, x.alphaSeconds) : x.alphaSeconds;
      if (x.bytesPerSecond > 0 &&
          (m.bytesPerSecond == 0 || x.bytesPerSecond < m.bytesPerSecond))
        m.bytesPerSecond = x.bytesPerSecond;
      any = true;
    }
    if (!any || !group)
      continue;
    // Per peer of the group (row-major over the axes of the mask): the link
    // of the emulated axes on which it differs from this rank, so that a
    // group over a node axis and a local axis sends to the ranks of its own
    // node over the local link and to the others over the node link.
    std::vector<LinkModel> peers;
    std::vector<int64_t> groupAxes;
    for (int64_t i = 0; i < axes; ++i)
      if (mask & (int64_t(1) << i))
        groupAxes.push_back(i);
    int n = group->size();
    for (int q = 0; q < n; ++q) {
      int64_t rest = q;
      LinkModel pm;
      bool differs = false;
      for (size_t j = groupAxes.size(); j-- > 0;) {
        int64_t axis = groupAxes[j], size = ctx.meshShape[axis];
        int64_t coord = rest % size;
        rest /= size;
        if (coord == ctx.coords[axis])
          continue;
        for (size_t l = 0; l < links.size(); ++l) {
          if (axisOf[l] != axis)
            continue;
          const LinkModel &x = links[l].model;
          pm.alphaSeconds = differs ? std::max(pm.alphaSeconds, x.alphaSeconds)
                                    : x.alphaSeconds;
          if (x.bytesPerSecond > 0 &&
              (pm.bytesPerSecond == 0 || x.bytesPerSecond < pm.bytesPerSecond))
            pm.bytesPerSecond = x.bytesPerSecond;
          differs = true;
        }
      }
      peers.push_back(differs ? pm : m);
    }
    group = emulateLink(std::move(group), m, std::move(peers));
  }
  return Status::ok();
}

Status createContext(const moert_ctx_options *o, moert_ctx **out,
                     std::unique_ptr<moert_ctx> &ctx) {
  if (!o || !out)
    return error(MOERT_ERR_INVALID, "moert_ctx_create: %s is null",
                 o ? "out" : "options");
  *out = nullptr;
  MOERT_TRY(validateOptions(*o));
  ctx = std::make_unique<moert_ctx>();
  ctx->options = *o;
  ctx->netSpec = o->net ? o->net : "";
  ctx->options.net = ctx->netSpec.c_str();
  if (ctx->options.device == MOERT_DEVICE_CUDA) {
    // The GPU is chosen (and its stream made) before NCCL starts.
    MOERT_TRY(createBackend(*ctx));
    MOERT_TRY(createWorld(*ctx));
    ctx->localRanks = ctx->world->localRanks();
  } else {
    // The threads of a CPU rank depend on the ranks sharing its node.
    MOERT_TRY(createWorld(*ctx));
    ctx->localRanks = ctx->world->localRanks();
    MOERT_TRY(createBackend(*ctx));
  }
  MOERT_TRY(setUpMesh(*ctx));
  MOERT_TRY(createGroups(*ctx));
  MOERT_TRY(emulateNetwork(*ctx));
  ctx->traceOrigin = ctx->backend->now();
  return Status::ok();
}

} // namespace

//===--- Internal helpers shared with Collectives.cpp ---------------------===//

namespace moert {

bool fail(moert_ctx *ctx, const Status &s) {
  if (s.isOk())
    return false;
  if (ctx->sticky.isOk())
    ctx->sticky = s;
  return true;
}

std::string axisNames(const moert_ctx *ctx, int64_t axisMask) {
  std::string names;
  for (int64_t i = 0; i < 63; ++i) {
    if (!(axisMask & (int64_t(1) << i)))
      continue;
    if (!names.empty())
      names += ",";
    names += i < static_cast<int64_t>(ctx->meshAxes.size())
                 ? ctx->meshAxes[i]
                 : "axis" + std::to_string(i);
  }
  return names;
}

void recordPhase(moert_ctx *ctx, const char *phase, double start,
                 double seconds) {
  Stats::Phase &p = ctx->stats.phases[phase];
  p.calls += 1;
  p.seconds += seconds;
  recordTraceEvent(ctx, phase, start, seconds, kComputeTrack);
}

void recordTraceEvent(moert_ctx *ctx, const char *name, double start,
                      double seconds, int track) {
  if (!ctx->options.record_trace)
    return;
  char event[320];
  std::snprintf(event, sizeof event,
                "{\"name\": \"%s\", \"ph\": \"X\", \"ts\": %.3f, \"dur\": "
                "%.3f, \"pid\": %d, \"tid\": %d}",
                jsonEscape(name).c_str(), (start - ctx->traceOrigin) * 1e6,
                seconds * 1e6, ctx->world ? ctx->world->rank() : 0, track);
  ctx->stats.traceEvents.push_back(event);
}

void recordCollective(moert_ctx *ctx, const char *op, int64_t axisMask,
                      int64_t bytesSent) {
  Stats::Collective &c =
      ctx->stats.collectives[{op, axisNames(ctx, axisMask), ctx->stats.phase}];
  c.calls += 1;
  c.bytesSent += bytesSent;
  int64_t n = 1;
  for (size_t i = 0; i < ctx->meshShape.size(); ++i)
    if (axisMask & (int64_t(1) << i))
      n *= ctx->meshShape[i];
  c.messages += std::strncmp(op, "all_reduce", 10) == 0 ? 2 * (n - 1) : n - 1;
}

} // namespace moert

//===--- Host API ---------------------------------------------------------===//
// (The C linkage comes from the declarations in moert.h.)

size_t moert_ctx_options_size(void) { return sizeof(moert_ctx_options); }

int32_t moert_runtime_abi_version(void) { return MOERT_ABI_VERSION; }

void moert_ctx_options_init(moert_ctx_options *o) {
  if (!o)
    return;
  std::memset(o, 0, sizeof *o);
  o->device = MOERT_DEVICE_CPU;
  o->device_index = -1;
  o->comm = MOERT_COMM_SINGLE;
  o->timeout_s = 300.0;
}

moert_status moert_ctx_create(const moert_ctx_options *o, moert_ctx **out) {
  std::unique_ptr<moert_ctx> ctx;
  Status s = createContext(o, out, ctx);
  if (!s.isOk()) {
    if (ctx)
      moert_ctx_destroy(ctx.release());
    return hostResult(nullptr, s);
  }
  *out = ctx.release();
  return MOERT_OK;
}

void moert_ctx_destroy(moert_ctx *ctx) {
  if (!ctx)
    return;
  if (ctx->backend) {
    ctx->backend->free(ctx->arena);
    ctx->backend->free(ctx->staging);
  }
  // Sub-communicators go before the world they were split from.
  ctx->groups.clear();
  ctx->world.reset();
  ctx->backend.reset();
  delete ctx;
}

const char *moert_last_error(void) { return lastError.c_str(); }

moert_status moert_ctx_status(const moert_ctx *ctx) {
  return ctx ? ctx->sticky.code() : MOERT_ERR_INVALID;
}

const char *moert_ctx_error(const moert_ctx *ctx) {
  return ctx ? ctx->sticky.message().c_str() : "null context";
}

void moert_ctx_clear_error(moert_ctx *ctx) {
  if (ctx)
    ctx->sticky = Status::ok();
}

int32_t moert_ctx_rank(const moert_ctx *ctx) {
  return ctx ? ctx->world->rank() : -1;
}

int32_t moert_ctx_world_size(const moert_ctx *ctx) {
  return ctx ? ctx->world->size() : 0;
}

int32_t moert_ctx_num_threads(const moert_ctx *ctx) {
  return ctx ? ctx->threads : 0;
}

int32_t moert_ctx_local_ranks(const moert_ctx *ctx) {
  return ctx ? ctx->localRanks : 0;
}

moert_status moert_net_check(const char *spec) {
  std::vector<AxisLink> links;
  Status s = spec ? parseLinkSpec(spec, links)
                  : error(MOERT_ERR_INVALID, "moert_net_check: spec is null");
  return hostResult(nullptr, s);
}

int64_t moert_ctx_coord(const moert_ctx *ctx, int32_t axis) {
  if (!ctx || axis < 0 || axis >= static_cast<int32_t>(ctx->coords.size()))
    return -1;
  return ctx->coords[axis];
}

moert_status moert_alloc(moert_ctx *ctx, int64_t bytes, void **out) {
  Status s = checkCtx(ctx, "moert_alloc");
  if (s.isOk())
    s = Args("moert_alloc")
            .ptr("out", out)
            .nonNegative("bytes", bytes)
            .status();
  if (s.isOk())
    s = ctx->backend->alloc(bytes, out);
  return hostResult(ctx, s);
}

void moert_free(moert_ctx *ctx, void *p) {
  if (ctx && p)
    ctx->backend->free(p);
}

namespace {
Status checkCopy(const moert_ctx *ctx, const char *fn, const void *dst,
                 const void *src, int64_t bytes) {
  MOERT_TRY(checkCtx(ctx, fn));
  Args a(fn);
  a.nonNegative("bytes", bytes);
  if (bytes > 0)
    a.ptr("dst", dst).ptr("src", src);
  return a.status();
}
} // namespace

moert_status moert_copy_to_device(moert_ctx *ctx, void *dst, const void *src,
                                  int64_t bytes) {
  Status s = checkCopy(ctx, "moert_copy_to_device", dst, src, bytes);
  if (s.isOk() && bytes > 0)
    s = ctx->backend->copyToDevice(dst, src, bytes);
  return hostResult(ctx, s);
}

moert_status moert_copy_to_host(moert_ctx *ctx, void *dst, const void *src,
                                int64_t bytes) {
  Status s = checkCopy(ctx, "moert_copy_to_host", dst, src, bytes);
  if (s.isOk() && bytes > 0)
    s = ctx->backend->copyToHost(dst, src, bytes);
  return hostResult(ctx, s);
}

moert_status moert_synchronize(moert_ctx *ctx) {
  Status s = checkCtx(ctx, "moert_synchronize");
  if (s.isOk())
    s = ctx->backend->synchronize();
  return hostResult(ctx, s);
}

const char *moert_ctx_stats_json(moert_ctx *ctx) {
  if (!ctx)
    return "{}";
  std::string &t = ctx->statsText;
  char buf[128];
  std::snprintf(buf, sizeof buf, "{\"rank\": %d, \"device\": \"",
                ctx->world->rank());
  t = buf;
  t += jsonEscape(ctx->backend->name()) + "\", \"phases\": [";
  const char *sep = "";
  for (const auto &[name, p] : ctx->stats.phases) {
    std::snprintf(buf, sizeof buf,
                  "\", \"calls\": %" PRId64 ", \"seconds\": %.9g}", p.calls,
                  p.seconds);
    t += sep + std::string("{\"name\": \"") + jsonEscape(name) + buf;
    sep = ", ";
  }
  std::snprintf(buf, sizeof buf,
                "], \"overlap\": {\"started\": %" PRId64
                ", \"done_before_wait\": %" PRId64 "}",
                ctx->stats.asyncStarted, ctx->stats.asyncDoneBeforeWait);
  t += buf;
  t += ", \"collectives\": [";
  sep = "";
  for (const auto &[key, c] : ctx->stats.collectives) {
    std::snprintf(buf, sizeof buf,
                  "\", \"calls\": %" PRId64 ", \"bytes_sent\": %" PRId64
                  ", \"messages\": %" PRId64 "}",
                  c.calls, c.bytesSent, c.messages);
    t += sep + std::string("{\"op\": \"") + jsonEscape(std::get<0>(key)) +
         "\", \"axis\": \"" + jsonEscape(std::get<1>(key)) +
         (std::get<2>(key) == 1 ? "\", \"phase\": \"recompute" : "") + buf;
    sep = ", ";
  }
  t += "]";
  if (!ctx->stats.expertLoad.empty()) {
    auto list = [](const std::vector<int64_t> &v) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i)
        out += (i ? ", " : "") + std::to_string(v[i]);
      return out + "]";
    };
    t += ", \"expert_load\": [";
    sep = "";
    for (const Stats::ExpertLoad &l : ctx->stats.expertLoad) {
      t += sep + std::string("{\"routed\": ") + list(l.routed) +
           ", \"kept\": " + list(l.kept) + "}";
      sep = ", ";
    }
    t += "]";
  }
  t += "}";
  return t.c_str();
}

void moert_ctx_reset_stats(moert_ctx *ctx) {
  if (ctx)
    ctx->stats = Stats();
}

void moert_ctx_record_expert_load(moert_ctx *ctx, int32_t on) {
  if (ctx)
    ctx->recordExpertLoad = on != 0;
}

const char *moert_ctx_trace_json(moert_ctx *ctx) {
  if (!ctx)
    return "";
  std::string &t = ctx->traceText;
  t.clear();
  if (!ctx->stats.traceEvents.empty()) {
    // Names of the two tracks of this rank, for Perfetto / chrome://tracing.
    int rank = ctx->world ? ctx->world->rank() : 0;
    char meta[320];
    std::snprintf(meta, sizeof meta,
                  "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, "
                  "\"tid\": %d, \"args\": {\"name\": \"compute\"}},\n"
                  "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": %d, "
                  "\"tid\": %d, \"args\": {\"name\": \"communication\"}}",
                  rank, kComputeTrack, rank, kCommTrack);
    t = meta;
  }
  for (const std::string &e : ctx->stats.traceEvents) {
    if (!t.empty())
      t += ",\n";
    t += e;
  }
  return t.c_str();
}

//===--- Kernel ABI: memory -----------------------------------------------===//

void *moert_arena(moert_ctx *ctx, int64_t bytes) {
  // Not skipped under a sticky error: generated host code may touch the
  // arena directly, so it gets memory whenever memory can be had.
  if (!ctx) {
    setLastError(error(MOERT_ERR_INVALID, "moert_arena: null context"));
    return nullptr;
  }
  if (bytes < 0) {
    fail(ctx,
         error(MOERT_ERR_INVALID,
               "moert_arena: bytes (%" PRId64 ") must not be negative", bytes));
    return nullptr;
  }
  if (ctx->arena && bytes <= ctx->arenaBytes)
    return ctx->arena;
  ctx->backend->free(ctx->arena);
  ctx->arena = nullptr;
  ctx->arenaBytes = 0;
  void *p = nullptr;
  if (fail(ctx, ctx->backend->alloc(bytes, &p)))
    return nullptr;
  ctx->arena = p;
  ctx->arenaBytes = bytes;
  return p;
}

void moert_stats_phase(moert_ctx *ctx, int32_t phase) {
  if (!ctx) {
    setLastError(error(MOERT_ERR_INVALID, "moert_stats_phase: null context"));
    return;
  }
  if (phase != 0 && phase != 1) {
    fail(ctx, error(MOERT_ERR_INVALID,
                    "moert_stats_phase: phase %d is not 0 or 1", phase));
    return;
  }
  ctx->stats.phase = phase;
}

void moert_hold_weights(moert_ctx *ctx, int32_t hold) {
  runKernel(ctx, "moert_hold_weights", [&] {
    if (hold != 0 && hold != 1)
      return error(MOERT_ERR_INVALID,
                   "moert_hold_weights: hold %d is not 0 or 1", hold);
    return ctx->backend->holdWeights(hold != 0);
  });
}

void moert_expert_ffn_prepare(moert_ctx *ctx, const void *gate, const void *up,
                              const void *down, int64_t E, int64_t D, int64_t F,
                              int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn_prepare", [&] {
    Args a("moert_expert_ffn_prepare");
    checkFfnWeights(a, activation, gate, up, down);
    a.positive({{"E", E}, {"D", D}, {"F", F}});
    MOERT_TRY(a.dtype(dtype).status());
    MOERT_TRY(ctx->backend->holdWeights(true));
    return ctx->backend->prepareExpertFfn(gate, up, down, E, D, F);
  });
}

void moert_copy(moert_ctx *ctx, const void *src, void *dst, int64_t bytes) {
  runKernel(ctx, "moert_copy", [&] {
    MOERT_TRY(checkCopy(ctx, "moert_copy", dst, src, bytes));
    return bytes > 0 ? ctx->backend->copy(dst, src, bytes) : Status::ok();
  });
}

void moert_copy_2d(moert_ctx *ctx, const void *src, void *dst, int64_t width,
                   int64_t height, int64_t src_pitch, int64_t dst_pitch) {
  runKernel(ctx, "moert_copy_2d", [&] {
    MOERT_TRY(checkCtx(ctx, "moert_copy_2d"));
    Args a("moert_copy_2d");
    a.nonNegative("width", width).nonNegative("height", height);
    a.require(src_pitch >= width && dst_pitch >= width,
              "the pitches (%" PRId64 ", %" PRId64
              ") must be at least the width (%" PRId64 ")",
              src_pitch, dst_pitch, width);
    if (width > 0 && height > 0)
      a.ptr("dst", dst).ptr("src", src);
    MOERT_TRY(a.status());
    if (width == 0 || height == 0)
      return Status::ok();
    return ctx->backend->copy2D(dst, dst_pitch, src, src_pitch, width, height);
  });
}

void moert_regroup(moert_ctx *ctx, const void *in, const int32_t *counts,
                   void *out, int32_t *out_counts, int64_t A, int64_t G,
                   int64_t K, int64_t row_bytes, int64_t rows) {
  runKernel(ctx, "moert_regroup", [&] {
    MOERT_TRY(checkCtx(ctx, "moert_regroup"));
    Args a("moert_regroup");
    a.positive({{"A", A}, {"G", G}, {"K", K}});
    a.nonNegative("row_bytes", row_bytes).nonNegative("rows", rows);
    a.ptrs({{"counts", counts}, {"out_counts", out_counts}});
    if (rows > 0 && row_bytes > 0)
      a.ptrs({{"in", in}, {"out", out}});
    int64_t n = 0;
    a.require(checkedMul(A, G, n) && checkedMul(n, K, n),
              "A x G x K overflows");
    MOERT_TRY(a.status());
    Backend &b = *ctx->backend;
    std::vector<int32_t> c(static_cast<size_t>(n)), t(c.size());
    if (b.kind() == MOERT_DEVICE_CPU)
      std::memcpy(c.data(), counts, c.size() * sizeof(int32_t));
    else
      MOERT_TRY(b.copyToHost(c.data(), counts, n * int64_t(sizeof(int32_t))));
    // Row offset of every (a, g) block in the input, then copy them out in
    // the order (g, a).
    std::vector<int64_t> start(static_cast<size_t>(A * G)),
        size(static_cast<size_t>(A * G));
    int64_t total = 0;
    for (int64_t ai = 0; ai < A; ++ai)
      for (int64_t g = 0; g < G; ++g) {
        int64_t block = 0;
        for (int64_t k = 0; k < K; ++k) {
          int32_t v = c[size_t((ai * G + g) * K + k)];
          if (v < 0)
            return error(MOERT_ERR_INVALID,
                         "moert_regroup: counts[%" PRId64 ", %" PRId64
                         "] is %d",
                         ai, g * K + k, v);
          block += v;
          t[size_t((g * A + ai) * K + k)] = v;
        }
        start[size_t(ai * G + g)] = total;
        size[size_t(ai * G + g)] = block;
        total += block;
      }
    if (total > rows)
      return error(MOERT_ERR_INVALID,
                   "moert_regroup: counts total %" PRId64
                   " rows, more than rows (%" PRId64 ")",
                   total, rows);
    auto i = reinterpret_cast<uintptr_t>(in);
    auto o = reinterpret_cast<uintptr_t>(out);
    auto span = static_cast<uintptr_t>(rows * row_bytes);
    if (total > 0 && !(o + span <= i || i + span <= o))
      return error(MOERT_ERR_INVALID, "moert_regroup: in and out overlap");
    int64_t at = 0;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t ai = 0; ai < A; ++ai) {
        int64_t block = size[size_t(ai * G + g)];
        if (block > 0)
          MOERT_TRY(b.copy(static_cast<char *>(out) + at * row_bytes,
                           static_cast<const char *>(in) +
                               start[size_t(ai * G + g)] * row_bytes,
                           block * row_bytes));
        at += block;
      }
    if (rows > total && row_bytes > 0)
      MOERT_TRY(b.memsetZero(static_cast<char *>(out) + total * row_bytes,
                             (rows - total) * row_bytes));
    if (b.kind() == MOERT_DEVICE_CPU)
      std::memcpy(out_counts, t.data(), t.size() * sizeof(int32_t));
    else
      MOERT_TRY(
          b.copyToDevice(out_counts, t.data(), n * int64_t(sizeof(int32_t))));
    return Status::ok();
  });
}

void moert_check_recv_bound(moert_ctx *ctx, const int32_t *counts,
                            int64_t ranks, int64_t per_rank, int64_t bound) {
  runKernel(ctx, "moert_check_recv_bound", [&] {
    Args a("moert_check_recv_bound");
    a.ptr("counts", counts);
    a.positive({{"ranks", ranks}, {"per_rank", per_rank}, {"bound", bound}});
    int64_t n = 0;
    a.require(checkedMul(ranks, ranks, n) && checkedMul(n, per_rank, n),
              "ranks x ranks x per_rank overflows");
    MOERT_TRY(a.status());
    std::vector<int32_t> c(static_cast<size_t>(n));
    Backend &b = *ctx->backend;
    if (b.kind() == MOERT_DEVICE_CPU)
      std::memcpy(c.data(), counts, c.size() * sizeof(int32_t));
    else
      MOERT_TRY(b.copyToHost(c.data(), counts, n * int64_t(sizeof(int32_t))));
    int64_t per = ranks * per_rank;
    for (int64_t p = 0; p < ranks; ++p) {
      int64_t total = 0;
      for (int64_t i = 0; i < per; ++i)
        total += c[size_t(p * per + i)];
      if (total > bound)
        return error(MOERT_ERR_RECV_BOUND,
                     "receive bound exceeded: rank %" PRId64
                     " of the expert-parallel group would receive %" PRId64
                     " rows, more than the bound of %" PRId64
                     " (moe-compile --max-recv-tokens); nothing was sent",
                     p, total, bound);
    }
    return Status::ok();
  });
}

void moert_chunk_counts(moert_ctx *ctx, const int32_t *counts, int32_t *out,
                        int64_t n, int64_t index, int64_t chunks) {
  runKernel(ctx, "moert_chunk_counts", [&] {
    MOERT_TRY(checkCtx(ctx, "moert_chunk_counts"));
    Args a("moert_chunk_counts");
    a.nonNegative("n", n).positive("chunks", chunks);
    a.require(index >= 0 && index < chunks,
              "index (%" PRId64 ") is not in [0, chunks = %" PRId64 ")", index,
              chunks);
    if (n > 0)
      a.ptrs({{"counts", counts}, {"out", out}});
    MOERT_TRY(a.status());
    if (n == 0)
      return Status::ok();
    return ctx->backend->chunkCounts(counts, out, n, index, chunks);
  });
}

void moert_chunk_rows(moert_ctx *ctx, const void *src, void *dst,
                      const int32_t *counts, int64_t segments,
                      int64_t row_bytes, int64_t src_rows, int64_t dst_rows,
                      int64_t index, int64_t chunks, int32_t join) {
  runKernel(ctx, "moert_chunk_rows", [&] {
    MOERT_TRY(checkCtx(ctx, "moert_chunk_rows"));
    Args a("moert_chunk_rows");
    a.nonNegative("segments", segments).positive("row_bytes", row_bytes);
    a.nonNegative("src_rows", src_rows).nonNegative("dst_rows", dst_rows);
    a.positive("chunks", chunks);
    a.require(index >= 0 && index < chunks,
              "index (%" PRId64 ") is not in [0, chunks = %" PRId64 ")", index,
              chunks);
    a.require(join == 0 || join == 1, "join (%d) must be 0 or 1", join);
    if (segments > 0)
      a.ptr("counts", counts);
    if (src_rows > 0)
      a.ptr("src", src);
    if (dst_rows > 0)
      a.ptr("dst", dst);
    MOERT_TRY(a.status());
    return ctx->backend->chunkRowsByCounts(src, dst, counts, segments,
                                           row_bytes, src_rows, dst_rows, index,
                                           chunks, join != 0);
  });
}

//===--- Kernel ABI: compute ----------------------------------------------===//

void moert_rmsnorm(moert_ctx *ctx, const void *x, const void *w, void *y,
                   int64_t T, int64_t D, float eps, int32_t dtype) {
  runKernel(ctx, "moert_rmsnorm", [&] {
    Args a("moert_rmsnorm");
    a.ptrs({{"x", x}, {"w", w}, {"y", y}}).positive({{"T", T}, {"D", D}});
    a.require(eps >= 0, "eps (%g) must not be negative", eps).dtype(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->rmsnorm(x, w, y, T, D, eps, dtype);
  });
}

void moert_layernorm(moert_ctx *ctx, const void *x, const void *w,
                     const void *b, void *y, int64_t T, int64_t D, float eps,
                     int32_t dtype) {
  runKernel(ctx, "moert_layernorm", [&] {
    Args a("moert_layernorm");
    a.ptrs({{"x", x}, {"w", w}, {"y", y}}).positive({{"T", T}, {"D", D}});
    a.require(eps >= 0, "eps (%g) must not be negative", eps).dtype(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->layernorm(x, w, b, y, T, D, eps, dtype);
  });
}

void moert_add(moert_ctx *ctx, const void *a, const void *b, void *y, int64_t n,
               int32_t dtype) {
  runKernel(ctx, "moert_add", [&] {
    Args args("moert_add");
    args.nonNegative("n", n).dtype(dtype);
    if (n > 0)
      args.ptrs({{"a", a}, {"b", b}, {"y", y}});
    MOERT_TRY(args.status());
    return n > 0 ? ctx->backend->add(a, b, y, n, dtype) : Status::ok();
  });
}

void moert_router(moert_ctx *ctx, const void *x, const void *w, float *logits,
                  int64_t T, int64_t D, int64_t E, int32_t dtype) {
  runKernel(ctx, "moert_router", [&] {
    Args a("moert_router");
    a.ptrs({{"x", x}, {"w", w}, {"logits", logits}});
    a.positive({{"T", T}, {"D", D}, {"E", E}}).dtype(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->router(x, w, logits, T, D, E, dtype);
  });
}

namespace {
Status checkTopk(const float *logits, const float *weights,
                 const int32_t *indices, const float *scores, int64_t T,
                 int64_t E, int64_t k, int32_t scoreFn, int64_t numGroups,
                 int64_t groupsKept, int32_t groupScore) {
  Args a("moert_topk");
  a.ptrs({{"logits", logits},
          {"weights", weights},
          {"indices", indices},
          {"scores", scores}});
  a.positive({{"T", T}, {"E", E}, {"k", k}});
  a.require(k <= E,
            "k (%" PRId64 ") exceeds the number of experts (%" PRId64 ")", k,
            E);
  a.require(scoreFn == MOERT_SCORE_SOFTMAX || scoreFn == MOERT_SCORE_SIGMOID,
            "unknown score function %d (expected 0 = softmax or 1 = sigmoid)",
            scoreFn);
  a.require(groupScore == MOERT_GROUP_SCORE_MAX ||
                groupScore == MOERT_GROUP_SCORE_TOP2_SUM,
            "unknown group score %d (expected 0 = max or 1 = top2_sum)",
            groupScore);
  a.nonNegative("num_groups", numGroups);
  if (numGroups <= 1 || !a.status().isOk())
    return a.status();
  a.require(E % numGroups == 0,
            "num_groups (%" PRId64 ") does not divide the number of experts "
            "(%" PRId64 ")",
            numGroups, E);
  a.require(groupsKept >= 1 && groupsKept <= numGroups,
            "groups_kept (%" PRId64 ") must be in [1, num_groups = %" PRId64
            "]",
            groupsKept, numGroups);
  int64_t perGroup = E / numGroups;
  a.require(groupScore != MOERT_GROUP_SCORE_TOP2_SUM || perGroup >= 2,
            "the top2_sum group score needs 2 experts per group, not %" PRId64,
            perGroup);
  a.require(k <= groupsKept * perGroup,
            "k (%" PRId64 ") exceeds the %" PRId64 " experts of the %" PRId64
            " kept groups",
            k, groupsKept * perGroup, groupsKept);
  return a.status();
}
} // namespace

void moert_topk(moert_ctx *ctx, const float *logits, const float *bias,
                float *weights, int32_t *indices, float *scores, int64_t T,
                int64_t E, int64_t k, int32_t score_fn, int32_t renormalize,
                float scaling, int64_t num_groups, int64_t groups_kept,
                int32_t group_score) {
  runKernel(ctx, "moert_topk", [&] {
    MOERT_TRY(checkTopk(logits, weights, indices, scores, T, E, k, score_fn,
                        num_groups, groups_kept, group_score));
    return ctx->backend->topk(logits, bias, weights, indices, scores, T, E, k,
                              score_fn, renormalize, scaling, num_groups,
                              groups_kept, group_score);
  });
}

void moert_topk_forced(moert_ctx *ctx, const float *logits,
                       const int32_t *forced, float *weights, int32_t *indices,
                       float *scores, int64_t T, int64_t E, int64_t k,
                       int32_t score_fn, int32_t renormalize, float scaling) {
  runKernel(ctx, "moert_topk_forced", [&]() -> Status {
    MOERT_TRY(checkTopk(logits, weights, indices, scores, T, E, k, score_fn, 1,
                        1, MOERT_GROUP_SCORE_MAX));
    if (!forced)
      return error(MOERT_ERR_INVALID, "moert_topk_forced: forced is null");
    // The scores as moert_topk computes them (its own choice is replaced).
    Backend &b = *ctx->backend;
    MOERT_TRY(b.topk(logits, nullptr, weights, indices, scores, T, E, k,
                     score_fn, renormalize, scaling, 1, 1,
                     MOERT_GROUP_SCORE_MAX));
    // The replayed choice is data: check it, then weigh it on the host as
    // the CPU backend's moert_topk weighs a row (replay is not a hot path).
    std::vector<int32_t> idx(static_cast<size_t>(T * k));
    std::vector<float> sc(static_cast<size_t>(T * E)), w(idx.size());
    MOERT_TRY(b.copyToHost(idx.data(), forced, T * k * 4));
    MOERT_TRY(b.copyToHost(sc.data(), scores, T * E * 4));
    for (int64_t t = 0; t < T; ++t) {
      const int32_t *row = idx.data() + t * k;
      // A row of -1 is a token the mask left unrouted (a dump of a masked
      // batch): weight 0; moe.mask_rows after the replay keeps it so.
      if (std::all_of(row, row + k, [](int32_t e) { return e == -1; })) {
        std::fill(w.begin() + t * k, w.begin() + (t + 1) * k, 0.0f);
        continue;
      }
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        if (row[j] < 0 || row[j] >= E)
          return error(MOERT_ERR_INVALID,
                       "moert_topk_forced: token %" PRId64 " (of this rank's "
                       "%" PRId64 "), choice %" PRId64 ": expert %d is not in "
                       "[0, %" PRId64 ")",
                       t, T, j, row[j], E);
        for (int64_t i = 0; i < j; ++i)
          if (row[i] == row[j])
            return error(MOERT_ERR_INVALID,
                         "moert_topk_forced: token %" PRId64 " (of this "
                         "rank's %" PRId64 ") chooses expert %d twice "
                         "(choices %" PRId64 " and %" PRId64 ")",
                         t, T, row[j], i, j);
        w[t * k + j] = sc[t * E + row[j]];
        sum += w[t * k + j];
      }
      // A zero sum (every picked score underflowed) keeps the raw weights.
      float norm =
          renormalize && sum > 0 ? static_cast<float>(1.0 / sum) : 1.0f;
      for (int64_t j = 0; j < k; ++j)
        w[t * k + j] = w[t * k + j] * norm * scaling;
    }
    MOERT_TRY(b.copyToDevice(weights, w.data(), T * k * 4));
    return b.copy(indices, forced, T * k * 4);
  });
}

/// Appends the expert load of one moert_assign call (moert_ctx_record_
/// expert_load): `n` indices, `segments` x `E` counts, both on the device.
static Status recordExpertLoad(moert_ctx *ctx, const int32_t *indices,
                               const int32_t *counts, int64_t n, int64_t E,
                               int64_t segments) {
  std::vector<int32_t> idx(static_cast<size_t>(n)),
      cnt(static_cast<size_t>(segments * E));
  MOERT_TRY(ctx->backend->copyToHost(idx.data(), indices, n * 4));
  MOERT_TRY(ctx->backend->copyToHost(cnt.data(), counts, segments * E * 4));
  Stats::ExpertLoad load;
  load.routed.assign(static_cast<size_t>(E), 0);
  load.kept.assign(static_cast<size_t>(E), 0);
  for (int32_t e : idx)
    if (e >= 0 && e < E)
      ++load.routed[static_cast<size_t>(e)];
  for (int64_t i = 0; i < segments * E; ++i)
    load.kept[static_cast<size_t>(i % E)] += cnt[static_cast<size_t>(i)];
  ctx->stats.expertLoad.push_back(std::move(load));
  return Status::ok();
}

void moert_assign(moert_ctx *ctx, const int32_t *indices, int32_t *positions,
                  int32_t *counts, int64_t T, int64_t k, int64_t E,
                  int64_t capacity, int64_t groups) {
  runKernel(ctx, "moert_assign", [&] {
    Args a("moert_assign");
    a.ptrs(
        {{"indices", indices}, {"positions", positions}, {"counts", counts}});
    a.positive({{"T", T}, {"k", k}, {"E", E}});
    a.nonNegative("capacity", capacity).nonNegative("groups", groups);
    a.require(T * k <= INT32_MAX, "T*k (%" PRId64 ") overflows int32", T * k);
    if (capacity > 0) {
      a.positive("groups", groups);
      a.require(groups <= 0 || T % groups == 0,
                "groups (%" PRId64 ") does not divide T (%" PRId64 ")", groups,
                T);
      a.require(E * groups * capacity <= INT32_MAX,
                "E*groups*capacity (%" PRId64 ") overflows int32",
                E * groups * capacity);
    }
    MOERT_TRY(a.status());
    MOERT_TRY(ctx->backend->assign(indices, positions, counts, T, k, E,
                                   capacity, groups));
    return ctx->recordExpertLoad
               ? recordExpertLoad(ctx, indices, counts, T * k, E,
                                  capacity > 0 ? groups : 1)
               : Status::ok();
  });
}

void moert_dispatch(moert_ctx *ctx, const void *x, const int32_t *positions,
                    void *out, int64_t T, int64_t k, int64_t D,
                    int64_t out_rows, int32_t dtype) {
  runKernel(ctx, "moert_dispatch", [&] {
    Args a("moert_dispatch");
    a.ptrs({{"x", x}, {"positions", positions}});
    a.positive({{"T", T}, {"k", k}, {"D", D}});
    a.nonNegative("out_rows", out_rows).dtype(dtype);
    if (out_rows > 0)
      a.ptr("out", out);
    MOERT_TRY(a.status());
    return ctx->backend->dispatch(x, positions, out, T, k, D, out_rows, dtype);
  });
}

namespace {
/// The arguments moert_expert_ffn and moert_expert_ffn_grad share (`fn`
/// names the kernel, `yName` the [total_rows, D] tensor next to x).
Args checkExpertFfn(const char *fn, const char *yName, const void *x,
                    const int32_t *counts, const void *gate, const void *up,
                    const void *down, const void *y, int64_t E, int64_t S,
                    int64_t R, int64_t totalRows, int64_t D, int64_t F,
                    int32_t act) {
  Args a(fn);
  a.ptrs({{"x", x}, {yName, y}});
  checkFfnWeights(a, act, gate, up, down);
  a.positive({{"E", E}, {"segments", S}, {"D", D}, {"F", F}});
  a.nonNegative("rows_per_expert", R).nonNegative("total_rows", totalRows);
  if (R == 0)
    return a.ptr("counts", counts);
  a.require(R % S == 0,
            "rows_per_expert (%" PRId64 ") is not a multiple of segments "
            "(%" PRId64 ")",
            R, S);
  a.require(totalRows == E * R,
            "total_rows (%" PRId64 ") must be E*rows_per_expert = %" PRId64
            " in the capacity layout",
            totalRows, E * R);
  return a;
}
} // namespace

void moert_expert_ffn(moert_ctx *ctx, const void *x, const int32_t *counts,
                      const void *gate, const void *up, const void *down,
                      void *y, int64_t E, int64_t segments,
                      int64_t rows_per_expert, int64_t total_rows, int64_t D,
                      int64_t F, int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn", [&] {
    Args a =
        checkExpertFfn("moert_expert_ffn", "y", x, counts, gate, up, down, y, E,
                       segments, rows_per_expert, total_rows, D, F, activation);
    MOERT_TRY(a.dtype(dtype).status());
    return ctx->backend->expertFfn(x, counts, gate, up, down, y, nullptr,
                                   nullptr, E, segments, rows_per_expert,
                                   total_rows, D, F, activation, dtype);
  });
}

namespace {
/// The saved pre-activations of moert_expert_ffn_train / _grad: u always
/// (when `required`), a exactly when there is a gate.
Args &checkSaved(Args &a, const char *aName, const void *aPtr,
                 const char *uName, const void *uPtr, const void *gate,
                 bool required) {
  if (required)
    a.ptr(uName, uPtr);
  if (!uPtr)
    return a.require(!aPtr, "%s is given but %s is null", aName, uName);
  a.require(!gate || aPtr, "%s is null but gate is given", aName);
  return a.require(gate || !aPtr, "%s must be null when gate is", aName);
}
} // namespace

void moert_expert_ffn_train(moert_ctx *ctx, const void *x,
                            const int32_t *counts, const void *gate,
                            const void *up, const void *down, void *y,
                            void *save_a, void *save_u, int64_t E,
                            int64_t segments, int64_t rows_per_expert,
                            int64_t total_rows, int64_t D, int64_t F,
                            int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn_train", [&] {
    Args a = checkExpertFfn("moert_expert_ffn_train", "y", x, counts, gate, up,
                            down, y, E, segments, rows_per_expert, total_rows,
                            D, F, activation);
    checkSaved(a, "save_a", save_a, "save_u", save_u, gate, true).f32(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->expertFfn(x, counts, gate, up, down, y, save_a, save_u,
                                   E, segments, rows_per_expert, total_rows, D,
                                   F, activation, dtype);
  });
}

void moert_combine(moert_ctx *ctx, const void *y, const int32_t *positions,
                   const float *weights, const void *passthrough, void *out,
                   int64_t T, int64_t k, int64_t D, int32_t dtype) {
  runKernel(ctx, "moert_combine", [&] {
    Args a("moert_combine");
    a.ptrs({{"y", y},
            {"positions", positions},
            {"weights", weights},
            {"out", out}});
    a.positive({{"T", T}, {"k", k}, {"D", D}}).dtype(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->combine(y, positions, weights, passthrough, out, T, k,
                                 D, dtype);
  });
}

void moert_mlp(moert_ctx *ctx, const void *x, const void *gate, const void *up,
               const void *down, const void *sigmoid_gate, void *y, int64_t T,
               int64_t D, int64_t F, int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_mlp", [&] {
    Args a("moert_mlp");
    a.ptrs({{"x", x}, {"y", y}});
    checkFfnWeights(a, activation, gate, up, down);
    a.positive({{"T", T}, {"D", D}, {"F", F}}).dtype(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->mlp(x, gate, up, down, sigmoid_gate, y, T, D, F,
                             activation, dtype);
  });
}

void moert_expert_load(moert_ctx *ctx, const float *scores,
                       const int32_t *indices, float *stats, int64_t T,
                       int64_t k, int64_t E) {
  runKernel(ctx, "moert_expert_load", [&] {
    Args a("moert_expert_load");
    a.ptrs({{"scores", scores}, {"indices", indices}, {"stats", stats}});
    MOERT_TRY(a.positive({{"T", T}, {"k", k}, {"E", E}}).status());
    return ctx->backend->expertLoad(scores, indices, stats, T, k, E);
  });
}

//===--- Token mask (padding) ---------------------------------------------===//
//
// Backend-neutral: the mask is read on the host (it is checked there, so
// that an error can name the token), and the backends' own kernels run on
// the runs of real rows. Correct on every backend; on a GPU each call costs
// a copy of the [T] mask to the host.

namespace {
/// The token mask on the host, every entry checked to be 0 or 1.
Status readMask(moert_ctx *ctx, const char *fn, const int32_t *mask, int64_t T,
                std::vector<int32_t> &out) {
  out.assign(static_cast<size_t>(T), 0);
  if (T > 0)
    MOERT_TRY(ctx->backend->copyToHost(out.data(), mask, T * 4));
  for (int64_t t = 0; t < T; ++t)
    if (out[t] != 0 && out[t] != 1)
      return error(MOERT_ERR_INVALID,
                   "%s: token_mask of token %" PRId64
                   " (of this rank's %" PRId64
                   ") is %d: 1 marks a real token, 0 padding, nothing else",
                   fn, t, T, out[t]);
  return Status::ok();
}

/// f(begin, end) for every maximal run of rows whose mask is `value`.
template <typename F>
Status forRuns(const std::vector<int32_t> &mask, int32_t value, F f) {
  int64_t n = static_cast<int64_t>(mask.size());
  for (int64_t t = 0; t < n;) {
    if (mask[t] != value) {
      ++t;
      continue;
    }
    int64_t end = t;
    while (end < n && mask[end] == value)
      ++end;
    MOERT_TRY(f(t, end));
    t = end;
  }
  return Status::ok();
}

/// The real-token count of a masked batch (a device f32 scalar): a whole
/// non-negative number.
Status readCount(moert_ctx *ctx, const char *fn, const float *count,
                 int64_t &tokens) {
  float c = 0;
  MOERT_TRY(ctx->backend->copyToHost(&c, count, 4));
  if (!(c >= 0) || c != std::floor(c) || c > 9.0e15f)
    return error(MOERT_ERR_INVALID,
                 "%s: the real-token count %g is not a whole number >= 0", fn,
                 static_cast<double>(c));
  tokens = static_cast<int64_t>(c);
  return Status::ok();
}

/// out[0] = v (a device f32 scalar).
Status storeScalar(moert_ctx *ctx, float *out, double v) {
  float f = static_cast<float>(v);
  return ctx->backend->copyToDevice(out, &f, 4);
}
} // namespace

void moert_mask_rows(moert_ctx *ctx, const void *x, const int32_t *mask,
                     void *y, int64_t T, int64_t row_bytes, int32_t fill) {
  runKernel(ctx, "moert_mask_rows", [&]() -> Status {
    Args a("moert_mask_rows");
    a.nonNegative("T", T).nonNegative("row_bytes", row_bytes);
    a.require(fill == 0 || fill == 255, "fill (%d) is neither 0 nor 255", fill);
    if (T > 0 && row_bytes > 0)
      a.ptrs({{"x", x}, {"mask", mask}, {"y", y}});
    MOERT_TRY(a.status());
    if (T == 0 || row_bytes == 0)
      return Status::ok();
    std::vector<int32_t> m;
    MOERT_TRY(readMask(ctx, "moert_mask_rows", mask, T, m));
    Backend &b = *ctx->backend;
    if (x != y)
      MOERT_TRY(b.copy(y, x, T * row_bytes));
    std::vector<unsigned char> ones;
    char *out = static_cast<char *>(y);
    return forRuns(m, 0, [&](int64_t begin, int64_t end) -> Status {
      int64_t bytes = (end - begin) * row_bytes;
      if (fill == 0)
        return b.memsetZero(out + begin * row_bytes, bytes);
      ones.assign(static_cast<size_t>(bytes), 0xff);
      return b.copyToDevice(out + begin * row_bytes, ones.data(), bytes);
    });
  });
}

void moert_token_count(moert_ctx *ctx, const int32_t *mask, float *count,
                       int64_t T) {
  runKernel(ctx, "moert_token_count", [&]() -> Status {
    Args a("moert_token_count");
    a.ptr("count", count).nonNegative("T", T);
    if (T > 0)
      a.ptr("mask", mask);
    MOERT_TRY(a.status());
    std::vector<int32_t> m;
    MOERT_TRY(readMask(ctx, "moert_token_count", mask, T, m));
    int64_t n = 0;
    for (int32_t v : m)
      n += v;
    return storeScalar(ctx, count, double(n));
  });
}

void moert_load_balance_loss(moert_ctx *ctx, const float *stats,
                             const float *count, float *out, int64_t E,
                             int64_t tokens, int64_t k, float coeff) {
  runKernel(ctx, "moert_load_balance_loss", [&] {
    Args a("moert_load_balance_loss");
    a.ptrs({{"stats", stats}, {"out", out}});
    MOERT_TRY(a.positive({{"E", E}, {"tokens", tokens}, {"k", k}}).status());
    if (count) {
      MOERT_TRY(readCount(ctx, "moert_load_balance_loss", count, tokens));
      if (tokens == 0)
        return storeScalar(ctx, out, 0.0);
    }
    return ctx->backend->loadBalanceLoss(stats, out, E, tokens, k, coeff);
  });
}

void moert_z_loss(moert_ctx *ctx, const float *logits, const int32_t *mask,
                  const float *count, float *out, int64_t T, int64_t E,
                  int64_t total_tokens, float coeff) {
  runKernel(ctx, "moert_z_loss", [&]() -> Status {
    Args a("moert_z_loss");
    a.ptrs({{"logits", logits}, {"out", out}});
    a.positive({{"T", T}, {"E", E}, {"total_tokens", total_tokens}});
    a.require(!mask == !count, "mask and count must be given together");
    MOERT_TRY(a.status());
    if (!mask)
      return ctx->backend->zLoss(logits, out, T, E, total_tokens, coeff);
    // The real tokens' share: the backend's kernel on each run of them.
    std::vector<int32_t> m;
    MOERT_TRY(readMask(ctx, "moert_z_loss", mask, T, m));
    MOERT_TRY(readCount(ctx, "moert_z_loss", count, total_tokens));
    double sum = 0;
    if (total_tokens > 0)
      MOERT_TRY(forRuns(m, 1, [&](int64_t begin, int64_t end) -> Status {
        MOERT_TRY(ctx->backend->zLoss(logits + begin * E, out, end - begin, E,
                                      total_tokens, coeff));
        float part = 0;
        MOERT_TRY(ctx->backend->copyToHost(&part, out, 4));
        sum += part;
        return Status::ok();
      }));
    return storeScalar(ctx, out, sum);
  });
}

//===--- Kernel ABI: training (docs/spec.md section 7) --------------------===//
//
// f32 only (Args::f32). Every output is overwritten, so every output pointer
// must be given, except the optional pairs the .def names (dscores,
// dpassthrough with passthrough, dgate with gate, dsigmoid_gate with
// sigmoid_gate).

namespace {
/// `out` must be given exactly when `in` is (an optional input and the
/// gradient that goes with it).
Args &pairedGrad(Args &a, const char *in, const void *inPtr, const char *out,
                 const void *outPtr) {
  a.require(!inPtr || outPtr, "%s is null but %s is given", out, in);
  return a.require(inPtr || !outPtr, "%s must be null when %s is", out, in);
}
} // namespace

void moert_rmsnorm_grad(moert_ctx *ctx, const void *x, const void *w,
                        const void *dy, void *dx, void *dw, int64_t T,
                        int64_t D, float eps, int32_t dtype) {
  runKernel(ctx, "moert_rmsnorm_grad", [&] {
    Args a("moert_rmsnorm_grad");
    a.ptrs({{"x", x}, {"w", w}, {"dy", dy}, {"dx", dx}, {"dw", dw}});
    a.positive({{"T", T}, {"D", D}});
    a.require(eps >= 0, "eps (%g) must not be negative", eps).f32(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->rmsnormGrad(x, w, dy, dx, dw, T, D, eps, dtype);
  });
}

void moert_layernorm_grad(moert_ctx *ctx, const void *x, const void *w,
                          const void *dy, void *dx, void *dw, void *db,
                          int64_t T, int64_t D, float eps, int32_t dtype) {
  runKernel(ctx, "moert_layernorm_grad", [&] {
    Args a("moert_layernorm_grad");
    a.ptrs({{"x", x}, {"w", w}, {"dy", dy}, {"dx", dx}, {"dw", dw}});
    a.positive({{"T", T}, {"D", D}});
    a.require(eps >= 0, "eps (%g) must not be negative", eps).f32(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->layernormGrad(x, w, dy, dx, dw, db, T, D, eps, dtype);
  });
}

void moert_router_grad(moert_ctx *ctx, const void *x, const void *w,
                       const float *dlogits, void *dx, void *dw, int64_t T,
                       int64_t D, int64_t E, int32_t dtype) {
  runKernel(ctx, "moert_router_grad", [&] {
    Args a("moert_router_grad");
    a.ptrs({{"x", x}, {"w", w}, {"dlogits", dlogits}, {"dx", dx}, {"dw", dw}});
    a.positive({{"T", T}, {"D", D}, {"E", E}}).f32(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->routerGrad(x, w, dlogits, dx, dw, T, D, E, dtype);
  });
}

void moert_topk_grad(moert_ctx *ctx, const float *logits,
                     const int32_t *indices, const float *dweights,
                     const float *dscores, float *dlogits, int64_t T, int64_t E,
                     int64_t k, int32_t score_fn, int32_t renormalize,
                     float scaling) {
  runKernel(ctx, "moert_topk_grad", [&] {
    Args a("moert_topk_grad");
    a.ptrs({{"logits", logits},
            {"indices", indices},
            {"dweights", dweights},
            {"dlogits", dlogits}});
    a.positive({{"T", T}, {"E", E}, {"k", k}});
    a.require(k <= E,
              "k (%" PRId64 ") exceeds the number of experts (%" PRId64 ")", k,
              E);
    a.require(score_fn == MOERT_SCORE_SOFTMAX ||
                  score_fn == MOERT_SCORE_SIGMOID,
              "unknown score function %d (expected 0 = softmax or 1 = sigmoid)",
              score_fn);
    a.require(renormalize == 0 || renormalize == 1,
              "renormalize (%d) must be 0 or 1", renormalize);
    a.require(std::isfinite(scaling), "scaling (%g) must be finite", scaling);
    MOERT_TRY(a.status());
    return ctx->backend->topkGrad(logits, indices, dweights, dscores, dlogits,
                                  T, E, k, score_fn, renormalize, scaling);
  });
}

void moert_dispatch_grad(moert_ctx *ctx, const void *dout,
                         const int32_t *positions, void *dx, int64_t T,
                         int64_t k, int64_t D, int64_t out_rows,
                         int32_t dtype) {
  runKernel(ctx, "moert_dispatch_grad", [&] {
    Args a("moert_dispatch_grad");
    a.ptrs({{"positions", positions}, {"dx", dx}});
    a.positive({{"T", T}, {"k", k}, {"D", D}});
    a.nonNegative("out_rows", out_rows).f32(dtype);
    if (out_rows > 0)
      a.ptr("dout", dout);
    MOERT_TRY(a.status());
    return ctx->backend->dispatchGrad(dout, positions, dx, T, k, D, out_rows,
                                      dtype);
  });
}

void moert_combine_grad(moert_ctx *ctx, const void *y, const int32_t *positions,
                        const float *weights, const void *passthrough,
                        const void *dout, void *dy, float *dweights,
                        void *dpassthrough, int64_t T, int64_t k, int64_t D,
                        int64_t y_rows, int32_t dtype) {
  runKernel(ctx, "moert_combine_grad", [&] {
    Args a("moert_combine_grad");
    a.ptrs({{"positions", positions},
            {"weights", weights},
            {"dout", dout},
            {"dweights", dweights}});
    pairedGrad(a, "passthrough", passthrough, "dpassthrough", dpassthrough);
    a.positive({{"T", T}, {"k", k}, {"D", D}});
    a.nonNegative("y_rows", y_rows).f32(dtype);
    a.require(y_rows <= INT32_MAX, "y_rows (%" PRId64 ") overflows int32",
              y_rows);
    if (y_rows > 0)
      a.ptr("y", y).ptr("dy", dy);
    MOERT_TRY(a.status());
    return ctx->backend->combineGrad(y, positions, weights, passthrough, dout,
                                     dy, dweights, dpassthrough, T, k, D,
                                     y_rows, dtype);
  });
}

void moert_expert_ffn_grad(moert_ctx *ctx, const void *x, const int32_t *counts,
                           const void *gate, const void *up, const void *down,
                           const void *dy, const void *saved_a,
                           const void *saved_u, void *dx, void *dgate,
                           void *dup, void *ddown, int64_t E, int64_t segments,
                           int64_t rows_per_expert, int64_t total_rows,
                           int64_t D, int64_t F, int32_t activation,
                           int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn_grad", [&] {
    // The forward's rules (layouts, counts, weights), then the gradients.
    Args a = checkExpertFfn("moert_expert_ffn_grad", "dy", x, counts, gate, up,
                            down, dy, E, segments, rows_per_expert, total_rows,
                            D, F, activation);
    a.ptrs({{"dx", dx}, {"dup", dup}, {"ddown", ddown}});
    pairedGrad(a, "gate", gate, "dgate", dgate).f32(dtype);
    checkSaved(a, "saved_a", saved_a, "saved_u", saved_u, gate, false);
    MOERT_TRY(a.status());
    return ctx->backend->expertFfnGrad(
        x, counts, gate, up, down, dy, saved_a, saved_u, dx, dgate, dup, ddown,
        E, segments, rows_per_expert, total_rows, D, F, activation, dtype);
  });
}

void moert_expert_ffn_grad_data(
    moert_ctx *ctx, const void *x, const int32_t *counts, const void *gate,
    const void *up, const void *down, const void *dy, const void *saved_a,
    const void *saved_u, void *dx, void *hidden, void *dpre_gate, void *dpre_up,
    int64_t E, int64_t segments, int64_t rows_per_expert, int64_t total_rows,
    int64_t D, int64_t F, int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn_grad_data", [&] {
    Args a = checkExpertFfn("moert_expert_ffn_grad_data", "dy", x, counts, gate,
                            up, down, dy, E, segments, rows_per_expert,
                            total_rows, D, F, activation);
    a.ptrs({{"dx", dx}, {"hidden", hidden}, {"dpre_up", dpre_up}});
    pairedGrad(a, "gate", gate, "dpre_gate", dpre_gate).f32(dtype);
    checkSaved(a, "saved_a", saved_a, "saved_u", saved_u, gate, false);
    MOERT_TRY(a.status());
    return ctx->backend->expertFfnGradData(
        x, counts, gate, up, down, dy, saved_a, saved_u, dx, hidden, dpre_gate,
        dpre_up, E, segments, rows_per_expert, total_rows, D, F, activation,
        dtype);
  });
}

void moert_expert_ffn_grad_weight(moert_ctx *ctx, const void *x,
                                  const int32_t *counts, const void *dy,
                                  const void *hidden, const void *dpre_gate,
                                  const void *dpre_up, void *dgate, void *dup,
                                  void *ddown, int64_t E, int64_t segments,
                                  int64_t rows_per_expert, int64_t total_rows,
                                  int64_t D, int64_t F, int32_t dtype) {
  runKernel(ctx, "moert_expert_ffn_grad_weight", [&] {
    Args a("moert_expert_ffn_grad_weight");
    a.ptrs({{"x", x},
            {"dy", dy},
            {"hidden", hidden},
            {"dpre_up", dpre_up},
            {"dup", dup},
            {"ddown", ddown}});
    pairedGrad(a, "dpre_gate", dpre_gate, "dgate", dgate);
    a.positive({{"E", E}, {"segments", segments}, {"D", D}, {"F", F}});
    a.nonNegative("rows_per_expert", rows_per_expert)
        .nonNegative("total_rows", total_rows)
        .f32(dtype);
    if (rows_per_expert == 0) {
      a.ptr("counts", counts);
    } else {
      a.require(rows_per_expert % segments == 0,
                "rows_per_expert (%" PRId64 ") is not a multiple of segments "
                "(%" PRId64 ")",
                rows_per_expert, segments);
      a.require(total_rows == E * rows_per_expert,
                "total_rows (%" PRId64 ") must be E*rows_per_expert = %" PRId64
                " in the capacity layout",
                total_rows, E * rows_per_expert);
    }
    MOERT_TRY(a.status());
    return ctx->backend->expertFfnGradWeight(
        x, counts, dy, hidden, dpre_gate, dpre_up, dgate, dup, ddown, E,
        segments, rows_per_expert, total_rows, D, F, dtype);
  });
}

void moert_mlp_grad(moert_ctx *ctx, const void *x, const void *gate,
                    const void *up, const void *down, const void *sigmoid_gate,
                    const void *dy, void *dx, void *dgate, void *dup,
                    void *ddown, void *dsigmoid_gate, int64_t T, int64_t D,
                    int64_t F, int32_t activation, int32_t dtype) {
  runKernel(ctx, "moert_mlp_grad", [&] {
    Args a("moert_mlp_grad");
    a.ptrs({{"x", x}, {"dy", dy}, {"dx", dx}});
    checkFfnWeights(a, activation, gate, up, down);
    a.ptrs({{"dup", dup}, {"ddown", ddown}});
    pairedGrad(a, "gate", gate, "dgate", dgate);
    pairedGrad(a, "sigmoid_gate", sigmoid_gate, "dsigmoid_gate", dsigmoid_gate);
    a.positive({{"T", T}, {"D", D}, {"F", F}}).f32(dtype);
    MOERT_TRY(a.status());
    return ctx->backend->mlpGrad(x, gate, up, down, sigmoid_gate, dy, dx, dgate,
                                 dup, ddown, dsigmoid_gate, T, D, F, activation,
                                 dtype);
  });
}

void moert_expert_load_grad(moert_ctx *ctx, const float *dstats, float *dscores,
                            int64_t T, int64_t E) {
  runKernel(ctx, "moert_expert_load_grad", [&] {
    Args a("moert_expert_load_grad");
    a.ptrs({{"dstats", dstats}, {"dscores", dscores}});
    MOERT_TRY(a.positive({{"T", T}, {"E", E}}).status());
    return ctx->backend->expertLoadGrad(dstats, dscores, T, E);
  });
}

void moert_load_balance_loss_grad(moert_ctx *ctx, const float *stats,
                                  const float *dloss, const float *count,
                                  float *dstats, int64_t E, int64_t tokens,
                                  int64_t k, float coeff) {
  runKernel(ctx, "moert_load_balance_loss_grad", [&] {
    Args a("moert_load_balance_loss_grad");
    a.ptrs({{"stats", stats}, {"dloss", dloss}, {"dstats", dstats}});
    a.positive({{"E", E}, {"tokens", tokens}, {"k", k}});
    a.require(std::isfinite(coeff), "coeff (%g) must be finite", coeff);
    MOERT_TRY(a.status());
    if (count) {
      MOERT_TRY(readCount(ctx, "moert_load_balance_loss_grad", count, tokens));
      if (tokens == 0)
        return ctx->backend->memsetZero(dstats, 2 * E * 4);
    }
    return ctx->backend->loadBalanceLossGrad(stats, dloss, dstats, E, tokens, k,
                                             coeff);
  });
}

void moert_z_loss_grad(moert_ctx *ctx, const float *logits, const float *dloss,
                       const int32_t *mask, const float *count, float *dlogits,
                       int64_t T, int64_t E, int64_t total_tokens,
                       float coeff) {
  runKernel(ctx, "moert_z_loss_grad", [&]() -> Status {
    Args a("moert_z_loss_grad");
    a.ptrs({{"logits", logits}, {"dloss", dloss}, {"dlogits", dlogits}});
    a.positive({{"T", T}, {"E", E}, {"total_tokens", total_tokens}});
    a.require(std::isfinite(coeff), "coeff (%g) must be finite", coeff);
    a.require(!mask == !count, "mask and count must be given together");
    MOERT_TRY(a.status());
    if (!mask)
      return ctx->backend->zLossGrad(logits, dloss, dlogits, T, E, total_tokens,
                                     coeff);
    std::vector<int32_t> m;
    MOERT_TRY(readMask(ctx, "moert_z_loss_grad", mask, T, m));
    MOERT_TRY(readCount(ctx, "moert_z_loss_grad", count, total_tokens));
    MOERT_TRY(ctx->backend->memsetZero(dlogits, T * E * 4));
    if (total_tokens == 0)
      return Status::ok();
    return forRuns(m, 1, [&](int64_t begin, int64_t end) {
      return ctx->backend->zLossGrad(logits + begin * E, dloss,
                                     dlogits + begin * E, end - begin, E,
                                     total_tokens, coeff);
    });
  });
}

void moert_mse_loss(moert_ctx *ctx, const void *y, const void *target,
                    const int32_t *mask, const float *count, float *loss,
                    void *dy, int64_t rows, int64_t n, int64_t total_n,
                    int32_t dtype) {
  runKernel(ctx, "moert_mse_loss", [&]() -> Status {
    Args a("moert_mse_loss");
    a.ptr("loss", loss).nonNegative("n", n).positive("total_n", total_n);
    a.nonNegative("rows", rows);
    a.require(n <= total_n || mask,
              "n (%" PRId64 ") exceeds total_n (%" PRId64 ")", n, total_n);
    a.require(!mask == !count, "mask and count must be given together");
    a.require(!mask || (rows > 0 && n % rows == 0),
              "n (%" PRId64 ") is not a whole number of rows (%" PRId64 ")", n,
              rows);
    a.f32(dtype);
    if (n > 0)
      a.ptrs({{"y", y}, {"target", target}, {"dy", dy}});
    MOERT_TRY(a.status());
    if (!mask)
      return ctx->backend->mseLoss(y, target, loss, dy, n, total_n, dtype);
    // The real rows' share; padding rows get no gradient.
    std::vector<int32_t> m;
    int64_t real = 0, width = n / rows, rowBytes = width * 4;
    MOERT_TRY(readMask(ctx, "moert_mse_loss", mask, rows, m));
    MOERT_TRY(readCount(ctx, "moert_mse_loss", count, real));
    MOERT_TRY(ctx->backend->memsetZero(dy, n * 4));
    double sum = 0;
    if (real > 0)
      MOERT_TRY(forRuns(m, 1, [&](int64_t begin, int64_t end) -> Status {
        MOERT_TRY(ctx->backend->mseLoss(
            static_cast<const char *>(y) + begin * rowBytes,
            static_cast<const char *>(target) + begin * rowBytes, loss,
            static_cast<char *>(dy) + begin * rowBytes, (end - begin) * width,
            real * width, dtype));
        float part = 0;
        MOERT_TRY(ctx->backend->copyToHost(&part, loss, 4));
        sum += part;
        return Status::ok();
      }));
    return storeScalar(ctx, loss, sum);
  });
}

void moert_adamw(moert_ctx *ctx, const float *w, const float *g, const float *m,
                 const float *v, const float *hparams, float *w_out,
                 float *m_out, float *v_out, int64_t n) {
  runKernel(ctx, "moert_adamw", [&] {
    Args a("moert_adamw");
    a.ptr("hparams", hparams).nonNegative("n", n);
    if (n > 0) {
      a.ptrs({{"w", w},
              {"g", g},
              {"m", m},
              {"v", v},
              {"w_out", w_out},
              {"m_out", m_out},
              {"v_out", v_out}});
      int64_t bytes = n * int64_t(sizeof(float));
      a.inPlaceOrApart("w_out", w_out, "w", w, bytes);
      a.inPlaceOrApart("m_out", m_out, "m", m, bytes);
      a.inPlaceOrApart("v_out", v_out, "v", v, bytes);
    }
    MOERT_TRY(a.status());
    return n > 0 ? ctx->backend->adamw(w, g, m, v, hparams, w_out, m_out, v_out,
                                       n)
                 : Status::ok();
  });
}

void moert_sgd(moert_ctx *ctx, const float *w, const float *g, const float *buf,
               const float *hparams, float *w_out, float *buf_out, int64_t n) {
  runKernel(ctx, "moert_sgd", [&] {
    Args a("moert_sgd");
    a.ptr("hparams", hparams).nonNegative("n", n);
    if (n > 0) {
      a.ptrs({{"w", w},
              {"g", g},
              {"buf", buf},
              {"w_out", w_out},
              {"buf_out", buf_out}});
      int64_t bytes = n * int64_t(sizeof(float));
      a.inPlaceOrApart("w_out", w_out, "w", w, bytes);
      a.inPlaceOrApart("buf_out", buf_out, "buf", buf, bytes);
    }
    MOERT_TRY(a.status());
    return n > 0 ? ctx->backend->sgd(w, g, buf, hparams, w_out, buf_out, n)
                 : Status::ok();
  });
}

void moert_bias_update(moert_ctx *ctx, const float *bias, const float *load,
                       const float *hparams, float *bias_out, int64_t E,
                       int64_t tokens, int64_t k) {
  runKernel(ctx, "moert_bias_update", [&] {
    Args a("moert_bias_update");
    a.ptrs({{"bias", bias},
            {"load", load},
            {"hparams", hparams},
            {"bias_out", bias_out}});
    a.positive({{"E", E}, {"tokens", tokens}, {"k", k}});
    a.inPlaceOrApart("bias_out", bias_out, "bias", bias,
                     E * int64_t(sizeof(float)));
    MOERT_TRY(a.status());
    return ctx->backend->biasUpdate(bias, load, hparams, bias_out, E, tokens,
                                    k);
  });
}
