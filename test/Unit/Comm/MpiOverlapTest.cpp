//===- MpiOverlapTest.cpp - Progress while computing, emulated links ------===//
//
// Run under mpirun -np 4 (with the other MPI suites). Every test is
// collective.
//  - Progress: a started collective completes while this thread computes
//    and makes no MPI call (the progress thread moves it), shown by
//    Request::done() turning true before wait() and by the context's
//    overlap counters and trace tracks.
//  - Emulation: a collective over an emulated link takes at least its
//    modelled time (a property of the emulator, not a performance
//    threshold) and returns the same data as the plain communicator.
//
//===----------------------------------------------------------------------===//
#include "CollectiveRef.h"
#include "comm/Communicator.h"
#include "moert/moert.h"
#include "support/Json.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

using namespace moert;

namespace {

std::unique_ptr<Communicator> makeWorld() {
  CommOptions o;
  o.timeoutSeconds = 60;
  std::unique_ptr<Communicator> c;
  Status s = createMpiCommunicator(o, c);
  EXPECT_TRUE(s.isOk()) << s.message();
  return c;
}

/// Some floating-point work that cannot be optimized away.
double computeABit(std::vector<double> &v) {
  double acc = 0;
  for (int rep = 0; rep < 20; ++rep)
    for (size_t i = 0; i < v.size(); ++i) {
      v[i] = std::sqrt(v[i] * 1.000001 + 1.0);
      acc += v[i];
    }
  return acc;
}

/// Even all-to-all of `per` bytes per peer; byte k to peer p is f(me, p, k).
struct Exchange {
  int n, me;
  int64_t per;
  std::vector<int64_t> bytes, displs;
  std::vector<char> send, recv;
  Exchange(Communicator &c, int64_t perPeer)
      : n(c.size()), me(c.rank()), per(perPeer), bytes(n, perPeer), displs(n),
        send(n * perPeer), recv(n * perPeer, 'x') {
    for (int p = 0; p < n; ++p) {
      displs[p] = p * per;
      for (int64_t k = 0; k < per; ++k)
        send[p * per + k] = value(me, p, k);
    }
  }
  static char value(int from, int to, int64_t k) {
    return static_cast<char>(from * 37 + to * 11 + k * 3);
  }
  Status start(Communicator &c, std::unique_ptr<Request> *req) {
    return c.allToAllV(send.data(), bytes.data(), displs.data(), recv.data(),
                       bytes.data(), displs.data(), "overlap test", req);
  }
  int64_t wrongBytes() const {
    int64_t bad = 0;
    for (int p = 0; p < n; ++p)
      for (int64_t k = 0; k < per; ++k)
        bad += recv[p * per + k] != value(p, me, k);
    return bad;
  }
};

TEST(MpiOverlap, StartedCollectiveCompletesWhileTheRankComputes) {
  auto w = makeWorld();
  ASSERT_TRUE(w);
  // 4 MiB to each peer: far above the eager limit, so the rendezvous
  // needs progress on both sides after the start.
  Exchange x(*w, int64_t(4) << 20);
  std::unique_ptr<Request> req;
  ASSERT_TRUE(x.start(*w, &req).isOk());
  std::vector<double> work(1 << 16, 1.0);
  double sink = 0;
  int64_t rounds = 0;
  // Compute, never calling MPI, until the transfer is done; the deadline
  // only stops a hang (without progress it would never be done).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!req->done() && std::chrono::steady_clock::now() < deadline) {
    sink += computeABit(work);
    ++rounds;
  }
  EXPECT_TRUE(req->done()) << "the collective made no progress while the "
                              "rank computed";
  EXPECT_GE(req->completedAt(), 0);
  // No claim on `rounds`: on a loaded machine the progress thread may finish
  // the transfer before the first round of compute; what matters is that it
  // finished while this thread made no MPI call.
  std::printf("[rank %d] done after %lld rounds of compute (sink %g)\n",
              w->rank(), static_cast<long long>(rounds), sink);
  ASSERT_TRUE(req->wait().isOk());
  EXPECT_EQ(x.wrongBytes(), 0);
  ASSERT_TRUE(w->barrier("after the overlap test").isOk());
}

