//===- MoEShardingRules.cpp - Per-rank form of every moe op (moe-shard) ---===//
//
// The ShardingRuleOpInterface of each op: how its weights are split over the
// dp x ep x tp mesh and how it becomes its per-rank form. Tokens are split
// over dp x ep and replicated over tp; the rules below say what that means
// for each op. moe-shard (Transforms/Shard.cpp) walks the graph and calls
// them.
//
// The rules live in the dialect library (not beside the pass) because the
// op classes declare them: every binary that registers the dialect links
// them.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Interfaces/FunctionInterfaces.h"

using namespace mlir;
using namespace mlir::moe;

#include "moe/Dialect/MoE/IR/MoEShardingInterface.cpp.inc"

//===----------------------------------------------------------------------===//
// Every op has its rules
//===----------------------------------------------------------------------===//

namespace {

/// Ops that exist only in sharded programs: moe-shard creates them and
/// refuses a module that already has a mesh, so they need no rules.
template <typename OpTy>
constexpr bool onlyInShardedPrograms =
    llvm::is_one_of<OpTy, MeshOp, AllToAllOp, AllToAllStartOp, AllToAllVOp,
                    AllToAllVStartOp, AllGatherOp, AllGatherStartOp,
                    ReduceScatterOp, ReduceScatterStartOp, AllReduceOp,
                    AllReduceStartOp, SliceOp, WaitOp>::value ||
    // moe-overlap runs on per-rank programs.
    llvm::is_one_of<OpTy, ChunkOp, InterleaveOp, ChunkCountsOp, ChunkRowsOp,
                    JoinRowsOp, ExpertFFNPrepareOp>::value ||
    // moe-hierarchical-a2a runs on per-rank programs.
    llvm::is_one_of<OpTy, RegroupOp, CheckRecvBoundOp>::value ||
    // Training: moe-differentiate runs after moe-shard (docs/design.md,
    // "Training"), so the gradient, loss and optimizer ops are written into
    // per-rank programs and never sharded themselves.
    llvm::is_one_of<
        OpTy, RMSNormGradOp, LayerNormGradOp, RouterGradOp, TopKGradOp,
        DispatchGradOp, CombineGradOp, ExpertFFNGradOp, ExpertFFNTrainOp,
        ExpertFFNGradDataOp, ExpertFFNGradWeightOp, MLPGradOp, ExpertLoadGradOp,
        LoadBalanceLossGradOp, ZLossGradOp, MSELossOp, AdamWOp, SGDOp,
        BiasUpdateOp, ReshapeOp, LoadCountsOp, PackOp, UnpackOp>::value;

template <typename... Ops> constexpr bool allHaveShardingRules() {
  return (... && (Ops::template hasTrait<ShardingRuleOpInterface::Trait>() ||
                  onlyInShardedPrograms<Ops>));
}

// An op added to the dialect without DeclareOpInterfaceMethods<
// MoE_ShardingRuleOpInterface> (or a place in onlyInShardedPrograms) stops
// the build here rather than failing in moe-shard at run time.
static_assert(allHaveShardingRules<
#define GET_OP_LIST
#include "moe/Dialect/MoE/IR/MoEOps.cpp.inc"
                  >(),
              "every moe op needs its moe-shard rules "
              "(ShardingRuleOpInterface, MoEShardingRules.cpp)");

RankedTensorType typeOf(Value v) { return cast<RankedTensorType>(v.getType()); }

RankedTensorType withShape(Type t, ArrayRef<int64_t> shape) {
  return RankedTensorType::get(shape,
                               cast<RankedTensorType>(t).getElementType());
}

int64_t rows(Value v) { return typeOf(v).getDimSize(0); }

} // namespace

//===----------------------------------------------------------------------===//
// ShardingContext
//===----------------------------------------------------------------------===//

void ShardingContext::sameAs(Value result, Value operand) {
  result.setType(operand.getType());
  if (isToken(operand))
    markTokens(result);
}

LogicalResult ShardingContext::splitWeight(Operation *user, Value w,
                                           ShardSpec spec) {
  auto [it, inserted] = weights.try_emplace(w, spec);
  if (!inserted && it->second != spec)
    return user->emitOpError() << "splits weight " << weightName(w)
                               << " differently from another op that uses it";
  return success();
}

