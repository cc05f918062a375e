//===- CollectiveInterfaceTest.cpp - CollectiveOpInterface on real ops ----===//
//
// Group sizes, bytes sent (as runtime/comm/Collectives.cpp counts them) and
// the inverse collectives, asked of ops parsed from text through the
// interface alone.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::moe;

namespace {

// One op of each kind, named by the tensor it produces via its loc.
constexpr const char *kModule = R"mlir(
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 4, 2]
func.func @f(%x: tensor<8x6x32xf32>, %r: tensor<64x32xbf16>,
             %sc: tensor<1x8xi32>, %rc: tensor<4x2xi32>,
             %t: tensor<8x32xf32>, %dyn: tensor<?x32xf32>) {
  %a = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x6x32xf32>) -> tensor<2x24x32xf32> loc("a")
  %b = moe.all_to_all_v %r, %sc, %rc on @mesh ["ep"] : (tensor<64x32xbf16>, tensor<1x8xi32>, tensor<4x2xi32>) -> tensor<128x32xbf16> loc("b")
  %c = moe.all_gather %t on @mesh ["tp"] dim = 1 : (tensor<8x32xf32>) -> tensor<8x64xf32> loc("c")
  %d = moe.reduce_scatter %t on @mesh ["tp"] dim = 1 : (tensor<8x32xf32>) -> tensor<8x16xf32> loc("d")
  %e = moe.all_reduce %t on @mesh ["dp", "ep"] : (tensor<8x32xf32>) -> tensor<8x32xf32> loc("e")
  %f = moe.slice %t on @mesh ["tp"] dim = 1 : (tensor<8x32xf32>) -> tensor<8x16xf32> loc("f")
  %g = moe.all_to_all_start %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x6x32xf32>) -> !moe.future<tensor<2x24x32xf32>> loc("g")
  %gw = moe.wait %g : !moe.future<tensor<2x24x32xf32>> loc("gw")
  %h = moe.all_reduce %dyn on @mesh ["tp"] : (tensor<?x32xf32>) -> tensor<?x32xf32> loc("h")
  return
}
)mlir";

class CollectiveInterfaceTest : public ::testing::Test {
protected:
  void SetUp() override {
    context.loadDialect<MoEDialect, func::FuncDialect>();
    module = parseSourceString<ModuleOp>(kModule, &context);
    ASSERT_TRUE(module);
    module->walk([&](Operation *op) {
      if (auto loc = dyn_cast<NameLoc>(op->getLoc()))
        ops[loc.getName().getValue()] = op;
    });
  }

  /// The op named `name`, through the interface.
  CollectiveOpInterface coll(StringRef name) {
    return dyn_cast_or_null<CollectiveOpInterface>(ops.lookup(name));
  }

  /// Builds the inverse of `op` on `input` before the return.
  Value inverse(CollectiveOpInterface op, Value input) {
    Operation *ret = module->lookupSymbol<func::FuncOp>("f")
                         .getBody()
                         .front()
                         .getTerminator();
    OpBuilder b(ret);
    return op.buildInverse(b, ret->getLoc(), input);
  }
  Value inverse(StringRef name, Value input) {
    return inverse(coll(name), input);
  }

  MLIRContext context;
  OwningOpRef<ModuleOp> module;
  llvm::StringMap<Operation *> ops;
};

TEST_F(CollectiveInterfaceTest, EveryCollectiveAndSliceImplementsIt) {
  for (StringRef name : {"a", "b", "c", "d", "e", "f", "g", "h"})
    EXPECT_TRUE(coll(name)) << name.str();
  EXPECT_FALSE(coll("gw")); // moe.wait moves nothing itself
  EXPECT_EQ(coll("a").getMeshOp().getSymName(), "mesh");
  EXPECT_EQ(coll("e").getAxes(),
            Builder(&context).getStrArrayAttr({kAxisDP, kAxisEP}));
  EXPECT_TRUE(coll("g").isStart());
  EXPECT_FALSE(coll("a").isStart());
}

TEST_F(CollectiveInterfaceTest, GroupSizeIsTheProductOfTheAxes) {
  EXPECT_EQ(coll("a").getGroupSize(), 4);
  EXPECT_EQ(coll("b").getGroupSize(), 4);
  EXPECT_EQ(coll("c").getGroupSize(), 2);
  EXPECT_EQ(coll("e").getGroupSize(), 8);
  EXPECT_EQ(coll("g").getGroupSize(), 4);
  // The concrete ops answer too (the interface's shared methods).
  EXPECT_EQ(cast<AllReduceOp>(ops.lookup("e")).getGroupSize(), 8);
}

