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

#include <cstdint>
#include <memory>

namespace moert {

/// A started collective. wait() completes it (or fails after the timeout).
class Request {
public:
  virtual ~Request() = default;
  virtual Status wait() = 0;
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
/// NCCL over all MPI ranks, ncclUniqueId broadcast over MPI; device buffers
/// on `stream` (a cudaStream_t, may be null). MOERT_ERR_UNSUPPORTED when built
/// without NCCL.
Status createNcclCommunicator(const CommOptions &opts, void *stream,
                              std::unique_ptr<Communicator> &out);

} // namespace moert

#endif // MOERT_COMM_COMMUNICATOR_H
