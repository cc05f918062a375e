//===- Collectives.cpp - Collective entry points of the C ABI -------------===//
//
// Each shaped collective of moert.h becomes a Plan: copies that pack the
// input into peer-contiguous chunks (when the split dimension is not the
// outermost), one byte-level call of the group's Communicator, and copies
// that unpack the received chunks into the output (when the concat dimension
// is not the outermost). Synchronous forms run the plan at once; the *_start
// forms run it up to the transfer and return a heap Pending that moert_wait
// completes. A group of one rank is a local copy.
//
// Overlap: a started collective progresses while the rank computes (the MPI
// communicator's progress thread, NCCL's own stream). With tracing on, each
// transfer is an event on the rank's communication track (tid 1), from its
// start to the moment its completion was observed, next to the compute
// phases on tid 0; the statistics count the started collectives that were
// already done when moert_wait came ("overlap" in moert_ctx_stats_json).
//
// Bytes recorded in the statistics are those this rank sends to other ranks
// under the usual algorithms: all_to_all(_v) what goes to peers, all_gather
// (n-1) copies of the input, reduce_scatter the (n-1)/n of the input that
// belongs to others, all_reduce 2(n-1)/n of the input (ring).
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "comm/Communicator.h"
#include "core/Context.h"

#ifdef MOE_HAVE_MPI
// The C API only: keep OpenMPI's C++ bindings (and their library) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

using namespace moert;

namespace {

//===----------------------------------------------------------------------===//
// Plans
//===----------------------------------------------------------------------===//

struct Copy2D {
  char *dst;
  int64_t dstPitch;
  const char *src;
  int64_t srcPitch, width, height;
};

using Transfer = std::function<Status(const void *send, void *recv,
                                      std::unique_ptr<Request> *req)>;

/// One collective as byte-level work.
struct Plan {
  std::string op;   // "all_to_all", ...
  std::string what; // "all_to_all over [ep]"
  int64_t mask = 0;
  Communicator *comm = nullptr; // null: this rank alone
  int size = 1, rank = 0;

