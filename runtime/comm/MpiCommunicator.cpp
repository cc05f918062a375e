//===- MpiCommunicator.cpp - Byte-level collectives over OpenMPI ----------===//
//
// Host buffers only. Every collective is started nonblocking (MPI_I*) and
// completed by polling MPI_Testall until a deadline, so a rank that never
// joins costs the others a MOERT_ERR_TIMEOUT, not a hang. Counts are bytes;
// MPI takes int counts, so larger transfers use a contiguous datatype of a
// power-of-two unit that divides every count and displacement (reductions
// are cut into pieces instead).
//
//===----------------------------------------------------------------------===//
#include "comm/Communicator.h"

#include <algorithm>
#include <climits>
#include <cstring>
// The C API only: keep OpenMPI's C++ bindings (and their library) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <mutex>
#include <sched.h>
#include <string>
#include <time.h>
#include <vector>

namespace moert {

namespace {

//===----------------------------------------------------------------------===//
// Errors, abandoned requests and polling
//===----------------------------------------------------------------------===//

Status mpiError(int rc, const char *call, const std::string &what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS)
    len = std::snprintf(text, sizeof(text), "MPI error %d", rc);
  return error(MOERT_ERR_COMM, "%s: %s failed: %.*s", what.c_str(), call, len,
               text);
}

/// State of collectives that never completed: MPI may still write into
/// their buffers and forbids freeing their requests, so both live on.
struct Graveyard {
  std::mutex mu;
  std::vector<MPI_Request> requests;
  std::vector<std::vector<int>> ints;
};

Graveyard &graveyard() {
  static Graveyard *g = new Graveyard(); // never destroyed: see above
  return *g;
}

int64_t abandonedRequests();

/// Spin briefly (lowest latency), then yield, then sleep: ranks may share
/// cores (mpirun --oversubscribe), and a sleeping poller leaves them free.
void backoff(double elapsed) {
  if (elapsed < 1e-3)
    return;
  if (elapsed < 0.05) {
    sched_yield();
    return;
  }
  struct timespec ts = {0, 200 * 1000};
  nanosleep(&ts, nullptr);
}

Status pollAll(std::vector<MPI_Request> &reqs, double timeout,
               const std::string &what) {
  double start = MPI_Wtime();
  while (true) {
    int done = 0;
    int rc = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done,
                         MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS)
      return mpiError(rc, "MPI_Testall", what);
    if (done)
      return Status::ok();
    double elapsed = MPI_Wtime() - start;
    if (elapsed > timeout)
      return error(MOERT_ERR_TIMEOUT,
                   "%s timed out after %.1f s: a rank of the group did not "
                   "join (it failed, skipped the collective or runs another "
                   "module)",
                   what.c_str(), elapsed);
    backoff(elapsed);
  }
}

/// A started collective: its MPI requests plus the count arrays that must
/// outlive them.
class MpiRequest : public Request {
public:
  MpiRequest(std::string what, double timeout)
      : what_(std::move(what)), timeout_(timeout) {}
  ~MpiRequest() override;

  Status wait() override {
    if (done_)
      return Status::ok();
    Status s = pollAll(reqs_, timeout_, what_);
    done_ = s.isOk();
    return s;
  }

  std::vector<MPI_Request> reqs_;
  std::vector<int> ints_; // counts and displacements
  std::string what_;
  double timeout_;
  bool done_ = false;
};

MpiRequest::~MpiRequest() {
  if (done_)
    return;
  int finalized = 0, complete = 0;
  MPI_Finalized(&finalized);
  if (!finalized)
    MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &complete,
                MPI_STATUSES_IGNORE);
  if (complete || finalized)
    return;
  Graveyard &g = graveyard();
  std::lock_guard<std::mutex> lock(g.mu);
  for (MPI_Request r : reqs_)
    if (r != MPI_REQUEST_NULL)
      g.requests.push_back(r);
  g.ints.push_back(std::move(ints_));
}

/// Blocks (with the deadline) when `out` is null; otherwise hands it over.
Status finish(std::unique_ptr<MpiRequest> r, std::unique_ptr<Request> *out) {
  if (out) {
    *out = std::move(r);
    return Status::ok();
  }
  return r->wait();
}