std::string ShardingContext::weightName(Value w) const {
  auto arg = dyn_cast<BlockArgument>(w);
  if (!arg)
    return "(a computed value)";
  auto func =
      dyn_cast_or_null<FunctionOpInterface>(arg.getOwner()->getParentOp());
  Attribute name =
      func ? func.getArgAttr(arg.getArgNumber(), MoEDialect::kWeightAttrName)
           : Attribute();
  std::string out;
  llvm::raw_string_ostream os(out);
  if (name)
    os << name;
  else
    os << "argument " << arg.getArgNumber();
  return out;
}

Value ShardingContext::allReduceAfter(Value v, ArrayRef<StringRef> axes) {
  builder.setInsertionPointAfterValue(v);
  auto sum = AllReduceOp::create(builder, v.getLoc(), v.getType(), v, meshRef,
                                 axesAttr(axes));
  v.replaceAllUsesExcept(sum.getResult(), sum);
  if (isToken(v))
    markTokens(sum.getResult());
  return sum.getResult();
}

//===----------------------------------------------------------------------===//
// Model graph: per token, so tokens stay where they are
//===----------------------------------------------------------------------===//

LogicalResult RMSNormOp::shardToRank(ShardingContext &ctx) {
  ctx.sameAs(getOutput(), getInput());
  return success();
}

// Weight and bias stay replicated; each rank normalizes its own rows.
LogicalResult LayerNormOp::shardToRank(ShardingContext &ctx) {
  ctx.sameAs(getOutput(), getInput());
  return success();
}

LogicalResult AddOp::shardToRank(ShardingContext &ctx) {
  ctx.sameAs(getOutput(), getLhs());
  return success();
}

LogicalResult LayerOp::shardToRank(ShardingContext &) {
  return emitOpError("must be decomposed before moe-shard (run "
                     "moe-decompose first)");
}

//===----------------------------------------------------------------------===//
// Dense FFN: Megatron tensor parallelism over tp
//===----------------------------------------------------------------------===//

// gate/up are column-parallel (each tp rank holds F/tp of their rows), down
// row-parallel (F/tp of its columns): every tp rank computes a partial sum of
// the output over its F/tp intermediate features, and an all_reduce over tp
// completes it. The activation is per feature, so it is exact on a slice. The
// sigmoid gate (Qwen-MoE's shared expert) stays replicated: it scales each
// output row by a factor that depends on the input alone, which commutes with
// the sum over tp ranks.
LogicalResult MLPOp::shardWeights(ShardingContext &ctx) {
  int64_t tp = ctx.mesh.tp;
  if (tp == 1)
    return success();
  int64_t f = typeOf(getUp()).getDimSize(0);
  if (f % tp != 0)
    return emitOpError() << "intermediate size " << f
                         << " is not divisible by tp = " << tp
                         << " (tensor parallelism gives each tp rank F/tp "
                            "rows of gate and up and F/tp columns of down)";
  for (Value w : {getGate(), getUp(), getDown()}) {
    if (!w)
      continue;
    if (!isa<BlockArgument>(w))
      return emitOpError("moe-shard needs the weights of a tensor-parallel "
                         "moe.mlp to be function arguments so that each rank "
                         "loads only its slice");
    ShardSpec spec(2);
    spec[w == getDown() ? 1 : 0] = {kAxisTP};
    if (failed(ctx.splitWeight(*this, w, spec)))
      return failure();
  }
  return success();
}

LogicalResult MLPOp::shardToRank(ShardingContext &ctx) {
  ctx.sameAs(getOutput(), getInput());
  if (ctx.mesh.tp > 1)
    ctx.allReduceAfter(getOutput(), {kAxisTP});
  return success();
}

//===----------------------------------------------------------------------===//
// Routing: per token
//===----------------------------------------------------------------------===//

LogicalResult RouterOp::shardToRank(ShardingContext &) {
  getLogits().setType(
      withShape(getLogits().getType(),
                {rows(getInput()), typeOf(getLogits()).getDimSize(1)}));
  return success();
}

LogicalResult TopKOp::shardToRank(ShardingContext &) {
  int64_t t = rows(getLogits()), k = int64_t(getK());
  int64_t e = typeOf(getLogits()).getDimSize(1);
  getWeights().setType(withShape(getWeights().getType(), {t, k}));
  getIndices().setType(withShape(getIndices().getType(), {t, k}));
  getScores().setType(withShape(getScores().getType(), {t, e}));
  return success();
}