TEST(MpiOverlap, EmulatedLinkTakesAtLeastItsModelledTime) {
  auto plain = makeWorld();
  ASSERT_TRUE(plain);
  LinkModel m;
  m.alphaSeconds = 0.02;   // 20 ms
  m.bytesPerSecond = 20e6; // 20 MB/s
  auto slow = emulateLink(makeWorld(), m);
  const int64_t per = 64 << 10; // 3 peers x 64 KiB: 9.8 ms at 20 MB/s
  double modelled = m.seconds(3 * per);
  for (bool async : {false, true}) {
    Exchange a(*plain, per), b(*slow, per);
    ASSERT_TRUE(a.start(*plain, nullptr).isOk());
    auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<Request> req;
    ASSERT_TRUE(b.start(*slow, async ? &req : nullptr).isOk());
    if (async) {
      ASSERT_TRUE(req->wait().isOk());
    }
    double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    EXPECT_GE(took, modelled) << (async ? "async" : "blocking");
    EXPECT_EQ(a.recv, b.recv) << "the emulator changed the data";
    EXPECT_EQ(b.wrongBytes(), 0);
  }
  // The other collectives: alpha + their bytes to others.
  int n = slow->size();
  std::vector<float> in(1024), outA(1024 * n), outB(1024 * n);
  std::iota(in.begin(), in.end(), float(slow->rank()));
  auto timed = [&](auto &&call, int64_t bytes, const char *name) {
    auto t0 = std::chrono::steady_clock::now();
    Status s = call();
    double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    EXPECT_TRUE(s.isOk()) << s.message();
    EXPECT_GE(took, m.seconds(bytes)) << name;
  };
  ASSERT_TRUE(
      plain->allGather(in.data(), outA.data(), 4096, "g", nullptr).isOk());
  timed(
      [&] {
        return slow->allGather(in.data(), outB.data(), 4096, "g", nullptr);
      },
      (n - 1) * 4096, "all-gather");
  EXPECT_EQ(outA, outB);
  ASSERT_TRUE(
      plain->allReduce(in.data(), outA.data(), 1024, MOERT_F32, "r", nullptr)
          .isOk());
  timed(
      [&] {
        return slow->allReduce(in.data(), outB.data(), 1024, MOERT_F32, "r",
                               nullptr);
      },
      2 * (n - 1) * 4096 / n, "all-reduce");
  EXPECT_TRUE(std::equal(outA.begin(), outA.begin() + 1024, outB.begin()));
  ASSERT_TRUE(plain
                  ->reduceScatter(in.data(), outA.data(), 1024 / n, MOERT_F32,
                                  "s", nullptr)
                  .isOk());
  timed(
      [&] {
        return slow->reduceScatter(in.data(), outB.data(), 1024 / n, MOERT_F32,
                                   "s", nullptr);
      },
      (n - 1) * 1024 / n * 4, "reduce-scatter");
  EXPECT_TRUE(std::equal(outA.begin(), outA.begin() + 1024 / n, outB.begin()));
}