//===----------------------------------------------------------------------===//
// Count units
//===----------------------------------------------------------------------===//

/// A datatype of `unit` bytes such that every value / unit fits in int.
struct ByteUnit {
  int64_t unit = 1;
  MPI_Datatype type = MPI_BYTE;
  ~ByteUnit() {
    if (type != MPI_BYTE)
      MPI_Type_free(&type); // pending operations keep their own reference
  }
};

Status chooseUnit(const std::vector<int64_t> &values, const std::string &what,
                  ByteUnit &out) {
  int64_t maxV = 0;
  uint64_t bits = 0;
  for (int64_t v : values) {
    if (v < 0)
      return error(MOERT_ERR_INVALID, "%s: negative byte count %lld",
                   what.c_str(), static_cast<long long>(v));
    maxV = std::max(maxV, v);
    bits |= static_cast<uint64_t>(v);
  }
  if (maxV <= INT_MAX)
    return Status::ok();
  int64_t unit = static_cast<int64_t>(bits & (~bits + 1)); // lowest set bit
  unit = std::min<int64_t>(unit, INT64_C(1) << 30);
  if (maxV / unit > INT_MAX)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: %lld bytes exceed MPI's int count limit (%d) and the "
                 "counts share no unit that brings them below it",
                 what.c_str(), static_cast<long long>(maxV), INT_MAX);
  out.unit = unit;
  int rc = MPI_Type_contiguous(static_cast<int>(unit), MPI_BYTE, &out.type);
  if (rc == MPI_SUCCESS)
    rc = MPI_Type_commit(&out.type);
  if (rc != MPI_SUCCESS) {
    out.type = MPI_BYTE;
    return mpiError(rc, "MPI_Type_contiguous", what);
  }
  return Status::ok();
}

Status reductionType(int32_t dtype, const std::string &what, MPI_Datatype &type,
                     size_t &size) {
  switch (dtype) {
  case MOERT_F32:
    type = MPI_FLOAT;
    size = 4;
    return Status::ok();
  case MOERT_I32:
    type = MPI_INT32_T;
    size = 4;
    return Status::ok();
  case MOERT_I64:
    type = MPI_INT64_T;
    size = 8;
    return Status::ok();
  default:
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: sum of dtype %d over MPI is not supported (f32, i32 "
                 "and i64 are; MPI has no f16 / bf16 sum)",
                 what.c_str(), dtype);
  }
}

//===----------------------------------------------------------------------===//
// The communicator
//===----------------------------------------------------------------------===//

class MpiCommunicator : public Communicator {
public:
  MpiCommunicator(MPI_Comm comm, double timeout) : comm_(comm) {
    timeout_ = timeout > 0 ? timeout : 300.0;
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override;

  const char *name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool deviceBuffers() const override { return false; }

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
                       const char *what) override {
    return allGather(send, recv, bytes, what, nullptr);
  }

private:
  std::unique_ptr<MpiRequest> request(const char *what) const {
    return std::unique_ptr<MpiRequest>(
        new MpiRequest(what ? what : "collective", timeout_));
  }
  Status checkRoot(int root, const char *what) const {
    if (root < 0 || root >= size_)
      return error(MOERT_ERR_INVALID, "%s: root %d is not a rank of %d", what,
                   root, size_);
    return Status::ok();
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  double timeout_;
};

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // A communicator with abandoned operations is left alone: freeing it while
  // they are pending is erroneous.
  if (!finalized && comm_ != MPI_COMM_NULL && abandonedRequests() == 0)
    MPI_Comm_free(&comm_);
}

Status MpiCommunicator::split(int color, int key,
                              std::unique_ptr<Communicator> &out) {
  if (color < 0)
    return error(MOERT_ERR_INVALID, "split: color %d is negative", color);
  // MPI_Comm_split blocks; a barrier with a deadline first makes sure every
  // rank has arrived, so it cannot hang on a rank that never comes.
  MOERT_TRY(barrier("communicator split"));
  MPI_Comm sub;
  int rc = MPI_Comm_split(comm_, color, key, &sub);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Comm_split", "communicator split");
  MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
  out.reset(new MpiCommunicator(sub, timeout_));
  return Status::ok();
}

