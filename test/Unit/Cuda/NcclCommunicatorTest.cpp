//===- NcclCommunicatorTest.cpp - The NCCL communicator on one rank -------===//
//
// A world of one rank (no MPI launcher): every collective must come back as
// a copy, on the CUDA backend's stream, and requests must complete. Multi-rank
// behaviour is covered by the integration tests under mpirun on GPUs.
//
//===----------------------------------------------------------------------===//
#include "CudaTestUtil.h"
#include "comm/Communicator.h"
#include "cuda/CudaBackend.h"

namespace moert_cuda_test {
namespace {

using moert::CommOptions;
using moert::Communicator;
using moert::Request;

class NcclCommunicatorTest : public ::testing::Test {
protected:
  void SetUp() override {
    SKIP_WITHOUT_CUDA();
    ASSERT_OK(moert::createCudaBackend(moert::BackendOptions(), gpu));
    CommOptions o;
    o.timeoutSeconds = 60;
    ASSERT_OK(
        moert::createNcclCommunicator(o, moert::cudaBackendStream(*gpu), comm));
  }
  void TearDown() override {
    comm.reset();
    gpu.reset();
  }

  std::unique_ptr<Backend> gpu;
  std::unique_ptr<Communicator> comm;
};

TEST_F(NcclCommunicatorTest, WorldOfOneRank) {
  EXPECT_STREQ(comm->name(), "nccl");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_TRUE(comm->deviceBuffers());
}

TEST_F(NcclCommunicatorTest, CollectivesCopyOnOneRank) {
  const int64_t n = 1000;
  auto v = randomVec(n, 1);
  auto in = put(*gpu, v);
  for (int32_t dt : {MOERT_F32, MOERT_BF16, MOERT_F16}) {
    SCOPED_TRACE(dt);
    auto x = putAs(*gpu, v, dt);
    Buf out(*gpu, n * elemSize(dt));
    ASSERT_OK(comm->allReduce(x->get(), out.get(), n, dt, "test all_reduce",
                              nullptr));
    EXPECT_EQ(out.download<uint8_t>(), x->download<uint8_t>());
    Buf rs(*gpu, n * elemSize(dt));
    ASSERT_OK(comm->reduceScatter(x->get(), rs.get(), n, dt,
                                  "test reduce_scatter", nullptr));
    EXPECT_EQ(rs.download<uint8_t>(), x->download<uint8_t>());
  }
  Buf gathered(*gpu, n * 4);
  ASSERT_OK(comm->allGather(in->get(), gathered.get(), n * 4, "test all_gather",
                            nullptr));
  EXPECT_EQ(gathered.download<float>(), v);

  // all-to-all-v to self, into an offset of the receive buffer.
  Buf a2a(*gpu, (n + 16) * 4);
  int64_t sendBytes = n * 4, sendDispl = 0, recvBytes = n * 4,
          recvDispl = 16 * 4;
  std::unique_ptr<Request> req;
  ASSERT_OK(comm->allToAllV(in->get(), &sendBytes, &sendDispl, a2a.get(),
                            &recvBytes, &recvDispl, "test all_to_all_v", &req));
  ASSERT_TRUE(req);
  ASSERT_OK(req->wait());
  auto got = a2a.download<float>();
  EXPECT_EQ(std::vector<float>(got.begin() + 16, got.end()), v);
}

TEST_F(NcclCommunicatorTest, SplitAndHostHelpers) {
  std::unique_ptr<Communicator> sub;
  ASSERT_OK(comm->split(0, 0, sub));
  ASSERT_TRUE(sub);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
  auto v = randomVec(64, 2);
  auto in = put(*gpu, v);
  Buf out(*gpu, 64 * 4);
  ASSERT_OK(sub->allReduce(in->get(), out.get(), 64, MOERT_F32,
                           "test sub all_reduce", nullptr));
  EXPECT_EQ(out.download<float>(), v);

  ASSERT_OK(comm->barrier("test barrier"));
  int value = 42, all = 0;
  ASSERT_OK(comm->broadcastHost(&value, sizeof value, 0, "test broadcast"));
  EXPECT_EQ(value, 42);
  ASSERT_OK(comm->allGatherHost(&value, &all, sizeof value, "test gather"));
  EXPECT_EQ(all, 42);
  all = 0;
  ASSERT_OK(comm->gatherHost(&value, &all, sizeof value, 0, "test gather"));
  EXPECT_EQ(all, 42);
}

TEST_F(NcclCommunicatorTest, EmptyAndInPlaceTransfers) {
  // An all-to-all-v with nothing to move is an empty NCCL group; it must
  // still complete (dropless routing can send a peer no rows at all).
  Buf b(*gpu, 256);
  int64_t zero = 0;
  std::unique_ptr<Request> req;
  ASSERT_OK(comm->allToAllV(b.get(), &zero, &zero, b.get(), &zero, &zero,
                            "test empty all_to_all_v", &req));
  ASSERT_TRUE(req);
  ASSERT_OK(req->wait());
  ASSERT_OK(comm->allToAllV(b.get(), &zero, &zero, b.get(), &zero, &zero,
                            "test empty all_to_all_v (blocking)", nullptr));
  // In place, as Collectives.cpp issues them: all_gather with send at this
  // rank's slot of recv, all_reduce with send == recv.
  auto v = randomVec(64, 3);
  auto in = put(*gpu, v);
  ASSERT_OK(comm->allGather(in->get(), in->get(), 64 * 4,
                            "test in-place all_gather", nullptr));
  EXPECT_EQ(in->download<float>(), v);
  ASSERT_OK(comm->allReduce(in->get(), in->get(), 64, MOERT_F32,
                            "test in-place all_reduce", nullptr));
  EXPECT_EQ(in->download<float>(), v);
}

TEST_F(NcclCommunicatorTest, RejectsUnknownDtype) {
  Buf b(*gpu, 64);
  moert::Status s =
      comm->allReduce(b.get(), b.get(), 4, 99, "test bad dtype", nullptr);
  EXPECT_EQ(s.code(), MOERT_ERR_INVALID);
  EXPECT_NE(s.message().find("test bad dtype"), std::string::npos);
}

} // namespace
} // namespace moert_cuda_test
