//===- VerifierTest.cpp - moe ops built through the C++ API ---------------===//
//
// Builds IR with OpBuilder (as passes and front ends do) and checks what the
// verifiers accept and reject, with the messages they give.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Pass/PassManager.h"

#include <gtest/gtest.h>

using namespace mlir;
using namespace mlir::moe;

namespace {

class MoEDialectTest : public ::testing::Test {
protected:
  MoEDialectTest() : builder(&context) {
    context.loadDialect<MoEDialect, func::FuncDialect>();
    // Collect diagnostics instead of printing them.
    handler = std::make_unique<ScopedDiagnosticHandler>(
        &context, [this](Diagnostic &d) {
          messages.push_back(d.str());
          return success();
        });
    module = ModuleOp::create(builder.getUnknownLoc());
    builder.setInsertionPointToEnd(module->getBody());
  }

  RankedTensorType f32(ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, builder.getF32Type());
  }
  RankedTensorType i32(ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, builder.getI32Type());
  }

  /// A function whose arguments have `types`, with the builder inside it.
  func::FuncOp makeFunc(TypeRange types) {
    auto f = func::FuncOp::create(builder, builder.getUnknownLoc(), "f",
                                  builder.getFunctionType(types, {}));
    Block *b = f.addEntryBlock();
    builder.setInsertionPointToStart(b);
    func::ReturnOp::create(builder, builder.getUnknownLoc());
    builder.setInsertionPointToStart(b);
    return f;
  }

  /// Verifies `op` and returns the first diagnostic ("" when it verifies).
  std::string verifyMessage(Operation *op) {
    messages.clear();
    if (succeeded(verify(op)))
      return "";
    return messages.empty() ? "<no message>" : messages.front();
  }

  MLIRContext context;
  OpBuilder builder;
  OwningOpRef<ModuleOp> module;
  std::unique_ptr<ScopedDiagnosticHandler> handler;
  std::vector<std::string> messages;
};

TopKOp buildTopK(OpBuilder &b, Value logits, int64_t k, int64_t groups = 1,
                 int64_t kept = 1) {
  auto lt = cast<RankedTensorType>(logits.getType());
  int64_t t = lt.getDimSize(0);
  Type f32 = b.getF32Type(), i32 = b.getI32Type();
  return TopKOp::create(b, b.getUnknownLoc(),
                        RankedTensorType::get({t, k}, f32),
                        RankedTensorType::get({t, k}, i32), lt, logits, Value(),
                        b.getI64IntegerAttr(k),
                        ScoreFuncAttr::get(b.getContext(), ScoreFunc::softmax),
                        UnitAttr(), b.getF32FloatAttr(1.0f),
                        b.getI64IntegerAttr(groups), b.getI64IntegerAttr(kept),
                        GroupScoreAttr::get(b.getContext(), GroupScore::max));
}

TEST_F(MoEDialectTest, TopKAcceptsValidSelection) {
  func::FuncOp f = makeFunc({f32({4, 8})});
  TopKOp op = buildTopK(builder, f.getArgument(0), 2);
  EXPECT_EQ(verifyMessage(op), "");
}

TEST_F(MoEDialectTest, TopKRejectsKAboveExperts) {
  func::FuncOp f = makeFunc({f32({4, 8})});
  TopKOp op = buildTopK(builder, f.getArgument(0), 9);
  EXPECT_EQ(verifyMessage(op),
            "'moe.topk' op k (9) exceeds the number of experts (8)");
}

TEST_F(MoEDialectTest, TopKRejectsGroupsThatDoNotDivideExperts) {
  func::FuncOp f = makeFunc({f32({4, 8})});
  TopKOp op = buildTopK(builder, f.getArgument(0), 2, /*groups=*/3, 1);
  EXPECT_EQ(verifyMessage(op), "'moe.topk' op num_groups (3) does not divide "
                               "the number of experts (8)");
}

TEST_F(MoEDialectTest, AssignCountsFollowGroups) {
  func::FuncOp f = makeFunc({i32({8, 2})});
  auto good = AssignOp::create(
      builder, builder.getUnknownLoc(), i32({8, 2}), i32({4, 8}),
      f.getArgument(0), builder.getI64IntegerAttr(8),
      builder.getI64IntegerAttr(3), builder.getI64IntegerAttr(4));
  EXPECT_EQ(verifyMessage(good), "");
  EXPECT_FALSE(good.isDropless());
  auto bad = AssignOp::create(
      builder, builder.getUnknownLoc(), i32({8, 2}), i32({1, 8}),
      f.getArgument(0), builder.getI64IntegerAttr(8),
      builder.getI64IntegerAttr(3), builder.getI64IntegerAttr(4));
  EXPECT_EQ(verifyMessage(bad),
            "'moe.assign' op counts result has shape [1, 8], expected [4, 8]");
}

