//===- RoutingIO.cpp - Routing outputs and replay entries ----------------===//
//
// Routing you can see and replay (docs/spec.md 3.10): @forward returns every
// layer's chosen experts and gate weights, and @forward_replay (and, in a
// training module, @forward_train_replay) takes the experts as inputs
// instead of selecting them (moe.topk becomes moe.topk_forced). The top-k
// decision is thus data: it can be dumped, moved to another mesh and forced
// again. It runs on the per-rank program, after every other rewrite, so the
// replay entries are the entries they clone but for the selection.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringSet.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEROUTINGIO
#define GEN_PASS_DEF_MOECHECKKEPTROUTING
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

using D = MoEDialect;

/// The routing decisions of a function: its moe.topk ops fed by a router.
SmallVector<TopKOp> layerTopks(func::FuncOp f) {
  SmallVector<TopKOp> out;
  f.walk([&](TopKOp op) {
    if (op.getLogits().getDefiningOp<RouterOp>())
      out.push_back(op);
  });
  return out;
}

/// The first all-digit component of `name` ("model.layers.3.mlp..." -> 3).
std::optional<std::string> layerNumber(StringRef name) {
  SmallVector<StringRef> parts;
  name.split(parts, '.');
  for (StringRef p : parts)
    if (!p.empty() &&
        llvm::all_of(p, [](char c) { return c >= '0' && c <= '9'; }))
      return p.str();
  return std::nullopt;
}

/// Layer keys of `topks` (see the pass description).
SmallVector<std::string> layerKeys(func::FuncOp f, ArrayRef<TopKOp> topks) {
  SmallVector<std::string> keys;
  llvm::StringSet<> seen;
  for (TopKOp op : topks) {
    auto arg = dyn_cast<BlockArgument>(
        op.getLogits().getDefiningOp<RouterOp>().getWeight());
    auto name = arg && arg.getOwner()->getParentOp() == f
                    ? f.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                     D::kWeightAttrName)
                    : StringAttr();
    std::optional<std::string> n =
        name ? layerNumber(name.getValue()) : std::nullopt;
    if (!n || !seen.insert(*n).second) {
      keys.clear();
      for (size_t i = 0; i < topks.size(); ++i)
        keys.push_back(std::to_string(i));
      return keys;
    }
    keys.push_back(*n);
  }
  return keys;
}

/// A layer's routing decision: chosen experts and gate weights.
struct Routed {
  Value indices, weights;
};

/// `v` as the layer uses it: after the token mask (moe.mask_rows) when the
/// model has one, so that padding shows as expert -1 and weight 0.
Value afterMask(Value v) {
  for (Operation *user : v.getUsers())
    if (auto m = dyn_cast<MaskRowsOp>(user); m && m.getInput() == v)
      return m.getOutput();
  return v;
}

Routed routedOf(Value indices, Value weights) {
  return {afterMask(indices), afterMask(weights)};
}

SmallVector<Routed> routedOf(ArrayRef<TopKOp> topks) {
  SmallVector<Routed> out;
  for (TopKOp op : topks)
    out.push_back(routedOf(op.getIndices(), op.getWeights()));
  return out;
}

class RoutingIO {
public:
  RoutingIO(ModuleOp module, func::FuncOp forward)
      : module(module), forward(forward), b(module.getContext()) {}
  LogicalResult run();

private:
  /// Attributes of a routing tensor `[T, k]` named `name` under `attr`:
  /// token rows, split like hidden_states' dimension 0.
  DictionaryAttr routingAttrs(StringRef attr, const Twine &name, int64_t k);
  /// Appends every layer's experts and weights to `f`'s results.
  void addOutputs(func::FuncOp f, ArrayRef<Routed> routed);
  /// A clone of `f` named `name` whose layer top-k ops take their experts
  /// from new trailing arguments; `routed`: its decisions.
  FailureOr<func::FuncOp> replayOf(func::FuncOp f, StringRef name,
                                   SmallVector<Routed> &routed);

  ModuleOp module;
  func::FuncOp forward;
  OpBuilder b;
  SmallVector<std::string> keys;
  ArrayAttr tokenAxes;     // hidden_states' dimension-0 axes (sharded)
  int64_t globalRows = -1; // hidden_states' global rows (sharded)
};

DictionaryAttr RoutingIO::routingAttrs(StringRef attr, const Twine &name,
                                       int64_t k) {
  SmallVector<NamedAttribute> attrs{
      b.getNamedAttr(attr, b.getStringAttr(name))};
  if (tokenAxes) {
    attrs.push_back(b.getNamedAttr(
        D::kShardAttrName, b.getArrayAttr({tokenAxes, b.getArrayAttr({})})));
    attrs.push_back(b.getNamedAttr(D::kGlobalShapeAttrName,
                                   b.getDenseI64ArrayAttr({globalRows, k})));
  }
  return b.getDictionaryAttr(attrs);
}

