//===- NcclCommunicator.cpp - Collectives over NCCL on device buffers ----===//
//
// One NCCL communicator per moert Communicator, created non-blocking
// (ncclConfig_t.blocking = 0) so that nothing can hang: every step (init,
// split, group end) and every enqueued collective is polled with
// ncclCommGetAsyncError / cudaEventQuery until it is done, fails, or the
// timeout passes; a stall becomes MOERT_ERR_TIMEOUT naming the collective,
// and the communicator is aborted (ncclCommAbort) so that its kernels exit.
//
// Streams: the collectives run on a stream of the communicator's own
// (non-blocking, so neither the legacy stream nor the backend's compute
// stream serializes with it). Each collective first makes that stream wait,
// through an event, for the work queued so far on the compute stream (the
// kernels that wrote its input), and records an event after itself that
// wait() polls; compute queued after the start overlaps the transfer.
//
// Bootstrap: rank 0 makes the ncclUniqueId and broadcasts it over
// MPI_COMM_WORLD. Without MPI (or before MPI_Init) only a world of one rank
// works. The host helpers (barrier, broadcast, gathers) run over an MPI
// communicator that mirrors the NCCL one (split alongside it).
//
//===----------------------------------------------------------------------===//
#include "base/CudaCheck.h"
#include "base/Dtype.h"
#include "comm/Communicator.h"

#include <nccl.h>
#ifdef MOE_HAVE_MPI
// The C API only: OpenMPI's C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

namespace moert {

namespace {

using Clock = std::chrono::steady_clock;

ncclConfig_t nonBlockingConfig() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

Status ncclFailure(moert_status code, const char *what, const char *call,
                   ncclResult_t r, ncclComm_t comm) {
  const char *detail = comm ? ncclGetLastError(comm) : "";
  return error(code, "%s: %s failed: %s%s%s", what, call, ncclGetErrorString(r),
               detail && *detail ? ": " : "", detail ? detail : "");
}

/// Sleeps a little once the first polls found nothing done.
void backoff(int &polls) {
  if (++polls < 1000)
    std::this_thread::yield();
  else
    std::this_thread::sleep_for(std::chrono::microseconds(50));
}

int32_t envInt(const char *name) {
  const char *v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

#ifdef MOE_HAVE_MPI
/// Polls a non-blocking MPI operation until done or `timeout` seconds.
Status mpiWait(MPI_Request &r, int startErr, double timeout, const char *what,
               const char *call) {
  if (startErr != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(startErr, msg, &len);
    return error(MOERT_ERR_COMM, "%s: %s failed: %.*s", what, call, len, msg);
  }
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout);
  int polls = 0;
  for (;;) {
    int done = 0;
    int err = MPI_Test(&r, &done, MPI_STATUS_IGNORE);
    if (err != MPI_SUCCESS)
      return error(MOERT_ERR_COMM, "%s: MPI_Test of %s failed (%d)", what, call,
                   err);
    if (done)
      return Status::ok();
    if (Clock::now() > deadline)
      return error(MOERT_ERR_TIMEOUT, "%s: %s did not complete within %.1f s",
                   what, call, timeout);
    backoff(polls);
  }
}
#endif

ncclDataType_t ncclType(int32_t dtype, bool &ok) {
  ok = true;
  switch (dtype) {
  case MOERT_F32:
    return ncclFloat32;
  case MOERT_F16:
    return ncclFloat16;
  case MOERT_BF16:
    return ncclBfloat16;
  case MOERT_I32:
    return ncclInt32;
  case MOERT_I64:
    return ncclInt64;
  default:
    ok = false;
    return ncclFloat32;
  }
}

/// State shared by a communicator and its outstanding requests.
struct NcclState {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;        // the communicator's own stream
  cudaStream_t computeStream = nullptr; // the backend's (null: legacy)
  bool ownsStream = false;
  cudaEvent_t ready = nullptr; // compute work queued before a collective
  double timeoutSeconds = 300.0;
  bool aborted = false;

