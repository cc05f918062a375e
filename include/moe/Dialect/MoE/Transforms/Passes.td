//===- Passes.td - Transformations of the moe dialect ------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
#define MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def MoEDecompose : Pass<"moe-decompose"> {
  let summary = "Expand moe.layer into routing, dispatch, expert and combine primitives";
  let description = [{
    Rewrites every `moe.layer` into the primitive ops that ARCHITECTURE.md
    section 3 specifies, in order: `moe.router`, `moe.topk`, `moe.assign`,
    `moe.dispatch`, `moe.expert_ffn`, `moe.combine`, the shared-expert
    `moe.mlp` and its `moe.add`, and the loss ops (`moe.expert_load` +
    `moe.load_balance_loss`, `moe.z_loss`). The capacity of capacity-bounded
    layers is resolved here (`C = max(min_capacity, ceil(cf * T/G * k / E))`).
  }];
  let dependentDialects = ["::mlir::moe::MoEDialect"];
}

#endif // MOE_DIALECT_MOE_TRANSFORMS_PASSES_TD
