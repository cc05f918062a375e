//===- Shard.cpp - Per-rank program of a dp x ep x tp mesh (moe-shard) ----===//
//
// One walk over each decomposed function, in program order. Every value gets
// its per-rank type from its operands' per-rank types; the grouped expert
// FFN gets the expert-parallel exchange around it; losses are summed over
// the token-parallel axes. Arguments and results record their global shapes
// and shard specs for the manifest.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/TypeSwitch.h"

#include <optional>

namespace mlir::moe {
#define GEN_PASS_DEF_MOESHARD
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// The mesh degrees the rewrite needs, read from the moe.mesh op by axis name.
struct MeshShape {
  int64_t dp = 1, ep = 1, tp = 1;
  int64_t tokenShards() const { return dp * ep; }

  static MeshShape read(MeshOp mesh) {
    return {mesh.getAxisSize(kAxisDP), mesh.getAxisSize(kAxisEP),
            mesh.getAxisSize(kAxisTP)};
  }
};

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

RankedTensorType withShape(Type t, ArrayRef<int64_t> shape) {
  return RankedTensorType::get(shape,
                               cast<RankedTensorType>(t).getElementType());
}

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

/// Rewrites one function into its per-rank form.
class FunctionSharder {
public:
  FunctionSharder(func::FuncOp func, const MeshShape &mesh, bool expertTp,
                  FlatSymbolRefAttr meshRef)
      : func(func), mesh(mesh), expertTp(expertTp && mesh.tp > 1),
        meshRef(meshRef), b(func.getContext()) {}

  LogicalResult run();

private:
  LogicalResult shardArguments();
  LogicalResult shardOp(Operation &op);
  LogicalResult shardExpertFFN(ExpertFFNOp op);
  void sumOverTokenAxes(Value loss);
  void annotate(DictionaryAttr &attrs, RankedTensorType global,
                ArrayRef<SmallVector<StringRef>> spec);
  ArrayAttr axesAttr(ArrayRef<StringRef> axes) {
    return b.getStrArrayAttr(axes);
  }
  bool isToken(Value v) { return tokenValues.contains(v); }