  NcclState() = default;
  NcclState(const NcclState &) = delete;
  ~NcclState() {
    if (ready)
      (void)cudaEventDestroy(ready);
    if (ownsStream && stream) {
      (void)cudaStreamSynchronize(stream);
      (void)cudaStreamDestroy(stream);
    }
  }
  std::string abortReason;

  void abort(const std::string &why) {
    if (aborted || !comm)
      return;
    (void)ncclCommAbort(comm);
    aborted = true;
    abortReason = why;
  }

  Status usable(const char *what) const {
    if (!comm && !aborted)
      return error(MOERT_ERR_COMM,
                   "%s: the NCCL communicator was already destroyed", what);
    if (!aborted)
      return Status::ok();
    return error(MOERT_ERR_COMM,
                 "%s: the NCCL communicator was aborted after an earlier "
                 "failure (%s)",
                 what, abortReason.c_str());
  }

  /// Orders the next collective on `stream` after the work queued so far on
  /// the compute stream.
  Status follow(const char *what) {
    if (!ready)
      MOERT_CUDA(what,
                 cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    MOERT_CUDA(what, cudaEventRecord(ready, computeStream));
    MOERT_CUDA(what, cudaStreamWaitEvent(stream, ready, 0));
    return Status::ok();
  }

  /// Waits until the communicator has no operation in progress (a
  /// non-blocking init, split or group end).
  Status settle(ncclComm_t c, const char *what, const char *call) {
    const auto deadline =
        Clock::now() + std::chrono::duration<double>(timeoutSeconds);
    int polls = 0;
    for (;;) {
      ncclResult_t async = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(c, &async);
      if (r != ncclSuccess)
        return ncclFailure(MOERT_ERR_COMM, what, "ncclCommGetAsyncError", r, c);
      if (async == ncclSuccess)
        return Status::ok();
      if (async != ncclInProgress) {
        Status s = ncclFailure(MOERT_ERR_COMM, what, call, async, c);
        (void)ncclCommAbort(c);
        if (c == comm) {
          aborted = true;
          abortReason = s.message();
        }
        return s;
      }
      if (Clock::now() > deadline) {
        Status s = error(MOERT_ERR_TIMEOUT,
                         "%s: %s did not complete within %.1f s; the NCCL "
                         "communicator was aborted",
                         what, call, timeoutSeconds);
        (void)ncclCommAbort(c);
        if (c == comm) {
          aborted = true;
          abortReason = s.message();
        }
        return s;
      }
      backoff(polls);
    }
  }

  /// Waits for `event` (recorded after an enqueued collective).
  Status complete(cudaEvent_t event, const char *what) {
    MOERT_TRY(usable(what));
    const auto deadline =
        Clock::now() + std::chrono::duration<double>(timeoutSeconds);
    int polls = 0;
    for (;;) {
      cudaError_t q = cudaEventQuery(event);
      if (q == cudaSuccess)
        return Status::ok();
      if (q != cudaErrorNotReady) {
        Status s = cuda::cudaCheck(q, what, "cudaEventQuery(collective)");
        abort(s.message());
        return s;
      }
      ncclResult_t async = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm, &async);
      if (r != ncclSuccess ||
          (async != ncclSuccess && async != ncclInProgress)) {
        Status s = ncclFailure(MOERT_ERR_COMM, what, "the collective",
                               r != ncclSuccess ? r : async, comm);
        abort(s.message());
        return s;
      }
      if (Clock::now() > deadline) {
        Status s = error(MOERT_ERR_TIMEOUT,
                         "%s: NCCL collective did not complete within %.1f s "
                         "(a peer may be missing or stalled); the "
                         "communicator was aborted",
                         what, timeoutSeconds);
        abort(s.message());
        return s;
      }
      backoff(polls);
    }
  }
};

class NcclRequest final : public Request {
public:
  NcclRequest(std::shared_ptr<NcclState> state, cudaEvent_t event,
              std::string what)
      : state_(std::move(state)), event_(event), what_(std::move(what)) {}
  ~NcclRequest() override {
    if (event_)
      (void)cudaEventDestroy(event_);
  }
  Status wait() override {
    if (done_)
      return Status::ok();
    Status s = state_->complete(event_, what_.c_str());
    done_ = s.isOk();
    if (done_ && at_ < 0)
      at_ = steadySeconds();
    return s;
  }
  bool done() const override {
    if (!done_ && at_ < 0 && cudaEventQuery(event_) == cudaSuccess)
      at_ = steadySeconds();
    return done_ || at_ >= 0;
  }
  double completedAt() const override { return done() ? at_ : -1; }

private:
  std::shared_ptr<NcclState> state_;
  cudaEvent_t event_;
  std::string what_;
  bool done_ = false;
  mutable double at_ = -1;
};

class NcclCommunicator final : public Communicator {
public:
#ifdef MOE_HAVE_MPI
  NcclCommunicator(std::shared_ptr<NcclState> state, int rank, int size,
                   MPI_Comm mpi)
      : state_(std::move(state)), rank_(rank), size_(size), mpi_(mpi) {}
#else
  NcclCommunicator(std::shared_ptr<NcclState> state, int rank, int size)
      : state_(std::move(state)), rank_(rank), size_(size) {}
#endif
  ~NcclCommunicator() override;

