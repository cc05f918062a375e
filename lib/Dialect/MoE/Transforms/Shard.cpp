//===- Shard.cpp - Per-rank program of a dp x ep x tp mesh (moe-shard) ----===//
//
// One walk over each decomposed function, in program order. Every op's
// ShardingRuleOpInterface first says how its weight operands are split, then
// rewrites it into its per-rank form from its operands' per-rank types (the
// rules are in IR/MoEShardingRules.cpp). Arguments and results record their
// global shapes and shard specs for the manifest.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOESHARD
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

struct MeshShape {
  int64_t dp = 1, ep = 1, tp = 1;
  int64_t tokenShards() const { return dp * ep; }
};

FailureOr<MeshShape> parseMesh(StringRef spec, Operation *where) {
  MeshShape m;
  SmallVector<StringRef> parts;
  spec.split(parts, ',', -1, /*KeepEmpty=*/false);
  if (parts.empty()) {
    where->emitError("moe-shard needs a mesh, e.g. mesh=dp=1,ep=2,tp=2");
    return failure();
  }
  for (StringRef p : parts) {
    auto [axis, size] = p.split('=');
    axis = axis.trim();
    int64_t n;
    if (size.trim().getAsInteger(10, n) || n < 1) {
      where->emitError() << "mesh entry '" << p
                         << "' is not axis=size with a positive size";
      return failure();
    }
    if (axis == "dp")
      m.dp = n;
    else if (axis == "ep")
      m.ep = n;
    else if (axis == "tp")
      m.tp = n;
    else {
      where->emitError() << "unknown mesh axis '" << axis
                         << "' (axes are dp, ep, tp)";
      return failure();
    }
  }
  return m;
}

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

/// Rewrites one function into its per-rank form: the walk. What each op
/// becomes is its ShardingRuleOpInterface (IR/MoEShardingRules.cpp).
class FunctionSharder {
public:
  FunctionSharder(func::FuncOp func, ShardingContext &ctx)
      : func(func), ctx(ctx) {}

  LogicalResult run();

private:
  LogicalResult shardArguments();
  LogicalResult shardResults();
  void annotate(DictionaryAttr &attrs, RankedTensorType global,
                const ShardSpec &spec);

  func::FuncOp func;
  ShardingContext &ctx;
};

void FunctionSharder::annotate(DictionaryAttr &attrs, RankedTensorType global,
                               const ShardSpec &spec) {
  NamedAttrList list(attrs);
  SmallVector<Attribute> dims;
  for (const auto &axes : spec)
    dims.push_back(ctx.axesAttr(axes));
  list.set("moe.shard", ctx.builder.getArrayAttr(dims));
  list.set("moe.global_shape",
           ctx.builder.getDenseI64ArrayAttr(global.getShape()));
  attrs = list.getDictionary(func.getContext());
}

