//===- Hierarchical.cpp - 2D hierarchical all-to-all (moe-hierarchical-a2a) ==//
//
// Tutel's 2D hierarchical all-to-all as a rewrite of the per-rank program.
// With R ranks per node and tp ranks per tp group, a node holds L = R / tp
// consecutive expert-parallel ranks, and ep = N x L. The pass
//
//  1. splits the mesh axis `ep` into `ep_node` (N) and `ep_local` (L), in
//     that order, so that ep = node * L + local: rank order, every group and
//     every shard are unchanged; every collective's axes and every
//     `moe.shard` annotation name the two axes where they named `ep`;
//  2. rewrites each all-to-all over the whole of ep into a phase over
//     `ep_local` (inside a node) and one over `ep_node` (between the ranks
//     of the same local index on each node): each rank sends N - 1 messages
//     between nodes instead of ep - L, with the same bytes between nodes.
//
// Even exchange (split s, concat c): dimension s, cut into n = N L chunks
// by destination q = m L + l, is viewed as [N, L S/n] (moe.reshape). The
// local phase splits the second dimension (L chunks: destination l for
// every node) and the node phase the first, and both concatenate along c,
// so that the result holds the sources in the order (node, local) = the
// source rank: the flat result, bit for bit. Tutel's stride copies are
// the packing and unpacking that the runtime's all-to-all does for a split
// or concat dimension that is not the outermost.
//
// Uneven exchange (rows packed by destination, counts cut into n chunks of
// K): `moe.regroup` reorders the row blocks from (node, local, k) to
// (local, node, k); an even all-to-all of the counts over ep_local tells
// every rank what each local peer sends it; the rows go over ep_local; a
// second regroup orders them by (destination node, local source, k); the
// node phase sends them with the flat exchange's receive counts, which are
// (source node, source local, k), the flat result's order again.
//
// The pass runs after moe-differentiate and moe-overlap: the backward's
// exchanges are rewritten like the forward's, and a started all-to-all
// (moe-overlap's chunks) runs its local phase at the start and leaves its
// node phase in flight until the wait.
//
//===----------------------------------------------------------------------===//
#include "moe/Analysis/CostModel.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

#include <algorithm>

namespace mlir::moe {
#define GEN_PASS_DEF_MOEHIERARCHICALA2A
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

constexpr StringLiteral kAxisNode = "ep_node";
constexpr StringLiteral kAxisLocal = "ep_local";

/// `axes` with "ep" replaced by ep_node, ep_local (null if no "ep").
ArrayAttr splitAxes(ArrayAttr axes, Builder &b) {
  if (!axes)
    return nullptr;
  SmallVector<Attribute> out;
  bool found = false;
  for (Attribute a : axes) {
    auto s = dyn_cast<StringAttr>(a);
    if (s && s.getValue() == kAxisEP) {
      out.push_back(b.getStringAttr(kAxisNode));
      out.push_back(b.getStringAttr(kAxisLocal));
      found = true;
    } else {
      out.push_back(a);
    }
  }
  return found ? b.getArrayAttr(out) : nullptr;
}

/// A `moe.shard` annotation ([[axes of dim 0], [axes of dim 1], ...]) with
/// ep split, or null when it has no "ep".
ArrayAttr splitShard(Attribute shard, Builder &b) {
  auto dims = dyn_cast_or_null<ArrayAttr>(shard);
  if (!dims)
    return nullptr;
  SmallVector<Attribute> out;
  bool changed = false;
  for (Attribute d : dims) {
    if (ArrayAttr s = splitAxes(dyn_cast<ArrayAttr>(d), b)) {
      out.push_back(s);
      changed = true;
    } else {
      out.push_back(d);
    }
  }
  return changed ? b.getArrayAttr(out) : nullptr;
}

bool isWholeEP(CollectiveOpInterface op) {
  ArrayAttr axes = op.getAxes();
  return axes.size() == 2 &&
         cast<StringAttr>(axes[0]).getValue() == kAxisNode &&
         cast<StringAttr>(axes[1]).getValue() == kAxisLocal;
}

RankedTensorType withShape(RankedTensorType t, ArrayRef<int64_t> shape) {
  return RankedTensorType::get(shape, t.getElementType());
}

class HierarchicalA2A
    : public moe::impl::MoEHierarchicalA2ABase<HierarchicalA2A> {
public:
  using MoEHierarchicalA2ABase::MoEHierarchicalA2ABase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    StringRef m = StringRef(mode).trim();
    bool isAuto = m == "auto";
    splitOnly = m == "mesh";
    if (!isAuto && !splitOnly && m != "on") {
      module.emitError() << "moe-hierarchical-a2a: mode '" << mode
                         << "' is not 'on', 'auto' or 'mesh'";
      return signalPassFailure();
    }
    std::optional<cost::CostModel> model;
    int64_t r = ranksPerNode;
    if (isAuto) {
      llvm::Expected<cost::ClusterSpec> spec = cost::loadClusterFile(cluster);
      if (!spec) {
        module.emitError() << "moe-hierarchical-a2a: "
                           << llvm::toString(spec.takeError());
        return signalPassFailure();
      }
      if (r == 0)
        r = spec->devicesPerNode;
      model.emplace(std::move(*spec));
    }
    SmallVector<MeshOp> meshes;
    module.walk([&](MeshOp m) { meshes.push_back(m); });
    if (meshes.empty()) {
      module.emitError("moe-hierarchical-a2a: the module has no moe.mesh (it "
                       "splits the ep axis of a sharded program: run "
                       "moe-shard first)");
      return signalPassFailure();
    }
    if (r < 1) {
      module.emitError() << "moe-hierarchical-a2a: ranks-per-node must be a "
                            "positive number (got "
                         << r << ")";
      return signalPassFailure();
    }
    for (MeshOp mesh : meshes)
      if (failed(runOnMesh(module, mesh, r, model ? &*model : nullptr)))
        return signalPassFailure();
  }

private:
  int64_t nodes = 1, local = 1;
  /// mode=mesh: split the axis, leave the exchanges flat.
  bool splitOnly = false;
  int64_t rewritten = 0, kept = 0;

