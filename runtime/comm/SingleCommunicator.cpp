//===- SingleCommunicator.cpp - A world of one rank -----------------------===//
//
// Every collective over one rank is a local copy (the sum over one rank is the
// input itself), so requests are complete as soon as they are made.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "comm/Communicator.h"

#include <cstring>

namespace moert {
namespace {

class DoneRequest final : public Request {
public:
  Status wait() override { return Status::ok(); }
  bool done() const override { return true; }
  double completedAt() const override { return at_; }

private:
  double at_ = steadySeconds();
};

/// memcpy that tolerates empty and in-place copies (both are UB for memcpy).
void copyBytes(void *dst, const void *src, int64_t bytes) {
  if (bytes > 0 && dst != src)
    std::memmove(dst, src, static_cast<size_t>(bytes));
}

Status finish(std::unique_ptr<Request> *req) {
  if (req)
    *req = std::make_unique<DoneRequest>();
  return Status::ok();
}

class SingleCommunicator final : public Communicator {
public:
  explicit SingleCommunicator(const CommOptions &opts) : opts_(opts) {}

  const char *name() const override { return "single"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  bool deviceBuffers() const override { return false; }

  Status split(int color, int key,
               std::unique_ptr<Communicator> &out) override {
    out = std::make_unique<SingleCommunicator>(opts_);
    return Status::ok();
  }

  Status allToAllV(const void *send, const int64_t *sendBytes,
                   const int64_t *sendDispls, void *recv,
                   const int64_t *recvBytes, const int64_t *recvDispls,
                   const char *what, std::unique_ptr<Request> *req) override {
    if (sendBytes[0] != recvBytes[0])
      return error(MOERT_ERR_COMM,
                   "%s: rank 0 sends %lld bytes to itself but expects %lld",
                   what, static_cast<long long>(sendBytes[0]),
                   static_cast<long long>(recvBytes[0]));
    copyBytes(static_cast<char *>(recv) + recvDispls[0],
              static_cast<const char *>(send) + sendDispls[0], sendBytes[0]);
    return finish(req);
  }

  Status allGather(const void *send, void *recv, int64_t bytes,
                   const char *what, std::unique_ptr<Request> *req) override {
    copyBytes(recv, send, bytes);
    return finish(req);
  }

  Status allReduce(const void *send, void *recv, int64_t n, int32_t dtype,
                   const char *what, std::unique_ptr<Request> *req) override {
    MOERT_TRY(checkDtype(dtype, what));
    copyBytes(recv, send, n * static_cast<int64_t>(dtypeSize(dtype)));
    return finish(req);
  }

  Status reduceScatter(const void *send, void *recv, int64_t n, int32_t dtype,
                       const char *what,
                       std::unique_ptr<Request> *req) override {
    MOERT_TRY(checkDtype(dtype, what));
    copyBytes(recv, send, n * static_cast<int64_t>(dtypeSize(dtype)));
    return finish(req);
  }

  Status barrier(const char *what) override { return Status::ok(); }
  Status broadcastHost(void *buf, int64_t bytes, int root,
                       const char *what) override {
    return checkRoot(root, what);
  }
  Status gatherHost(const void *send, void *recv, int64_t bytes, int root,
                    const char *what) override {
    MOERT_TRY(checkRoot(root, what));
    copyBytes(recv, send, bytes);
    return Status::ok();
  }
  Status allGatherHost(const void *send, void *recv, int64_t bytes,
                       const char *what) override {
    copyBytes(recv, send, bytes);
    return Status::ok();
  }

private:
  static Status checkDtype(int32_t dtype, const char *what) {
    if (dtypeSize(dtype) == 0)
      return error(MOERT_ERR_INVALID, "%s: unknown dtype %d", what, dtype);
    return Status::ok();
  }
  static Status checkRoot(int root, const char *what) {
    if (root != 0)
      return error(MOERT_ERR_COMM, "%s: root %d is not a rank of a world of 1",
                   what, root);
    return Status::ok();
  }

  CommOptions opts_;
};

} // namespace

Status createSingleCommunicator(const CommOptions &opts,
                                std::unique_ptr<Communicator> &out) {
  out = std::make_unique<SingleCommunicator>(opts);
  return Status::ok();
}

} // namespace moert