void RoutingIO::addOutputs(func::FuncOp f, ArrayRef<Routed> routed) {
  auto ret = cast<func::ReturnOp>(f.getBody().front().getTerminator());
  SmallVector<Value> values(ret.getOperands());
  SmallVector<DictionaryAttr> attrs;
  f.getAllResultAttrs(attrs);
  for (auto [r, key] : llvm::zip(routed, keys)) {
    int64_t k = cast<RankedTensorType>(r.indices.getType()).getDimSize(1);
    values.push_back(r.indices);
    attrs.push_back(
        routingAttrs(D::kOutputAttrName, "routing." + key + ".experts", k));
    values.push_back(r.weights);
    attrs.push_back(
        routingAttrs(D::kOutputAttrName, "routing." + key + ".weights", k));
  }
  ret->setOperands(values);
  f.setType(FunctionType::get(f.getContext(), f.getArgumentTypes(),
                              ValueRange(values).getTypes()));
  f.setAllResultAttrs(attrs);
}

FailureOr<func::FuncOp> RoutingIO::replayOf(func::FuncOp f, StringRef name,
                                            SmallVector<Routed> &routed) {
  if (module.lookupSymbol(name))
    return f.emitOpError() << "moe-routing-io: the module already has a "
                              "symbol @"
                           << name;
  func::FuncOp replay = f.clone();
  replay.setSymName(name);
  module.insert(std::next(Block::iterator(f)), replay);
  SmallVector<TopKOp> topks = layerTopks(replay);
  if (topks.size() != keys.size())
    return f.emitOpError() << "moe-routing-io: @" << f.getSymName() << " has "
                           << topks.size() << " routed layers but @forward "
                           << "has " << keys.size();
  Block &body = replay.getBody().front();
  SmallVector<DictionaryAttr> argAttrs;
  replay.getAllArgAttrs(argAttrs);
  for (auto [op, key] : llvm::zip(topks, keys)) {
    auto idxTy = cast<RankedTensorType>(op.getIndices().getType());
    BlockArgument forced = body.addArgument(idxTy, op.getLoc());
    argAttrs.push_back(routingAttrs(
        D::kInputAttrName, "routing." + key + ".experts", idxTy.getDimSize(1)));
    b.setInsertionPoint(op);
    auto rep = TopKForcedOp::create(
        b, op.getLoc(), op.getWeights().getType(), idxTy,
        op.getScores().getType(), op.getLogits(), forced, op.getScoreAttr(),
        op.getRenormalizeAttr(), op.getRoutedScalingAttr());
    op.replaceAllUsesWith(rep->getResults());
    routed.push_back(routedOf(rep.getIndices(), rep.getWeights()));
    op.erase();
  }
  replay.setType(FunctionType::get(replay.getContext(), body.getArgumentTypes(),
                                   replay.getResultTypes()));
  replay.setAllArgAttrs(argAttrs);
  return replay;
}

LogicalResult RoutingIO::run() {
  SmallVector<TopKOp> topks = layerTopks(forward);
  if (topks.empty())
    return forward.emitOpError("moe-routing-io: @forward has no routed MoE "
                               "layer (a moe.topk fed by a moe.router; run "
                               "moe-decompose first)");
  keys = layerKeys(forward, topks);
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (!forward.getArgAttr(i, D::kInputAttrName))
      continue;
    auto shard = forward.getArgAttrOfType<ArrayAttr>(i, D::kShardAttrName);
    auto global =
        forward.getArgAttrOfType<DenseI64ArrayAttr>(i, D::kGlobalShapeAttrName);
    if (shard && global && !shard.empty() && !global.empty()) {
      tokenAxes = cast<ArrayAttr>(shard[0]);
      globalRows = global[0];
    }
    break;
  }
  SmallVector<Routed> replayed, trainReplayed;
  FailureOr<func::FuncOp> replay =
      replayOf(forward, "forward_replay", replayed);
  if (failed(replay))
    return failure();
  addOutputs(forward, routedOf(topks));
  addOutputs(*replay, replayed);
  if (auto train = module.lookupSymbol<func::FuncOp>("forward_train")) {
    SmallVector<TopKOp> trainTopks = layerTopks(train);
    FailureOr<func::FuncOp> trainReplay =
        replayOf(train, "forward_train_replay", trainReplayed);
    if (failed(trainReplay))
      return failure();
    addOutputs(train, routedOf(trainTopks));
    addOutputs(*trainReplay, trainReplayed);
  }
  return success();
}

struct MoERoutingIOPass
    : public mlir::moe::impl::MoERoutingIOBase<MoERoutingIOPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward || forward.isExternal()) {
      module.emitError("moe-routing-io needs a function @forward with a body");
      return signalPassFailure();
    }
    if (failed(RoutingIO(module, forward).run()))
      signalPassFailure();
  }
};

/// The forward entries: the only functions that may select experts.
bool isForwardEntry(StringRef name) {
  return name == "forward" || name == "forward_replay" ||
         name == "forward_train" || name == "forward_train_replay";
}

struct MoECheckKeptRoutingPass
    : public mlir::moe::impl::MoECheckKeptRoutingBase<MoECheckKeptRoutingPass> {
  void runOnOperation() override {
    for (auto f : getOperation().getOps<func::FuncOp>()) {
      if (isForwardEntry(f.getSymName()))
        continue;
      f.walk([&](Operation *op) {
        if (!isa<TopKOp, TopKForcedOp>(op))
          return;
        op->emitOpError() << "in @" << f.getSymName()
                          << ": only a forward entry selects experts; the "
                             "backward must read the top-k indices its "
                             "forward entry kept (saved.N), never derive "
                             "them again";
        signalPassFailure();
      });
    }
  }
};

} // namespace