  const char *name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool deviceBuffers() const override { return true; }

  Status split(int color, int key, std::unique_ptr<Communicator> &out) override;
  Status allToAllV(const void *send, const int64_t *sendBytes,
                   const int64_t *sendDispls, void *recv,
                   const int64_t *recvBytes, const int64_t *recvDispls,
                   const char *what, std::unique_ptr<Request> *req) override;
  Status allGather(const void *send, void *recv, int64_t bytes,
                   const char *what, std::unique_ptr<Request> *req) override;
  Status allReduce(const void *send, void *recv, int64_t n, int32_t dtype,
                   const char *what, std::unique_ptr<Request> *req) override;
  Status reduceScatter(const void *send, void *recv, int64_t n, int32_t dtype,
                       const char *what,
                       std::unique_ptr<Request> *req) override;

  Status barrier(const char *what) override;
  Status broadcastHost(void *buf, int64_t bytes, int root,
                       const char *what) override;
  Status gatherHost(const void *send, void *recv, int64_t bytes, int root,
                    const char *what) override;
  Status allGatherHost(const void *send, void *recv, int64_t bytes,
                       const char *what) override;

private:
  /// After the NCCL calls of one operation were issued (and a group ended
  /// with `endResult`): settle the communicator, record an event, then
  /// either wait for it or hand it to a Request.
  Status finish(ncclResult_t endResult, const char *what, const char *call,
                std::unique_ptr<Request> *req);
  std::shared_ptr<NcclState> state_;
  int rank_, size_;
#ifdef MOE_HAVE_MPI
  MPI_Comm mpi_ = MPI_COMM_NULL;
#endif
};

NcclCommunicator::~NcclCommunicator() {
  NcclState &st = *state_;
  if (st.comm && !st.aborted) {
    // Flush, then free; abort if the flush does not finish in time.
    // A peer that is gone must not hold the process for the full timeout.
    st.timeoutSeconds = std::min(st.timeoutSeconds, 30.0);
    ncclResult_t r = ncclCommFinalize(st.comm);
    Status s = r == ncclSuccess || r == ncclInProgress
                   ? st.settle(st.comm, "destroying the NCCL communicator",
                               "ncclCommFinalize")
                   : Status(MOERT_ERR_COMM, "ncclCommFinalize failed");
    if (s.isOk())
      (void)ncclCommDestroy(st.comm);
    else if (!st.aborted)
      (void)ncclCommAbort(st.comm);
  }
  st.comm = nullptr;
#ifdef MOE_HAVE_MPI
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && mpi_ != MPI_COMM_NULL)
    MPI_Comm_free(&mpi_);
#endif
}

Status NcclCommunicator::finish(ncclResult_t endResult, const char *what,
                                const char *call,
                                std::unique_ptr<Request> *req) {
  NcclState &st = *state_;
  if (endResult != ncclSuccess && endResult != ncclInProgress) {
    Status s = ncclFailure(MOERT_ERR_COMM, what, call, endResult, st.comm);
    st.abort(s.message());
    return s;
  }
  // Non-blocking mode: the operation is enqueued on the stream once the
  // communicator leaves ncclInProgress.
  MOERT_TRY(st.settle(st.comm, what, call));
  cudaEvent_t event = nullptr;
  MOERT_CUDA(what, cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  cudaError_t rec = cudaEventRecord(event, st.stream);
  if (rec != cudaSuccess) {
    (void)cudaEventDestroy(event);
    return cuda::cudaCheck(rec, what, "cudaEventRecord(event, stream)");
  }
  auto request = std::make_unique<NcclRequest>(state_, event, what);
  if (req) {
    *req = std::move(request);
    return Status::ok();
  }
  return request->wait();
}

Status NcclCommunicator::allToAllV(const void *send, const int64_t *sendBytes,
                                   const int64_t *sendDispls, void *recv,
                                   const int64_t *recvBytes,
                                   const int64_t *recvDispls, const char *what,
                                   std::unique_ptr<Request> *req) {
  NcclState &st = *state_;
  MOERT_TRY(st.usable(what));
  for (int p = 0; p < size_; ++p)
    if (sendBytes[p] < 0 || recvBytes[p] < 0 || sendDispls[p] < 0 ||
        recvDispls[p] < 0)
      return error(MOERT_ERR_INVALID,
                   "%s: negative byte count or displacement for peer %d", what,
                   p);
  MOERT_TRY(st.follow(what));
  ncclResult_t first = ncclGroupStart();
  if (first != ncclSuccess)
    return ncclFailure(MOERT_ERR_COMM, what, "ncclGroupStart()", first,
                       st.comm);
  const char *failedCall = nullptr;
  ncclResult_t failed = ncclSuccess;
  for (int p = 0; p < size_ && !failedCall; ++p) {
    if (sendBytes[p] > 0) {
      ncclResult_t r = ncclSend(static_cast<const char *>(send) + sendDispls[p],
                                static_cast<size_t>(sendBytes[p]), ncclUint8, p,
                                st.comm, st.stream);
      if (r != ncclSuccess && r != ncclInProgress) {
        failed = r;
        failedCall = "ncclSend";
      }
    }
    if (recvBytes[p] > 0 && !failedCall) {
      ncclResult_t r = ncclRecv(static_cast<char *>(recv) + recvDispls[p],
                                static_cast<size_t>(recvBytes[p]), ncclUint8, p,
                                st.comm, st.stream);
      if (r != ncclSuccess && r != ncclInProgress) {
        failed = r;
        failedCall = "ncclRecv";
      }
    }
  }
  ncclResult_t end = ncclGroupEnd(); // always close the group
  if (failedCall) {
    Status s = ncclFailure(MOERT_ERR_COMM, what, failedCall, failed, st.comm);
    st.abort(s.message());
    return s;
  }
  return finish(end, what, "ncclGroupEnd() after ncclSend/ncclRecv", req);
}

Status NcclCommunicator::allGather(const void *send, void *recv, int64_t bytes,
                                   const char *what,
                                   std::unique_ptr<Request> *req) {
  NcclState &st = *state_;
  MOERT_TRY(st.usable(what));
  if (bytes < 0)
    return error(MOERT_ERR_INVALID, "%s: negative size %lld", what,
                 (long long)bytes);
  MOERT_TRY(st.follow(what));
  ncclResult_t r = ncclAllGather(send, recv, static_cast<size_t>(bytes),
                                 ncclUint8, st.comm, st.stream);
  return finish(r, what, "ncclAllGather", req);
}

Status NcclCommunicator::allReduce(const void *send, void *recv, int64_t n,
                                   int32_t dtype, const char *what,
                                   std::unique_ptr<Request> *req) {
  NcclState &st = *state_;
  MOERT_TRY(st.usable(what));
  bool ok = false;
  ncclDataType_t type = ncclType(dtype, ok);
  if (!ok || n < 0)
    return error(MOERT_ERR_INVALID,
                 "%s: all-reduce of %lld elements of dtype "
                 "%d (%s) is not supported",
                 what, (long long)n, dtype, dtypeName(dtype));
  MOERT_TRY(st.follow(what));
  ncclResult_t r = ncclAllReduce(send, recv, static_cast<size_t>(n), type,
                                 ncclSum, st.comm, st.stream);
  return finish(r, what, "ncclAllReduce", req);
}

Status NcclCommunicator::reduceScatter(const void *send, void *recv, int64_t n,
                                       int32_t dtype, const char *what,
                                       std::unique_ptr<Request> *req) {
  NcclState &st = *state_;
  MOERT_TRY(st.usable(what));
  bool ok = false;
  ncclDataType_t type = ncclType(dtype, ok);
  if (!ok || n < 0)
    return error(MOERT_ERR_INVALID,
                 "%s: reduce-scatter of %lld elements of "
                 "dtype %d (%s) is not supported",
                 what, (long long)n, dtype, dtypeName(dtype));
  MOERT_TRY(st.follow(what));
  ncclResult_t r = ncclReduceScatter(send, recv, static_cast<size_t>(n), type,
                                     ncclSum, st.comm, st.stream);
  return finish(r, what, "ncclReduceScatter", req);
}

Status NcclCommunicator::split(int color, int key,
                               std::unique_ptr<Communicator> &out) {
  const char *what = "splitting the NCCL communicator";
  NcclState &st = *state_;
  MOERT_TRY(st.usable(what));
  if (color < 0)
    return error(MOERT_ERR_INVALID, "%s: negative color %d", what, color);
  auto child = std::make_shared<NcclState>();
  child->stream = st.stream; // one comm stream per process, owned by the root
  child->computeStream = st.computeStream;
  child->timeoutSeconds = st.timeoutSeconds;
  int childRank = 0, childSize = 1;
#ifdef MOE_HAVE_MPI
  MPI_Comm childMpi = MPI_COMM_NULL;
  if (mpi_ != MPI_COMM_NULL) {
    if (MPI_Comm_split(mpi_, color, key, &childMpi) != MPI_SUCCESS)
      return error(MOERT_ERR_COMM,
                   "%s: MPI_Comm_split(color=%d, key=%d) "
                   "failed",
                   what, color, key);
    MPI_Comm_rank(childMpi, &childRank);
    MPI_Comm_size(childMpi, &childSize);
  }
#endif
  ncclConfig_t config = nonBlockingConfig();
  ncclResult_t r = ncclCommSplit(st.comm, color, key, &child->comm, &config);
  Status s;
  if (r != ncclSuccess && r != ncclInProgress)
    s = ncclFailure(MOERT_ERR_COMM, what, "ncclCommSplit", r, st.comm);
  if (s.isOk())
    s = st.settle(st.comm, what, "ncclCommSplit");
  if (s.isOk() && child->comm)
    s = child->settle(child->comm, what, "ncclCommSplit (new communicator)");
  if (s.isOk() && !child->comm)
    s = error(MOERT_ERR_COMM,
              "%s: ncclCommSplit(color=%d) returned no "
              "communicator",
              what, color);
  if (s.isOk()) {
    int n = 0, rk = 0;
    ncclResult_t a = ncclCommCount(child->comm, &n);
    ncclResult_t b = ncclCommUserRank(child->comm, &rk);
    if (a != ncclSuccess || b != ncclSuccess)
      s = ncclFailure(MOERT_ERR_COMM, what, "ncclCommCount / ncclCommUserRank",
                      a != ncclSuccess ? a : b, child->comm);
    else if (n != childSize || rk != childRank)
      s = error(MOERT_ERR_COMM,
                "%s: NCCL split gave rank %d of %d but MPI gave %d of %d", what,
                rk, n, childRank, childSize);
  }
  if (!s.isOk()) {
    if (child->comm && !child->aborted)
      (void)ncclCommAbort(child->comm);
#ifdef MOE_HAVE_MPI
    if (childMpi != MPI_COMM_NULL)
      MPI_Comm_free(&childMpi);
#endif
    return s;
  }
#ifdef MOE_HAVE_MPI
  out =
      std::make_unique<NcclCommunicator>(child, childRank, childSize, childMpi);
#else
  out = std::make_unique<NcclCommunicator>(child, childRank, childSize);
#endif
  return Status::ok();
}

//===--- Host helpers
//-----------------------------------------------------------===//

static Status tooLarge(const char *what, int64_t bytes) {
  return error(MOERT_ERR_INVALID,
               "%s: %lld bytes exceed the host helpers' int limit", what,
               (long long)bytes);
}

Status NcclCommunicator::barrier(const char *what) {
#ifdef MOE_HAVE_MPI
  if (mpi_ != MPI_COMM_NULL) {
    MPI_Request r;
    int err = MPI_Ibarrier(mpi_, &r);
    return mpiWait(r, err, state_->timeoutSeconds, what, "MPI_Ibarrier");
  }
#endif
  return Status::ok();
}

Status NcclCommunicator::broadcastHost(void *buf, int64_t bytes, int root,
                                       const char *what) {
  if (bytes < 0 || bytes > INT_MAX)
    return tooLarge(what, bytes);
  if (root < 0 || root >= size_)
    return error(MOERT_ERR_INVALID, "%s: root %d outside [0, %d)", what, root,
                 size_);
#ifdef MOE_HAVE_MPI
  if (mpi_ != MPI_COMM_NULL) {
    MPI_Request r;
    int err = MPI_Ibcast(buf, int(bytes), MPI_BYTE, root, mpi_, &r);
    return mpiWait(r, err, state_->timeoutSeconds, what, "MPI_Ibcast");
  }
#endif
  return Status::ok();
}

Status NcclCommunicator::gatherHost(const void *send, void *recv, int64_t bytes,
                                    int root, const char *what) {
  if (bytes < 0 || bytes > INT_MAX)
    return tooLarge(what, bytes);
  if (root < 0 || root >= size_)
    return error(MOERT_ERR_INVALID, "%s: root %d outside [0, %d)", what, root,
                 size_);
#ifdef MOE_HAVE_MPI
  if (mpi_ != MPI_COMM_NULL) {
    MPI_Request r;
    int err = MPI_Igather(send, int(bytes), MPI_BYTE, recv, int(bytes),
                          MPI_BYTE, root, mpi_, &r);
    return mpiWait(r, err, state_->timeoutSeconds, what, "MPI_Igather");
  }
#endif
  if (recv && bytes > 0 && recv != send)
    std::memcpy(recv, send, static_cast<size_t>(bytes));
  return Status::ok();
}

Status NcclCommunicator::allGatherHost(const void *send, void *recv,
                                       int64_t bytes, const char *what) {
  if (bytes < 0 || bytes > INT_MAX)
    return tooLarge(what, bytes);
#ifdef MOE_HAVE_MPI
  if (mpi_ != MPI_COMM_NULL) {
    MPI_Request r;
    int err = MPI_Iallgather(send, int(bytes), MPI_BYTE, recv, int(bytes),
                             MPI_BYTE, mpi_, &r);
    return mpiWait(r, err, state_->timeoutSeconds, what, "MPI_Iallgather");
  }
#endif
  if (bytes > 0 && recv != send)
    std::memcpy(recv, send, static_cast<size_t>(bytes));
  return Status::ok();
}

} // namespace

Status createNcclCommunicator(const CommOptions &opts, void *computeStream,
                              std::unique_ptr<Communicator> &out) {
  const char *what = "createNcclCommunicator";
  auto state = std::make_shared<NcclState>();
  state->computeStream = static_cast<cudaStream_t>(computeStream);
  state->timeoutSeconds = opts.timeoutSeconds > 0 ? opts.timeoutSeconds : 300;
  int device = -1;
  MOERT_CUDA(what, cudaGetDevice(&device));
  MOERT_CUDA(what,
             cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking));
  state->ownsStream = true;

