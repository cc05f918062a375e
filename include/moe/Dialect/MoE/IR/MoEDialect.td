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
  // The `moe.*` attributes on functions, their arguments and results and on
  // the module (see MoEDialect.cpp for the rules).
  let hasOperationAttrVerify = 1;
  let hasRegionArgAttrVerify = 1;
  let hasRegionResultAttrVerify = 1;
  let extraClassDeclaration = [{
    /// Argument: the name of the input tensor it receives (non-empty).
    static constexpr ::llvm::StringLiteral kInputAttrName = "moe.input";
    /// Argument: the name of the weight it is loaded from (non-empty).
    static constexpr ::llvm::StringLiteral kWeightAttrName = "moe.weight";
    /// Argument (unit, with moe.weight): the checkpoint stores it transposed.
    static constexpr ::llvm::StringLiteral kWeightTransposeAttrName =
        "moe.weight_transpose";
    /// Argument of a training entry: the saved activation (a result of
    /// forward_train, `saved.N` or `load.<bias>`) it receives.
    static constexpr ::llvm::StringLiteral kSavedAttrName = "moe.saved";
    /// Argument of a step entry: the gradient it receives (`grad.<name>`).
    static constexpr ::llvm::StringLiteral kGradAttrName = "moe.grad";
    /// Argument of a step entry: optimizer state (`<name>.exp_avg`, ...).
    static constexpr ::llvm::StringLiteral kStateAttrName = "moe.state";
    /// Argument of a step entry: the f32 [8] optimizer hyperparameters.
    static constexpr ::llvm::StringLiteral kHparamsAttrName = "moe.hparams";
    /// Result: the name of the output tensor (non-empty).
    static constexpr ::llvm::StringLiteral kOutputAttrName = "moe.output";
    /// Argument or result: per dimension, the mesh axes it is split over.
    static constexpr ::llvm::StringLiteral kShardAttrName = "moe.shard";
    /// Argument or result: the shape before sharding.
    static constexpr ::llvm::StringLiteral kGlobalShapeAttrName =
        "moe.global_shape";
    /// Lowered entry function: bytes of its intermediate-buffer arena.
    static constexpr ::llvm::StringLiteral kArenaBytesAttrName =
        "moe.arena_bytes";
    /// Module: the manifest description of the compiled module.
    static constexpr ::llvm::StringLiteral kManifestAttrName = "moe.manifest";
    /// Op of @backward (unit): a forward op that moe-checkpoint recomputes
    /// there instead of keeping its result from forward_train.
    static constexpr ::llvm::StringLiteral kRecomputeAttrName =
        "moe.recompute";
    /// Module (dictionary): the plan of moe-checkpoint (policy, budget,
    /// saved bytes, recompute cost) that the manifest records.
    static constexpr ::llvm::StringLiteral kCheckpointAttrName =
        "moe.checkpoint";
    /// moe.expert_ffn / moe.expert_ffn_train ("open" or "close"): the
    /// pipelined chunks of one FFN (moe-overlap) read the same weights, so
    /// the runtime may keep them prepared (the CPU backend: packed for its
    /// GEMM) from the call marked "open" through the one marked "close".
    static constexpr ::llvm::StringLiteral kHoldWeightsAttrName =
        "moe.hold_weights";
  }];
}

class MoE_Op<string mnemonic, list<Trait> traits = []>
    : Op<MoE_Dialect, mnemonic, traits>;

#endif // MOE_DIALECT_MOE_IR_MOEDIALECT_TD