  std::vector<Copy2D> pack; // run before the transfer
  const char *send = nullptr;
  int64_t sendBytes = 0;
  char *recv = nullptr;
  int64_t recvBytes = 0;      // alone: sendBytes are copied to recv
  std::vector<Copy2D> unpack; // run after the transfer
  char *zero = nullptr;       // tail of the output to clear
  int64_t zeroBytes = 0;
  int64_t bytesToOthers = 0;
  bool skipTransfer = false; // nothing to move on any rank
  Transfer transfer;
};

/// A plan in flight: what *_start returns and moert_wait completes.
struct Pending {
  explicit Pending(moert_ctx *c) : ctx(c) {}
  ~Pending() {
    // An unfinished transfer may still write into its staging: keep it.
    if (ownedStaging && (finished || !req))
      ctx->backend->free(ownedStaging);
  }
  moert_ctx *ctx;
  Plan plan;
  std::unique_ptr<Request> req;
  bool hostStaged = false; // device backend, host communicator
  std::vector<char> hostSend, hostRecv;
  void *ownedStaging = nullptr; // async plans own their staging
  bool finished = false;
  double transferStart = -1, transferEnd = -1; // steady clock, comm only
};

/// Scratch memory of the backend for packing: the context's (grown on
/// demand) for synchronous calls, a private block for async ones, which
/// may overlap with other collectives.
Status getStaging(Pending &p, bool async, int64_t bytes, char *&out) {
  moert_ctx *ctx = p.ctx;
  void *mem = nullptr;
  if (async) {
    MOERT_TRY(ctx->backend->alloc(bytes, &mem));
    p.ownedStaging = mem;
  } else {
    if (ctx->stagingBytes < bytes || !ctx->staging) {
      ctx->backend->free(ctx->staging);
      ctx->staging = nullptr;
      ctx->stagingBytes = 0;
      MOERT_TRY(ctx->backend->alloc(bytes, &mem));
      ctx->staging = mem;
      ctx->stagingBytes = bytes;
    }
    mem = ctx->staging;
  }
  out = static_cast<char *>(mem);
  return Status::ok();
}

Status runCopies(Backend &b, const std::vector<Copy2D> &copies) {
  for (const Copy2D &c : copies)
    if (c.width > 0 && c.height > 0)
      MOERT_TRY(
          b.copy2D(c.dst, c.dstPitch, c.src, c.srcPitch, c.width, c.height));
  return Status::ok();
}

Status startPlan(Pending &p, bool async) {
  Backend &b = *p.ctx->backend;
  Plan &plan = p.plan;
  MOERT_TRY(runCopies(b, plan.pack));
  if (plan.skipTransfer)
    return Status::ok();
  if (!plan.comm) {
    if (plan.sendBytes > 0 && plan.send != plan.recv)
      MOERT_TRY(b.copy(plan.recv, plan.send, plan.sendBytes));
    return Status::ok();
  }
  std::unique_ptr<Request> *req = async ? &p.req : nullptr;
  p.hostStaged = !plan.comm->deviceBuffers() && b.kind() != MOERT_DEVICE_CPU;
  const void *send = plan.send;
  void *recv = plan.recv;
  if (p.hostStaged) {
    p.hostSend.resize(static_cast<size_t>(plan.sendBytes));
    p.hostRecv.resize(static_cast<size_t>(plan.recvBytes));
    if (plan.sendBytes > 0)
      MOERT_TRY(b.copyToHost(p.hostSend.data(), plan.send, plan.sendBytes));
    send = p.hostSend.data();
    recv = p.hostRecv.data();
  }
  p.transferStart = steadySeconds();
  MOERT_TRY(plan.transfer(send, recv, req));
  if (!async)
    p.transferEnd = steadySeconds();
  return Status::ok();
}

/// The transfer of `p` as an event on the communication track (tid 1).
void recordTransfer(moert_ctx *ctx, const Pending &p) {
  if (p.transferStart < 0 || p.transferEnd < 0)
    return;
  recordTraceEvent(ctx, p.plan.what.c_str(), p.transferStart,
                   p.transferEnd - p.transferStart, kCommTrack);
}

Status finishPlan(Pending &p) {
  Backend &b = *p.ctx->backend;
  Plan &plan = p.plan;
  if (p.req) {
    MOERT_TRY(p.req->wait());
    p.transferEnd = p.req->completedAt();
    if (p.transferEnd < p.transferStart)
      p.transferEnd = steadySeconds();
  }
  p.finished = true;
  if (p.hostStaged && plan.recvBytes > 0)
    MOERT_TRY(b.copyToDevice(plan.recv, p.hostRecv.data(), plan.recvBytes));
  MOERT_TRY(runCopies(b, plan.unpack));
  if (plan.zeroBytes > 0)
    MOERT_TRY(b.memsetZero(plan.zero, plan.zeroBytes));
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// Groups and shapes
//===----------------------------------------------------------------------===//

Status findGroup(moert_ctx *ctx, int64_t mask, Plan &plan) {
  int64_t axes = static_cast<int64_t>(ctx->meshShape.size());
  plan.mask = mask;
  plan.what = plan.op + " over [" + axisNames(ctx, mask) + "]";
  if (mask < 0 || mask >= (int64_t(1) << axes))
    return error(MOERT_ERR_INVALID,
                 "moert_%s: axis_mask 0x%" PRIx64 " names axes outside the "
                 "mesh's %" PRId64,
                 plan.op.c_str(), static_cast<uint64_t>(mask), axes);
  int64_t expected = 1;
  for (int64_t i = 0; i < axes; ++i)
    if (mask & (int64_t(1) << i))
      expected *= ctx->meshShape[i];
  if (expected == 1)
    return Status::ok(); // alone
  auto it = ctx->groups.find(mask);
  if (it == ctx->groups.end() || !it->second)
    return error(MOERT_ERR_INVALID,
                 "%s: the context has no communicator "
                 "for this axis set",
                 plan.what.c_str());
  plan.comm = it->second.get();
  plan.size = plan.comm->size();
  plan.rank = plan.comm->rank();
  if (plan.size != expected)
    return error(MOERT_ERR_COMM,
                 "%s: the group communicator has %d ranks, the mesh says "
                 "%" PRId64,
                 plan.what.c_str(), plan.size, expected);
  return Status::ok();
}

int64_t product(const int64_t *d, int from, int to) {
  int64_t p = 1;
  for (int i = from; i < to; ++i)
    p *= d[i];
  return p;
}

Status checkDims(const Plan &plan, const int64_t *d, int64_t elemBytes) {
  if (elemBytes <= 0)
    return error(MOERT_ERR_INVALID,
                 "%s: element size %" PRId64 " must be positive",
                 plan.what.c_str(), elemBytes);
  for (int i = 0; i < 4; ++i)
    if (d[i] < 0)
      return error(MOERT_ERR_INVALID, "%s: dimension %d is %" PRId64,
                   plan.what.c_str(), i, d[i]);
  return Status::ok();
}

Status checkDim(const Plan &plan, const char *name, int64_t dim) {
  if (dim < 0 || dim > 3)
    return error(MOERT_ERR_INVALID, "%s: %s (%" PRId64 ") must be in [0, 3]",
                 plan.what.c_str(), name, dim);
  return Status::ok();
}

Status checkDivisible(const Plan &plan, const char *name, int64_t dim,
                      int64_t len) {
  if (len % plan.size != 0)
    return error(MOERT_ERR_INVALID,
                 "%s: %s %" PRId64 " of size %" PRId64
                 " is not divisible by the group size %d",
                 plan.what.c_str(), name, dim, len, plan.size);
  return Status::ok();
}

Status checkPtrs(const Plan &plan, const void *in, const void *out,
                 int64_t bytes) {
  if (bytes > 0 && (!in || !out))
    return error(MOERT_ERR_INVALID, "%s: %s is null", plan.what.c_str(),
                 in ? "out" : "in");
  return Status::ok();
}

/// Copies that gather chunk p of the [outer, n, width] view of `src` into
/// dst + p*chunk (pack; unpack is the mirror image).
void addChunkCopies(std::vector<Copy2D> &copies, int n, int64_t outer,
                    int64_t width, char *dst, const char *src, bool pack) {
  int64_t chunk = outer * width;
  for (int p = 0; p < n; ++p) {
    if (pack)
      copies.push_back(
          {dst + p * chunk, width, src + p * width, n * width, width, outer});
    else // src holds chunks, dst is the [outer, n, width] view
      copies.push_back(
          {dst + p * width, n * width, src + p * chunk, width, width, outer});
  }
}

/// Even per-peer byte counts for allToAllV.
Transfer evenAllToAll(Communicator *comm, int n, int64_t chunk,
                      const std::string &what) {
  std::vector<int64_t> bytes(n, chunk), displs(n);
  for (int p = 0; p < n; ++p)
    displs[p] = p * chunk;
  return [=](const void *s, void *r, std::unique_ptr<Request> *req) {
    return comm->allToAllV(s, bytes.data(), displs.data(), r, bytes.data(),
                           displs.data(), what.c_str(), req);
  };
}

//===----------------------------------------------------------------------===//
// The five plans
//===----------------------------------------------------------------------===//

Status planAllToAll(Pending &pd, bool async, const void *in, void *out,
                    int64_t eb, const int64_t *d, int64_t split,
                    int64_t concat) {
  Plan &plan = pd.plan;
  MOERT_TRY(checkDims(plan, d, eb));
  MOERT_TRY(checkDim(plan, "split_dim", split));
  MOERT_TRY(checkDim(plan, "concat_dim", concat));
  MOERT_TRY(checkDivisible(plan, "split dimension", split, d[split]));
  int n = plan.size;
  int64_t total = product(d, 0, 4) * eb;
  MOERT_TRY(checkPtrs(plan, in, out, total));
  int64_t chunk = total / n;
  int64_t cs[4] = {d[0], d[1], d[2], d[3]};
  cs[split] /= n;
  int64_t outerS = product(d, 0, int(split));
  int64_t outerC = product(cs, 0, int(concat));
  bool chunked = n > 1 && outerS > 1;
  bool pack = chunked || (in != out && overlaps(in, total, out, total)) ||
              (n > 1 && in == out);
  bool unpack = n > 1 && outerC > 1;
  plan.skipTransfer = total == 0;
  char *stage = nullptr;
  if ((pack || unpack) && total > 0)
    MOERT_TRY(getStaging(pd, async, (pack + unpack) * total, stage));
  plan.send = static_cast<const char *>(in);
  plan.recv = static_cast<char *>(out);
  plan.sendBytes = plan.recvBytes = total;
  if (pack && total > 0) {
    if (chunked)
      addChunkCopies(plan.pack, n, outerS, chunk / outerS, stage, plan.send,
                     true);
    else
      plan.pack.push_back({stage, 0, plan.send, 0, total, 1});
    plan.send = stage;
  }
  if (unpack && total > 0) {
    plan.recv = stage + (pack ? total : 0);
    addChunkCopies(plan.unpack, n, outerC, chunk / outerC,
                   static_cast<char *>(out), plan.recv, false);
  }
  plan.bytesToOthers = (n - 1) * chunk;
  if (plan.comm)
    plan.transfer = evenAllToAll(plan.comm, n, chunk, plan.what);
  return Status::ok();
}

/// Reads a count array (device memory unless the backend is the CPU).
Status readCounts(moert_ctx *ctx, const Plan &plan, const char *name,
                  const int32_t *counts, int64_t num,
                  std::vector<int32_t> &out) {
  if (num <= 0 || num % plan.size != 0)
    return error(MOERT_ERR_INVALID,
                 "%s: %s has %" PRId64 " entries, not a positive multiple "
                 "of the group size %d",
                 plan.what.c_str(), name, num, plan.size);
  if (!counts)
    return error(MOERT_ERR_INVALID, "%s: %s is null", plan.what.c_str(), name);
  out.resize(static_cast<size_t>(num));
  if (ctx->backend->kind() == MOERT_DEVICE_CPU)
    std::memcpy(out.data(), counts, out.size() * sizeof(int32_t));
  else
    MOERT_TRY(ctx->backend->copyToHost(out.data(), counts,
                                       num * int64_t(sizeof(int32_t))));
  for (int64_t i = 0; i < num; ++i)
    if (out[i] < 0)
      return error(MOERT_ERR_INVALID, "%s: %s[%" PRId64 "] is %d",
                   plan.what.c_str(), name, i, out[i]);
  return Status::ok();
}

/// Rows per peer: sums of n equal consecutive chunks of `counts`.
std::vector<int64_t> rowsPerPeer(const std::vector<int32_t> &counts, int n) {
  std::vector<int64_t> rows(n, 0);
  size_t per = counts.size() / n;
  for (size_t i = 0; i < counts.size(); ++i)
    rows[i / per] += counts[i];
  return rows;
}

struct RowsArgs {
  const void *in;
  const int32_t *sendCounts, *recvCounts;
  void *out;
  int64_t numSend, numRecv, rowBytes, inRows, outRows;
};

Status checkRowTotals(const Plan &plan, int64_t sendTotal, int64_t recvTotal,
                      const RowsArgs &a) {
  if (a.rowBytes < 0 || a.inRows < 0 || a.outRows < 0)
    return error(MOERT_ERR_INVALID,
                 "%s: row_bytes (%" PRId64 "), in_rows (%" PRId64
                 ") and out_rows (%" PRId64 ") must not be negative",
                 plan.what.c_str(), a.rowBytes, a.inRows, a.outRows);
  if (sendTotal > a.inRows)
    return error(MOERT_ERR_INVALID,
                 "%s: send_counts total %" PRId64 " rows, more than in_rows "
                 "(%" PRId64 ")",
                 plan.what.c_str(), sendTotal, a.inRows);
  if (recvTotal > a.outRows)
    return error(MOERT_ERR_INVALID,
                 "%s: recv_counts total %" PRId64 " rows, more than out_rows "
                 "(%" PRId64 ")",
                 plan.what.c_str(), recvTotal, a.outRows);
  if (!plan.comm && sendTotal != recvTotal)
    return error(MOERT_ERR_INVALID,
                 "%s: a group of one sends %" PRId64 " rows to itself but "
                 "expects %" PRId64,
                 plan.what.c_str(), sendTotal, recvTotal);
  if ((sendTotal > 0 && !a.in) || (a.outRows > 0 && !a.out))
    return error(MOERT_ERR_INVALID, "%s: %s is null", plan.what.c_str(),
                 a.in ? "out" : "in");
  return Status::ok();
}

Status planAllToAllV(Pending &pd, bool async, const RowsArgs &a) {
  Plan &plan = pd.plan;
  int n = plan.size;
  std::vector<int32_t> sc, rc;
  MOERT_TRY(
      readCounts(pd.ctx, plan, "send_counts", a.sendCounts, a.numSend, sc));
  MOERT_TRY(
      readCounts(pd.ctx, plan, "recv_counts", a.recvCounts, a.numRecv, rc));
  std::vector<int64_t> sRows = rowsPerPeer(sc, n), rRows = rowsPerPeer(rc, n);
  std::vector<int64_t> sBytes(n), sDispls(n), rBytes(n), rDispls(n);
  int64_t sendTotal = 0, recvTotal = 0;
  for (int p = 0; p < n; ++p) {
    sDispls[p] = sendTotal * a.rowBytes;
    rDispls[p] = recvTotal * a.rowBytes;
    sBytes[p] = sRows[p] * a.rowBytes;
    rBytes[p] = rRows[p] * a.rowBytes;
    sendTotal += sRows[p];
    recvTotal += rRows[p];
    if (p != plan.rank)
      plan.bytesToOthers += sBytes[p];
  }
  MOERT_TRY(checkRowTotals(plan, sendTotal, recvTotal, a));
  plan.send = static_cast<const char *>(a.in);
  plan.recv = static_cast<char *>(a.out);
  plan.sendBytes = sendTotal * a.rowBytes;
  plan.recvBytes = recvTotal * a.rowBytes;
  if (overlaps(a.in, plan.sendBytes, a.out, a.outRows * a.rowBytes)) {
    char *stage;
    MOERT_TRY(getStaging(pd, async, plan.sendBytes, stage));
    plan.pack.push_back({stage, 0, plan.send, 0, plan.sendBytes, 1});
    plan.send = stage;
  }
  plan.zero = plan.recv + plan.recvBytes;
  plan.zeroBytes = (a.outRows - recvTotal) * a.rowBytes;
  if (plan.comm) {
    Communicator *comm = plan.comm;
    std::string what = plan.what;
    plan.transfer = [=](const void *s, void *r, std::unique_ptr<Request> *req) {
      return comm->allToAllV(s, sBytes.data(), sDispls.data(), r, rBytes.data(),
                             rDispls.data(), what.c_str(), req);
    };
  }
  return Status::ok();
}

Status planAllGather(Pending &pd, bool async, const void *in, void *out,
                     int64_t eb, const int64_t *d, int64_t dim) {
  Plan &plan = pd.plan;
  MOERT_TRY(checkDims(plan, d, eb));
  MOERT_TRY(checkDim(plan, "dim", dim));
  int n = plan.size;
  int64_t bytes = product(d, 0, 4) * eb;
  MOERT_TRY(checkPtrs(plan, in, out, bytes));
  int64_t outer = product(d, 0, int(dim));
  bool unpack = n > 1 && outer > 1;
  plan.skipTransfer = bytes == 0;
  plan.send = static_cast<const char *>(in);
  plan.sendBytes = bytes;
  plan.recvBytes = n * bytes;
  plan.recv = static_cast<char *>(out);
  char *mine = plan.recv + plan.rank * bytes;
  bool aliased =
      !unpack && plan.send != mine && overlaps(in, bytes, out, n * bytes);
  if ((unpack || aliased) && bytes > 0) {
    char *stage;
    MOERT_TRY(getStaging(pd, async, unpack ? n * bytes : bytes, stage));
    if (unpack) {
      plan.recv = stage;
      addChunkCopies(plan.unpack, n, outer, bytes / outer,
                     static_cast<char *>(out), stage, false);
    } else {
      plan.pack.push_back({stage, 0, plan.send, 0, bytes, 1});
      plan.send = stage;
    }
  }
  plan.bytesToOthers = (n - 1) * bytes;
  if (plan.comm) {
    Communicator *comm = plan.comm;
    std::string what = plan.what;
    plan.transfer = [=](const void *s, void *r, std::unique_ptr<Request> *req) {
      return comm->allGather(s, r, bytes, what.c_str(), req);
    };
  }
  return Status::ok();
}

Status checkReduceType(const Plan &plan, int32_t dtype) {
  if (dtypeSize(dtype) == 0)
    return error(MOERT_ERR_INVALID, "%s: unknown dtype %d", plan.what.c_str(),
                 dtype);
  return Status::ok();
}

Status planReduceScatter(Pending &pd, bool async, const void *in, void *out,
                         const int64_t *d, int64_t dim, int32_t dtype) {
  Plan &plan = pd.plan;
  MOERT_TRY(checkReduceType(plan, dtype));
  int64_t es = static_cast<int64_t>(dtypeSize(dtype));
  MOERT_TRY(checkDims(plan, d, es));
  MOERT_TRY(checkDim(plan, "dim", dim));
  MOERT_TRY(checkDivisible(plan, "dimension", dim, d[dim]));
  int n = plan.size;
  int64_t total = product(d, 0, 4) * es;
  int64_t chunk = total / n;
  MOERT_TRY(checkPtrs(plan, in, out, total));
  int64_t outer = product(d, 0, int(dim));
  bool chunked = n > 1 && outer > 1;
  bool pack = chunked || (in != out && overlaps(in, total, out, chunk)) ||
              (n > 1 && in == out);
  plan.skipTransfer = total == 0;
  plan.send = static_cast<const char *>(in);
  plan.recv = static_cast<char *>(out);
  plan.sendBytes = total;
  plan.recvBytes = chunk;
  if (pack && total > 0) {
    char *stage;
    MOERT_TRY(getStaging(pd, async, total, stage));
    if (chunked)
      addChunkCopies(plan.pack, n, outer, chunk / outer, stage, plan.send,
                     true);
    else
      plan.pack.push_back({stage, 0, plan.send, 0, total, 1});
    plan.send = stage;
  }
  plan.bytesToOthers = (n - 1) * chunk;
  if (plan.comm) {
    Communicator *comm = plan.comm;
    std::string what = plan.what;
    int64_t elems = chunk / es;
    plan.transfer = [=](const void *s, void *r, std::unique_ptr<Request> *req) {
      return comm->reduceScatter(s, r, elems, dtype, what.c_str(), req);
    };
  }
  return Status::ok();
}

Status planAllReduce(Pending &pd, bool async, const void *in, void *out,
                     int64_t n, int32_t dtype) {
  Plan &plan = pd.plan;
  MOERT_TRY(checkReduceType(plan, dtype));
  if (n < 0)
    return error(MOERT_ERR_INVALID, "%s: n (%" PRId64 ") is negative",
                 plan.what.c_str(), n);
  int64_t bytes = n * static_cast<int64_t>(dtypeSize(dtype));
  MOERT_TRY(checkPtrs(plan, in, out, bytes));
  plan.skipTransfer = bytes == 0;
  plan.send = static_cast<const char *>(in);
  plan.recv = static_cast<char *>(out);
  plan.sendBytes = plan.recvBytes = bytes;
  if (in != out && overlaps(in, bytes, out, bytes)) {
    char *stage;
    MOERT_TRY(getStaging(pd, async, bytes, stage));
    plan.pack.push_back({stage, 0, plan.send, 0, bytes, 1});
    plan.send = stage;
  }
  plan.bytesToOthers = 2 * (plan.size - 1) * bytes / plan.size;
  if (plan.comm) {
    Communicator *comm = plan.comm;
    std::string what = plan.what;
    plan.transfer = [=](const void *s, void *r, std::unique_ptr<Request> *req) {
      return comm->allReduce(s, r, n, dtype, what.c_str(), req);
    };
  }
  return Status::ok();
}

/// moert_slice: this rank's chunk of `dim`, a local strided copy.
Status runSlice(Pending &pd, const void *in, void *out, int64_t eb,
                const int64_t *d, int64_t dim) {
  Plan &plan = pd.plan;
  MOERT_TRY(checkDims(plan, d, eb));
  MOERT_TRY(checkDim(plan, "dim", dim));
  MOERT_TRY(checkDivisible(plan, "dimension", dim, d[dim]));
  int n = plan.size;
  int64_t total = product(d, 0, 4) * eb;
  MOERT_TRY(checkPtrs(plan, in, out, total));
  if (total == 0)
    return Status::ok();
  int64_t chunk = total / n;
  int64_t outer = product(d, 0, int(dim));
  int64_t width = chunk / outer;
  const char *src = static_cast<const char *>(in);
  Backend &b = *pd.ctx->backend;
  if (overlaps(in, total, out, chunk)) {
    if (in == out && plan.rank == 0 && outer == 1)
      return Status::ok(); // the chunk is already in place
    char *stage;
    MOERT_TRY(getStaging(pd, false, total, stage));
    MOERT_TRY(b.copy(stage, src, total));
    src = stage;
  }
  return b.copy2D(out, width, src + plan.rank * width, n * width, width, outer);
}

//===----------------------------------------------------------------------===//
// Running entry points
//===----------------------------------------------------------------------===//

using Planner = std::function<Status(Pending &, bool async)>;

bool usable(moert_ctx *ctx) { return ctx && ctx->sticky.isOk(); }

/// Plans and runs one collective to completion.
void runSync(moert_ctx *ctx, const char *op, int64_t mask,
             const Planner &planner) {
  if (!usable(ctx))
    return;
  double start = ctx->backend->now();
  Pending p(ctx);
  p.plan.op = op;
  Status s = findGroup(ctx, mask, p.plan);
  if (s.isOk())
    s = planner(p, false);
  if (s.isOk())
    s = startPlan(p, false);
  if (s.isOk())
    s = finishPlan(p);
  if (fail(ctx, s))
    return;
  recordCollective(ctx, op, mask, p.plan.bytesToOthers);
  recordPhase(ctx, op, start, ctx->backend->now() - start);
  recordTransfer(ctx, p);
}

/// Plans and starts one collective; moert_wait finishes it.
void *runStart(moert_ctx *ctx, const char *op, int64_t mask,
               const Planner &planner) {
  if (!usable(ctx))
    return nullptr;
  double start = ctx->backend->now();
  std::unique_ptr<Pending> p(new Pending(ctx));
  p->plan.op = op;
  Status s = findGroup(ctx, mask, p->plan);
  if (s.isOk())
    s = planner(*p, true);
  if (s.isOk())
    s = startPlan(*p, true);
  if (fail(ctx, s))
    return nullptr;
  recordCollective(ctx, op, mask, p->plan.bytesToOthers);
  std::string phase = std::string(op) + "_start";
  recordPhase(ctx, phase.c_str(), start, ctx->backend->now() - start);
  return p.release();
}

} // namespace

//===----------------------------------------------------------------------===//
// Kernel ABI: collectives
//===----------------------------------------------------------------------===//

void moert_all_to_all(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t elem_bytes, int64_t d0, int64_t d1,
                      int64_t d2, int64_t d3, int64_t split_dim,
                      int64_t concat_dim) {
  const int64_t d[4] = {d0, d1, d2, d3};
  runSync(ctx, "all_to_all", axis_mask, [&](Pending &p, bool async) {
    return planAllToAll(p, async, in, out, elem_bytes, d, split_dim,
                        concat_dim);
  });
}

void moert_all_to_all_v(moert_ctx *ctx, int64_t axis_mask, const void *in,
                        const int32_t *send_counts, const int32_t *recv_counts,
                        void *out, int64_t num_send_counts,
                        int64_t num_recv_counts, int64_t row_bytes,
                        int64_t in_rows, int64_t out_rows) {
  RowsArgs a{in,        send_counts,     recv_counts,
             out,       num_send_counts, num_recv_counts,
             row_bytes, in_rows,         out_rows};
  runSync(ctx, "all_to_all_v", axis_mask,
          [&](Pending &p, bool async) { return planAllToAllV(p, async, a); });
}

void moert_all_gather(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t elem_bytes, int64_t d0, int64_t d1,
                      int64_t d2, int64_t d3, int64_t dim) {
  const int64_t d[4] = {d0, d1, d2, d3};
  runSync(ctx, "all_gather", axis_mask, [&](Pending &p, bool async) {
    return planAllGather(p, async, in, out, elem_bytes, d, dim);
  });
}

void moert_reduce_scatter(moert_ctx *ctx, int64_t axis_mask, const void *in,
                          void *out, int64_t d0, int64_t d1, int64_t d2,
                          int64_t d3, int64_t dim, int32_t dtype) {
  const int64_t d[4] = {d0, d1, d2, d3};
  runSync(ctx, "reduce_scatter", axis_mask, [&](Pending &p, bool async) {
    return planReduceScatter(p, async, in, out, d, dim, dtype);
  });
}

void moert_all_reduce(moert_ctx *ctx, int64_t axis_mask, const void *in,
                      void *out, int64_t n, int32_t dtype) {
  runSync(ctx, "all_reduce", axis_mask, [&](Pending &p, bool async) {
    return planAllReduce(p, async, in, out, n, dtype);
  });
}

void moert_slice(moert_ctx *ctx, int64_t axis_mask, const void *in, void *out,
                 int64_t elem_bytes, int64_t d0, int64_t d1, int64_t d2,
                 int64_t d3, int64_t dim) {
  if (!usable(ctx))
    return;
  const int64_t d[4] = {d0, d1, d2, d3};
  double start = ctx->backend->now();
  Pending p(ctx);
  p.plan.op = "slice";
  Status s = findGroup(ctx, axis_mask, p.plan);
  if (s.isOk())
    s = runSlice(p, in, out, elem_bytes, d, dim);
  if (fail(ctx, s))
    return;
  // No communication: a phase, not a collective.
  recordPhase(ctx, "slice", start, ctx->backend->now() - start);
}

void *moert_all_to_all_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t elem_bytes, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3,
                             int64_t split_dim, int64_t concat_dim) {
  const int64_t d[4] = {d0, d1, d2, d3};
  return runStart(ctx, "all_to_all", axis_mask, [&](Pending &p, bool async) {
    return planAllToAll(p, async, in, out, elem_bytes, d, split_dim,
                        concat_dim);
  });
}

