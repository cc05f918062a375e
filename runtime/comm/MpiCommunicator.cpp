//===- MpiCommunicator.cpp - Byte-level collectives over OpenMPI ----------===//
//
// Host buffers only. Every collective is started nonblocking (MPI_I*) and
// completed with a deadline, so a rank that never joins costs the others a
// MOERT_ERR_TIMEOUT, not a hang. Counts are bytes; MPI takes int counts, so
// larger transfers use a contiguous datatype of a power-of-two unit that
// divides every count and displacement (reductions are cut into pieces
// instead).
//
// Progress. MPI moves the data of a nonblocking collective only inside MPI
// calls, so a started collective would wait for moert_wait while the rank
// computes. A progress thread (one per process, alive while an MPI
// communicator exists) tests every started collective every 10-100 us and
// marks it done; wait() returns at once when it is, and otherwise sleeps on
// a condition variable (a waiting rank leaves the cores to computing ones).
// Every MPI call of this file holds one lock, so the two threads never call
// MPI at once: MPI_THREAD_SERIALIZED (what moert_world_init asks for) is
// enough. Without it (a caller that initialized MPI with less), or with
// MOERT_MPI_PROGRESS=0, there is no thread and wait() polls.
//
//===----------------------------------------------------------------------===//
#include "comm/Communicator.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
// The C API only: keep OpenMPI's C++ bindings (and their library) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <mutex>
#include <string>
#include <sys/prctl.h>
#include <thread>
#include <time.h>
#include <vector>

namespace moert {

namespace {

//===----------------------------------------------------------------------===//
// Errors, the MPI lock, abandoned requests
//===----------------------------------------------------------------------===//

/// Held around every MPI call of this file (see the file comment).
std::mutex &mpiLock() {
  static std::mutex *m = new std::mutex(); // never destroyed
  return *m;
}
using MpiGuard = std::lock_guard<std::mutex>;

Status mpiError(int rc, const char *call, const std::string &what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0, got;
  {
    MpiGuard g(mpiLock());
    got = MPI_Error_string(rc, text, &len);
  }
  if (got != MPI_SUCCESS)
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

Status timedOut(const std::string &what, double elapsed) {
  return error(MOERT_ERR_TIMEOUT,
               "%s timed out after %.1f s: a rank of the group did not "
               "join (it failed, skipped the collective or runs another "
               "module)",
               what.c_str(), elapsed);
}

/// Short sleep; the thread's timer slack decides how short.
void nap(int64_t micros) {
  struct timespec ts = {0, static_cast<long>(micros * 1000)};
  nanosleep(&ts, nullptr);
}

/// Polls `reqs` (on the calling thread) until done or `timeout`: a brief
/// spin for latency, then naps, so that a waiting rank does not compete
/// with computing ones for the cores.
Status pollAll(std::vector<MPI_Request> &reqs, double timeout,
               const std::string &what) {
  double start = steadySeconds();
  while (true) {
    int done = 0, rc;
    {
      MpiGuard g(mpiLock());
      rc = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done,
                       MPI_STATUSES_IGNORE);
    }
    if (rc != MPI_SUCCESS)
      return mpiError(rc, "MPI_Testall", what);
    if (done)
      return Status::ok();
    double elapsed = steadySeconds() - start;
    if (elapsed > timeout)
      return timedOut(what, elapsed);
    if (elapsed > 50e-6)
      nap(elapsed < 1e-3 ? 20 : 100);
  }
}

//===----------------------------------------------------------------------===//
// Operations in flight and the progress thread
//===----------------------------------------------------------------------===//

/// A started collective: its MPI requests plus the count arrays that must
/// outlive them. `reqs` is touched only under mpiLock().
struct MpiOp {
  std::vector<MPI_Request> reqs;
  std::vector<int> ints; // counts and displacements
  std::atomic<bool> done{false};
  std::atomic<double> completedAt{-1};
  int error = MPI_SUCCESS; // set before `done`
  bool byThread = false;

