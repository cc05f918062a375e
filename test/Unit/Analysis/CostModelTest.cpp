//===- CostModelTest.cpp - The cost model on hand-computed cases ----------===//
//
// The alpha-beta formulas on known numbers (placement over nodes, per-axis
// links), GEMM and copy times, the cost of ops parsed from text, the
// pipelined exchange at degree 1 and 2 against hand-computed time lines, the
// degree choice on a slow and a fast link, and the cluster file: round trip
// and errors that name the field.
//
//===----------------------------------------------------------------------===//
#include "moe/Analysis/CostModel.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Parser/Parser.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::moe;
using namespace mlir::moe::cost;

namespace {

/// Two link classes 10x apart; 4 devices per node.
ClusterSpec twoLevel() {
  ClusterSpec c;
  c.name = "test";
  c.nodes = 2;
  c.devicesPerNode = 4;
  c.device = {1e11, 1e-5, 1e10, 1e9};
  c.intraNode = {1e-6, 1e10};
  c.interNode = LinkParams{1e-5, 1e9};
  return c;
}

MeshSpec mesh(std::initializer_list<std::pair<const char *, int64_t>> axes) {
  MeshSpec m;
  for (auto [name, size] : axes)
    m.axes.push_back({name, size});
  return m;
}

constexpr double kRel = 1e-12;

void expectCost(Cost c, double fixed, double proportional) {
  EXPECT_NEAR(c.fixed, fixed, fixed * kRel + 1e-18);
  EXPECT_NEAR(c.proportional, proportional, proportional * kRel + 1e-18);
}

TEST(CostModel, AllToAllAcrossNodesSplitsPeersByLink) {
  CostModel m(twoLevel());
  // ep=8 over 2 nodes of 4: 3 peers on the node, 4 on the other.
  GroupLinks g = m.getGroupLinks(mesh({{"ep", 8}}), {"ep"});
  EXPECT_EQ(g.groupSize, 8);
  EXPECT_EQ(g.sameNodePeers, 3);
  EXPECT_EQ(g.otherNodePeers, 4);
  // 7e6 bytes sent: 3e6 at 1e10 B/s, 4e6 at 1e9 B/s.
  expectCost(
      m.collective(CollectiveKind::AllToAll, mesh({{"ep", 8}}), {"ep"}, 7e6),
      3 * 1e-6 + 4 * 1e-5, 3e6 / 1e10 + 4e6 / 1e9);
  // ep=4 fits one node: intra-node only.
  expectCost(
      m.collective(CollectiveKind::AllToAll, mesh({{"ep", 4}}), {"ep"}, 3e6),
      3e-6, 3e6 / 1e10);
}

TEST(CostModel, RingsRunAtTheSlowestLink) {
  CostModel m(twoLevel());
  MeshSpec m8 = mesh({{"ep", 8}});
  expectCost(m.collective(CollectiveKind::AllReduce, m8, {"ep"}, 1e6),
             14 * 1e-5, 1e6 / 1e9);
  expectCost(m.collective(CollectiveKind::AllGather, m8, {"ep"}, 1e6), 7 * 1e-5,
             1e6 / 1e9);
  expectCost(m.collective(CollectiveKind::ReduceScatter, mesh({{"ep", 4}}),
                          {"ep"}, 1e6),
             3 * 1e-6, 1e6 / 1e10);
}

TEST(CostModel, PlacementFollowsRowMajorRanks) {
  CostModel m(twoLevel());
  // dp=2, ep=4 on 2 nodes of 4: an ep group is one node, a dp group spans
  // both (ranks r and r+4).
  MeshSpec dpEp = mesh({{"dp", 2}, {"ep", 4}});
  GroupLinks ep = m.getGroupLinks(dpEp, {"ep"});
  EXPECT_EQ(ep.sameNodePeers, 3);
  EXPECT_EQ(ep.otherNodePeers, 0);
  GroupLinks dp = m.getGroupLinks(dpEp, {"dp"});
  EXPECT_EQ(dp.sameNodePeers, 0);
  EXPECT_EQ(dp.otherNodePeers, 1);
  // ep=4, tp=2: an ep group has stride 2 (ranks 0 2 4 6): 2 per node.
  GroupLinks strided = m.getGroupLinks(mesh({{"ep", 4}, {"tp", 2}}), {"ep"});
  EXPECT_EQ(strided.sameNodePeers, 1);
  EXPECT_EQ(strided.otherNodePeers, 2);
  // A group of one rank costs nothing; so does an axis the mesh lacks.
  expectCost(m.collective(CollectiveKind::AllToAll, dpEp, {"tp"}, 1e6), 0, 0);
}

TEST(CostModel, NamedAxisLinkWins) {
  ClusterSpec c = twoLevel();
  c.axes["ep"] = {5e-5, 1e8};
  c.axes["tp"] = {1e-6, 1e11};
  CostModel m(c);
  MeshSpec epTp = mesh({{"ep", 4}, {"tp", 2}});
  expectCost(m.collective(CollectiveKind::AllToAll, epTp, {"ep"}, 3e6),
             3 * 5e-5, 3e6 / 1e8);
  // Over both named axes: the slower of the two.
  expectCost(m.collective(CollectiveKind::AllGather, epTp, {"ep", "tp"}, 1e6),
             7 * 5e-5, 1e6 / 1e8);
  // dp is not named: placement again (dp=2 x ep=4 on one node of 8 here).
  c.devicesPerNode = 8;
  CostModel one(c);
  expectCost(one.collective(CollectiveKind::AllReduce,
                            mesh({{"dp", 2}, {"ep", 4}}), {"dp"}, 1e6),
             2 * 1e-6, 1e6 / 1e10);
}

TEST(CostModel, GemmAndCopy) {
  CostModel m(twoLevel());
  expectCost(m.gemm(1e9), 1e-5, 1e9 / 1e11);
  expectCost(m.copy(1e8), 0, 1e8 / 1e10);
  expectCost(
      m.collective(CollectiveKind::Slice, mesh({{"tp", 2}}), {"tp"}, 1e8), 0,
      1e-2);
  Cost c = m.gemm(1e9);
  expectCost(c.chunk(4), 1e-5, 1e9 / 1e11 / 4);
  expectCost(c + m.copy(1e8), 1e-5, 1e-2 + 1e-2);
}

TEST(CostModel, KindNames) {
  EXPECT_EQ(symbolizeCollectiveKind("moe.all_to_all_v_start"),
            CollectiveKind::AllToAll);
  EXPECT_EQ(symbolizeCollectiveKind("reduce_scatter"),
            CollectiveKind::ReduceScatter);
  EXPECT_EQ(symbolizeCollectiveKind("moe.wait"), std::nullopt);
  EXPECT_EQ(stringifyCollectiveKind(CollectiveKind::AllGather), "all_gather");
}

constexpr const char *kModule = R"mlir(
moe.mesh @mesh axes = ["ep"] shape = [8]
func.func @f(%x: tensor<8x4x16xf32>, %g: tensor<4x32x16xf32>,
             %u: tensor<4x32x16xf32>, %d: tensor<4x16x32xf32>,
             %t: tensor<8x16xf32>, %w: tensor<4x16xf32>,
             %dyn: tensor<?x16xf32>, %xe: tensor<4x8x16xf32>) {
  %a = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x16xf32>) -> tensor<1x32x16xf32> loc("a")
  %s = moe.all_to_all_start %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x16xf32>) -> !moe.future<tensor<1x32x16xf32>> loc("s")
  %sw = moe.wait %s : !moe.future<tensor<1x32x16xf32>> loc("sw")
  %y = moe.expert_ffn %xe gate %g up %u down %d act = swiglu : (tensor<4x8x16xf32>, tensor<4x32x16xf32>, tensor<4x32x16xf32>, tensor<4x16x32xf32>) -> tensor<4x8x16xf32> loc("y")
  %r = moe.router %t, %w : (tensor<8x16xf32>, tensor<4x16xf32>) -> tensor<8x4xf32> loc("r")
  %n = moe.add %t, %t : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x16xf32> loc("n")
  %h = moe.all_reduce %dyn on @mesh ["ep"] : (tensor<?x16xf32>) -> tensor<?x16xf32> loc("h")
  return
}
)mlir";