  func::FuncOp func;
  MeshShape mesh;
  bool expertTp;
  FlatSymbolRefAttr meshRef;
  OpBuilder b;
  int64_t globalTokens = -1;
  /// Values whose dimension 0 runs over this rank's tokens.
  llvm::DenseSet<Value> tokenValues;
  /// Expert weights (arguments) and how they are split.
  llvm::DenseMap<Value, SmallVector<SmallVector<StringRef>>> expertWeights;
};

void FunctionSharder::annotate(DictionaryAttr &attrs, RankedTensorType global,
                               ArrayRef<SmallVector<StringRef>> spec) {
  NamedAttrList list(attrs);
  SmallVector<Attribute> dims;
  for (const auto &axes : spec)
    dims.push_back(axesAttr(axes));
  list.set("moe.shard", b.getArrayAttr(dims));
  list.set("moe.global_shape", b.getDenseI64ArrayAttr(global.getShape()));
  attrs = list.getDictionary(func.getContext());
}

LogicalResult FunctionSharder::shardArguments() {
  // Expert weights are the gate/up/down operands of the grouped FFNs.
  WalkResult r = func.walk([&](ExpertFFNOp op) {
    for (Value w : {op.getGate(), op.getUp(), op.getDown()}) {
      if (!w)
        continue;
      if (!isa<BlockArgument>(w)) {
        op.emitOpError("moe-shard needs expert weights to be function "
                       "arguments so that each rank loads only its experts");
        return WalkResult::interrupt();
      }
      SmallVector<SmallVector<StringRef>> spec{{"ep"}, {}, {}};
      if (expertTp)
        spec[w == op.getDown() ? 2 : 1] = {"tp"};
      expertWeights[w] = spec;
    }
    return WalkResult::advance();
  });
  if (r.wasInterrupted())
    return failure();

  bool hasTokens = llvm::any_of(func.getArguments(), [&](BlockArgument a) {
    DictionaryAttr attrs = func.getArgAttrDict(a.getArgNumber());
    return attrs && attrs.get("moe.input");
  });
  if (!hasTokens)
    return func.emitError("moe-shard needs an argument with moe.input (the "
                          "tokens) to know what to split over dp x ep");

  SmallVector<Type> argTypes;
  for (BlockArgument arg : func.getArguments()) {
    auto global = typeOf(arg);
    DictionaryAttr attrs = func.getArgAttrDict(arg.getArgNumber());
    SmallVector<int64_t> local(global.getShape());
    SmallVector<SmallVector<StringRef>> spec(global.getRank());
    if (attrs && attrs.get("moe.input")) {
      if (global.getRank() < 1 || global.getDimSize(0) % mesh.tokenShards())
        return func.emitError()
               << "input " << attrs.get("moe.input") << " has "
               << global.getDimSize(0)
               << " tokens, not divisible by dp x ep = " << mesh.tokenShards();
      if (globalTokens >= 0 && globalTokens != global.getDimSize(0))
        return func.emitError("inputs disagree on the number of tokens");
      globalTokens = global.getDimSize(0);
      local[0] /= mesh.tokenShards();
      spec[0] = {"dp", "ep"};
      tokenValues.insert(arg);
    } else if (auto it = expertWeights.find(arg); it != expertWeights.end()) {
      spec = it->second;
      for (auto [d, axes] : llvm::enumerate(spec)) {
        int64_t n = axes.empty() ? 1 : (axes[0] == "ep" ? mesh.ep : mesh.tp);
        if (local[d] % n != 0)
          return func.emitError()
                 << "expert weight "
                 << (attrs ? attrs.get("moe.weight") : Attribute()) << " has "
                 << local[d] << (d == 0 ? " experts" : " rows")
                 << " in dimension " << d << ", not divisible by " << axes[0]
                 << " = " << n;
        local[d] /= n;
      }
    }
    annotate(attrs, global, spec);
    func.setArgAttrs(arg.getArgNumber(), attrs);
    arg.setType(withShape(global, local));
    argTypes.push_back(arg.getType());
  }
  func.setFunctionType(
      b.getFunctionType(argTypes, func.getFunctionType().getResults()));
  return success();
}

void FunctionSharder::sumOverTokenAxes(Value loss) {
  if (mesh.tokenShards() == 1)
    return;
  b.setInsertionPointAfterValue(loss);
  auto sum = AllReduceOp::create(b, loss.getLoc(), loss.getType(), loss,
                                 meshRef, axesAttr({"dp", "ep"}));
  loss.replaceAllUsesExcept(sum.getResult(), sum);
}

LogicalResult FunctionSharder::shardExpertFFN(ExpertFFNOp op) {
  Value buf = op.getInput(), counts = op.getCounts();
  auto bufTy = typeOf(buf);
  auto upTy = typeOf(op.getUp());
  Location loc = op.getLoc();
  int64_t el = upTy.getDimSize(0), d = bufTy.getShape().back();
  ArrayAttr ep = axesAttr({"ep"});
  b.setInsertionPoint(op);

  Value in = buf, inCounts = counts;
  bool capacity = bufTy.getRank() == 3;
  if (mesh.ep > 1 && capacity) {
    // [E, R, D] -> [E/ep, ep*R, D]: each local expert's slots from every
    // source rank. Padding slots are zero rows, whose FFN output is zero, so
    // the counts need not travel.
    auto ty = withShape(bufTy, {el, mesh.ep * bufTy.getDimSize(1), d});
    in = AllToAllOp::create(b, loc, ty, buf, meshRef, ep,
                            b.getI64IntegerAttr(0), b.getI64IntegerAttr(1));
    inCounts = Value();
  } else if (mesh.ep > 1) {
    // Dropless: counts [1, E] -> [ep, E/ep], then the rows themselves.
    auto cTy = typeOf(counts);
    auto rcTy = withShape(
        cTy, {mesh.ep * cTy.getDimSize(0), cTy.getDimSize(1) / mesh.ep});
    inCounts =
        AllToAllOp::create(b, loc, rcTy, counts, meshRef, ep,
                           b.getI64IntegerAttr(1), b.getI64IntegerAttr(0));
    auto rowsTy = withShape(bufTy, {mesh.ep * bufTy.getDimSize(0), d});
    in =
        AllToAllVOp::create(b, loc, rowsTy, buf, counts, inCounts, meshRef, ep);
  }
  op.getInputMutable().assign(in);
  if (inCounts)
    op.getCountsMutable().assign(inCounts);
  else
    op.getCountsMutable().clear();
  op.getOutput().setType(in.getType());

  b.setInsertionPointAfter(op);
  Value out = op.getOutput();
  SmallVector<Operation *> created;
  if (expertTp) {
    auto sum = AllReduceOp::create(b, loc, out.getType(), out, meshRef,
                                   axesAttr({"tp"}));
    created.push_back(sum);
    out = sum;
  }
  if (mesh.ep > 1 && capacity) {
    auto back =
        AllToAllOp::create(b, loc, bufTy, out, meshRef, ep,
                           b.getI64IntegerAttr(1), b.getI64IntegerAttr(0));
    created.push_back(back);
    out = back;
  } else if (mesh.ep > 1) {
    auto back =
        AllToAllVOp::create(b, loc, bufTy, out, inCounts, counts, meshRef, ep);
    created.push_back(back);
    out = back;
  }
  SmallPtrSet<Operation *, 4> except(created.begin(), created.end());
  op.getOutput().replaceAllUsesExcept(out, except);
  return success();
}

LogicalResult FunctionSharder::shardOp(Operation &op) {
  auto sameAs = [&](Value result, Value operand) {
    result.setType(operand.getType());
    if (isToken(operand))
      tokenValues.insert(result);
  };
  auto rows = [&](Value v) { return typeOf(v).getDimSize(0); };
  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](RMSNormOp o) {
        sameAs(o.getOutput(), o.getInput());
        return success();
      })
      .Case([&](AddOp o) {
        sameAs(o.getOutput(), o.getLhs());
        return success();
      })
      .Case([&](MLPOp o) {
        sameAs(o.getOutput(), o.getInput());
        return success();
      })
      .Case([&](RouterOp o) {
        o.getLogits().setType(withShape(
            o.getLogits().getType(),
            {rows(o.getInput()), typeOf(o.getLogits()).getDimSize(1)}));
        return success();
      })
      .Case([&](TopKOp o) {
        int64_t t = rows(o.getLogits()), k = int64_t(o.getK());
        int64_t e = typeOf(o.getLogits()).getDimSize(1);
        o.getWeights().setType(withShape(o.getWeights().getType(), {t, k}));
        o.getIndices().setType(withShape(o.getIndices().getType(), {t, k}));
        o.getScores().setType(withShape(o.getScores().getType(), {t, e}));
        return success();
      })
      .Case([&](AssignOp o) -> LogicalResult {
        int64_t t = rows(o.getIndices()),
                k = typeOf(o.getIndices()).getDimSize(1);
        int64_t groups = o.getGroups();
        if (!o.isDropless()) {
          if (groups % mesh.tokenShards() != 0)
            return o.emitOpError()
                   << "has " << groups
                   << " token groups, not divisible by dp x ep = "
                   << mesh.tokenShards()
                   << "; capacity is per token group, so each rank must "
                      "hold whole groups (set token_groups to a multiple "
                      "of dp x ep)";
          groups /= mesh.tokenShards();
          o.setGroups(groups);
        }
        o.getPositions().setType(withShape(o.getPositions().getType(), {t, k}));
        o.getCounts().setType(withShape(o.getCounts().getType(),
                                        {groups, int64_t(o.getNumExperts())}));
        return success();
      })
      .Case([&](DispatchOp o) {
        auto assign = o.getPositions().getDefiningOp<AssignOp>();
        auto outTy = typeOf(o.getOutput());
        int64_t d = outTy.getShape().back();
        if (outTy.getRank() == 3 && assign)
          o.getOutput().setType(withShape(
              outTy, {outTy.getDimSize(0),
                      int64_t(assign.getGroups() * assign.getCapacity()), d}));
        else
          o.getOutput().setType(withShape(
              outTy,
              {rows(o.getPositions()) * typeOf(o.getPositions()).getDimSize(1),
               d}));
        return success();
      })
      .Case([&](ExpertFFNOp o) { return shardExpertFFN(o); })
      .Case([&](CombineOp o) {
        o.getOutput().setType(withShape(
            o.getOutput().getType(),
            {rows(o.getPositions()), typeOf(o.getOutput()).getDimSize(1)}));
        tokenValues.insert(o.getOutput());
        return success();
      })
      .Case([&](ExpertLoadOp o) {
        sumOverTokenAxes(o.getStats());
        return success();
      })
      .Case([&](ZLossOp o) {
        sumOverTokenAxes(o.getLoss());
        return success();
      })
      .Case<LoadBalanceLossOp, AllReduceOp, AllToAllOp, AllToAllVOp>(
          [](Operation *) { return success(); })
      .Case([&](func::ReturnOp) { return success(); })
      .Case([&](LayerOp o) {
        return o.emitOpError("must be decomposed before moe-shard (run "
                             "moe-decompose first)");
      })
      .Default([](Operation *o) {
        return o->emitOpError("is not supported by moe-shard");
      });
}

