//===- MoETypes.td - Types of the moe dialect ---------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOETYPES_TD
#define MOE_DIALECT_MOE_IR_MOETYPES_TD

include "moe/Dialect/MoE/IR/MoEDialect.td"
include "mlir/IR/BuiltinTypeInterfaces.td"

def MoE_FutureType : TypeDef<MoE_Dialect, "Future"> {
  let mnemonic = "future";
  let summary = "the result of a started collective, available after moe.wait";
  let description = [{
    `!moe.future<tensor<...>>` is returned by the `*_start` form of a
    collective. The tensor it carries is only usable through `moe.wait`;
    between the start and the wait the communication may overlap with
    compute.
  }];
  let parameters = (ins "::mlir::RankedTensorType":$valueType);
  let assemblyFormat = "`<` $valueType `>`";
}

#endif // MOE_DIALECT_MOE_IR_MOETYPES_TD