Status MpiCommunicator::allToAllV(const void *send, const int64_t *sendBytes,
                                  const int64_t *sendDispls, void *recv,
                                  const int64_t *recvBytes,
                                  const int64_t *recvDispls, const char *what,
                                  std::unique_ptr<Request> *req) {
  std::unique_ptr<MpiRequest> r = request(what);
  std::vector<int64_t> all;
  int64_t sendEnd = 0, recvEnd = 0;
  for (int p = 0; p < size_; ++p) {
    all.insert(all.end(),
               {sendBytes[p], sendDispls[p], recvBytes[p], recvDispls[p]});
    sendEnd = std::max(sendEnd, sendDispls[p] + sendBytes[p]);
    recvEnd = std::max(recvEnd, recvDispls[p] + recvBytes[p]);
  }
  if (overlaps(send, sendEnd, recv, recvEnd))
    return error(MOERT_ERR_INVALID, "%s: send and receive buffers overlap",
                 r->what_.c_str());
  ByteUnit u;
  MOERT_TRY(chooseUnit(all, r->what_, u));
  r->ints_.resize(4 * static_cast<size_t>(size_));
  int *sc = r->ints_.data(), *sd = sc + size_, *rcnt = sd + size_,
      *rd = rcnt + size_;
  for (int p = 0; p < size_; ++p) {
    sc[p] = static_cast<int>(sendBytes[p] / u.unit);
    sd[p] = static_cast<int>(sendDispls[p] / u.unit);
    rcnt[p] = static_cast<int>(recvBytes[p] / u.unit);
    rd[p] = static_cast<int>(recvDispls[p] / u.unit);
  }
  r->reqs_.resize(1);
  int rc = MPI_Ialltoallv(send, sc, sd, u.type, recv, rcnt, rd, u.type, comm_,
                          &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ialltoallv", r->what_);
  return finish(std::move(r), req);
}

Status MpiCommunicator::allGather(const void *send, void *recv, int64_t bytes,
                                  const char *what,
                                  std::unique_ptr<Request> *req) {
  std::unique_ptr<MpiRequest> r = request(what);
  char *mine = static_cast<char *>(recv) + rank_ * bytes;
  bool inPlace = send == mine;
  if (!inPlace && overlaps(send, bytes, recv, bytes * size_))
    return error(MOERT_ERR_INVALID, "%s: send and receive buffers overlap",
                 r->what_.c_str());
  ByteUnit u;
  MOERT_TRY(chooseUnit({bytes}, r->what_, u));
  int count = static_cast<int>(bytes / u.unit);
  r->reqs_.resize(1);
  int rc = MPI_Iallgather(inPlace ? MPI_IN_PLACE : send, count, u.type, recv,
                          count, u.type, comm_, &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Iallgather", r->what_);
  return finish(std::move(r), req);
}

Status MpiCommunicator::allReduce(const void *send, void *recv, int64_t n,
                                  int32_t dtype, const char *what,
                                  std::unique_ptr<Request> *req) {
  std::unique_ptr<MpiRequest> r = request(what);
  MPI_Datatype type = MPI_FLOAT;
  size_t es = 4;
  MOERT_TRY(reductionType(dtype, r->what_, type, es));
  bool inPlace = send == recv;
  if (!inPlace && overlaps(send, n * es, recv, n * es))
    return error(MOERT_ERR_INVALID, "%s: send and receive buffers overlap",
                 r->what_.c_str());
  // Pieces of at most 2^30 elements keep every count an int.
  const int64_t kPiece = INT64_C(1) << 30;
  for (int64_t off = 0; off < n; off += kPiece) {
    int count = static_cast<int>(std::min(kPiece, n - off));
    const char *s = static_cast<const char *>(send) + off * es;
    char *d = static_cast<char *>(recv) + off * es;
    r->reqs_.push_back(MPI_REQUEST_NULL);
    int rc = MPI_Iallreduce(inPlace ? MPI_IN_PLACE : s, d, count, type, MPI_SUM,
                            comm_, &r->reqs_.back());
    if (rc != MPI_SUCCESS)
      return mpiError(rc, "MPI_Iallreduce", r->what_);
  }
  return finish(std::move(r), req);
}

Status MpiCommunicator::reduceScatter(const void *send, void *recv, int64_t n,
                                      int32_t dtype, const char *what,
                                      std::unique_ptr<Request> *req) {
  std::unique_ptr<MpiRequest> r = request(what);
  MPI_Datatype type = MPI_FLOAT;
  size_t es = 4;
  MOERT_TRY(reductionType(dtype, r->what_, type, es));
  if (n > INT_MAX)
    return error(MOERT_ERR_UNSUPPORTED,
                 "%s: %lld elements per rank exceed MPI's int count limit "
                 "(%d)",
                 r->what_.c_str(), static_cast<long long>(n), INT_MAX);
  if (overlaps(send, n * es * size_, recv, n * es))
    return error(MOERT_ERR_INVALID, "%s: send and receive buffers overlap",
                 r->what_.c_str());
  r->reqs_.resize(1);
  int rc = MPI_Ireduce_scatter_block(send, recv, static_cast<int>(n), type,
                                     MPI_SUM, comm_, &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ireduce_scatter_block", r->what_);
  return finish(std::move(r), req);
}

Status MpiCommunicator::barrier(const char *what) {
  std::unique_ptr<MpiRequest> r = request(what);
  r->reqs_.resize(1);
  int rc = MPI_Ibarrier(comm_, &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ibarrier", r->what_);
  return r->wait();
}

Status MpiCommunicator::broadcastHost(void *buf, int64_t bytes, int root,
                                      const char *what) {
  std::unique_ptr<MpiRequest> r = request(what);
  MOERT_TRY(checkRoot(root, r->what_.c_str()));
  ByteUnit u;
  MOERT_TRY(chooseUnit({bytes}, r->what_, u));
  r->reqs_.resize(1);
  int rc = MPI_Ibcast(buf, static_cast<int>(bytes / u.unit), u.type, root,
                      comm_, &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ibcast", r->what_);
  return r->wait();
}

Status MpiCommunicator::gatherHost(const void *send, void *recv, int64_t bytes,
                                   int root, const char *what) {
  std::unique_ptr<MpiRequest> r = request(what);
  MOERT_TRY(checkRoot(root, r->what_.c_str()));
  if (rank_ == root && !recv && bytes > 0)
    return error(MOERT_ERR_INVALID, "%s: no receive buffer on the root",
                 r->what_.c_str());
  bool inPlace =
      rank_ == root &&
      send == static_cast<char *>(recv) + static_cast<int64_t>(root) * bytes;
  if (rank_ == root && !inPlace && overlaps(send, bytes, recv, bytes * size_))
    return error(MOERT_ERR_INVALID, "%s: send and receive buffers overlap",
                 r->what_.c_str());
  ByteUnit u;
  MOERT_TRY(chooseUnit({bytes}, r->what_, u));
  int count = static_cast<int>(bytes / u.unit);
  r->reqs_.resize(1);
  int rc = MPI_Igather(inPlace ? MPI_IN_PLACE : send, count, u.type, recv,
                       count, u.type, root, comm_, &r->reqs_[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Igather", r->what_);
  return r->wait();
}

int64_t abandonedRequests() {
  Graveyard &g = graveyard();
  std::lock_guard<std::mutex> lock(g.mu);
  return static_cast<int64_t>(g.requests.size());
}

} // namespace

Status createMpiCommunicator(const CommOptions &opts,
                             std::unique_ptr<Communicator> &out) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return error(MOERT_ERR_INVALID,
                 "MPI is %s: call moert_world_init(..., MOERT_COMM_MPI) "
                 "before creating an MPI context",
                 finalized ? "already finalized" : "not initialized");
  // A private copy of the world keeps the runtime's traffic apart from the
  // application's; MPI_Comm_idup lets it honour the deadline too.
  MPI_Comm comm;
  std::vector<MPI_Request> reqs(1);
  int rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm, &reqs[0]);
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Comm_idup", "creating the MPI communicator");
  double timeout = opts.timeoutSeconds > 0 ? opts.timeoutSeconds : 300.0;
  Status s = pollAll(reqs, timeout, "creating the MPI communicator");
  if (!s.isOk()) {
    std::lock_guard<std::mutex> lock(graveyard().mu);
    graveyard().requests.push_back(reqs[0]);
    return s;
  }
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  out.reset(new MpiCommunicator(comm, timeout));
  return Status::ok();
}

} // namespace moert
