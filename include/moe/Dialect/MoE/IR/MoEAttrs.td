//===- MoEAttrs.td - Enums and attributes of the moe dialect -*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEATTRS_TD
#define MOE_DIALECT_MOE_IR_MOEATTRS_TD

include "moe/Dialect/MoE/IR/MoEDialect.td"
include "mlir/IR/EnumAttr.td"

// The integer values are the runtime ABI's (runtime/include/moert/moert.h).

def MoE_ScoreFunc : I32EnumAttr<"ScoreFunc", "router score function", [
    I32EnumAttrCase<"softmax", 0>,
    I32EnumAttrCase<"sigmoid", 1>]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def MoE_ScoreFuncAttr : EnumAttr<MoE_Dialect, MoE_ScoreFunc, "score_func">;

def MoE_GroupScore : I32EnumAttr<"GroupScore",
    "how group-limited routing scores an expert group", [
    I32EnumAttrCase<"max", 0>,
    I32EnumAttrCase<"top2_sum", 1>]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def MoE_GroupScoreAttr : EnumAttr<MoE_Dialect, MoE_GroupScore, "group_score">;

def MoE_Activation : I32EnumAttr<"Activation", "expert FFN activation", [
    I32EnumAttrCase<"relu", 0>,
    I32EnumAttrCase<"gelu", 1>,
    I32EnumAttrCase<"swiglu", 2>,
    I32EnumAttrCase<"geglu", 3>]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def MoE_ActivationAttr : EnumAttr<MoE_Dialect, MoE_Activation, "activation">;

def MoE_DropPolicy : I32EnumAttr<"DropPolicy",
    "what an assignment dropped by capacity contributes", [
    I32EnumAttrCase<"zero", 0>,
    I32EnumAttrCase<"passthrough", 1>]> {
  let cppNamespace = "::mlir::moe";
  let genSpecializedAttr = 0;
}
def MoE_DropPolicyAttr : EnumAttr<MoE_Dialect, MoE_DropPolicy, "drop_policy">;

#endif // MOE_DIALECT_MOE_IR_MOEATTRS_TD
