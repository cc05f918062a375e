//===- MpiCommunicatorTest.cpp - The byte-level MPI communicator ----------===//
//
// Run under mpirun -np 4. Every test is collective: all ranks run it in
// the same order.
//
//===----------------------------------------------------------------------===//
#include "comm/Communicator.h"

#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

using namespace moert;

namespace {

std::unique_ptr<Communicator> makeWorld(double timeout = 60) {
  CommOptions o;
  o.timeoutSeconds = timeout;
  std::unique_ptr<Communicator> c;
  Status s = createMpiCommunicator(o, c);
  EXPECT_TRUE(s.isOk()) << s.message();
  return c;
}

/// Bytes rank `from` sends to rank `to`: uneven, often zero.
int64_t pairBytes(int from, int to) { return (from * 3 + to * 5) % 4 * 7; }

char pairByte(int from, int to, int64_t k) {
  return static_cast<char>(from * 31 + to * 7 + k);
}

TEST(MpiCommunicator, World) {
  auto w = makeWorld();
  ASSERT_TRUE(w);
  EXPECT_STREQ(w->name(), "mpi");
  EXPECT_EQ(w->size(), 4);
  EXPECT_FALSE(w->deviceBuffers());
}

/// One uneven all-to-all: returns false on a wrong byte.
Status unevenAllToAll(Communicator &c, bool async) {
  int n = c.size(), me = c.rank();
  std::vector<int64_t> sb(n), sd(n), rb(n), rd(n);
  int64_t st = 0, rt = 0;
  for (int p = 0; p < n; ++p) {
    sb[p] = pairBytes(me, p);
    rb[p] = pairBytes(p, me);
    sd[p] = st;
    rd[p] = rt;
    st += sb[p];
    rt += rb[p];
  }
  std::vector<char> send(st + 1), recv(rt + 1, 'x');
  for (int p = 0; p < n; ++p)
    for (int64_t k = 0; k < sb[p]; ++k)
      send[sd[p] + k] = pairByte(me, p, k);
  std::unique_ptr<Request> req;
  MOERT_TRY(c.allToAllV(send.data(), sb.data(), sd.data(), recv.data(),
                        rb.data(), rd.data(), "uneven test",
                        async ? &req : nullptr));
  if (async)
    MOERT_TRY(req->wait());
  for (int p = 0; p < n; ++p)
    for (int64_t k = 0; k < rb[p]; ++k)
      if (recv[rd[p] + k] != pairByte(p, me, k))
        return error(MOERT_ERR_INVALID, "byte %lld from %d is wrong",
                     static_cast<long long>(k), p);
  return Status::ok();
}

TEST(MpiCommunicator, UnevenAllToAllVWithZeroSizedSends) {
  auto w = makeWorld();
  Status s = unevenAllToAll(*w, false);
  EXPECT_TRUE(s.isOk()) << s.message();
  s = unevenAllToAll(*w, true);
  EXPECT_TRUE(s.isOk()) << s.message();
}

TEST(MpiCommunicator, ManySmallMessagesInFlight) {
  auto w = makeWorld();
  int n = w->size(), me = w->rank();
  const int kRounds = 50, kInFlight = 8;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<Request>> reqs(kInFlight);
    std::vector<std::vector<int32_t>> sends(kInFlight), recvs(kInFlight);
    for (int i = 0; i < kInFlight; ++i) {
      sends[i] = {me * 1000 + round * 10 + i};
      recvs[i].assign(n, -1);
      ASSERT_TRUE(
          w->allGather(sends[i].data(), recvs[i].data(), 4, "small", &reqs[i])
              .isOk());
    }
    for (int i = kInFlight; i-- > 0;) // completed in reverse order
      ASSERT_TRUE(reqs[i]->wait().isOk());
    for (int i = 0; i < kInFlight; ++i)
      for (int p = 0; p < n; ++p)
        ASSERT_EQ(recvs[i][p], p * 1000 + round * 10 + i);
  }
}