  /// One MPI_Testall; the caller holds mpiLock(). True once done.
  bool test(bool fromThread) {
    if (done.load(std::memory_order_acquire))
      return true;
    int flag = 0;
    int rc = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &flag,
                         MPI_STATUSES_IGNORE);
    if (rc == MPI_SUCCESS && !flag)
      return false;
    error = rc;
    byThread = fromThread;
    completedAt.store(steadySeconds(), std::memory_order_relaxed);
    done.store(true, std::memory_order_release);
    return true;
  }
};

class Progress {
public:
  Progress() : thread_([this] { loop(); }) {}
  ~Progress() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  void add(const std::shared_ptr<MpiOp> &op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_.push_back(op);
    }
    wake_.notify_all();
  }
  void remove(const MpiOp *op) {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(std::remove_if(active_.begin(), active_.end(),
                                 [&](const std::shared_ptr<MpiOp> &a) {
                                   return a.get() == op;
                                 }),
                  active_.end());
  }
  /// Sleeps until the thread marks `op` done or `deadline` passes.
  bool waitFor(const MpiOp &op, double deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiters_;
    wake_.notify_all(); // poll at the fastest rate while someone waits
    while (!op.done.load(std::memory_order_acquire)) {
      double left = deadline - steadySeconds();
      if (left <= 0)
        break;
      completed_.wait_for(lock,
                          std::chrono::duration<double>(std::min(left, 0.01)));
    }
    --waiters_;
    return op.done.load(std::memory_order_acquire);
  }

private:
  void loop() {
    // Naps of 10 us must not become the default 50 us slack.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    int64_t interval = 10;
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (active_.empty()) {
        wake_.wait(lock);
        interval = 10;
        continue;
      }
      std::vector<std::shared_ptr<MpiOp>> ops = active_;
      lock.unlock();
      bool any = false;
      {
        MpiGuard g(mpiLock());
        int finalized = 0;
        MPI_Finalized(&finalized);
        for (const auto &op : ops)
          if (!finalized && !op->done.load(std::memory_order_acquire) &&
              op->test(true))
            any = true;
      }
      lock.lock();
      active_.erase(std::remove_if(active_.begin(), active_.end(),
                                   [](const std::shared_ptr<MpiOp> &a) {
                                     return a->done.load();
                                   }),
                    active_.end());
      if (any) {
        completed_.notify_all();
        interval = 10;
      } else {
        interval = std::min<int64_t>(interval * 2, waiters_ ? 20 : 100);
      }
      wake_.wait_for(lock, std::chrono::microseconds(interval));
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, completed_;
  std::vector<std::shared_ptr<MpiOp>> active_;
  int waiters_ = 0;
  bool stop_ = false;
  std::thread thread_; // last: starts once the rest is constructed
};

/// The process's progress thread, shared by every MPI communicator and
/// request; null when MPI gives less than MPI_THREAD_SERIALIZED or
/// MOERT_MPI_PROGRESS=0.
std::shared_ptr<Progress> acquireProgress() {
  static std::mutex mu;
  static std::weak_ptr<Progress> *current = new std::weak_ptr<Progress>();
  std::lock_guard<std::mutex> lock(mu);
  if (auto p = current->lock())
    return p;
  const char *env = std::getenv("MOERT_MPI_PROGRESS");
  if (env && std::strcmp(env, "0") == 0)
    return nullptr;
  int provided = MPI_THREAD_SINGLE;
  {
    MpiGuard g(mpiLock());
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_SERIALIZED)
    return nullptr;
  auto p = std::make_shared<Progress>();
  *current = p;
  return p;
}

class MpiRequest : public Request {
public:
  MpiRequest(std::string what, double timeout,
             std::shared_ptr<Progress> progress)
      : op_(std::make_shared<MpiOp>()), what_(std::move(what)),
        timeout_(timeout), progress_(std::move(progress)) {}
  ~MpiRequest() override;