void *moert_all_to_all_v_start(moert_ctx *ctx, int64_t axis_mask,
                               const void *in, const int32_t *send_counts,
                               const int32_t *recv_counts, void *out,
                               int64_t num_send_counts, int64_t num_recv_counts,
                               int64_t row_bytes, int64_t in_rows,
                               int64_t out_rows) {
  RowsArgs a{in,        send_counts,     recv_counts,
             out,       num_send_counts, num_recv_counts,
             row_bytes, in_rows,         out_rows};
  return runStart(ctx, "all_to_all_v", axis_mask, [&](Pending &p, bool async) {
    return planAllToAllV(p, async, a);
  });
}

void *moert_all_gather_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t elem_bytes, int64_t d0,
                             int64_t d1, int64_t d2, int64_t d3, int64_t dim) {
  const int64_t d[4] = {d0, d1, d2, d3};
  return runStart(ctx, "all_gather", axis_mask, [&](Pending &p, bool async) {
    return planAllGather(p, async, in, out, elem_bytes, d, dim);
  });
}

void *moert_reduce_scatter_start(moert_ctx *ctx, int64_t axis_mask,
                                 const void *in, void *out, int64_t d0,
                                 int64_t d1, int64_t d2, int64_t d3,
                                 int64_t dim, int32_t dtype) {
  const int64_t d[4] = {d0, d1, d2, d3};
  return runStart(ctx, "reduce_scatter", axis_mask,
                  [&](Pending &p, bool async) {
                    return planReduceScatter(p, async, in, out, d, dim, dtype);
                  });
}