  int rank = 0, size = 1;
#ifdef MOE_HAVE_MPI
  MPI_Comm mpi = MPI_COMM_NULL;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    if (MPI_Comm_dup(MPI_COMM_WORLD, &mpi) != MPI_SUCCESS)
      return error(MOERT_ERR_COMM, "%s: MPI_Comm_dup(MPI_COMM_WORLD) failed",
                   what);
    MPI_Comm_rank(mpi, &rank);
    MPI_Comm_size(mpi, &size);
  }
#endif
  const int launched =
      std::max(envInt("OMPI_COMM_WORLD_SIZE"), envInt("PMI_SIZE"));
  if (size == 1 && launched > 1) {
#ifdef MOE_HAVE_MPI
    if (mpi != MPI_COMM_NULL)
      MPI_Comm_free(&mpi);
#endif
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: started as one of %d ranks, but %s; NCCL is bootstrapped "
                 "over MPI",
                 what, launched,
#ifdef MOE_HAVE_MPI
                 "MPI is not initialized (call moert_world_init first)"
#else
                 "this runtime was built without MPI"
#endif
    );
  }

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  Status s;
  if (rank == 0) {
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess)
      s = ncclFailure(MOERT_ERR_COMM, what, "ncclGetUniqueId", r, nullptr);
  }