  /// Hands the started requests to the progress thread.
  void started() {
    start_ = steadySeconds();
    if (progress_)
      progress_->add(op_);
  }

  Status wait() override {
    if (!op_->done.load(std::memory_order_acquire)) {
      if (progress_) {
        // A few direct tests catch a transfer that is about to finish.
        for (int i = 0; i < 4 && !op_->done.load(); ++i) {
          MpiGuard g(mpiLock());
          op_->test(false);
        }
        if (!op_->done.load())
          progress_->waitFor(*op_, start_ + timeout_);
      } else {
        Status s =
            pollAll(op_->reqs, start_ + timeout_ - steadySeconds(), what_);
        if (s.code() == MOERT_ERR_TIMEOUT)
          return timedOut(what_, steadySeconds() - start_);
        MOERT_TRY(s);
        op_->completedAt.store(steadySeconds());
        op_->done.store(true);
      }
    }
    if (!op_->done.load(std::memory_order_acquire))
      return timedOut(what_, steadySeconds() - start_);
    if (op_->error != MPI_SUCCESS)
      return mpiError(op_->error, "MPI_Testall", what_);
    return Status::ok();
  }
  bool done() const override { return op_->done.load(); }
  double completedAt() const override {
    return op_->done.load() ? op_->completedAt.load() : -1;
  }

  std::shared_ptr<MpiOp> op_;
  std::string what_;
  double timeout_;
  std::shared_ptr<Progress> progress_;
  double start_ = 0;
};

MpiRequest::~MpiRequest() {
  if (progress_)
    progress_->remove(op_.get());
  if (op_->done.load())
    return;
  MpiGuard g(mpiLock());
  int finalized = 0, complete = 0;
  MPI_Finalized(&finalized);
  if (!finalized)
    MPI_Testall(static_cast<int>(op_->reqs.size()), op_->reqs.data(), &complete,
                MPI_STATUSES_IGNORE);
  if (complete || finalized)
    return;
  Graveyard &gy = graveyard();
  std::lock_guard<std::mutex> lock(gy.mu);
  for (MPI_Request r : op_->reqs)
    if (r != MPI_REQUEST_NULL)
      gy.requests.push_back(r);
  gy.ints.push_back(std::move(op_->ints));
}

/// Blocks (with the deadline) when `out` is null; otherwise hands it over.
Status finish(std::unique_ptr<MpiRequest> r, std::unique_ptr<Request> *out) {
  r->started();
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
    if (type != MPI_BYTE) {
      MpiGuard g(mpiLock());
      MPI_Type_free(&type);
    } // pending operations keep their own reference
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
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Type_contiguous(static_cast<int>(unit), MPI_BYTE, &out.type);
    if (rc == MPI_SUCCESS)
      rc = MPI_Type_commit(&out.type);
  }
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
  MpiCommunicator(MPI_Comm comm, double timeout, int localRanks)
      : comm_(comm), localRanks_(localRanks), progress_(acquireProgress()) {
    timeout_ = timeout > 0 ? timeout : 300.0;
    MpiGuard g(mpiLock());
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override;

  const char *name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool deviceBuffers() const override { return false; }
  int localRanks() const override { return localRanks_; }

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
        new MpiRequest(what ? what : "collective", timeout_, progress_));
  }
  Status checkRoot(int root, const char *what) const {
    if (root < 0 || root >= size_)
      return error(MOERT_ERR_INVALID, "%s: root %d is not a rank of %d", what,
                   root, size_);
    return Status::ok();
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1, localRanks_ = 1;
  double timeout_;
  std::shared_ptr<Progress> progress_;
};