void *moert_all_reduce_start(moert_ctx *ctx, int64_t axis_mask, const void *in,
                             void *out, int64_t n, int32_t dtype) {
  return runStart(ctx, "all_reduce", axis_mask, [&](Pending &p, bool async) {
    return planAllReduce(p, async, in, out, n, dtype);
  });
}

void moert_wait(moert_ctx *ctx, void *handle) {
  std::unique_ptr<Pending> p(static_cast<Pending *>(handle));
  if (!usable(ctx))
    return; // an unfinished transfer is abandoned by its Request
  if (!p) {
    fail(ctx, error(MOERT_ERR_INVALID, "moert_wait: null handle (its "
                                       "collective was never started)"));
    return;
  }
  if (p->ctx != ctx) {
    fail(ctx, error(MOERT_ERR_INVALID,
                    "moert_wait: the handle of %s belongs to another context",
                    p->plan.what.c_str()));
    p.release(); // not ours to free
    return;
  }
  if (p->req) {
    ctx->stats.asyncStarted += 1;
    if (p->req->done())
      ctx->stats.asyncDoneBeforeWait += 1;
  }
  double start = ctx->backend->now();
  if (fail(ctx, finishPlan(*p)))
    return;
  std::string phase = p->plan.op + "_wait";
  recordPhase(ctx, phase.c_str(), start, ctx->backend->now() - start);
  recordTransfer(ctx, *p);
}

