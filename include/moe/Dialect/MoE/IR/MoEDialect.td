//===- MoEDialect.td - The moe dialect ---------------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEDIALECT_TD
#define MOE_DIALECT_MOE_IR_MOEDIALECT_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"

def MoE_Dialect : Dialect {
  let name = "moe";
  let cppNamespace = "::mlir::moe";
  let summary = "Mixture-of-Experts layers, their primitives and collectives";
  let description = [{
    The `moe` dialect expresses a Mixture-of-Experts (MoE) FFN block at two
    levels. `moe.layer` is the whole block with its configuration as
    attributes; `moe-decompose` expands it into primitives: `moe.router`
    (router GEMM), `moe.topk` (scores, selection, gate weights),
    `moe.assign` (capacity or dropless placement), `moe.dispatch`,
    `moe.expert_ffn` (grouped expert FFN), `moe.combine`, `moe.mlp` (shared
    experts, dense layers), the aux losses and `moe.rmsnorm` / `moe.add` for
    the model graph. Collectives over the named axes of a `moe.mesh` move
    tokens between ranks; each has an asynchronous start form completed by
    `moe.wait`.

    Values are builtin tensors (value semantics); buffers are planned in the
    lowering to the runtime. Routing math is f32; activations may be f32,
    f16 or bf16.
  }];
  let useDefaultAttributePrinterParser = 1;
  let useDefaultTypePrinterParser = 1;
  let hasConstantMaterializer = 0;
}

class MoE_Op<string mnemonic, list<Trait> traits = []>
    : Op<MoE_Dialect, mnemonic, traits>;

#endif // MOE_DIALECT_MOE_IR_MOEDIALECT_TD
