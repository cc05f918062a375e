//===- StepSimulatorTest.cpp - The step simulator on hand-computed cases --===//
//
// Blocking collectives stall the compute, started ones overlap with it until
// their wait; functions run one after the other; the recompute share of a
// gradient; bytes per link class; balanced dropless pricing; the Chrome
// trace. Every expected number is computed by hand from the cluster below.
//
//===----------------------------------------------------------------------===//
#include "moe/Analysis/StepSimulator.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::moe;
using namespace mlir::moe::cost;

namespace {

/// 2 nodes of 2 devices; GEMMs at 1e9 flop/s without call overhead; copies
/// at 1e9 B/s; links: 1 us + 1e9 B/s inside a node, 10 us + 1e8 B/s between.
ClusterSpec cluster() {
  ClusterSpec c;
  c.nodes = 2;
  c.devicesPerNode = 2;
  c.device = {1e9, 0, 1e9, 1e12};
  c.intraNode = {1e-6, 1e9};
  c.interNode = LinkParams{1e-5, 1e8};
  return c;
}

// ep = 4 over the two nodes: each rank has 1 peer on its node, 2 off it.
// The all-to-all of x [4, 8, 16] f32 (2048 B, 3/4 sent = 1536 B):
//   3 messages: 1 * 1 us + 2 * 10 us = 21 us; bytes 1536 * (1/3 / 1e9 +
//   2/3 / 1e8) = 0.512 us + 10.24 us = 10.752 us; total 31.752 us.
// The expert FFN on [1, 32, 16] with F = 8, swiglu: 2 * 32 * 16 * 8 * 3 =
//   24576 flop = 24.576 us.
constexpr const char *kModule = R"mlir(
moe.mesh @mesh axes = ["ep"] shape = [4]
func.func @blocking(%x: tensor<4x8x16xf32>, %g: tensor<1x8x16xf32>,
                    %u: tensor<1x8x16xf32>, %d: tensor<1x16x8xf32>) -> tensor<4x8x16xf32> {
  %a = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<4x8x16xf32>) -> tensor<1x32x16xf32>
  %y = moe.expert_ffn %a gate %g up %u down %d act = swiglu : (tensor<1x32x16xf32>, tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<1x16x8xf32>) -> tensor<1x32x16xf32>
  %b = moe.all_to_all %y on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x32x16xf32>) -> tensor<4x8x16xf32>
  return %b : tensor<4x8x16xf32>
}
func.func @started(%x: tensor<4x8x16xf32>, %e: tensor<1x32x16xf32>,
                   %g: tensor<1x8x16xf32>, %u: tensor<1x8x16xf32>,
                   %d: tensor<1x16x8xf32>) -> (tensor<1x32x16xf32>, tensor<1x32x16xf32>) {
  %f = moe.all_to_all_start %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<4x8x16xf32>) -> !moe.future<tensor<1x32x16xf32>>
  %y = moe.expert_ffn %e gate %g up %u down %d act = swiglu : (tensor<1x32x16xf32>, tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<1x16x8xf32>) -> tensor<1x32x16xf32>
  %a = moe.wait %f : !moe.future<tensor<1x32x16xf32>>
  return %y, %a : tensor<1x32x16xf32>, tensor<1x32x16xf32>
}
func.func @grad(%x: tensor<1x32x16xf32>, %g: tensor<1x8x16xf32>,
                %u: tensor<1x8x16xf32>, %d: tensor<1x16x8xf32>,
                %dy: tensor<1x32x16xf32>) -> tensor<1x32x16xf32> {
  %dx, %dg, %du, %dd = moe.expert_ffn_grad %x gate %g up %u down %d, %dy act = swiglu : (tensor<1x32x16xf32>, tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<1x16x8xf32>, tensor<1x32x16xf32>) -> (tensor<1x32x16xf32>, tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<1x16x8xf32>)
  return %dx : tensor<1x32x16xf32>
}
func.func @dropless(%x: tensor<32x16xf32>, %sc: tensor<1x4xi32>,
                    %rc: tensor<4x1xi32>, %g: tensor<1x8x16xf32>,
                    %u: tensor<1x8x16xf32>, %d: tensor<1x16x8xf32>) -> tensor<128x16xf32> {
  %r = moe.all_to_all_v %x, %sc, %rc on @mesh ["ep"] : (tensor<32x16xf32>, tensor<1x4xi32>, tensor<4x1xi32>) -> tensor<128x16xf32>
  %y = moe.expert_ffn %r counts %rc gate %g up %u down %d act = swiglu : (tensor<128x16xf32>, tensor<4x1xi32>, tensor<1x8x16xf32>, tensor<1x8x16xf32>, tensor<1x16x8xf32>) -> tensor<128x16xf32>
  return %y : tensor<128x16xf32>
}
)mlir";

constexpr double kA2A = 31.752e-6, kFFN = 24.576e-6;