MpiCommunicator::~MpiCommunicator() {
  bool abandoned = abandonedRequests() != 0;
  MpiGuard g(mpiLock());
  int finalized = 0;
  MPI_Finalized(&finalized);
  // A communicator with abandoned operations is left alone: freeing it while
  // they are pending is erroneous.
  if (!finalized && comm_ != MPI_COMM_NULL && !abandoned)
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
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Comm_split(comm_, color, key, &sub);
    if (rc == MPI_SUCCESS)
      MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Comm_split", "communicator split");
  out.reset(new MpiCommunicator(sub, timeout_, 1));
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
  r->op_->ints.resize(4 * static_cast<size_t>(size_));
  int *sc = r->op_->ints.data(), *sd = sc + size_, *rcnt = sd + size_,
      *rd = rcnt + size_;
  for (int p = 0; p < size_; ++p) {
    sc[p] = static_cast<int>(sendBytes[p] / u.unit);
    sd[p] = static_cast<int>(sendDispls[p] / u.unit);
    rcnt[p] = static_cast<int>(recvBytes[p] / u.unit);
    rd[p] = static_cast<int>(recvDispls[p] / u.unit);
  }
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Ialltoallv(send, sc, sd, u.type, recv, rcnt, rd, u.type, comm_,
                        &r->op_->reqs[0]);
  }
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
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Iallgather(inPlace ? MPI_IN_PLACE : send, count, u.type, recv,
                        count, u.type, comm_, &r->op_->reqs[0]);
  }
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
    r->op_->reqs.push_back(MPI_REQUEST_NULL);
    int rc;
    {
      MpiGuard g(mpiLock());
      rc = MPI_Iallreduce(inPlace ? MPI_IN_PLACE : s, d, count, type, MPI_SUM,
                          comm_, &r->op_->reqs.back());
    }
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
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Ireduce_scatter_block(send, recv, static_cast<int>(n), type,
                                   MPI_SUM, comm_, &r->op_->reqs[0]);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ireduce_scatter_block", r->what_);
  return finish(std::move(r), req);
}

Status MpiCommunicator::barrier(const char *what) {
  std::unique_ptr<MpiRequest> r = request(what);
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Ibarrier(comm_, &r->op_->reqs[0]);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ibarrier", r->what_);
  return finish(std::move(r), nullptr);
}

Status MpiCommunicator::broadcastHost(void *buf, int64_t bytes, int root,
                                      const char *what) {
  std::unique_ptr<MpiRequest> r = request(what);
  MOERT_TRY(checkRoot(root, r->what_.c_str()));
  ByteUnit u;
  MOERT_TRY(chooseUnit({bytes}, r->what_, u));
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Ibcast(buf, static_cast<int>(bytes / u.unit), u.type, root, comm_,
                    &r->op_->reqs[0]);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Ibcast", r->what_);
  return finish(std::move(r), nullptr);
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
  r->op_->reqs.resize(1);
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Igather(inPlace ? MPI_IN_PLACE : send, count, u.type, recv, count,
                     u.type, root, comm_, &r->op_->reqs[0]);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Igather", r->what_);
  return finish(std::move(r), nullptr);
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
  int rc;
  {
    MpiGuard g(mpiLock());
    rc = MPI_Comm_idup(MPI_COMM_WORLD, &comm, &reqs[0]);
  }
  if (rc != MPI_SUCCESS)
    return mpiError(rc, "MPI_Comm_idup", "creating the MPI communicator");
  double timeout = opts.timeoutSeconds > 0 ? opts.timeoutSeconds : 300.0;
  Status s = pollAll(reqs, timeout, "creating the MPI communicator");
  if (!s.isOk()) {
    std::lock_guard<std::mutex> lock(graveyard().mu);
    graveyard().requests.push_back(reqs[0]);
    return s;
  }
  int localRanks = 0;
  {
    MpiGuard g(mpiLock());
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    // Ranks on this node: the launcher says so, else a shared-memory split
    // (blocking, but every rank is known to be here after the idup).
    if (const char *v = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE"))
      localRanks = std::atoi(v);
    if (localRanks <= 0) {
      MPI_Comm node;
      if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL,
                              &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &localRanks);
        MPI_Comm_free(&node);
      }
    }
  }
  out.reset(new MpiCommunicator(comm, timeout, std::max(localRanks, 1)));
  return Status::ok();
}

} // namespace moert