TEST(MpiCommunicator, SplitMakesIndependentGroups) {
  auto w = makeWorld();
  std::unique_ptr<Communicator> half;
  // Colors 0 and 1, ordered by descending world rank.
  ASSERT_TRUE(w->split(w->rank() % 2, -w->rank(), half).isOk());
  ASSERT_EQ(half->size(), 2);
  int32_t mine = w->rank(), got[2] = {-1, -1};
  ASSERT_TRUE(half->allGather(&mine, got, 4, "split test", nullptr).isOk());
  int color = w->rank() % 2;
  EXPECT_EQ(got[0], color + 2);
  EXPECT_EQ(got[1], color);
  EXPECT_EQ(half->rank(), w->rank() < 2 ? 1 : 0);
}

TEST(MpiCommunicator, Reductions) {
  auto w = makeWorld();
  int n = w->size(), me = w->rank();
  std::vector<float> f(8), fsum(8);
  for (int i = 0; i < 8; ++i)
    f[i] = me + i * 0.5f;
  ASSERT_TRUE(
      w->allReduce(f.data(), fsum.data(), 8, MOERT_F32, "ar", nullptr).isOk());
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(fsum[i], 6 + n * i * 0.5f);
  ASSERT_TRUE(
      w->allReduce(f.data(), f.data(), 8, MOERT_F32, "in place", nullptr)
          .isOk());
  EXPECT_EQ(f, fsum);
  std::vector<int64_t> big = {INT64_C(1) << 40, me};
  ASSERT_TRUE(w->allReduce(big.data(), big.data(), 2, MOERT_I64, "i64", nullptr)
                  .isOk());
  EXPECT_EQ(big[0], INT64_C(4) << 40);
  EXPECT_EQ(big[1], 6);
  std::vector<int32_t> rs(2 * n), mine(2);
  std::iota(rs.begin(), rs.end(), me);
  ASSERT_TRUE(
      w->reduceScatter(rs.data(), mine.data(), 2, MOERT_I32, "rs", nullptr)
          .isOk());
  EXPECT_EQ(mine[0], 4 * (2 * me) + 6);
  EXPECT_EQ(mine[1], 4 * (2 * me + 1) + 6);
  uint16_t h[2] = {0, 0};
  Status s = w->allReduce(h, h, 2, MOERT_F16, "half sum", nullptr);
  EXPECT_EQ(s.code(), MOERT_ERR_UNSUPPORTED);
  EXPECT_NE(s.message().find("half sum"), std::string::npos);
}

TEST(MpiCommunicator, HostHelpers) {
  auto w = makeWorld();
  int me = w->rank();
  ASSERT_TRUE(w->barrier("b").isOk());
  int64_t v = me == 0 ? 1234 : -1;
  ASSERT_TRUE(w->broadcastHost(&v, 8, 0, "bcast").isOk());
  EXPECT_EQ(v, 1234);
  int32_t mine = me * me, all[4] = {-1, -1, -1, -1};
  ASSERT_TRUE(
      w->gatherHost(&mine, me == 2 ? all : nullptr, 4, 2, "gather").isOk());
  if (me == 2) {
    EXPECT_EQ(all[3], 9);
  }
  ASSERT_TRUE(w->allGatherHost(&mine, all, 4, "allgather").isOk());
  EXPECT_EQ(all[1], 1);
  Status s = w->broadcastHost(&v, 8, 7, "bad root");
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
  char buf[8];
  s = w->allGather(buf, buf + 1, 2, "overlap", nullptr);
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
}

TEST(MpiCommunicator, TimeoutNamesTheCollective) {
  auto shortWorld = makeWorld(1.0);
  auto w = makeWorld();
  if (w->rank() != 0) { // rank 0 skips the collective
    float x = 1, y = 0;
    Status s = shortWorld->allReduce(&x, &y, 1, MOERT_F32,
                                     "all_reduce over [test]", nullptr);
    EXPECT_EQ(s.code(), MOERT_ERR_TIMEOUT);
    EXPECT_NE(s.message().find("all_reduce over [test] timed out after 1."),
              std::string::npos)
        << s.message();
    std::unique_ptr<Request> req;
    int32_t a = 1, b[4];
    ASSERT_TRUE(shortWorld->allGather(&a, b, 4, "async gather", &req).isOk());
    s = req->wait();
    EXPECT_EQ(s.code(), MOERT_ERR_TIMEOUT);
    EXPECT_NE(s.message().find("async gather"), std::string::npos);
  }
  EXPECT_TRUE(w->barrier("after the timeout").isOk());
}

} // namespace