LogicalResult FunctionSharder::run() {
  if (failed(shardArguments()))
    return failure();
  // Ops created while sharding (the exchanges) come after the op being
  // visited and are already per-rank, so walk a snapshot of the body.
  SmallVector<Operation *> ops;
  for (Operation &op : func.getBody().front())
    ops.push_back(&op);
  for (Operation *op : ops)
    if (failed(shardOp(*op)))
      return failure();

  auto ret = cast<func::ReturnOp>(func.getBody().front().getTerminator());
  SmallVector<Type> resultTypes;
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    auto local = typeOf(v);
    auto global = cast<RankedTensorType>(func.getResultTypes()[i]);
    SmallVector<SmallVector<StringRef>> spec(local.getRank());
    if (isToken(v))
      spec[0] = {"dp", "ep"};
    DictionaryAttr attrs = func.getResultAttrDict(i);
    annotate(attrs, global, spec);
    func.setResultAttrs(i, attrs);
    resultTypes.push_back(local);
  }
  func.setFunctionType(b.getFunctionType(func.getArgumentTypes(), resultTypes));
  return success();
}

struct MoEShardPass : moe::impl::MoEShardBase<MoEShardPass> {
  using MoEShardBase::MoEShardBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    FailureOr<MeshOp> meshOp = resolveMesh(module, mesh);
    if (failed(meshOp))
      return signalPassFailure();
    MeshShape shape = MeshShape::read(*meshOp);
    auto ref = FlatSymbolRefAttr::get(meshOp->getSymNameAttr());
    for (auto f : llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (f.isExternal() || !f.isPublic())
        continue;
      if (failed(FunctionSharder(f, shape, expertTp, ref).run()))
        return signalPassFailure();
    }
  }
};

} // namespace
