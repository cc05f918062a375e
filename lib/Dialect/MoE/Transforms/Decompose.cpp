//===- Decompose.cpp - moe.layer into primitives (moe-decompose) ----------===//
//
// One pattern: a moe.layer becomes the op sequence of docs/spec.md
// section 3. Everything the primitives need (capacity, buffer shapes, loss
// normalizers) is resolved from the layer's attributes and static shapes.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEDECOMPOSE
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct DecomposeLayer : OpRewritePattern<LayerOp> {
  using OpRewritePattern::OpRewritePattern;

  LogicalResult matchAndRewrite(LayerOp op,
                                PatternRewriter &rewriter) const override {
    auto xTy = cast<RankedTensorType>(op.getInput().getType());
    if (!xTy.hasStaticShape())
      return rewriter.notifyMatchFailure(
          op, "token count and hidden size must be static to size buffers");
    Location loc = op.getLoc();
    int64_t t = xTy.getDimSize(0), d = xTy.getDimSize(1);
    int64_t e = op.getNumExperts(), k = op.getTopK();
    Type f32 = rewriter.getF32Type(), i32 = rewriter.getI32Type();
    auto i64Attr = [&](int64_t v) { return rewriter.getI64IntegerAttr(v); };
    auto unit = [&](bool on) {
      return on ? rewriter.getUnitAttr() : UnitAttr();
    };

    // Routing: f32 logits, scores, top-k selection and gate weights.
    auto logitsTy = RankedTensorType::get({t, e}, f32);
    Value logits = RouterOp::create(rewriter, loc, logitsTy, op.getInput(),
                                    op.getRouterWeight());
    auto topk = TopKOp::create(
        rewriter, loc, RankedTensorType::get({t, k}, f32),
        RankedTensorType::get({t, k}, i32), logitsTy, logits, op.getBias(),
        i64Attr(k), ScoreFuncAttr::get(getContext(), op.getScoreFunc()),
        unit(op.getRenormalize()), op.getRoutedScalingAttr(),
        op.getNumGroupsAttr(), op.getGroupsKeptAttr(),
        GroupScoreAttr::get(getContext(), op.getGroupScore()));

    // Token mask: padding rows get expert -1 ("not routed": no slot, not
    // counted) and gate weight 0.
    Value mask = op.getTokenMask();
    Value indices = topk.getIndices(), weights = topk.getWeights();
    if (mask) {
      indices =
          MaskRowsOp::create(rewriter, loc, indices.getType(), indices, mask);
      weights =
          MaskRowsOp::create(rewriter, loc, weights.getType(), weights, mask);
    }

    // Placement: capacity per token group, or dropless.
    int64_t capacity = op.computeCapacity();
    int64_t groups = capacity > 0 ? op.getTokenGroups() : 1;
    auto assign =
        AssignOp::create(rewriter, loc, RankedTensorType::get({t, k}, i32),
                         RankedTensorType::get({groups, e}, i32), indices,
                         i64Attr(e), i64Attr(capacity), i64Attr(groups));

    RankedTensorType bufTy =
        capacity > 0 ? RankedTensorType::get({e, groups * capacity, d},
                                             xTy.getElementType())
                     : RankedTensorType::get({t * k, d}, xTy.getElementType());
    Value buf = DispatchOp::create(rewriter, loc, bufTy, op.getInput(),
                                   assign.getPositions());
    Value ybuf = ExpertFFNOp::create(
        rewriter, loc, bufTy, buf, assign.getCounts(), op.getGate(), op.getUp(),
        op.getDown(), ActivationAttr::get(getContext(), op.getActivation()));
    Value passthrough =
        op.getDropPolicy() == DropPolicy::passthrough ? op.getInput() : Value();
    Value y = CombineOp::create(rewriter, loc, xTy, ybuf, assign.getPositions(),
                                weights, passthrough);

    // Shared experts (and PR-MoE's residual branch) see every token.
    if (op.getNumSharedExperts() > 0) {
      Value shared = MLPOp::create(
          rewriter, loc, xTy, op.getInput(), op.getSharedGate(),
          op.getSharedUp(), op.getSharedDown(), op.getSharedSigmoidGate(),
          ActivationAttr::get(getContext(), op.getActivation()));
      y = AddOp::create(rewriter, loc, xTy, y, shared);
    }
    // A padding row's output is 0: the sublayer adds nothing to its residual.
    if (mask)
      y = MaskRowsOp::create(rewriter, loc, xTy, y, mask);

    SmallVector<Value> results{y};
    auto scalarTy = RankedTensorType::get({}, f32);
    // The losses average over the real tokens of the batch.
    Value count;
    if (mask && (op.hasAuxLoss() || op.hasZLoss()))
      count = TokenCountOp::create(rewriter, loc, scalarTy, mask);
    if (op.hasAuxLoss()) {
      Value scores = topk.getScores();
      if (mask)
        scores =
            MaskRowsOp::create(rewriter, loc, scores.getType(), scores, mask);
      Value stats = ExpertLoadOp::create(
          rewriter, loc, RankedTensorType::get({2, e}, f32), scores, indices);
      results.push_back(LoadBalanceLossOp::create(
          rewriter, loc, scalarTy, stats, count, i64Attr(t), i64Attr(k),
          op.getAuxLossCoeffAttr()));
    }
    if (op.hasZLoss())
      results.push_back(ZLossOp::create(rewriter, loc, scalarTy, logits, mask,
                                        count, i64Attr(t),
                                        op.getZLossCoeffAttr()));
    rewriter.replaceOp(op, results);
    return success();
  }
};

struct MoEDecomposePass : moe::impl::MoEDecomposeBase<MoEDecomposePass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<DecomposeLayer>(&getContext());
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
    // A layer left behind could not be decomposed: say so instead of
    // letting a later stage fail on it.
    WalkResult r = getOperation()->walk([](LayerOp op) {
      op.emitError("moe.layer could not be decomposed: token count and "
                   "hidden size must be static");
      return WalkResult::interrupt();
    });
    if (r.wasInterrupted())
      signalPassFailure();
  }
};

} // namespace