  LogicalResult runOnMesh(ModuleOp module, MeshOp mesh, int64_t r,
                          const cost::CostModel *model) {
    if (mesh.getAxisIndex(kAxisNode) >= 0)
      return mesh.emitOpError("moe-hierarchical-a2a: the mesh is already "
                              "split (it has an ep_node axis)");
    int64_t ranks = mesh.getNumRanks();
    int64_t tp = mesh.getAxisSize(kAxisTP), ep = mesh.getAxisSize(kAxisEP);
    std::string spec = mesh.getSpec().str();
    if (ranks % r != 0)
      return mesh.emitOpError() << "moe-hierarchical-a2a: ranks-per-node " << r
                                << " does not divide the " << ranks
                                << " ranks of the mesh " << spec;
    if (r % tp != 0)
      return mesh.emitOpError()
             << "moe-hierarchical-a2a: ranks-per-node " << r
             << " is not a multiple of tp = " << tp
             << " (a tensor-parallel group must share a node)";
    local = r / tp;
    if (ep % local != 0)
      return mesh.emitOpError()
             << "moe-hierarchical-a2a: ranks-per-node " << r << " holds "
             << local << " expert-parallel ranks (ranks-per-node / tp), "
             << "which does not divide ep = " << ep << " of the mesh " << spec;
    nodes = ep / local;
    // One node, or one expert-parallel rank per node: the flat exchange is
    // already what the hierarchical one would be.
    if (nodes == 1 || local == 1)
      return success();

    splitMesh(module, mesh);
    if (splitOnly)
      return success();
    SmallVector<Operation *> exchanges;
    module.walk([&](CollectiveOpInterface op) {
      if (op.getMeshOp() == mesh && isWholeEP(op) &&
          isa<AllToAllOp, AllToAllStartOp, AllToAllVOp, AllToAllVStartOp>(
              op.getOperation()))
        exchanges.push_back(op);
    });
    for (Operation *op : exchanges) {
      if (model) {
        FailureOr<bool> pays = paysOff(cast<CollectiveOpInterface>(op), *model);
        if (failed(pays))
          return failure();
        if (!*pays) {
          ++kept;
          continue;
        }
      }
      if (failed(rewrite(op)))
        return failure();
      ++rewritten;
    }
    return success();
  }

  /// Step 1: ep -> ep_node, ep_local in the mesh, the collectives and the
  /// shard annotations of the functions.
  void splitMesh(ModuleOp module, MeshOp mesh) {
    Builder b(module.getContext());
    SmallVector<Attribute> axes;
    SmallVector<int64_t> shape;
    for (auto [a, s] : llvm::zip(mesh.getAxes(), mesh.getShape())) {
      if (cast<StringAttr>(a).getValue() == kAxisEP) {
        axes.push_back(b.getStringAttr(kAxisNode));
        axes.push_back(b.getStringAttr(kAxisLocal));
        shape.push_back(nodes);
        shape.push_back(local);
      } else {
        axes.push_back(a);
        shape.push_back(s);
      }
    }
    mesh.setAxesAttr(b.getArrayAttr(axes));
    mesh.setShape(shape);
    module.walk([&](CollectiveOpInterface op) {
      if (op.getMeshAttr().getValue() != mesh.getSymName())
        return;
      if (ArrayAttr a = splitAxes(op.getAxes(), b))
        op->setAttr("axes", a);
    });
    StringAttr shardName = b.getStringAttr(MoEDialect::kShardAttrName);
    module.walk([&](func::FuncOp f) {
      for (unsigned i = 0, e = f.getNumArguments(); i < e; ++i)
        if (ArrayAttr s = splitShard(f.getArgAttr(i, shardName), b))
          f.setArgAttr(i, shardName, s);
      for (unsigned i = 0, e = f.getNumResults(); i < e; ++i)
        if (ArrayAttr s = splitShard(f.getResultAttr(i, shardName), b))
          f.setResultAttr(i, shardName, s);
    });
  }