class OpCost : public ::testing::Test {
protected:
  void SetUp() override {
    ctx.loadDialect<MoEDialect, func::FuncDialect>();
    module = parseSourceString<ModuleOp>(kModule, &ctx);
    ASSERT_TRUE(module);
  }
  Operation *named(llvm::StringRef name) {
    Operation *found = nullptr;
    module->walk([&](Operation *op) {
      if (auto loc = dyn_cast<NameLoc>(op->getLoc()))
        if (loc.getName() == name)
          found = op;
    });
    return found;
  }
  MLIRContext ctx;
  OwningOpRef<ModuleOp> module;
};

TEST_F(OpCost, OpsAreDispatchedByKind) {
  ClusterSpec c = twoLevel();
  c.devicesPerNode = 8;
  CostModel m(c);
  // all_to_all over 8 ranks of 8 x 4 x 16 f32 (2048 bytes): 7/8 sent.
  FailureOr<Cost> a = m.op(named("a"));
  ASSERT_TRUE(succeeded(a));
  expectCost(*a, 7 * 1e-6, 1792 / 1e10);
  FailureOr<Cost> s = m.op(named("s"));
  ASSERT_TRUE(succeeded(s));
  expectCost(*s, a->fixed, a->proportional);
  expectCost(*m.op(named("sw")), 0, 0);
  // swiglu: 32 rows x D=16 x F=32 x 2 flops x 3 matrices.
  EXPECT_EQ(getExpertFFNFlops(named("y")), 2 * 32 * 16 * 32 * 3);
  expectCost(*m.op(named("y")), 1e-5, 2.0 * 32 * 16 * 32 * 3 / 1e11);
  expectCost(*m.op(named("r")), 1e-5, 2.0 * 8 * 16 * 4 / 1e11);
  // add: two 512-byte operands and a 512-byte result.
  expectCost(*m.op(named("n")), 0, 3 * 512 / 1e10);
  // A dynamic shape has no cost.
  EXPECT_TRUE(failed(m.op(named("h"))));
  // The exchange of the overlap pass: all-to-all, FFN, all-to-all.
  FailureOr<ExchangeStage> stage =
      m.exchangeStage({named("a")}, {named("y"), named("n")}, {named("a")});
  ASSERT_TRUE(succeeded(stage));
  expectCost(stage->dispatch, a->fixed, a->proportional);
  expectCost(stage->compute, 1e-5,
             2.0 * 32 * 16 * 32 * 3 / 1e11 + 3 * 512 / 1e10);
  // The FFN's three weights (4 x 32 x 16 f32 each) at the copy rate.
  EXPECT_NEAR(stage->computeFloor, 3 * 4 * 32 * 16 * 4 / 1e10, 1e-15);
  EXPECT_TRUE(failed(m.exchangeStage({named("h")}, {}, {})));
  EXPECT_EQ(getExpertFFNFlops(named("a")), -1);
}

