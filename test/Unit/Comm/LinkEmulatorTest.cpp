//===- LinkEmulatorTest.cpp - The --net spec and the emulated link --------===//
//
// Single rank: the parser (every rule and its message), and the timing floor
// of an emulated collective over the one-rank communicator (alpha only: no
// byte leaves the rank). The MPI suite (MpiOverlapTest.cpp) checks the
// bandwidth term over 4 ranks.
//
//===----------------------------------------------------------------------===//
#include "comm/Communicator.h"
#include "moert/moert.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

using namespace moert;

namespace {

TEST(LinkSpec, ParsesAxesUnitsAndSeparators) {
  std::vector<AxisLink> l;
  ASSERT_TRUE(parseLinkSpec("ep:alpha=50us,bw=1GB/s", l).isOk());
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0].axis, "ep");
  EXPECT_DOUBLE_EQ(l[0].model.alphaSeconds, 50e-6);
  EXPECT_DOUBLE_EQ(l[0].model.bytesPerSecond, 1e9);
  EXPECT_DOUBLE_EQ(l[0].model.seconds(1000000), 50e-6 + 1e-3);

  ASSERT_TRUE(
      parseLinkSpec("ep:alpha=1ms,bw=25Gbit/s;tp:bw=2GiB/s,dp:alpha=2s", l)
          .isOk());
  ASSERT_EQ(l.size(), 3u);
  EXPECT_DOUBLE_EQ(l[0].model.bytesPerSecond, 25e9 / 8);
  EXPECT_EQ(l[1].axis, "tp");
  EXPECT_DOUBLE_EQ(l[1].model.alphaSeconds, 0);
  EXPECT_DOUBLE_EQ(l[1].model.bytesPerSecond, 2.0 * 1024 * 1024 * 1024);
  EXPECT_EQ(l[2].axis, "dp");
  EXPECT_DOUBLE_EQ(l[2].model.alphaSeconds, 2);
  EXPECT_DOUBLE_EQ(l[2].model.bytesPerSecond, 0); // infinite
  EXPECT_DOUBLE_EQ(l[2].model.seconds(int64_t(1) << 40), 2);
}

struct Bad {
  const char *spec, *message;
};

TEST(LinkSpec, RefusesMalformedSpecsNamingTheBadPart) {
  const Bad cases[] = {
      {"", "--net: empty"},
      {"ep", "--net: 'ep': expected AXIS:KEY=VALUE first"},
      {"ep:5us", "--net: 'ep:5us': expected KEY=VALUE"},
      {"alpha=5us", "--net: 'alpha=5us': expected AXIS:KEY=VALUE first"},
      {"ep:alpha=50", "--net: 'ep:alpha=50': missing unit ''"},
      {"ep:alpha=50 us", "--net: 'ep:alpha=50 us': unknown unit ' us'"},
      {"ep:alpha=-1us", "--net: 'ep:alpha=-1us': expected a non-negative"},
      {"ep:alpha=nanus", "expected a non-negative number"},
      {"ep:bw=1Gb/s", "--net: 'ep:bw=1Gb/s': unknown unit 'Gb/s'"},
      {"ep:bw=0GB/s", "--net: 'ep:bw=0GB/s': the bandwidth must be positive"},
      {"ep:latency=1us", "unknown parameter 'latency' (expected alpha or bw)"},
      {"ep:alpha=1us,alpha=2us", "alpha of axis 'ep' given twice"},
      {"ep:bw=1GB/s;ep:alpha=1us", "--net: axis 'ep' given twice"},
      {"ep:alpha=1us,,bw=1GB/s", "--net: empty entry"},
      {"ep:alpha=1us;", "--net: empty entry"},
      {"e-p:alpha=1us", "'e-p' is not an axis name"},
      {":alpha=1us", "'' is not an axis name"},
  };
  for (const Bad &b : cases) {
    std::vector<AxisLink> l;
    Status s = parseLinkSpec(b.spec, l);
    EXPECT_EQ(s.code(), MOERT_ERR_INVALID) << b.spec;
    EXPECT_NE(s.message().find(b.message), std::string::npos)
        << b.spec << " -> " << s.message();
    // The C ABI's check says the same.
    EXPECT_EQ(moert_net_check(b.spec), MOERT_ERR_INVALID) << b.spec;
    EXPECT_NE(std::string(moert_last_error()).find(b.message),
              std::string::npos)
        << b.spec;
  }
  EXPECT_EQ(moert_net_check("ep:alpha=50us,bw=1GB/s"), MOERT_OK);
  EXPECT_EQ(moert_net_check(nullptr), MOERT_ERR_INVALID);
}

TEST(LinkEmulator, OneRankCollectivesTakeAlphaAndKeepTheData) {
  CommOptions o;
  std::unique_ptr<Communicator> single;
  ASSERT_TRUE(createSingleCommunicator(o, single).isOk());
  LinkModel m;
  m.alphaSeconds = 0.02;
  m.bytesPerSecond = 1e3; // would be 4 s for 4 KB: none leaves the rank
  auto slow = emulateLink(std::move(single), m);
  EXPECT_STREQ(slow->name(), "single");
  EXPECT_EQ(slow->size(), 1);
  std::vector<float> in(1024), out(1024, -1);
  for (size_t i = 0; i < in.size(); ++i)
    in[i] = 0.5f * float(i);
  int64_t bytes = 4096, zero = 0;
  for (bool async : {false, true}) {
    std::fill(out.begin(), out.end(), -1.0f);
    auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<Request> req;
    ASSERT_TRUE(slow->allToAllV(in.data(), &bytes, &zero, out.data(), &bytes,
                                &zero, "a2a", async ? &req : nullptr)
                    .isOk());
    if (async) {
      ASSERT_TRUE(req->wait().isOk());
      EXPECT_TRUE(req->done());
      EXPECT_GE(req->completedAt(), 0);
    }
    double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
    EXPECT_GE(took, m.alphaSeconds);
    EXPECT_EQ(out, in);
  }
  // Driver helpers are not delayed and pass through.
  int32_t v = 7, got = 0;
  ASSERT_TRUE(slow->allGatherHost(&v, &got, 4, "host").isOk());
  EXPECT_EQ(got, 7);
}

} // namespace
