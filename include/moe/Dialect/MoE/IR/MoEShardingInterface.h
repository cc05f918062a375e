//===- MoEShardingInterface.h - Per-op rules of moe-shard -------*- C++ -*-===//
//
// The ShardingRuleOpInterface (MoEShardingInterface.td) and the state its
// methods share: the mesh sizes, which values run over this rank's tokens and
// how each weight argument is split. moe-shard (Transforms/Shard.cpp) owns
// the walk; the rules of each op are in IR/MoEShardingRules.cpp.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_H
#define MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_H

#include "moe/Dialect/MoE/IR/Mesh.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/OpDefinition.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/SmallVector.h"

namespace mlir::moe {

/// The sizes of the mesh axes the sharding rules know. moe-shard builds it
/// once from the mesh it creates; nothing else reads the mesh spelling.
struct ShardingMesh {
  int64_t dp = 1, ep = 1, tp = 1;

  /// Ranks that hold different tokens (tokens are split over dp x ep).
  int64_t tokenShards() const { return dp * ep; }
  /// Size of axis `name` (dp, ep or tp; 1 for any other name).
  int64_t size(llvm::StringRef name) const {
    return name == kAxisDP   ? dp
           : name == kAxisEP ? ep
           : name == kAxisTP ? tp
                             : 1;
  }
};

/// For every dimension of a tensor, the mesh axes it is split over, outermost
/// first (empty: replicated). The form of the `moe.shard` attribute.
using ShardSpec = llvm::SmallVector<llvm::SmallVector<llvm::StringRef, 2>>;

/// What the rules of one function share while moe-shard rewrites it.
class ShardingContext {
public:
  ShardingContext(MLIRContext *context, ShardingMesh mesh, bool expertTp,
                  FlatSymbolRefAttr meshRef, int64_t maxRecvRows = 0)
      : mesh(mesh), expertTp(expertTp && mesh.tp > 1), meshRef(meshRef),
        maxRecvRows(maxRecvRows), builder(context) {}

  const ShardingMesh mesh;
  /// Routed experts' FFNs are split over tp (the expert-tp option, tp > 1).
  const bool expertTp;
  /// The `moe.mesh` symbol every created collective names.
  const FlatSymbolRefAttr meshRef;
  /// Rows of a dropless receive buffer (0: the provable worst case); a
  /// smaller bound is checked at run time (moe.check_recv_bound).
  const int64_t maxRecvRows;
  OpBuilder builder;

  /// Values whose dimension 0 runs over this rank's tokens.
  bool isToken(Value v) const { return tokens.contains(v); }
  void markTokens(Value v) { tokens.insert(v); }
  /// `result` gets `operand`'s per-rank type, and is a token value when
  /// `operand` is.
  void sameAs(Value result, Value operand);

  /// Records that weight `w`, a function argument, is split per `spec`.
  /// Fails (on `user`) when another op split it differently.
  LogicalResult splitWeight(Operation *user, Value w, ShardSpec spec);
  /// The split of argument `arg`, or null when no rule split it.
  const ShardSpec *weightSpec(Value arg) const {
    auto it = weights.find(arg);
    return it == weights.end() ? nullptr : &it->second;
  }
  /// `moe.weight` name of function argument `w` (quoted), or "argument N".
  std::string weightName(Value w) const;

  ArrayAttr axesAttr(ArrayRef<StringRef> axes) {
    return builder.getStrArrayAttr(axes);
  }
  /// Sums `v` over `axes` with an all_reduce right after its definition;
  /// every other use of `v` takes the sum, which is returned.
  Value allReduceAfter(Value v, ArrayRef<StringRef> axes);

private:
  llvm::DenseSet<Value> tokens;
  llvm::DenseMap<Value, ShardSpec> weights;
};

} // namespace mlir::moe

#include "moe/Dialect/MoE/IR/MoEShardingInterface.h.inc"

#endif // MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_H