TEST_F(CollectiveInterfaceTest, BytesSentCountLikeTheRuntime) {
  // all_to_all: 8*6*32 f32 = 6144 bytes; 3 of 4 chunks go to peers.
  EXPECT_EQ(coll("a").getBytesSentPerRank(), 3 * 6144 / 4);
  EXPECT_FALSE(coll("a").isBytesSentUpperBound());
  // all_to_all_v: data-dependent; at most every bf16 input row (64*32*2).
  EXPECT_EQ(coll("b").getBytesSentPerRank(), 4096);
  EXPECT_TRUE(coll("b").isBytesSentUpperBound());
  // all_gather: a copy of the 1024-byte input to the one other tp rank.
  EXPECT_EQ(coll("c").getBytesSentPerRank(), 1024);
  // reduce_scatter: the half that the other rank keeps.
  EXPECT_EQ(coll("d").getBytesSentPerRank(), 512);
  // all_reduce (ring) over 8 ranks: 2 * 7/8 of the input.
  EXPECT_EQ(coll("e").getBytesSentPerRank(), 2 * 7 * 1024 / 8);
  // slice: a local copy.
  EXPECT_EQ(coll("f").getBytesSentPerRank(), 0);
  EXPECT_EQ(coll("g").getBytesSentPerRank(), coll("a").getBytesSentPerRank());
  // Unknown without a static shape.
  EXPECT_EQ(coll("h").getBytesSentPerRank(), -1);
}

TEST_F(CollectiveInterfaceTest, UnresolvedMeshGivesMinusOne) {
  OpBuilder b(&context);
  OwningOpRef<ModuleOp> lone = ModuleOp::create(b.getUnknownLoc());
  b.setInsertionPointToEnd(lone->getBody());
  auto type = RankedTensorType::get({4}, b.getF32Type());
  auto f = func::FuncOp::create(b, b.getUnknownLoc(), "g",
                                b.getFunctionType({type}, {}));
  b.setInsertionPointToStart(f.addEntryBlock());
  auto op = AllReduceOp::create(b, b.getUnknownLoc(), type, f.getArgument(0),
                                FlatSymbolRefAttr::get(&context, "nomesh"),
                                b.getStrArrayAttr({kAxisTP}));
  auto iface = cast<CollectiveOpInterface>(op.getOperation());
  EXPECT_FALSE(iface.getMeshOp());
  EXPECT_EQ(iface.getGroupSize(), -1);
  EXPECT_EQ(iface.getBytesSentPerRank(), -1);
}

TEST_F(CollectiveInterfaceTest, InversesRestoreTheInputType) {
  auto in = [&](StringRef name) { return coll(name).getInput().getType(); };
  auto out = [&](StringRef name) { return ops.lookup(name)->getResult(0); };

  // all_to_all: split and concat swapped.
  auto a = inverse("a", out("a")).getDefiningOp<AllToAllOp>();
  ASSERT_TRUE(a);
  EXPECT_EQ(a.getSplitDim(), 1u);
  EXPECT_EQ(a.getConcatDim(), 0u);
  EXPECT_EQ(a.getType(), in("a"));
  EXPECT_EQ(a.getAxes(), coll("a").getAxes());
  // ... and the inverse of the inverse is the original exchange.
  auto aa = inverse(a, a).getDefiningOp<AllToAllOp>();
  ASSERT_TRUE(aa);
  EXPECT_EQ(aa.getSplitDim(), 0u);
  EXPECT_EQ(aa.getConcatDim(), 1u);
  EXPECT_EQ(aa.getType(), out("a").getType());

  // all_to_all_v: send and recv counts swapped.
  auto b = inverse("b", out("b")).getDefiningOp<AllToAllVOp>();
  ASSERT_TRUE(b);
  auto bOp = cast<AllToAllVOp>(ops.lookup("b"));
  EXPECT_EQ(b.getSendCounts(), bOp.getRecvCounts());
  EXPECT_EQ(b.getRecvCounts(), bOp.getSendCounts());
  EXPECT_EQ(b.getType(), in("b"));

  // all_gather <-> reduce_scatter (transposes), slice -> all_gather.
  auto c = inverse("c", out("c")).getDefiningOp<ReduceScatterOp>();
  ASSERT_TRUE(c);
  EXPECT_EQ(c.getType(), in("c"));
  EXPECT_EQ(c.getDim(), 1u);
  auto d = inverse("d", out("d")).getDefiningOp<AllGatherOp>();
  ASSERT_TRUE(d);
  EXPECT_EQ(d.getType(), in("d"));
  auto e = inverse("e", out("e")).getDefiningOp<AllReduceOp>();
  ASSERT_TRUE(e);
  EXPECT_EQ(e.getAxes(), coll("e").getAxes());
  auto f = inverse("f", out("f")).getDefiningOp<AllGatherOp>();
  ASSERT_TRUE(f);
  EXPECT_EQ(f.getType(), in("f"));
  EXPECT_EQ(f.getDim(), 1u);

  // A start form's inverse is a start form on the waited tensor.
  auto g = inverse("g", out("gw")).getDefiningOp<AllToAllStartOp>();
  ASSERT_TRUE(g);
  EXPECT_EQ(g.getType(),
            FutureType::get(&context, cast<RankedTensorType>(in("g"))));

  // Every inverse is a valid op (the verifiers check the shapes).
  EXPECT_TRUE(succeeded(verify(*module)));
}

} // namespace