/// Tokens (moe.input) are split over dp x ep; weights as their users' rules
/// say (replicated when no rule splits them).
LogicalResult FunctionSharder::shardArguments() {
  // The tokens first: what a rank holds of them decides what the mesh must
  // divide before any weight does.
  int64_t globalTokens = -1, shards = ctx.mesh.tokenShards();
  for (BlockArgument arg : func.getArguments()) {
    DictionaryAttr attrs = func.getArgAttrDict(arg.getArgNumber());
    if (!attrs || !attrs.get("moe.input"))
      continue;
    auto global = typeOf(arg);
    if (global.getRank() < 1)
      return func.emitError() << "input " << attrs.get("moe.input")
                              << " has no token dimension (it is a scalar)";
    if (global.getDimSize(0) % shards)
      return func.emitError()
             << "input " << attrs.get("moe.input") << " has "
             << global.getDimSize(0)
             << " tokens, not divisible by dp x ep = " << shards;
    if (globalTokens >= 0 && globalTokens != global.getDimSize(0))
      return func.emitError("inputs disagree on the number of tokens");
    globalTokens = global.getDimSize(0);
    ctx.markTokens(arg);
  }
  if (globalTokens < 0)
    return func.emitError("moe-shard needs an argument with moe.input (the "
                          "tokens) to know what to split over dp x ep");

  for (Operation &op : func.getBody().front())
    if (auto rule = dyn_cast<ShardingRuleOpInterface>(op))
      if (failed(rule.shardWeights(ctx)))
        return failure();

  SmallVector<Type> argTypes;
  for (BlockArgument arg : func.getArguments()) {
    auto global = typeOf(arg);
    DictionaryAttr attrs = func.getArgAttrDict(arg.getArgNumber());
    ShardSpec spec(global.getRank());
    if (ctx.isToken(arg))
      spec[0] = {"dp", "ep"};
    else if (const ShardSpec *split = ctx.weightSpec(arg))
      spec = *split;
    SmallVector<int64_t> local(global.getShape());
    for (auto [d, axes] : llvm::enumerate(spec)) {
      int64_t n = 1;
      for (StringRef axis : axes)
        n *= ctx.mesh.size(axis);
      // The rules check divisibility with the op's own words; this is the
      // backstop for a rule that forgot.
      if (local[d] % n != 0)
        return func.emitError() << "argument " << arg.getArgNumber() << " has "
                                << local[d] << " elements in dimension " << d
                                << ", not divisible by " << n << " ranks";
      local[d] /= n;
    }
    annotate(attrs, global, spec);
    func.setArgAttrs(arg.getArgNumber(), attrs);
    arg.setType(RankedTensorType::get(local, global.getElementType()));
    argTypes.push_back(arg.getType());
  }
  func.setFunctionType(ctx.builder.getFunctionType(
      argTypes, func.getFunctionType().getResults()));
  return success();
}

/// Results keep their per-rank types; token values are split over dp x ep,
/// everything else (losses) is complete on every rank.
LogicalResult FunctionSharder::shardResults() {
  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  SmallVector<Type> resultTypes;
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    auto local = typeOf(v);
    auto global = cast<RankedTensorType>(func.getResultTypes()[i]);
    ShardSpec spec(local.getRank());
    if (ctx.isToken(v))
      spec[0] = {"dp", "ep"};
    DictionaryAttr attrs = func.getResultAttrDict(i);
    annotate(attrs, global, spec);
    func.setResultAttrs(i, attrs);
    resultTypes.push_back(local);
  }
  func.setFunctionType(
      ctx.builder.getFunctionType(func.getArgumentTypes(), resultTypes));
  return success();
}

LogicalResult FunctionSharder::run() {
  if (failed(shardArguments()))
    return failure();
  // The collectives a rule creates come after the op being visited and are
  // already per-rank, so walk a snapshot of the body.
  SmallVector<Operation *> ops;
  for (Operation &op : func.getBody().front())
    ops.push_back(&op);
  for (Operation *op : ops) {
    if (isa<func::ReturnOp>(op))
      continue;
    auto rule = dyn_cast<ShardingRuleOpInterface>(op);
    if (!rule)
      return op->emitOpError("is not supported by moe-shard (it has no "
                             "sharding rule)");
    if (failed(rule.shardToRank(ctx)))
      return failure();
  }
  return shardResults();
}

struct MoEShardPass : moe::impl::MoEShardBase<MoEShardPass> {
  using MoEShardBase::MoEShardBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (!module.getOps<MeshOp>().empty()) {
      module.emitError("moe-shard: the module already has a moe.mesh (it is "
                       "sharded already)");
      return signalPassFailure();
    }
    FailureOr<MeshShape> shape = parseMesh(mesh, module);
    if (failed(shape))
      return signalPassFailure();
    OpBuilder b(module.getBodyRegion());
    b.setInsertionPointToStart(module.getBody());
    MeshOp::create(b, module.getLoc(), "mesh",
                   b.getStrArrayAttr({"dp", "ep", "tp"}),
                   b.getDenseI64ArrayAttr({shape->dp, shape->ep, shape->tp}));
    auto ref = FlatSymbolRefAttr::get(&getContext(), "mesh");
    // The one place the rules' view of the mesh is built.
    ShardingMesh sizes{shape->dp, shape->ep, shape->tp};
    for (auto f : llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (f.isExternal() || !f.isPublic())
        continue;
      ShardingContext ctx(&getContext(), sizes, expertTp, ref);
      if (failed(FunctionSharder(f, ctx).run()))
        return signalPassFailure();
    }
  }
};

} // namespace