  /// The cost model's verdict: the two phases (and their re-layouts, as
  /// copies) against the flat exchange, for the same bytes. The rows of an
  /// uneven exchange are priced at their upper bound (all rows leave), the
  /// bound the flat exchange is priced at, spread evenly over the peers.
  FailureOr<bool> paysOff(CollectiveOpInterface op,
                          const cost::CostModel &model) {
    MeshSpec spec = op.getMeshOp().getSpec();
    FailureOr<cost::Cost> flat = model.collective(op);
    if (failed(flat))
      return op->emitOpError("moe-hierarchical-a2a: the cost model cannot "
                             "price this exchange");
    RankedTensorType in = cast<RankedTensorType>(op.getInput().getType());
    double total = double(in.getNumElements()) *
                   double((in.getElementTypeBitWidth() + 7) / 8);
    bool uneven = isa<AllToAllVOp, AllToAllVStartOp>(op.getOperation());
    // Bytes a rank holds for others before each phase (even: its input;
    // uneven: every row, the upper bound).
    cost::Cost hier =
        model.collective(cost::CollectiveKind::AllToAll, spec,
                         {std::string(kAxisLocal)},
                         total * double(local - 1) / double(local)) +
        model.collective(cost::CollectiveKind::AllToAll, spec,
                         {std::string(kAxisNode)},
                         total * double(nodes - 1) / double(nodes));
    // Re-layouts: two regroups of the rows (uneven), or the two reshapes
    // (even); the runtime's own packing is in the flat exchange too.
    hier += model.copy(2 * total);
    if (uneven)
      hier += model.collective(cost::CollectiveKind::AllToAll, spec,
                               {std::string(kAxisLocal)}, 64);
    return hier.seconds() < flat->seconds();
  }

  LogicalResult rewrite(Operation *op) {
    OpBuilder b(op);
    Location loc = op->getLoc();
    auto coll = cast<CollectiveOpInterface>(op);
    FlatSymbolRefAttr meshRef = coll.getMeshAttr();
    ArrayAttr localAxes = b.getStrArrayAttr({kAxisLocal});
    ArrayAttr nodeAxes = b.getStrArrayAttr({kAxisNode});

    if (auto v = dyn_cast<AllToAllVOp>(op)) {
      Value y = buildUneven(b, loc, meshRef, localAxes, nodeAxes, v.getInput(),
                            v.getSendCounts(), v.getRecvCounts(),
                            cast<RankedTensorType>(v.getType()),
                            /*start=*/false);
      if (!y)
        return failure();
      v.replaceAllUsesWith(y);
      v.erase();
      return success();
    }
    if (auto v = dyn_cast<AllToAllVStartOp>(op)) {
      Value f = buildUneven(b, loc, meshRef, localAxes, nodeAxes, v.getInput(),
                            v.getSendCounts(), v.getRecvCounts(),
                            cast<FutureType>(v.getType()).getValueType(),
                            /*start=*/true);
      if (!f)
        return failure();
      // Same result type: the waits stay as they are.
      v.replaceAllUsesWith(f);
      v.erase();
      return success();
    }
    bool start = isa<AllToAllStartOp>(op);
    Value input = op->getOperand(0);
    int64_t s = op->getAttrOfType<IntegerAttr>("split_dim").getInt();
    int64_t c = op->getAttrOfType<IntegerAttr>("concat_dim").getInt();
    auto inTy = cast<RankedTensorType>(input.getType());
    RankedTensorType outTy =
        start ? cast<FutureType>(op->getResult(0).getType()).getValueType()
              : cast<RankedTensorType>(op->getResult(0).getType());
    if (inTy.getRank() > 3 || !inTy.hasStaticShape())
      return op->emitOpError()
             << "moe-hierarchical-a2a: an even exchange of rank "
             << inTy.getRank()
             << " (the runtime's all-to-all has 4 dimensions, and the "
                "hierarchical form needs one more)";
    // [.., S, ..] -> [.., N, S / N, ..]
    SmallVector<int64_t> shape(inTy.getShape());
    shape[s] /= nodes;
    shape.insert(shape.begin() + s, nodes);
    int64_t lc = c == s ? s + 1 : (c < s ? c : c + 1);
    int64_t nc = c == s ? s : lc;
    Value x = ReshapeOp::create(b, loc, withShape(inTy, shape), input);
    shape[s + 1] /= local;
    shape[lc] *= local;
    x = AllToAllOp::create(b, loc, withShape(inTy, shape), x, meshRef,
                           localAxes, b.getI64IntegerAttr(s + 1),
                           b.getI64IntegerAttr(lc));
    shape[s] /= nodes;
    shape[nc] *= nodes;
    RankedTensorType nodeTy = withShape(inTy, shape);
    if (!start) {
      x = AllToAllOp::create(b, loc, nodeTy, x, meshRef, nodeAxes,
                             b.getI64IntegerAttr(s), b.getI64IntegerAttr(nc));
      x = ReshapeOp::create(b, loc, outTy, x);
      op->getResult(0).replaceAllUsesWith(x);
      op->erase();
      return success();
    }
    Value future = AllToAllStartOp::create(
        b, loc, FutureType::get(b.getContext(), nodeTy), x, meshRef, nodeAxes,
        b.getI64IntegerAttr(s), b.getI64IntegerAttr(nc));
    for (Operation *user :
         llvm::make_early_inc_range(op->getResult(0).getUsers())) {
      auto wait = dyn_cast<WaitOp>(user);
      if (!wait)
        return user->emitOpError("moe-hierarchical-a2a: a started all-to-all "
                                 "is used by something other than moe.wait");
      OpBuilder wb(wait);
      Value got = WaitOp::create(wb, wait.getLoc(), future).getResult();
      Value back = ReshapeOp::create(wb, wait.getLoc(), outTy, got);
      wait.replaceAllUsesWith(back);
      wait.erase();
    }
    op->erase();
    return success();
  }