TEST(Pipeline, DegreeOneAndTwoOnHandComputedTimeLines) {
  // A slow link: each all-to-all 1 ms of bytes plus 20 us of latency; the
  // FFN 1 ms plus 5 us per call.
  ExchangeStage slow{{20e-6, 1e-3}, {5e-6, 1e-3}, {20e-6, 1e-3}};
  PipelinePrediction one = predictPipelinedExchange(slow, 1);
  EXPECT_NEAR(one.seconds, 1020e-6 + 1005e-6 + 1020e-6, 1e-12);
  EXPECT_NEAR(one.exposedCommSeconds, 2040e-6, 1e-12);
  // d=2: link D0 [0,520] D1 [520,1040] C0 [1040,1560] C1 [1560,2080];
  // compute F0 [520,1025] F1 [1040,1545].
  PipelinePrediction two = predictPipelinedExchange(slow, 2);
  EXPECT_NEAR(two.seconds, 2080e-6, 1e-12);
  EXPECT_NEAR(two.computeSeconds, 1010e-6, 1e-12);
  EXPECT_NEAR(two.commSeconds, 4 * 520e-6, 1e-12);
  EXPECT_NEAR(two.exposedCommSeconds, 2080e-6 - 1010e-6, 1e-12);
}

TEST(Pipeline, SlowLinkPicksAHigherDegreeFastLinkDegreeOne) {
  // Communication as long as compute: pipelining hides most of it.
  ExchangeStage slow{{20e-6, 1e-3}, {5e-6, 2e-3}, {20e-6, 1e-3}};
  llvm::SmallVector<PipelinePrediction> all;
  PipelinePrediction best =
      chooseExchangeDegree(slow, kDefaultDegreeCandidates, &all);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_GT(best.degree, 1);
  EXPECT_LT(best.seconds, all[0].seconds * 0.75);
  for (const PipelinePrediction &p : all)
    EXPECT_LE(best.seconds, p.seconds);
  // A fast link: the exchange costs microseconds, every extra chunk pays
  // the GEMM's call overhead again.
  ExchangeStage fast{{1e-6, 1e-6}, {50e-6, 1e-3}, {1e-6, 1e-6}};
  EXPECT_EQ(chooseExchangeDegree(fast, kDefaultDegreeCandidates).degree, 1);
  // Latency-bound: many ranks' message latencies per chunk.
  ExchangeStage latency{{1000e-6, 10e-6}, {5e-6, 1e-3}, {1000e-6, 10e-6}};
  EXPECT_EQ(chooseExchangeDegree(latency, kDefaultDegreeCandidates).degree, 1);
  // A tie goes to the smaller degree.
  ExchangeStage nothing{{0, 0}, {0, 1e-3}, {0, 0}};
  EXPECT_EQ(chooseExchangeDegree(nothing, {8, 4, 2, 1}).degree, 1);
}