#ifdef MOE_HAVE_MPI
  if (mpi != MPI_COMM_NULL) {
    // Every rank takes part in the broadcast even when rank 0 failed (it
    // then sends an all-zero id and reports its error; the others fail in
    // init).
    MPI_Request r;
    int err = MPI_Ibcast(&id, sizeof(id), MPI_BYTE, 0, mpi, &r);
    Status b = mpiWait(r, err, state->timeoutSeconds, what,
                       "MPI_Ibcast of the ncclUniqueId");
    if (s.isOk())
      s = b;
  }
#endif
  if (s.isOk()) {
    ncclConfig_t config = nonBlockingConfig();
    ncclResult_t r =
        ncclCommInitRankConfig(&state->comm, size, id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
      s = ncclFailure(MOERT_ERR_COMM, what,
                      "ncclCommInitRankConfig(nranks, id, rank)", r,
                      state->comm);
    else if (state->comm)
      s = state->settle(state->comm, what, "ncclCommInitRankConfig");
    else
      s = error(MOERT_ERR_COMM,
                "%s: ncclCommInitRankConfig returned no communicator", what);
  }
  if (!s.isOk()) {
    if (state->comm && !state->aborted)
      (void)ncclCommAbort(state->comm);
    state->comm = nullptr;
#ifdef MOE_HAVE_MPI
    if (mpi != MPI_COMM_NULL)
      MPI_Comm_free(&mpi);
#endif
    return error(s.code(), "%s (rank %d of %d, CUDA device %d)",
                 s.message().c_str(), rank, size, device);
  }
#ifdef MOE_HAVE_MPI
  out = std::make_unique<NcclCommunicator>(state, rank, size, mpi);
#else
  out = std::make_unique<NcclCommunicator>(state, rank, size);
#endif
  return Status::ok();
}

} // namespace moert