class Simulate : public ::testing::Test {
protected:
  void SetUp() override {
    ctx.loadDialect<MoEDialect, func::FuncDialect>();
    module = parseSourceString<ModuleOp>(kModule, &ctx);
    ASSERT_TRUE(module);
  }
  StepSimulation run(llvm::ArrayRef<llvm::StringRef> names,
                     SimulateOptions options = {}) {
    llvm::SmallVector<func::FuncOp> fns;
    for (llvm::StringRef n : names)
      fns.push_back(module->lookupSymbol<func::FuncOp>(n));
    llvm::Expected<StepSimulation> s =
        simulateStep(CostModel(cluster()), fns, options);
    EXPECT_TRUE(static_cast<bool>(s));
    if (!s) {
      llvm::consumeError(s.takeError());
      return {};
    }
    return std::move(*s);
  }
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module;
};

TEST_F(Simulate, BlockingCollectivesAreExposed) {
  StepSimulation s = run({"blocking"});
  EXPECT_NEAR(s.seconds, 2 * kA2A + kFFN, 1e-12);
  EXPECT_NEAR(s.computeSeconds, kFFN, 1e-12);
  EXPECT_NEAR(s.commSeconds, 2 * kA2A, 1e-12);
  EXPECT_NEAR(s.exposedCommSeconds, 2 * kA2A, 1e-12);
  // 1536 B each way: 1/3 to the peer on the node, 2/3 to the other node.
  EXPECT_NEAR(s.intraNodeBytes, 1024, 1e-9);
  EXPECT_NEAR(s.interNodeBytes, 2048, 1e-9);
  EXPECT_NEAR(s.bytesByCollective["all_to_all over [ep]"], 3072, 1e-9);
  // Compute track: a2a (blocked), expert_ffn, a2a; link: the two transfers.
  ASSERT_EQ(s.events.size(), 5u);
  EXPECT_EQ(s.events[1].name, "all_to_all");
  EXPECT_EQ(s.events[1].resource, Resource::Compute);
  EXPECT_EQ(s.events[0].name, "all_to_all over [ep]");
  EXPECT_NEAR(s.events[2].start, kA2A, 1e-12);
}

TEST_F(Simulate, StartedCollectiveOverlapsUntilItsWait) {
  StepSimulation s = run({"started"});
  // The transfer (31.752 us) runs under the FFN (24.576 us); the wait
  // stalls the compute for the rest.
  EXPECT_NEAR(s.seconds, kA2A, 1e-12);
  EXPECT_NEAR(s.exposedCommSeconds, kA2A - kFFN, 1e-12);
  bool sawWait = false;
  for (const SimEvent &e : s.events)
    if (e.name == "wait") {
      sawWait = true;
      EXPECT_NEAR(e.start, kFFN, 1e-12);
      EXPECT_NEAR(e.seconds, kA2A - kFFN, 1e-12);
    }
  EXPECT_TRUE(sawWait);
}

TEST_F(Simulate, FunctionsRunOneAfterTheOther) {
  StepSimulation s = run({"blocking", "started"});
  EXPECT_NEAR(s.seconds, 2 * kA2A + kFFN + kA2A, 1e-12);
  EXPECT_EQ(s.events.back().entry, "started");
}

TEST_F(Simulate, GradientRecomputeShare) {
  StepSimulation s = run({"grad"});
  // Recompute gate + up (2), dgrad and wgrad of three matrices (6): 8 x
  // 8192 flop; a quarter of it is recompute.
  EXPECT_NEAR(s.seconds, 8 * 8192e-9, 1e-12);
  EXPECT_NEAR(s.recomputeSeconds, 2 * 8192e-9, 1e-12);
  EXPECT_NEAR(s.computeSeconds, 6 * 8192e-9, 1e-12);
  EXPECT_NEAR(s.exposedCommSeconds, 0, 1e-15);
}

TEST_F(Simulate, DroplessBalancedOrWorstCase) {
  // all_to_all_v of 32 x 16 f32 = 2048 B (upper bound: all of it); balanced
  // rows / 1 source, 3/4 to others = 1536 B. The FFN's 128 received rows
  // are 4 sources' bound; balanced 32 rows.
  StepSimulation bal = run({"dropless"});
  StepSimulation worst = run({"dropless"}, SimulateOptions{false});
  EXPECT_NEAR(bal.bytesByCollective["all_to_all_v over [ep]"], 1536, 1e-9);
  EXPECT_NEAR(worst.bytesByCollective["all_to_all_v over [ep]"], 2048, 1e-9);
  double ffnAll = 2.0 * 128 * 16 * 8 * 3 / 1e9;
  EXPECT_NEAR(bal.computeSeconds, ffnAll / 4, 1e-12);
  EXPECT_NEAR(worst.computeSeconds, ffnAll, 1e-12);
  EXPECT_NEAR(bal.seconds, kA2A + ffnAll / 4, 1e-12);
}

TEST_F(Simulate, ChromeTraceNamesRanksAndTracks) {
  StepSimulation s = run({"blocking"});
  std::string t = renderChromeTrace(s, 2, 100);
  EXPECT_NE(t.find("\"rank 1 (predicted)\""), std::string::npos);
  EXPECT_NE(t.find("\"pid\": 101"), std::string::npos);
  EXPECT_NE(t.find("\"name\": \"expert_ffn\", \"ph\": \"X\", \"ts\": "
                   "31.752, \"dur\": 24.576"),
            std::string::npos);
  EXPECT_EQ(t.front(), '[');
}

} // namespace