//===----------------------------------------------------------------------===//
// World helpers
//===----------------------------------------------------------------------===//

namespace {

#ifdef MOE_HAVE_MPI
bool initializedMpiHere = false;
#endif

moert_status worldResult(moert_ctx *ctx, const Status &s) {
  if (s.isOk())
    return MOERT_OK;
  if (ctx)
    fail(ctx, s);
  return s.code();
}

Status checkWorld(moert_ctx *ctx, const char *fn, int64_t bytes) {
  if (!ctx || !ctx->world)
    return error(MOERT_ERR_INVALID, "%s: null context", fn);
  if (bytes < 0)
    return error(MOERT_ERR_INVALID, "%s: bytes (%" PRId64 ") is negative", fn,
                 bytes);
  return Status::ok();
}

/// Positive integer in environment variable `name`.
bool envPositive(const char *name) {
  const char *v = std::getenv(name);
  return v && std::atoi(v) > 0;
}

} // namespace

moert_status moert_world_init(int *argc, char ***argv, int32_t comm) {
  if (comm == MOERT_COMM_SINGLE)
    return MOERT_OK;
  if (comm != MOERT_COMM_MPI && comm != MOERT_COMM_NCCL)
    return MOERT_ERR_INVALID;
#ifdef MOE_HAVE_MPI
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized)
    return MOERT_OK;
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) !=
      MPI_SUCCESS)
    return MOERT_ERR_COMM;
  initializedMpiHere = true;
  return MOERT_OK;
