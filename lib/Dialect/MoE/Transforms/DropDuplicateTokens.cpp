//===- DropDuplicateTokens.cpp - TED's DTD (moe-drop-duplicate-tokens) ----===//
//
// The tensor-parallel ranks of one expert-parallel group hold the same
// tokens, so each would send the same rows through the all-to-all. Here
// every tp rank sends only its 1/tp share of each row's hidden dimension
// (moe.slice), and the shares are all-gathered over tp where full rows are
// needed again: before the experts and after the return all-to-all.
//
// Slicing the hidden dimension rather than the rows keeps the per-expert
// counts and capacity slots untouched, so the result is bit-for-bit the one
// without DTD while the all-to-all bytes shrink by exactly tp. With expert
// tensor parallelism the all-reduce of partial expert outputs becomes a
// reduce-scatter that directly yields the rank's share.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEDROPDUPLICATETOKENS
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// A collective whose group spans exactly `axes`.
bool overAxes(Operation *op, ArrayRef<StringRef> axes) {
  auto coll = dyn_cast<CollectiveOpInterface>(op);
  if (!coll)
    return false;
  ArrayAttr a = coll.getAxes();
  if (a.size() != axes.size())
    return false;
  for (auto [x, y] : llvm::zip(a, axes))
    if (cast<StringAttr>(x).getValue() != y)
      return false;
  return true;
}

/// An expert-parallel exchange: all_to_all or all_to_all_v over ["ep"].
bool isEpExchange(Operation *op) {
  return op && isa<AllToAllOp, AllToAllVOp>(op) && overAxes(op, {kAxisEP});
}

RankedTensorType shrinkLast(Type t, int64_t tp) {
  auto rt = cast<RankedTensorType>(t);
  SmallVector<int64_t> shape(rt.getShape());
  shape.back() /= tp;
  return RankedTensorType::get(shape, rt.getElementType());
}

struct MoEDropDuplicateTokensPass
    : moe::impl::MoEDropDuplicateTokensBase<MoEDropDuplicateTokensPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<MeshOp> meshes(module.getOps<MeshOp>());
    if (meshes.empty()) {
      module.emitError("moe-drop-duplicate-tokens needs a sharded module "
                       "(run moe-shard first)");
      return signalPassFailure();
    }
    if (meshes.size() > 1) {
      meshes[1].emitError() << "moe-drop-duplicate-tokens: the module has "
                            << meshes.size() << " moe.mesh ops; expected one";
      return signalPassFailure();
    }
    MeshOp mesh = meshes.front();
    int64_t tp = mesh.getAxisSize(kAxisTP);
    if (tp == 1)
      return; // No duplicates to drop (a mesh without tp has one tp rank).
    auto meshRef = FlatSymbolRefAttr::get(mesh.getSymNameAttr());

    SmallVector<ExpertFFNOp> ffns;
    module.walk([&](ExpertFFNOp op) { ffns.push_back(op); });
    for (ExpertFFNOp op : ffns)
      if (failed(rewrite(op, tp, meshRef)))
        return signalPassFailure();
  }

  LogicalResult rewrite(ExpertFFNOp ffn, int64_t tp, FlatSymbolRefAttr mesh) {
    Operation *fwd = ffn.getInput().getDefiningOp();
    if (!isEpExchange(fwd))
      return success(); // Not expert-parallel (ep = 1): nothing is sent.
    // The return path: [all_reduce over tp] -> exchange over ep.
    Value out = ffn.getOutput();
    Operation *reduce = nullptr;
    if (out.hasOneUse() && isa<AllReduceOp>(*out.getUsers().begin()) &&
        overAxes(*out.getUsers().begin(), {kAxisTP}))
      reduce = *out.getUsers().begin();
    Value toSend = reduce ? reduce->getResult(0) : out;
    if (!toSend.hasOneUse() || !isEpExchange(*toSend.getUsers().begin()))
      return ffn.emitOpError("moe-drop-duplicate-tokens expects the expert "
                             "output to go straight back through an "
                             "all-to-all over ep");
    Operation *bwd = *toSend.getUsers().begin();

    auto rowTy = cast<RankedTensorType>(fwd->getOperand(0).getType());
    int64_t dim = rowTy.getRank() - 1, d = rowTy.getShape().back();
    if (d % tp != 0)
      return ffn.emitOpError()
             << "hidden size " << d << " is not divisible by tp = " << tp
             << ", which duplicate token dropping needs";
    OpBuilder b(fwd);
    Location loc = ffn.getLoc();
    ArrayAttr tpAxes = b.getStrArrayAttr({kAxisTP});
    IntegerAttr dimAttr = b.getI64IntegerAttr(dim);

    // Forward: send this rank's share, gather full rows for the experts.
    Value share = SliceOp::create(b, loc, shrinkLast(rowTy, tp),
                                  fwd->getOperand(0), mesh, tpAxes, dimAttr);
    fwd->setOperand(0, share);
    Type fullIn = fwd->getResult(0).getType();
    fwd->getResult(0).setType(shrinkLast(fullIn, tp));
    b.setInsertionPointAfter(fwd);
    Value gathered = AllGatherOp::create(b, loc, fullIn, fwd->getResult(0),
                                         mesh, tpAxes, dimAttr);
    ffn.getInputMutable().assign(gathered);

    // Backward: send this rank's share of the outputs, gather after.
    b.setInsertionPoint(bwd);
    Type outTy = out.getType();
    Value outShare;
    if (reduce) {
      outShare = ReduceScatterOp::create(b, loc, shrinkLast(outTy, tp), out,
                                         mesh, tpAxes, dimAttr);
      reduce->getResult(0).replaceAllUsesWith(outShare);
      reduce->erase();
    } else {
      outShare = SliceOp::create(b, loc, shrinkLast(outTy, tp), out, mesh,
                                 tpAxes, dimAttr);
      bwd->setOperand(0, outShare);
    }
    Type fullBack = bwd->getResult(0).getType();
    bwd->getResult(0).setType(shrinkLast(fullBack, tp));
    b.setInsertionPointAfter(bwd);
    auto back = AllGatherOp::create(b, loc, fullBack, bwd->getResult(0), mesh,
                                    tpAxes, dimAttr);
    bwd->getResult(0).replaceAllUsesExcept(back, back);
    return success();
  }
};

} // namespace