// The forced indices are token rows: each rank keeps its tokens' choices.
LogicalResult TopKForcedOp::shardToRank(ShardingContext &) {
  int64_t t = rows(getLogits()), k = typeOf(getForced()).getDimSize(1);
  int64_t e = typeOf(getLogits()).getDimSize(1);
  getWeights().setType(withShape(getWeights().getType(), {t, k}));
  getIndices().setType(withShape(getIndices().getType(), {t, k}));
  getScores().setType(withShape(getScores().getType(), {t, e}));
  return success();
}

LogicalResult AssignOp::shardToRank(ShardingContext &ctx) {
  int64_t t = rows(getIndices()), k = typeOf(getIndices()).getDimSize(1);
  int64_t groups = getGroups();
  if (!isDropless()) {
    int64_t shards = ctx.mesh.tokenShards();
    if (groups % shards != 0)
      return emitOpError()
             << "has " << groups
             << " token groups, not divisible by dp x ep = " << shards
             << "; capacity is per token group, so each rank must hold whole "
                "groups (set token_groups to a multiple of dp x ep)";
    groups /= shards;
    setGroups(groups);
  }
  getPositions().setType(withShape(getPositions().getType(), {t, k}));
  getCounts().setType(
      withShape(getCounts().getType(), {groups, int64_t(getNumExperts())}));
  return success();
}

//===----------------------------------------------------------------------===//
// Dispatch, experts, combine
//===----------------------------------------------------------------------===//

LogicalResult DispatchOp::shardToRank(ShardingContext &) {
  auto assign = getPositions().getDefiningOp<AssignOp>();
  auto outTy = typeOf(getOutput());
  int64_t d = outTy.getShape().back();
  if (outTy.getRank() == 3 && assign)
    getOutput().setType(withShape(
        outTy, {outTy.getDimSize(0),
                int64_t(assign.getGroups() * assign.getCapacity()), d}));
  else
    getOutput().setType(withShape(
        outTy,
        {rows(getPositions()) * typeOf(getPositions()).getDimSize(1), d}));
  return success();
}

// Experts are split over ep (dimension 0); with expert-tp each expert's FFN
// is split over tp like moe.mlp (F in dimension 1 of gate/up, 2 of down).
LogicalResult ExpertFFNOp::shardWeights(ShardingContext &ctx) {
  for (Value w : {getGate(), getUp(), getDown()}) {
    if (!w)
      continue;
    if (!isa<BlockArgument>(w))
      return emitOpError("moe-shard needs expert weights to be function "
                         "arguments so that each rank loads only its experts");
    ShardSpec spec{{kAxisEP}, {}, {}};
    auto shape = typeOf(w).getShape();
    if (shape[0] % ctx.mesh.ep != 0)
      return emitOpError() << "expert weight " << ctx.weightName(w) << " has "
                           << shape[0]
                           << " experts in dimension 0, not divisible by ep = "
                           << ctx.mesh.ep;
    if (ctx.expertTp) {
      int64_t dim = w == getDown() ? 2 : 1;
      if (shape[dim] % ctx.mesh.tp != 0)
        return emitOpError() << "expert weight " << ctx.weightName(w) << " has "
                             << shape[dim] << " rows in dimension " << dim
                             << ", not divisible by tp = " << ctx.mesh.tp;
      spec[dim] = {kAxisTP};
    }
    if (failed(ctx.splitWeight(*this, w, spec)))
      return failure();
  }
  return success();
}

