//===- Communicator.h - Byte-level collectives behind one API ---*- C++ -*-===//
//
// A Communicator moves bytes among a fixed group of ranks. The context
// (runtime/core/Collectives.cpp) builds one sub-communicator per set of mesh
// axes with split(), and turns the shaped collectives of the C ABI (split /
// concat dims, count tensors) into these byte-level calls.
//
// Buffers live where the communicator says (deviceBuffers()): host memory for
// `single` and `mpi`, device memory for `nccl`.
//
// Every call takes `what`, a short description such as "all_to_all over
// [ep]"; it names the collective in errors, timeouts included. No call may
// hang forever: a call that is not complete after the communicator's timeout
// fails with MOERT_ERR_TIMEOUT.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_COMM_COMMUNICATOR_H
#define MOERT_COMM_COMMUNICATOR_H

#include "base/Status.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// Seconds on the steady clock: the time base of Request::completedAt (and
/// of the CPU backend's now()).
inline double steadySeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

/// A started collective. wait() completes it (or fails after the timeout).
class Request {
public:
  virtual ~Request() = default;
  virtual Status wait() = 0;
  /// True once the transfer is known to be complete. Never blocks and never
  /// calls into the transport from the calling thread: a collective that is
  /// done() before wait() was completed by the communicator's own progress
  /// (the MPI progress thread, the GPU's comm stream).
  virtual bool done() const = 0;
  /// steadySeconds() when completion was first observed; < 0 before.
  virtual double completedAt() const = 0;
};

class Communicator {
public:
  virtual ~Communicator() = default;

  /// "single", "mpi" or "nccl".
  virtual const char *name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// True when buffers must be device memory (NCCL).
  virtual bool deviceBuffers() const = 0;
  /// Ranks of this communicator that run on this node (1 when unknown).
  virtual int localRanks() const { return 1; }

  /// Ranks with equal `color` form a new communicator, ordered by `key`.
  virtual Status split(int color, int key,
                       std::unique_ptr<Communicator> &out) = 0;

  /// All-to-all with per-peer byte counts and displacements (size() entries
  /// each). With `req` == nullptr the call blocks; otherwise it starts the
  /// transfer and stores a Request that the caller must wait on.
  virtual Status allToAllV(const void *send, const int64_t *sendBytes,
                           const int64_t *sendDispls, void *recv,
                           const int64_t *recvBytes, const int64_t *recvDispls,
                           const char *what, std::unique_ptr<Request> *req) = 0;
  /// recv holds size()*bytes: rank p's `bytes` at offset p*bytes.
  virtual Status allGather(const void *send, void *recv, int64_t bytes,
                           const char *what, std::unique_ptr<Request> *req) = 0;
  /// Elementwise sum of `n` elements of `dtype` (MOERT_F32 at least).
  virtual Status allReduce(const void *send, void *recv, int64_t n,
                           int32_t dtype, const char *what,
                           std::unique_ptr<Request> *req) = 0;
  /// send holds size()*n elements; recv gets this rank's n-element chunk of
  /// the sum.
  virtual Status reduceScatter(const void *send, void *recv, int64_t n,
                               int32_t dtype, const char *what,
                               std::unique_ptr<Request> *req) = 0;

  //===--- Host-memory helpers for the driver (always host buffers) -------===//
  virtual Status barrier(const char *what) = 0;
  virtual Status broadcastHost(void *buf, int64_t bytes, int root,
                               const char *what) = 0;
  /// recv (size()*bytes) is filled on `root` only (may be null elsewhere).
  virtual Status gatherHost(const void *send, void *recv, int64_t bytes,
                            int root, const char *what) = 0;
  virtual Status allGatherHost(const void *send, void *recv, int64_t bytes,
                               const char *what) = 0;
};

/// True when the byte ranges [a, a + aBytes) and [b, b + bBytes) share a
/// byte; empty ranges overlap nothing.
inline bool overlaps(const void *a, int64_t aBytes, const void *b,
                     int64_t bBytes) {
  const char *pa = static_cast<const char *>(a);
  const char *pb = static_cast<const char *>(b);
  return aBytes > 0 && bBytes > 0 && pa < pb + bBytes && pb < pa + aBytes;
}

struct CommOptions {
  double timeoutSeconds = 300.0;
};

/// World of one rank; collectives are local copies.
Status createSingleCommunicator(const CommOptions &opts,
                                std::unique_ptr<Communicator> &out);
/// MPI_COMM_WORLD (moert_world_init must have initialized MPI), or
/// MOERT_ERR_UNSUPPORTED when built without MPI.
Status createMpiCommunicator(const CommOptions &opts,
                             std::unique_ptr<Communicator> &out);
/// NCCL over all MPI ranks, ncclUniqueId broadcast over MPI; device buffers.
/// The collectives run on a stream of their own; each waits for the work
/// queued so far on `computeStream` (a cudaStream_t, may be null: the legacy
/// stream) through an event. MOERT_ERR_UNSUPPORTED when built without NCCL.
Status createNcclCommunicator(const CommOptions &opts, void *computeStream,
                              std::unique_ptr<Communicator> &out);

//===--- Network emulation (LinkEmulator.cpp) ---------------------------===//

/// The time a link takes for one collective: alpha + bytes / bandwidth,
/// bytes being what this rank sends to (or receives from, if more) the
/// other ranks (docs/runtime.md, "Network emulation").
struct LinkModel {
  double alphaSeconds = 0;
  double bytesPerSecond = 0; // 0: infinite
  double seconds(int64_t bytes) const {
    return alphaSeconds + (bytesPerSecond > 0
                               ? static_cast<double>(bytes) / bytesPerSecond
                               : 0.0);
  }
};

struct AxisLink {
  std::string axis;
  LinkModel model;
};

/// Parses "AXIS:alpha=50us,bw=1GB/s[;AXIS:...]" (entries separated by ','
/// or ';'; a part with ':' starts the next axis). Errors name the bad part.
Status parseLinkSpec(const std::string &spec, std::vector<AxisLink> &out);

/// A communicator whose collectives complete no earlier than
/// `model.seconds(bytes)` after they start, with the data of `inner`
/// unchanged; an all-to-all is a pairwise exchange that pays a latency per
/// peer it exchanges with and each peer's bytes over that peer's link
/// (`peers[q]` when given, one per rank of the group, else `model`). The
/// host helpers (barrier, broadcastHost, ...) pass through.
std::unique_ptr<Communicator> emulateLink(std::unique_ptr<Communicator> inner,
                                          const LinkModel &model,
                                          std::vector<LinkModel> peers = {});

} // namespace moert

#endif // MOERT_COMM_COMMUNICATOR_H