TEST(Pipeline, AChunkNeverComputesFasterThanItsWeightsStream) {
  // The FFN streams its weights on every call (0.4 ms here): 8 chunks of a
  // 2 ms FFN take 8 x 0.4 ms, not 8 x 0.25 ms, and the choice follows.
  ExchangeStage slow{{20e-6, 1e-3}, {5e-6, 2e-3}, {20e-6, 1e-3}};
  ExchangeStage floored = slow;
  floored.computeFloor = 0.4e-3;
  EXPECT_NEAR(predictPipelinedExchange(floored, 8).computeSeconds,
              8 * 0.4e-3, 1e-12);
  EXPECT_NEAR(predictPipelinedExchange(floored, 2).computeSeconds,
              2 * 1.005e-3, 1e-12);
  EXPECT_EQ(chooseExchangeDegree(slow, kDefaultDegreeCandidates).degree, 8);
  EXPECT_LT(chooseExchangeDegree(floored, kDefaultDegreeCandidates).degree, 8);
}

TEST(Pipeline, SchedulerRunsEachResourceInOrder) {
  llvm::SmallVector<Task> tasks = {
      {Resource::Link, 2, {}},     // 0: [0, 2]
      {Resource::Compute, 3, {0}}, // 1: [2, 5]
      {Resource::Compute, 1, {}},  // 2: [5, 6] (compute busy until 5)
      {Resource::Link, 1, {2}},    // 3: [6, 7]
  };
  Schedule s = scheduleTasks(tasks);
  EXPECT_EQ(s.start[2], 5);
  EXPECT_EQ(s.end[3], 7);
  EXPECT_EQ(s.makespan, 7);
}

//===----------------------------------------------------------------------===//
// Cluster files
//===----------------------------------------------------------------------===//

constexpr const char *kValid = R"json({
  "version": 1, "name": "two nodes", "nodes": 2, "devices_per_node": 8,
  "device": {"gemm_flop_per_s": 3e14, "gemm_latency_s": 1e-5,
             "copy_bytes_per_s": 1.5e12, "memory_bytes": 8.5e10},
  "links": {"intra_node": {"alpha_s": 3e-6, "bandwidth_bytes_per_s": 1.5e11},
            "inter_node": {"alpha_s": 1e-5, "bandwidth_bytes_per_s": 2.5e10}},
  "axes": {"ep": {"alpha_s": 5e-5, "bandwidth_bytes_per_s": 1e9}}
})json";

std::string parseError(llvm::StringRef text) {
  llvm::Expected<ClusterSpec> c = parseClusterSpec(text);
  if (c)
    return "<parsed>";
  return llvm::toString(c.takeError());
}

/// kValid with `from` replaced by `to` (once).
std::string edited(llvm::StringRef from, llvm::StringRef to) {
  std::string s = kValid;
  size_t at = s.find(from.str());
  EXPECT_NE(at, std::string::npos) << from.str();
  return s.replace(at, from.size(), to.str());
}