/// The C ABI: --net on one axis of a 2x2 mesh, a started all-to-all on it,
/// the trace's two tracks and the overlap counters.
TEST(MpiOverlap, ContextEmulatesOneAxisAndTracesTransfersOnTheirOwnTrack) {
  static const char *axes[2] = {"a", "b"};
  const std::vector<int64_t> mesh = {2, 2};
  auto make = [&](const char *net, moert_ctx **ctx) {
    moert_ctx_options o;
    moert_ctx_options_init(&o);
    o.comm = MOERT_COMM_MPI;
    o.mesh_rank = 2;
    o.mesh_shape = mesh.data();
    o.mesh_axes = axes;
    o.timeout_s = 60;
    o.num_threads = 1;
    o.record_trace = 1;
    o.net = net;
    return moert_ctx_create(&o, ctx);
  };
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(make("b:alpha=30ms,bw=1GB/s", &ctx), MOERT_OK)
      << moert_last_error();
  int rank = moert_ctx_rank(ctx);
  ref::Dims d = {64, 4, 1, 1};
  ref::Tensor in = ref::input(rank, 256), out(256, -1);
  auto t0 = std::chrono::steady_clock::now();
  void *h = moert_all_to_all_start(ctx, 2, in.data(), out.data(), 4, 64, 4, 1,
                                   1, 0, 0);
  moert_wait(ctx, h);
  double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  EXPECT_GE(took, 0.030 + 512 / 1e9);
  std::vector<ref::Tensor> ins;
  for (int r : ref::groupRanks(mesh, rank, 2))
    ins.push_back(ref::input(r, 256));
  int me = rank % 2;
  EXPECT_EQ(out, ref::allToAll(ins, d, 0, 0, me));
  // Axis a is not emulated: same data, no 30 ms floor asserted.
  ref::Tensor outA(256, -1);
  moert_all_to_all(ctx, 1, in.data(), outA.data(), 4, 64, 4, 1, 1, 0, 0);
  ASSERT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
  json::Value stats;
  ASSERT_TRUE(json::parse(moert_ctx_stats_json(ctx), "stats", stats).isOk());
  const json::Value *overlap = stats.get("overlap");
  ASSERT_TRUE(overlap);
  EXPECT_EQ(overlap->get("started")->getInt(), 1);
  std::string trace = moert_ctx_trace_json(ctx);
  EXPECT_NE(trace.find("\"args\": {\"name\": \"communication\"}"),
            std::string::npos)
      << trace;
  EXPECT_NE(trace.find("{\"name\": \"all_to_all over [b]\", \"ph\": \"X\""),
            std::string::npos)
      << trace;
  EXPECT_NE(trace.find("\"tid\": 1}"), std::string::npos) << trace;
  EXPECT_NE(trace.find("{\"name\": \"all_to_all_wait\""), std::string::npos);
  moert_ctx_destroy(ctx);
  // An axis the mesh does not have is refused on every rank.
  moert_ctx *bad = nullptr;
  EXPECT_EQ(make("ep:alpha=1us", &bad), MOERT_ERR_INVALID);
  EXPECT_NE(std::string(moert_last_error())
                .find("--net: 'ep' is not an axis of the mesh [a, b]"),
            std::string::npos)
      << moert_last_error();
}

/// A flat all-to-all over two emulated axes pays, per peer, the latency of
/// the link of the axes on which that peer differs (the emulation of nodes
/// that moe-compile --hierarchical-a2a=mesh relies on), and counts one
/// message per peer.
TEST(MpiOverlap, ContextEmulatesEachPeerOverItsOwnLink) {
  static const char *axes[2] = {"node", "local"};
  const std::vector<int64_t> mesh = {2, 2};
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.comm = MOERT_COMM_MPI;
  o.mesh_rank = 2;
  o.mesh_shape = mesh.data();
  o.mesh_axes = axes;
  o.timeout_s = 60;
  o.num_threads = 1;
  o.net = "node:alpha=60ms;local:alpha=10ms";
  moert_ctx *ctx = nullptr;
  ASSERT_EQ(moert_ctx_create(&o, &ctx), MOERT_OK) << moert_last_error();
  int rank = moert_ctx_rank(ctx);
  ref::Tensor in = ref::input(rank, 256), out(256, -1);
  auto timed = [&](int64_t mask) {
    auto t0 = std::chrono::steady_clock::now();
    moert_all_to_all(ctx, mask, in.data(), out.data(), 4, 64, 4, 1, 1, 0, 0);
    EXPECT_EQ(moert_ctx_status(ctx), MOERT_OK) << moert_ctx_error(ctx);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  // Peers: one on this node (10 ms), two on the other (60 ms each: the peer
  // that differs on both axes takes the slower link).
  EXPECT_GE(timed(3), 0.010 + 2 * 0.060);
  EXPECT_GE(timed(2), 0.010);
  std::vector<ref::Tensor> ins;
  for (int r : ref::groupRanks(mesh, rank, 3))
    ins.push_back(ref::input(r, 256));
  moert_all_to_all(ctx, 3, in.data(), out.data(), 4, 64, 4, 1, 1, 0, 0);
  EXPECT_EQ(out, ref::allToAll(ins, {64, 4, 1, 1}, 0, 0, rank));
  json::Value stats;
  ASSERT_TRUE(json::parse(moert_ctx_stats_json(ctx), "stats", stats).isOk());
  int64_t messages = -1;
  for (const json::Value &c : stats.get("collectives")->elements())
    if (c.get("axis")->getString() == "node,local")
      messages = c.get("messages")->getInt();
  EXPECT_EQ(messages, 2 * 3) << "two calls, three peers each";
  moert_ctx_destroy(ctx);
}

TEST(MpiOverlap, RanksOnThisNode) {
  auto w = makeWorld();
  ASSERT_TRUE(w);
  EXPECT_EQ(w->localRanks(), 4); // mpirun -np 4 on one machine
}

} // namespace