#else
  (void)argc;
  (void)argv;
  return MOERT_ERR_UNSUPPORTED;
#endif
}

void moert_world_finalize(void) {
#ifdef MOE_HAVE_MPI
  int finalized = 0;
  MPI_Finalized(&finalized);
  // Collectives abandoned after a timeout do not hold MPI_Finalize up
  // (OpenMPI 4 finalizes with them pending).
  if (initializedMpiHere && !finalized)
    MPI_Finalize();
#endif
}

int32_t moert_world_launched(void) {
  if (moert_world_launcher_size() > 0)
    return 1;
  for (const char *rank : {"PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"})
    if (std::getenv(rank))
      return 1;
  return 0;
}

int32_t moert_world_launcher_size(void) {
  for (const char *size :
       {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"})
    if (envPositive(size))
      return static_cast<int32_t>(std::atoi(std::getenv(size)));
  return 0;
}

int32_t moert_world_rank(void) {
#ifdef MOE_HAVE_MPI
  int initialized = 0, rank = 0;
  MPI_Initialized(&initialized);
  if (initialized)
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
#else
  return 0;
#endif
}

int32_t moert_world_size(void) {
#ifdef MOE_HAVE_MPI
  int initialized = 0, size = 1;
  MPI_Initialized(&initialized);
  if (initialized)
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
#else
  return 1;
#endif
}

void moert_world_abort(int32_t code) {
  std::fflush(stdout);
  std::fflush(stderr);
#ifdef MOE_HAVE_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized && moert_world_size() > 1)
    MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

moert_status moert_world_barrier(moert_ctx *ctx) {
  Status s = checkWorld(ctx, "moert_world_barrier", 0);
  if (s.isOk())
    s = ctx->world->barrier("world barrier");
  return worldResult(ctx, s);
}

moert_status moert_world_gather(moert_ctx *ctx, const void *send, void *recv,
                                int64_t bytes) {
  Status s = checkWorld(ctx, "moert_world_gather", bytes);
  if (s.isOk())
    s = ctx->world->gatherHost(send, recv, bytes, 0, "world gather");
  return worldResult(ctx, s);
}

moert_status moert_world_allgather(moert_ctx *ctx, const void *send, void *recv,
                                   int64_t bytes) {
  Status s = checkWorld(ctx, "moert_world_allgather", bytes);
  if (s.isOk())
    s = ctx->world->allGatherHost(send, recv, bytes, "world allgather");
  return worldResult(ctx, s);
}

moert_status moert_world_broadcast(moert_ctx *ctx, void *buf, int64_t bytes) {
  Status s = checkWorld(ctx, "moert_world_broadcast", bytes);
  if (s.isOk())
    s = ctx->world->broadcastHost(buf, bytes, 0, "world broadcast");
  return worldResult(ctx, s);
}