TEST_F(MoEDialectTest, ExpertFFNChecksGateAgainstActivation) {
  func::FuncOp f = makeFunc(
      {f32({4, 6, 32}), f32({4, 16, 32}), f32({4, 16, 32}), f32({4, 32, 16})});
  auto gated = [&](Activation act, bool withGate) {
    return ExpertFFNOp::create(
        builder, builder.getUnknownLoc(), f32({4, 6, 32}), f.getArgument(0),
        Value(), withGate ? f.getArgument(1) : Value(), f.getArgument(2),
        f.getArgument(3), ActivationAttr::get(&context, act));
  };
  EXPECT_EQ(verifyMessage(gated(Activation::swiglu, true)), "");
  EXPECT_EQ(verifyMessage(gated(Activation::relu, false)), "");
  EXPECT_EQ(verifyMessage(gated(Activation::geglu, false)),
            "'moe.expert_ffn' op activation 'geglu' needs the gate weight");
  EXPECT_EQ(verifyMessage(gated(Activation::gelu, true)),
            "'moe.expert_ffn' op activation 'gelu' takes no gate weight");
}

TEST_F(MoEDialectTest, MeshAnswersGroupSizes) {
  auto mesh = MeshOp::create(builder, builder.getUnknownLoc(), "mesh",
                             builder.getStrArrayAttr({"dp", "ep", "tp"}),
                             builder.getDenseI64ArrayAttr({2, 4, 2}));
  EXPECT_EQ(verifyMessage(mesh), "");
  EXPECT_EQ(mesh.getNumRanks(), 16);
  EXPECT_EQ(mesh.getAxisIndex("tp"), 2);
  EXPECT_EQ(mesh.getAxisIndex("pp"), -1);
  EXPECT_EQ(mesh.getGroupSize(builder.getStrArrayAttr({"dp", "ep"})), 8);
  EXPECT_EQ(mesh.getGroupSize(builder.getStrArrayAttr({})), 1);
  EXPECT_EQ(mesh.getGroupSize(builder.getStrArrayAttr({"pp"})), -1);
}

TEST_F(MoEDialectTest, CollectiveOverMissingAxisIsRejected) {
  MeshOp::create(builder, builder.getUnknownLoc(), "mesh",
                 builder.getStrArrayAttr({"ep"}),
                 builder.getDenseI64ArrayAttr({2}));
  func::FuncOp f = makeFunc({f32({8, 32})});
  AllReduceOp::create(builder, builder.getUnknownLoc(), f32({8, 32}),
                      f.getArgument(0),
                      FlatSymbolRefAttr::get(&context, "mesh"),
                      builder.getStrArrayAttr({"tp"}));
  EXPECT_EQ(verifyMessage(*module),
            "'moe.all_reduce' op axis 'tp' is not an axis of @mesh");
}

/// A Switch-like layer built in C++: capacity resolution and decomposition.
TEST_F(MoEDialectTest, LayerCapacityAndDecomposition) {
  func::FuncOp f = makeFunc(
      {f32({64, 32}), f32({8, 32}), f32({8, 16, 32}), f32({8, 32, 16})});
  auto layer = LayerOp::create(
      builder, builder.getUnknownLoc(), f32({64, 32}), TypeRange{},
      f.getArgument(0), f.getArgument(1), Value(), Value(), f.getArgument(2),
      f.getArgument(3), Value(), Value(), Value(), Value(), Value(),
      builder.getI64IntegerAttr(8), builder.getI64IntegerAttr(1),
      ScoreFuncAttr::get(&context, ScoreFunc::softmax), UnitAttr(),
      builder.getF32FloatAttr(1.0f), builder.getI64IntegerAttr(1),
      builder.getI64IntegerAttr(1),
      GroupScoreAttr::get(&context, GroupScore::max),
      builder.getF32FloatAttr(1.5f), builder.getI64IntegerAttr(0),
      builder.getI64IntegerAttr(0), builder.getI64IntegerAttr(2),
      DropPolicyAttr::get(&context, DropPolicy::zero),
      ActivationAttr::get(&context, Activation::relu),
      builder.getI64IntegerAttr(0), builder.getI64IntegerAttr(0), UnitAttr(),
      builder.getF32FloatAttr(0.0f), builder.getF32FloatAttr(0.0f));
  ASSERT_EQ(verifyMessage(layer), "");
  // Return the output so that the (pure) layer is not dead code.
  Operation *ret = f.getBody().front().getTerminator();
  builder.setInsertionPoint(ret);
  func::ReturnOp::create(builder, builder.getUnknownLoc(), layer.getOutput());
  ret->erase();
  f.setFunctionType(
      builder.getFunctionType(f.getArgumentTypes(), {f32({64, 32})}));
  // ceil(1.5 * (64 / 2) * 1 / 8) = 6 per token group.
  EXPECT_EQ(layer.computeCapacity(), 6);
  EXPECT_FALSE(layer.isDropless());

  PassManager pm(&context);
  pm.addPass(createMoEDecompose());
  ASSERT_TRUE(succeeded(pm.run(*module)));
  int assigns = 0;
  module->walk([&](AssignOp a) {
    ++assigns;
    EXPECT_EQ(a.getCapacity(), 6u);
    EXPECT_EQ(a.getGroups(), 2u);
  });
  EXPECT_EQ(assigns, 1);
  int layers = 0;
  module->walk([&](LayerOp) { ++layers; });
  EXPECT_EQ(layers, 0);
}

} // namespace