TEST(ClusterFile, ParsesAndRoundTrips) {
  llvm::Expected<ClusterSpec> c = parseClusterSpec(kValid);
  ASSERT_TRUE(!!c) << llvm::toString(c.takeError());
  EXPECT_EQ(c->name, "two nodes");
  EXPECT_EQ(c->nodes, 2);
  EXPECT_EQ(c->devicesPerNode, 8);
  EXPECT_EQ(c->device.gemmFlops, 3e14);
  EXPECT_EQ(c->getInterNode().bandwidth, 2.5e10);
  EXPECT_EQ(c->axes.at("ep").alpha, 5e-5);
  std::string text;
  llvm::raw_string_ostream os(text);
  os << c->toJSON();
  llvm::Expected<ClusterSpec> back = parseClusterSpec(text);
  ASSERT_TRUE(!!back) << llvm::toString(back.takeError());
  EXPECT_EQ(*back, *c);
  // The built-in cluster writes a valid file too.
  std::string def;
  llvm::raw_string_ostream dos(def);
  dos << ClusterSpec::getDefault().toJSON();
  llvm::Expected<ClusterSpec> d = parseClusterSpec(def);
  ASSERT_TRUE(!!d) << llvm::toString(d.takeError());
  EXPECT_EQ(*d, ClusterSpec::getDefault());
}

TEST(ClusterFile, ErrorsNameTheField) {
  EXPECT_EQ(parseError(edited("\"bandwidth_bytes_per_s\": 2.5e10",
                              "\"bandwidth_bytes_per_s\": -1")),
            "links.inter_node.bandwidth_bytes_per_s: must be a number > 0 "
            "(got -1)");
  EXPECT_EQ(parseError(edited("\"gemm_flop_per_s\"", "\"gemm_flops\"")),
            "device.gemm_flops: unknown field (expected one of: "
            "copy_bytes_per_s, gemm_flop_per_s, gemm_latency_s, "
            "memory_bytes)");
  EXPECT_EQ(parseError(edited("\"nodes\": 2", "\"nodes\": 0")),
            "nodes: must be an integer >= 1");
  EXPECT_EQ(parseError(edited("\"alpha_s\": 5e-5", "\"alpha_s\": \"fast\"")),
            "axes.ep.alpha_s: must be a number >= 0");
  EXPECT_EQ(parseError(edited("\"gemm_latency_s\": 1e-5,", "")),
            "device.gemm_latency_s: missing (a number >= 0)");
  EXPECT_EQ(parseError(edited("\"version\": 1", "\"version\": 2")),
            "version: must be 1 (the format this compiler reads)");
  EXPECT_EQ(parseError(edited("\"links\": {", "\"links\": ["))
                .rfind("cluster file: not valid JSON", 0),
            0u);
  EXPECT_EQ(parseError("[1]"), "cluster file: must be a JSON object");
  // inter_node may be left out of a one-node file only.
  std::string noInter =
      edited(",\n            \"inter_node\": {\"alpha_s\": 1e-5, "
             "\"bandwidth_bytes_per_s\": 2.5e10}",
             "");
  EXPECT_EQ(parseError(noInter),
            "links.inter_node: missing (required when nodes > 1)");
  std::string oneNode = noInter;
  oneNode.replace(oneNode.find("\"nodes\": 2"), 10, "\"nodes\": 1");
  llvm::Expected<ClusterSpec> c = parseClusterSpec(oneNode);
  ASSERT_TRUE(!!c) << llvm::toString(c.takeError());
  EXPECT_FALSE(c->interNode.has_value());
  EXPECT_EQ(c->getInterNode(), c->intraNode);
}

TEST(ClusterFile, LoadNamesThePath) {
  llvm::Expected<ClusterSpec> missing =
      loadClusterFile("/nonexistent/cluster.json");
  ASSERT_FALSE(!!missing);
  EXPECT_NE(llvm::toString(missing.takeError())
                .find("cluster file /nonexistent/cluster.json: cannot read"),
            std::string::npos);
  llvm::Expected<ClusterSpec> def = loadClusterFile("");
  ASSERT_TRUE(!!def);
  EXPECT_EQ(*def, ClusterSpec::getDefault());
  llvm::SmallString<64> path;
  ASSERT_FALSE(llvm::sys::fs::createTemporaryFile("cluster", "json", path));
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    ASSERT_FALSE(ec);
    os << edited("\"memory_bytes\": 8.5e10", "\"memory_bytes\": -8");
  }
  llvm::Expected<ClusterSpec> bad = loadClusterFile(path);
  ASSERT_FALSE(!!bad);
  EXPECT_EQ(llvm::toString(bad.takeError()),
            ("cluster file " + path +
             ": device.memory_bytes: must be a number > 0 (got -8)")
                .str());
  llvm::sys::fs::remove(path);
}

} // namespace
