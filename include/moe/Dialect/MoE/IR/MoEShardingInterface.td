//===- MoEShardingInterface.td - Per-op rules of moe-shard -*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_TD
#define MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_TD

include "mlir/IR/OpBase.td"

def MoE_ShardingRuleOpInterface : OpInterface<"ShardingRuleOpInterface"> {
  let cppNamespace = "::mlir::moe";
  let description = [{
    How an op of an unsharded, decomposed graph becomes its per-rank form on
    a `dp x ep x tp` mesh. `moe-shard` walks each function once, in program
    order, and calls these methods; the pass state (the mesh sizes, which
    values run over this rank's tokens, how each weight argument is split)
    is the `ShardingContext` passed in.

    Every op that can appear in a decomposed graph implements the interface
    (`DeclareOpInterfaceMethods` in MoEOps.td); MoEShardingRules.cpp
    static_asserts it over the dialect's op list, so an op added without
    rules fails to compile. The exceptions there are the ops that only
    exist in sharded programs (the mesh and the collectives, which
    moe-shard creates).
  }];
  let methods = [
    InterfaceMethod<[{
        Declares how the weight operands of this op (function arguments)
        are split over the mesh, with `ctx.splitWeight`. Runs for every op
        before any is rewritten, so that argument types can be set first.
        Diagnoses a mesh that does not divide a weight.
      }],
      "::llvm::LogicalResult", "shardWeights",
      (ins "::mlir::moe::ShardingContext &":$ctx), [{}], [{
        return ::mlir::success();
      }]>,
    InterfaceMethod<[{
        Rewrites this op into its per-rank form: its operands already have
        their per-rank types; it sets its results' types, records which of
        them run over this rank's tokens (`ctx.markTokens`) and inserts
        the collectives it needs (with `ctx.builder`, replacing the uses of
        its results by the collectives' results where they complete it).
      }],
      "::llvm::LogicalResult", "shardToRank",
      (ins "::mlir::moe::ShardingContext &":$ctx)>,
  ];
}

#endif // MOE_DIALECT_MOE_IR_MOESHARDINGINTERFACE_TD
