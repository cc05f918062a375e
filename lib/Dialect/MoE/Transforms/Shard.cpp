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

#include <optional>

namespace mlir::moe {
#define GEN_PASS_DEF_MOESHARD
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The mesh to shard over: the module's moe.mesh (the IR is the source),
/// else one built from the `mesh` option; both given must agree.
FailureOr<MeshOp> resolveMesh(ModuleOp module, StringRef option) {
  for (auto f : module.getOps<func::FuncOp>())
    for (unsigned i = 0; i < f.getNumArguments(); ++i)
      if (f.getArgAttr(i, MoEDialect::kShardAttrName))
        return f.emitError() << "moe-shard: @" << f.getSymName()
                             << " is sharded already (its arguments carry "
                             << MoEDialect::kShardAttrName << ")";
  std::optional<MeshSpec> given;
  if (!option.empty()) {
    llvm::Expected<MeshSpec> spec = parseMeshSpec(option);
    if (!spec)
      return module.emitError() << "moe-shard: mesh option '" << option
                                << "': " << llvm::toString(spec.takeError());
    given = std::move(*spec);
  }
  return getOrCreateModuleMesh(module, given, "moe-shard");
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
  list.set(MoEDialect::kShardAttrName, ctx.builder.getArrayAttr(dims));
  list.set(MoEDialect::kGlobalShapeAttrName,
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
    if (!attrs || !attrs.get(MoEDialect::kInputAttrName))
      continue;
    auto global = typeOf(arg);
    if (global.getRank() < 1)
      return func.emitError()
             << "input " << attrs.get(MoEDialect::kInputAttrName)
             << " has no token dimension (it is a scalar)";
    if (global.getDimSize(0) % shards)
      return func.emitError()
             << "input " << attrs.get(MoEDialect::kInputAttrName) << " has "
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
      spec[0] = {kAxisDP, kAxisEP};
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
      spec[0] = {kAxisDP, kAxisEP};
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
    FailureOr<MeshOp> meshOp = resolveMesh(module, mesh);
    if (failed(meshOp))
      return signalPassFailure();
    auto ref = FlatSymbolRefAttr::get(meshOp->getSymNameAttr());
    // The one place the rules' view of the mesh is built.
    ShardingMesh sizes{meshOp->getAxisSize(kAxisDP),
                       meshOp->getAxisSize(kAxisEP),
                       meshOp->getAxisSize(kAxisTP)};
    for (auto f : llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (f.isExternal() || !f.isPublic())
        continue;
      ShardingContext ctx(&getContext(), sizes, expertTp, ref, maxRecvTokens);
      if (failed(FunctionSharder(f, ctx).run()))
        return signalPassFailure();
    }
  }
};

} // namespace