// The expert-parallel exchange around the grouped FFN:
// - capacity [E, R, D]: all_to_all over ep before (split experts, concatenate
//   slots) and its inverse after; padding slots are zero rows, whose FFN
//   output is zero, so the counts need not travel;
// - dropless [rows, D]: all_to_all of the counts [1, E] -> [ep, E/ep], then
//   all_to_all_v of the rows, and its inverse after.
// With expert-tp the partial outputs are summed over tp before going back.
LogicalResult ExpertFFNOp::shardToRank(ShardingContext &ctx) {
  OpBuilder &b = ctx.builder;
  const ShardingMesh &mesh = ctx.mesh;
  FlatSymbolRefAttr meshRef = ctx.meshRef;
  Value buf = getInput(), counts = getCounts();
  auto bufTy = typeOf(buf);
  Location loc = getLoc();
  int64_t el = typeOf(getUp()).getDimSize(0), d = bufTy.getShape().back();
  ArrayAttr ep = ctx.axesAttr({kAxisEP});
  b.setInsertionPoint(*this);

  Value in = buf, inCounts = counts;
  bool capacity = bufTy.getRank() == 3;
  if (mesh.ep > 1 && capacity) {
    auto ty = withShape(bufTy, {el, mesh.ep * bufTy.getDimSize(1), d});
    in = AllToAllOp::create(b, loc, ty, buf, meshRef, ep,
                            b.getI64IntegerAttr(0), b.getI64IntegerAttr(1));
    inCounts = Value();
  } else if (mesh.ep > 1) {
    auto cTy = typeOf(counts);
    auto rcTy = withShape(
        cTy, {mesh.ep * cTy.getDimSize(0), cTy.getDimSize(1) / mesh.ep});
    inCounts =
        AllToAllOp::create(b, loc, rcTy, counts, meshRef, ep,
                           b.getI64IntegerAttr(1), b.getI64IntegerAttr(0));
    // The receive buffer: every source's rows could come here, but a token
    // sends a rank at most min(k, local experts) rows (its k choices are
    // distinct experts), so ep x T x min(k, E/ep) rows when the buffer is a
    // dispatch of [T, k] positions; else ep x the send buffer's rows.
    int64_t recvRows = mesh.ep * bufTy.getDimSize(0);
    if (auto dispatch = buf.getDefiningOp<DispatchOp>()) {
      auto pos = typeOf(dispatch.getPositions());
      recvRows = mesh.ep * pos.getDimSize(0) *
                 std::min<int64_t>(pos.getDimSize(1), el);
    }
    if (ctx.maxRecvRows > 0 && ctx.maxRecvRows < recvRows) {
      // An explicit bound: checked on every rank before any row moves.
      recvRows = ctx.maxRecvRows;
      auto allTy =
          withShape(rcTy, {mesh.ep * rcTy.getDimSize(0), rcTy.getDimSize(1)});
      Value all = AllGatherOp::create(b, loc, allTy, inCounts, meshRef, ep,
                                      b.getI64IntegerAttr(0));
      CheckRecvBoundOp::create(b, loc, all, ctx.maxRecvRows);
    }
    auto rowsTy = withShape(bufTy, {recvRows, d});
    in =
        AllToAllVOp::create(b, loc, rowsTy, buf, counts, inCounts, meshRef, ep);
  }
  getInputMutable().assign(in);
  if (inCounts)
    getCountsMutable().assign(inCounts);
  else
    getCountsMutable().clear();
  getOutput().setType(in.getType());

  b.setInsertionPointAfter(*this);
  Value out = getOutput();
  SmallVector<Operation *> created;
  if (ctx.expertTp) {
    auto sum = AllReduceOp::create(b, loc, out.getType(), out, meshRef,
                                   ctx.axesAttr({kAxisTP}));
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
  getOutput().replaceAllUsesExcept(out, except);
  return success();
}

LogicalResult CombineOp::shardToRank(ShardingContext &ctx) {
  getOutput().setType(
      withShape(getOutput().getType(),
                {rows(getPositions()), typeOf(getOutput()).getDimSize(1)}));
  ctx.markTokens(getOutput());
  return success();
}

//===----------------------------------------------------------------------===//
// Losses: statistics summed over the token axes
//===----------------------------------------------------------------------===//

namespace {
void sumOverTokenAxes(ShardingContext &ctx, Value partial) {
  if (ctx.mesh.tokenShards() > 1)
    ctx.allReduceAfter(partial, {kAxisDP, kAxisEP});
}
} // namespace

LogicalResult ExpertLoadOp::shardToRank(ShardingContext &ctx) {
  sumOverTokenAxes(ctx, getStats());
  return success();
}

LogicalResult ZLossOp::shardToRank(ShardingContext &ctx) {
  sumOverTokenAxes(ctx, getLoss());
  return success();
}

// Its statistics are already global (summed after moe.expert_load), and so
// is the real-token count of a masked batch (summed after moe.token_count).
LogicalResult LoadBalanceLossOp::shardToRank(ShardingContext &) {
  return success();
}

//===----------------------------------------------------------------------===//
// Token mask: split over the token axes like the tokens it masks
//===----------------------------------------------------------------------===//

LogicalResult MaskRowsOp::shardToRank(ShardingContext &ctx) {
  ctx.sameAs(getOutput(), getInput());
  return success();
}

// Each rank counts its own tokens; the batch's count is their sum.
LogicalResult TokenCountOp::shardToRank(ShardingContext &ctx) {
  sumOverTokenAxes(ctx, getCount());
  return success();
}