  /// The uneven exchange in two phases; returns the node phase's result
  /// (or future, when `start`).
  Value buildUneven(OpBuilder &b, Location loc, FlatSymbolRefAttr meshRef,
                    ArrayAttr localAxes, ArrayAttr nodeAxes, Value rows,
                    Value sendCounts, Value recvCounts, RankedTensorType outTy,
                    bool start) {
    auto rowsTy = cast<RankedTensorType>(rows.getType());
    auto countsTy = cast<RankedTensorType>(sendCounts.getType());
    int64_t n = nodes * local;
    int64_t k = countsTy.getNumElements() / n;
    auto i32 = [&](ArrayRef<int64_t> shape) {
      return RankedTensorType::get(shape, b.getI32Type());
    };
    // Counts by destination (node, local, k).
    Value byDest =
        ReshapeOp::create(b, loc, i32({nodes, local * k}), sendCounts);
    // Rows by (local, node, k) for the local phase.
    auto r1 = RegroupOp::create(b, loc, rowsTy, i32({local, nodes * k}), rows,
                                byDest, b.getI64IntegerAttr(local));
    // What each local peer sends this rank: [source local * node, k].
    Value fromLocal = AllToAllOp::create(
        b, loc, i32({local * nodes, k}), byDest, meshRef, localAxes,
        b.getI64IntegerAttr(1), b.getI64IntegerAttr(0));
    int64_t inRows = rowsTy.getDimSize(0), outRows = outTy.getDimSize(0);
    int64_t midRows = std::min(local * inRows, nodes * outRows);
    RankedTensorType midTy = withShape(rowsTy, {midRows, rowsTy.getDimSize(1)});
    Value mid =
        AllToAllVOp::create(b, loc, midTy, r1.getOutput(), r1.getNewCounts(),
                            fromLocal, meshRef, localAxes);
    // Rows by (destination node, source local, k) for the node phase.
    Value fromLocal2 =
        ReshapeOp::create(b, loc, i32({local, nodes * k}), fromLocal);
    auto r2 = RegroupOp::create(b, loc, midTy, i32({nodes, local * k}), mid,
                                fromLocal2, b.getI64IntegerAttr(nodes));
    if (start)
      return AllToAllVStartOp::create(
          b, loc, FutureType::get(b.getContext(), outTy), r2.getOutput(),
          r2.getNewCounts(), recvCounts, meshRef, nodeAxes);
    return AllToAllVOp::create(b, loc, outTy, r2.getOutput(), r2.getNewCounts(),
                               recvCounts, meshRef, nodeAxes);
  }
};

} // namespace
