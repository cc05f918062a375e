//===- MoEOps.td - Operations of the moe dialect ------------*- tablegen -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOEOPS_TD
#define MOE_DIALECT_MOE_IR_MOEOPS_TD

include "moe/Dialect/MoE/IR/MoEDialect.td"
include "moe/Dialect/MoE/IR/MoEAttrs.td"
include "moe/Dialect/MoE/IR/MoEInterfaces.td"
include "moe/Dialect/MoE/IR/MoETypes.td"
include "moe/Dialect/MoE/IR/MoEShardingInterface.td"
include "mlir/IR/SymbolInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Type constraints
//===----------------------------------------------------------------------===//

def MoE_ActElem : AnyTypeOf<[F32, F16, BF16]>;
def MoE_Act1D : 1DTensorOf<[F32, F16, BF16]>;
def MoE_Act2D : 2DTensorOf<[F32, F16, BF16]>;
def MoE_Act3D : 3DTensorOf<[F32, F16, BF16]>;
def MoE_ActBuffer : AnyTypeOf<[MoE_Act2D, MoE_Act3D],
    "2-D [rows, D] or 3-D [E, C, D] float tensor">;
def MoE_F32_1D : 1DTensorOf<[F32]>;
def MoE_F32_2D : 2DTensorOf<[F32]>;
def MoE_I32_1D : 1DTensorOf<[I32]>;
def MoE_I32_2D : 2DTensorOf<[I32]>;
// Token rows that moe.mask_rows can mask: activations, gate weights, indices.
def MoE_Rows2D : 2DTensorOf<[F32, F16, BF16, I32]>;
def MoE_Scalar : 0DTensorOf<[F32]>;
def MoE_AnyTensor : RankedTensorOf<[F32, F16, BF16, I32, I64]>;

// Every op of an unsharded graph carries its moe-shard rules
// (MoEShardingRules.cpp); ops with weight operands also say how to split them.
defvar MoE_ShardingRule = DeclareOpInterfaceMethods<MoE_ShardingRuleOpInterface>;
defvar MoE_ShardingRuleWithWeights =
    DeclareOpInterfaceMethods<MoE_ShardingRuleOpInterface, ["shardWeights"]>;

def MoE_PositiveI64 : ConfinedAttr<I64Attr, [IntPositive]>;
def MoE_NonNegI64 : ConfinedAttr<I64Attr, [IntNonNegative]>;

//===----------------------------------------------------------------------===//
// Device mesh
//===----------------------------------------------------------------------===//

def MoE_MeshOp : MoE_Op<"mesh", [Symbol]> {
  let summary = "a device mesh with named axes";
  let description = [{
    Declares the ranks of a run as a row-major grid with named axes, e.g.
    data, expert and tensor parallel:

    ```mlir
    moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 2]
    ```

    Collectives name the mesh and the axes they span. Rank `r`'s coordinates
    are `r` unravelled row-major over `shape` (the last axis fastest).

    `moe-shard` builds it from a mesh spec such as `dp=1,ep=2,tp=2` (parsed
    by `parseMeshSpec`, the one parser) or shards over the one already in
    the module; later passes read axis sizes from it by name
    (`getAxisSize`), never from a string.

    Upstream `shard.grid` has indexed, unnamed axes; MoE meshes are written
    and printed by axis name everywhere (`--mesh ep=2,tp=2`, `moe.shard`
    annotations, statistics), so the dialect keeps its own named mesh.
  }];
  let arguments = (ins SymbolNameAttr:$sym_name, StrArrayAttr:$axes,
                       DenseI64ArrayAttr:$shape);
  let assemblyFormat = "$sym_name `axes` `=` $axes `shape` `=` $shape attr-dict";
  let hasVerifier = 1;
  let builders = [
    OpBuilder<(ins "::llvm::StringRef":$symName,
                   "const ::mlir::moe::MeshSpec &":$spec)>
  ];
  let extraClassDeclaration = [{
    /// Index of the axis called `name`, or -1.
    int64_t getAxisIndex(::llvm::StringRef name);
    /// Size of the axis called `name`; 1 when the mesh has no such axis (an
    /// axis left out has one rank, as in a mesh spec).
    int64_t getAxisSize(::llvm::StringRef name);
    /// Product of the sizes of the named axes (1 for none); -1 when an axis
    /// does not exist.
    int64_t getGroupSize(::mlir::ArrayAttr axes);
    int64_t getNumRanks();
    /// The axes and sizes as a spec (in the op's axis order).
    ::mlir::moe::MeshSpec getSpec();
  }];
}

//===----------------------------------------------------------------------===//
// Model graph
//===----------------------------------------------------------------------===//

def MoE_RMSNormOp : MoE_Op<"rmsnorm", [Pure, MoE_ShardingRule]> {
  let summary = "RMS normalization of every token";
  let description = [{
    `y[t] = x[t] / sqrt(mean_d(x[t, d]^2) + eps) * w`, statistics in f32.
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_Act1D:$weight,
                       F32Attr:$eps);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_LayerNormOp : MoE_Op<"layernorm", [Pure, MoE_ShardingRule]> {
  let summary = "Layer normalization of every token, with an optional bias";
  let description = [{
    `y[t] = (x[t] - mu) / sqrt(mean_d((x[t, d] - mu)^2) + eps) * w (+ b)` with
    `mu = mean_d(x[t, d])`; mean and variance in f32. Without `bias` it is
    DBRX's bias-free LayerNorm, with it the GPT-style one.
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_Act1D:$weight,
                       Optional<MoE_Act1D>:$bias, F32Attr:$eps);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $input `,` $weight (`bias` $bias^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AddOp : MoE_Op<"add", [Pure, SameOperandsAndResultType,
    MoE_ShardingRule]> {
  let summary = "elementwise sum (residual connections, loss totals)";
  let arguments = (ins RankedTensorOf<[F32, F16, BF16]>:$lhs,
                       RankedTensorOf<[F32, F16, BF16]>:$rhs);
  let results = (outs RankedTensorOf<[F32, F16, BF16]>:$output);
  let assemblyFormat = [{
    $lhs `,` $rhs attr-dict `:` functional-type(operands, results)
  }];
}

//===----------------------------------------------------------------------===//
// Routing
//===----------------------------------------------------------------------===//

def MoE_RouterOp : MoE_Op<"router", [Pure, MoE_ShardingRule]> {
  let summary = "router logits x . Wr^T, computed in f32";
  let description = [{
    `logits[T, E] = x[T, D] . weight[E, D]^T`. The weight has the layout of
    a Hugging Face `nn.Linear(D, E)`. Accumulation and result are f32 for
    every input type (Switch Transformers' "f32 gating").
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_Act2D:$weight);
  let results = (outs MoE_F32_2D:$logits);
  let assemblyFormat = [{
    $input `,` $weight attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_TopKOp : MoE_Op<"topk", [Pure, MoE_ShardingRule]> {
  let summary = "scores, top-k selection and gate weights of every token";
  let description = [{
    From f32 `logits[T, E]`:
    1. `scores = softmax(logits)` or `sigmoid(logits)` (`score`);
    2. selection scores `s = scores + bias` when `bias` is given (it changes
       which experts are chosen, not the weights: DeepSeek-V3's
       aux-loss-free balancing);
    3. group-limited routing when `num_groups > 1`: experts form
       `num_groups` equal groups; a group's score is its best selection score
       (`max`) or the sum of its two best (`top2_sum`); only the
       `groups_kept` best groups stay selectable;
    4. `indices[t, :]` = the `k` largest selectable `s[t, :]`, best first,
       ties to the lower expert index;
    5. `weights[t, j] = scores[t, indices[t, j]]`, divided by their sum when
       `renormalize`, times `routed_scaling`.

    The third result is `scores` (for the aux losses).

    ```mlir
    %w, %i, %s = moe.topk %logits k = 2 score = softmax {renormalize}
        : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
    ```
  }];
  let arguments = (ins MoE_F32_2D:$logits, Optional<MoE_F32_1D>:$bias,
                       MoE_PositiveI64:$k,
                       MoE_ScoreFuncAttr:$score,
                       UnitAttr:$renormalize,
                       DefaultValuedAttr<F32Attr, "1.0">:$routed_scaling,
                       ConfinedAttr<DefaultValuedAttr<I64Attr, "1">,
                                    [IntPositive]>:$num_groups,
                       ConfinedAttr<DefaultValuedAttr<I64Attr, "1">,
                                    [IntPositive]>:$groups_kept,
                       DefaultValuedAttr<MoE_GroupScoreAttr,
                                         "::mlir::moe::GroupScore::max">:$group_score);
  let results = (outs MoE_F32_2D:$weights, MoE_I32_2D:$indices,
                      MoE_F32_2D:$scores);
  let assemblyFormat = [{
    $logits (`bias` $bias^)? `k` `=` $k `score` `=` `` $score attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_TopKForcedOp : MoE_Op<"topk_forced", [Pure, MoE_ShardingRule]> {
  let summary = "scores and gate weights of a given (replayed) expert choice";
  let description = [{
    Routing replay (`moe-routing-io`): the experts are given, not selected.
    From f32 `logits[T, E]` and `forced[T, k]` (i32):
    1. `scores = softmax(logits)` or `sigmoid(logits)` (`score`), as
       `moe.topk`;
    2. `indices = forced` (each in `[0, E)`, distinct within a row: the
       runtime stops with an error naming the token otherwise);
    3. `weights[t, j] = scores[t, forced[t, j]]`, divided by their sum when
       `renormalize`, times `routed_scaling`: exactly `moe.topk`'s step 5
       with the given indices. No selection bias and no group limit apply
       (they only choose experts).

    ```mlir
    %w, %i, %s = moe.topk_forced %logits, %forced score = softmax {renormalize}
        : (tensor<64x8xf32>, tensor<64x2xi32>)
        -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
    ```
  }];
  let arguments = (ins MoE_F32_2D:$logits, MoE_I32_2D:$forced,
                       MoE_ScoreFuncAttr:$score,
                       UnitAttr:$renormalize,
                       DefaultValuedAttr<F32Attr, "1.0">:$routed_scaling);
  let results = (outs MoE_F32_2D:$weights, MoE_I32_2D:$indices,
                      MoE_F32_2D:$scores);
  let assemblyFormat = [{
    $logits `,` $forced `score` `=` `` $score attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Dispatch and combine
//===----------------------------------------------------------------------===//

def MoE_AssignOp : MoE_Op<"assign", [Pure, MoE_ShardingRule]> {
  let summary = "place every (token, choice) in the expert-contiguous buffer";
  let description = [{
    Computes where `moe.dispatch` puts each assignment and how many rows
    every expert receives.

    - `capacity = 0` (dropless): the buffer is `[T*k, D]`, rows ordered by
      expert, then token, then choice; `counts` is `[1, E]`.
    - `capacity = C > 0`: the `T` tokens form `groups` contiguous groups;
      within a group, assignments are served slot-major (every token's first
      choice in token order, then every second choice, ...); an expert
      takes at most `C` per group and the rest are dropped
      (`positions = -1`). The buffer is `[E, groups*C, D]`; position
      `e*(groups*C) + g*C + slot`; `counts` is `[groups, E]`.

    ```mlir
    %pos, %counts = moe.assign %idx experts = 8 {capacity = 10 : i64}
        : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
    ```
  }];
  let arguments = (ins MoE_I32_2D:$indices, MoE_PositiveI64:$num_experts,
                       ConfinedAttr<DefaultValuedAttr<I64Attr, "0">,
                                    [IntNonNegative]>:$capacity,
                       ConfinedAttr<DefaultValuedAttr<I64Attr, "1">,
                                    [IntPositive]>:$groups);
  let results = (outs MoE_I32_2D:$positions, MoE_I32_2D:$counts);
  let assemblyFormat = [{
    $indices `experts` `=` $num_experts attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    bool isDropless() { return getCapacity() == 0; }
  }];
}

def MoE_DispatchOp : MoE_Op<"dispatch", [Pure, MoE_ShardingRule]> {
  let summary = "gather tokens into the expert-contiguous buffer";
  let description = [{
    `out[positions[t, j]] = x[t]` for every `positions >= 0`; all other rows
    are zero. A 3-D result `[E, C, D]` is the capacity layout, a 2-D result
    `[rows, D]` the packed (dropless) layout; positions index its rows
    (flattened).
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_I32_2D:$positions);
  let results = (outs MoE_ActBuffer:$output);
  let assemblyFormat = [{
    $input `,` $positions attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertFFNOp : MoE_Op<"expert_ffn", [Pure, AttrSizedOperandSegments,
    MoE_ShardingRuleWithWeights]> {
  let summary = "grouped expert FFN over an expert-contiguous buffer";
  let description = [{
    Applies expert `e`'s FFN to the rows that belong to it:
    `act(x . up_e^T) . down_e^T` (relu, gelu) or
    `(act(x . gate_e^T) * x . up_e^T) . down_e^T` (swiglu: SiLU, geglu: GeLU).
    Weights: `gate`, `up` `[E, F, D]`, `down` `[E, D, F]`.

    `counts[S, E]` says which rows are live, in `S` segments (tokens from
    `S` token groups or source ranks):
    - 2-D input `[rows, D]` (packed): rows are packed in (segment, expert)
      row-major order of `counts`; rows past the total are zero in the
      output. `counts` is required.
    - 3-D input `[E, R, D]` (capacity): expert `e`'s rows are
      `[s*R/S, s*R/S + counts[s, e])` in each segment `s`; other rows are
      zero. Without `counts` every row is computed.

    With expert tensor parallelism the weights hold a slice of `F` and the
    result is a partial sum that a reduction over the tensor-parallel axis
    completes.
  }];
  let arguments = (ins MoE_ActBuffer:$input, Optional<MoE_I32_2D>:$counts,
                       Optional<MoE_Act3D>:$gate, MoE_Act3D:$up,
                       MoE_Act3D:$down, MoE_ActivationAttr:$activation);
  let results = (outs MoE_ActBuffer:$output);
  let assemblyFormat = [{
    $input (`counts` $counts^)? (`gate` $gate^)? `up` $up `down` $down
    `act` `=` `` $activation attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertFFNPrepareOp : MoE_Op<"expert_ffn_prepare"> {
  let summary = "hold an expert FFN's weights and prepare them ahead of use";
  let description = [{
    From here until an `moe.expert_ffn` marked `moe.hold_weights = "close"`
    (or the function's return), the runtime holds these weights
    (`moert_hold_weights`) and prepares them now (the CPU backend packs each
    matrix for its GEMM), so that the FFN calls that follow find them ready.
    moe-overlap puts it between the first chunks' started all-to-alls and
    the first wait, where the compute resource would otherwise idle.
    Weights and activation as in `moe.expert_ffn`. It has no result and
    changes no value: removing it changes no bit.
  }];
  let arguments = (ins Optional<MoE_Act3D>:$gate, MoE_Act3D:$up,
                       MoE_Act3D:$down, MoE_ActivationAttr:$activation);
  let assemblyFormat = [{
    (`gate` $gate^)? `up` $up `down` $down `act` `=` `` $activation attr-dict
    `:` type(operands)
  }];
  let hasVerifier = 1;
}

def MoE_CombineOp : MoE_Op<"combine", [Pure, MoE_ShardingRule]> {
  let summary = "weighted sum of every token's expert outputs";
  let description = [{
    `out[t] = sum_j weights[t, j] * y[positions[t, j]]` over the kept
    assignments (`positions >= 0`); a dropped assignment contributes zero,
    or `weights[t, j] * passthrough[t]` when `passthrough` is given (Switch
    Transformers returns the dropped token itself). `y` is indexed by rows
    (3-D buffers flattened).
  }];
  let arguments = (ins MoE_ActBuffer:$input, MoE_I32_2D:$positions,
                       MoE_F32_2D:$weights, Optional<MoE_Act2D>:$passthrough);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $input `,` $positions `,` $weights (`passthrough` $passthrough^)?
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Dense FFN and losses
//===----------------------------------------------------------------------===//

def MoE_MLPOp : MoE_Op<"mlp", [Pure, AttrSizedOperandSegments,
    MoE_ShardingRuleWithWeights]> {
  let summary = "dense FFN: shared experts, residual branches, dense layers";
  let description = [{
    The FFN of `moe.expert_ffn` with one set of weights (`gate`, `up`
    `[F, D]`, `down` `[D, F]`) applied to every token. With `sigmoid_gate`
    (`[1, D]`) row `t` is scaled by `sigmoid(x[t] . sigmoid_gate)`
    (Qwen-MoE's gated shared expert).
  }];
  let arguments = (ins MoE_Act2D:$input, Optional<MoE_Act2D>:$gate,
                       MoE_Act2D:$up, MoE_Act2D:$down,
                       Optional<MoE_Act2D>:$sigmoid_gate,
                       MoE_ActivationAttr:$activation);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $input (`gate` $gate^)? `up` $up `down` $down
    (`sigmoid_gate` $sigmoid_gate^)? `act` `=` `` $activation attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertLoadOp : MoE_Op<"expert_load", [Pure, MoE_ShardingRule]> {
  let summary = "per-expert assignment counts and score sums";
  let description = [{
    `stats[0, e]` = number of assignments to expert `e`, `stats[1, e]` =
    sum over tokens of `scores[t, e]`. Partial sums over the tokens given:
    sharded programs add them over the token-parallel axes before
    `moe.load_balance_loss`.
  }];
  let arguments = (ins MoE_F32_2D:$scores, MoE_I32_2D:$indices);
  let results = (outs MoE_F32_2D:$stats);
  let assemblyFormat = [{
    $scores `,` $indices attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_LoadBalanceLossOp : MoE_Op<"load_balance_loss", [Pure, MoE_ShardingRule]> {
  let summary = "Switch/GShard load-balancing loss";
  let description = [{
    `coeff * E * sum_e f_e * P_e` with `f_e = stats[0, e] / (tokens * k)`
    and `P_e = stats[1, e] / tokens`. With `count` (the number of real
    tokens of a masked batch, `moe.token_count`) `tokens` is `count` instead
    of the attribute; a batch without real tokens has loss 0.
  }];
  let arguments = (ins MoE_F32_2D:$stats, Optional<MoE_Scalar>:$count,
                       MoE_PositiveI64:$tokens,
                       MoE_PositiveI64:$k, F32Attr:$coeff);
  let results = (outs MoE_Scalar:$loss);
  let assemblyFormat = [{
    $stats (`count` $count^)? `tokens` `=` $tokens `k` `=` $k `coeff` `=`
    $coeff attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ZLossOp : MoE_Op<"z_loss", [Pure, AttrSizedOperandSegments,
    MoE_ShardingRule]> {
  let summary = "router z-loss (ST-MoE)";
  let description = [{
    `coeff * sum_t logsumexp(logits[t])^2 / tokens`, where `tokens` is the
    number of tokens of the whole batch (a sharded program sums the
    per-rank values). With `mask` (`[T]` i32, the token mask) and `count`
    (the real tokens of the whole batch, `moe.token_count`): the sum is over
    the tokens with `mask = 1` and `tokens` is `count` (0 real tokens: 0).
  }];
  let arguments = (ins MoE_F32_2D:$logits, Optional<MoE_I32_1D>:$mask,
                       Optional<MoE_Scalar>:$count, MoE_PositiveI64:$tokens,
                       F32Attr:$coeff);
  let results = (outs MoE_Scalar:$loss);
  let assemblyFormat = [{
    $logits (`mask` $mask^)? (`count` $count^)? `tokens` `=` $tokens `coeff`
    `=` $coeff attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Token mask (padding and variable length)
//===----------------------------------------------------------------------===//

def MoE_MaskRowsOp : MoE_Op<"mask_rows", [Pure, MoE_ShardingRule,
    AllTypesMatch<["input", "output"]>]> {
  let summary = "rows of masked tokens replaced: 0, or -1 for indices";
  let description = [{
    `output[t] = input[t]` where `mask[t] = 1`; where `mask[t] = 0` the row
    is 0 (floating-point input: activations, gate weights, scores) or -1
    (i32 input: expert indices, -1 = "not routed", which moe.assign and
    moe.expert_load skip). Any other mask value is an error that names the
    token (at run time). The gradient of a float `mask_rows` is the same
    `mask_rows` of the output gradient.

    ```mlir
    %y = moe.mask_rows %x, %mask : (tensor<64x32xf32>, tensor<64xi32>)
        -> tensor<64x32xf32>
    ```
  }];
  let arguments = (ins MoE_Rows2D:$input, MoE_I32_1D:$mask);
  let results = (outs MoE_Rows2D:$output);
  let assemblyFormat = [{
    $input `,` $mask attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_TokenCountOp : MoE_Op<"token_count", [Pure, MoE_ShardingRule]> {
  let summary = "number of real tokens of a token mask (f32)";
  let description = [{
    `count = sum_t mask[t]` as f32; every `mask[t]` must be 0 or 1 (an
    error that names the token otherwise). A sharded program sums the
    per-rank counts over the token axes.
  }];
  let arguments = (ins MoE_I32_1D:$mask);
  let results = (outs MoE_Scalar:$count);
  let assemblyFormat = [{
    $mask attr-dict `:` functional-type(operands, results)
  }];
}

//===----------------------------------------------------------------------===//
// The whole layer
//===----------------------------------------------------------------------===//

def MoE_LayerOp : MoE_Op<"layer", [Pure, AttrSizedOperandSegments,
    MoE_ShardingRule]> {
  let summary = "a whole MoE FFN block with its configuration";
  let description = [{
    Routes every token of `input` to `top_k` of `num_experts` experts and
    returns the gate-weighted sum of their FFN outputs plus the shared
    experts' output (docs/spec.md section 3 is the specification).
    `moe-decompose` expands it into primitives.

    Operands: router weight `[E, D]`, optional selection `bias` `[E]`,
    expert weights (`gate` for swiglu/geglu) `[E, F, D]`, `[E, D, F]`,
    optional shared-expert MLP weights `[Fs, D]`, `[D, Fs]` and its optional
    sigmoid gate `[1, D]`, optional `token_mask` `[T]` (i32: 1 = a real
    token, 0 = padding; padding is not routed, takes no capacity slot, is
    not counted in the load statistics or the aux losses, and its output
    row is 0, so the residual alone). Results: the output, then one `tensor<f32>` per
    enabled loss: load balance (`aux_loss_coeff > 0`), then z-loss
    (`z_loss_coeff > 0`).

    Capacity: `capacity > 0` is the per-group capacity; else
    `capacity_factor > 0` gives `C = max(min_capacity,
    ceil(capacity_factor * T/token_groups * top_k / num_experts))`; both 0
    is dropless.

    ```mlir
    %y = moe.layer %x router %wr gate %wg up %wu down %wd
        {num_experts = 8 : i64, top_k = 2 : i64, renormalize,
         activation = #moe<activation swiglu>}
        : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x64x32xf32>,
           tensor<8x64x32xf32>, tensor<8x32x64xf32>) -> tensor<64x32xf32>
    ```
  }];
  let arguments = (ins
      MoE_Act2D:$input, MoE_Act2D:$router_weight,
      Optional<MoE_F32_1D>:$bias,
      Optional<MoE_Act3D>:$gate, MoE_Act3D:$up, MoE_Act3D:$down,
      Optional<MoE_Act2D>:$shared_gate, Optional<MoE_Act2D>:$shared_up,
      Optional<MoE_Act2D>:$shared_down,
      Optional<MoE_Act2D>:$shared_sigmoid_gate,
      Optional<MoE_I32_1D>:$token_mask,
      MoE_PositiveI64:$num_experts,
      MoE_PositiveI64:$top_k,
      DefaultValuedAttr<MoE_ScoreFuncAttr,
                        "::mlir::moe::ScoreFunc::softmax">:$score_func,
      UnitAttr:$renormalize,
      DefaultValuedAttr<F32Attr, "1.0">:$routed_scaling,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "1">, [IntPositive]>:$num_groups,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "1">, [IntPositive]>:$groups_kept,
      DefaultValuedAttr<MoE_GroupScoreAttr,
                        "::mlir::moe::GroupScore::max">:$group_score,
      DefaultValuedAttr<F32Attr, "0.0">:$capacity_factor,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "0">, [IntNonNegative]>:$capacity,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "0">, [IntNonNegative]>:$min_capacity,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "1">, [IntPositive]>:$token_groups,
      DefaultValuedAttr<MoE_DropPolicyAttr,
                        "::mlir::moe::DropPolicy::zero">:$drop_policy,
      MoE_ActivationAttr:$activation,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "0">,
                   [IntNonNegative]>:$num_shared_experts,
      ConfinedAttr<DefaultValuedAttr<I64Attr, "0">,
                   [IntNonNegative]>:$shared_intermediate,
      UnitAttr:$shared_gated,
      DefaultValuedAttr<F32Attr, "0.0">:$aux_loss_coeff,
      DefaultValuedAttr<F32Attr, "0.0">:$z_loss_coeff);
  let results = (outs MoE_Act2D:$output, Variadic<MoE_Scalar>:$losses);
  let assemblyFormat = [{
    $input `router` $router_weight (`bias` $bias^)? (`gate` $gate^)?
    `up` $up `down` $down (`shared_gate` $shared_gate^)?
    (`shared_up` $shared_up^)? (`shared_down` $shared_down^)?
    (`shared_sigmoid_gate` $shared_sigmoid_gate^)?
    (`token_mask` $token_mask^)? attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    bool isDropless() {
      return getCapacity() == 0 && getCapacityFactor().convertToFloat() <= 0;
    }
    /// Per-group expert capacity (0 for dropless).
    int64_t computeCapacity();
    bool hasAuxLoss() { return getAuxLossCoeff().convertToFloat() != 0; }
    bool hasZLoss() { return getZLossCoeff().convertToFloat() != 0; }
  }];
}

include "moe/Dialect/MoE/IR/MoETrainOps.td"

//===----------------------------------------------------------------------===//
// Collectives
//===----------------------------------------------------------------------===//

// Every collective names the mesh and the axes its group spans.
defvar MoE_CollectiveArgs = (ins FlatSymbolRefAttr:$mesh, StrArrayAttr:$axes);

// What every collective implements of MoE_CollectiveOpInterface (mesh, axes,
// input and result come from the ODS accessors).
defvar MoE_CollectiveDecls = [{
  int64_t getBytesSentPerRank();
  ::mlir::Value buildInverse(::mlir::OpBuilder &builder,
                             ::mlir::Location loc, ::mlir::Value input);
}];

class MoE_CollectiveOp<string mnemonic, list<Trait> traits = []>
    : MoE_Op<mnemonic, !listconcat(traits,
          [DeclareOpInterfaceMethods<SymbolUserOpInterface>,
           MoE_CollectiveOpInterface])> {
  let extraClassDeclaration = MoE_CollectiveDecls;
}

// The synchronous form and its `_start` twin share arguments and verifier.
class MoE_AllToAllBase<string mnemonic, Type resultTy>
    : MoE_CollectiveOp<mnemonic> {
  let arguments = !con((ins MoE_AnyTensor:$input), MoE_CollectiveArgs,
                       (ins I64Attr:$split_dim, I64Attr:$concat_dim));
  let results = (outs resultTy:$result);
  let assemblyFormat = [{
    $input `on` $mesh $axes `split` `=` $split_dim `concat` `=` $concat_dim
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AllToAllOp : MoE_AllToAllBase<"all_to_all", MoE_AnyTensor> {
  let summary = "even all-to-all over mesh axes";
  let description = [{
    Dimension `split` of the input is cut into `n` equal chunks (`n` = ranks
    in the group); chunk `p` goes to the `p`-th rank of the group; the
    received chunks are concatenated along `concat` in rank order.
    Expert-parallel capacity dispatch uses `split = 0 concat = 1` on the
    `[E, C, D]` buffer, giving `[E/n, n*C, D]`: every local expert's rows from
    every source rank.

    ```mlir
    %r = moe.all_to_all %buf on @mesh ["ep"] split = 0 concat = 1
        : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
    ```
  }];
  let hasFolder = 1;
}

def MoE_AllToAllStartOp
    : MoE_AllToAllBase<"all_to_all_start", MoE_FutureType> {
  let summary = "start an even all-to-all; complete it with moe.wait";
}

class MoE_AllToAllVBase<string mnemonic, Type resultTy>
    : MoE_CollectiveOp<mnemonic> {
  let arguments = !con((ins MoE_Act2D:$input, MoE_I32_2D:$send_counts,
                            MoE_I32_2D:$recv_counts), MoE_CollectiveArgs);
  let results = (outs resultTy:$result);
  let assemblyFormat = [{
    $input `,` $send_counts `,` $recv_counts `on` $mesh $axes attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = MoE_CollectiveDecls # [{
    /// The rows sent depend on the counts: the bytes are an upper bound.
    bool isBytesSentUpperBound() { return true; }
  }];
}

def MoE_AllToAllVOp : MoE_AllToAllVBase<"all_to_all_v", MoE_Act2D> {
  let summary = "uneven all-to-all of rows, sized by count tensors";
  let description = [{
    The elements of `send_counts`, in row-major order, are cut into `n`
    equal consecutive chunks; the sum of chunk `p` is the number of packed
    rows sent to rank `p` of the group (the rows are consecutive, in rank
    order). `recv_counts` says the same of what arrives; received rows are
    packed in rank order and the result's remaining rows are zero. The
    result has a static worst-case row count.

    Dropless expert parallelism sends `[rows, D]` with counts `[1, E]` and
    receives with counts `[n, E/n]` (from `moe.all_to_all` of the counts).
  }];
}

def MoE_AllToAllVStartOp
    : MoE_AllToAllVBase<"all_to_all_v_start", MoE_FutureType> {
  let summary = "start an uneven all-to-all; complete it with moe.wait";
}

class MoE_DimCollectiveBase<string mnemonic, Type resultTy>
    : MoE_CollectiveOp<mnemonic> {
  let arguments = !con((ins MoE_AnyTensor:$input), MoE_CollectiveArgs,
                       (ins I64Attr:$dim));
  let results = (outs resultTy:$result);
  let assemblyFormat = [{
    $input `on` $mesh $axes `dim` `=` $dim attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AllGatherOp : MoE_DimCollectiveBase<"all_gather", MoE_AnyTensor> {
  let summary = "concatenate the group's tensors along a dimension";
  let hasFolder = 1;
}
def MoE_AllGatherStartOp
    : MoE_DimCollectiveBase<"all_gather_start", MoE_FutureType> {
  let summary = "start an all-gather; complete it with moe.wait";
}
def MoE_ReduceScatterOp
    : MoE_DimCollectiveBase<"reduce_scatter", MoE_AnyTensor> {
  let summary = "sum over the group, keep this rank's chunk of a dimension";
  let hasFolder = 1;
}
def MoE_ReduceScatterStartOp
    : MoE_DimCollectiveBase<"reduce_scatter_start", MoE_FutureType> {
  let summary = "start a reduce-scatter; complete it with moe.wait";
}

class MoE_AllReduceBase<string mnemonic, Type resultTy>
    : MoE_CollectiveOp<mnemonic> {
  let arguments = !con((ins MoE_AnyTensor:$input), MoE_CollectiveArgs);
  let results = (outs resultTy:$result);
  let assemblyFormat = [{
    $input `on` $mesh $axes attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AllReduceOp : MoE_AllReduceBase<"all_reduce", MoE_AnyTensor> {
  let summary = "elementwise sum over the group";
  let hasFolder = 1;
}
def MoE_AllReduceStartOp
    : MoE_AllReduceBase<"all_reduce_start", MoE_FutureType> {
  let summary = "start an all-reduce; complete it with moe.wait";
}

def MoE_SliceOp : MoE_DimCollectiveBase<"slice", MoE_AnyTensor> {
  let summary = "keep this rank's chunk of a dimension (no communication)";
  let description = [{
    Cuts dimension `dim` into `n` equal chunks (`n` = ranks in the group)
    and keeps chunk `p`, where `p` is this rank's position in the group. The
    inverse of `moe.all_gather`; duplicate token dropping uses it to send
    only this tensor-parallel rank's share of a replicated buffer.
  }];
  let hasFolder = 1;
}

// Chunks of a pipelined exchange (moe-overlap).
def MoE_ChunkOp : MoE_Op<"chunk", [Pure]> {
  let summary = "a cyclic chunk of one dimension: elements i, i+n, i+2n, ...";
  let description = [{
    Keeps the elements `index, index + chunks, index + 2*chunks, ...` of
    dimension `dim` (which must divide by `chunks`); the result has
    `d_dim / chunks` there. `moe.interleave` of the `chunks` chunks undoes
    it. Cyclic rather than blocked: a cyclic chunk of the slot dimension
    commutes with the expert-parallel all-to-all (`split = 0 concat = 1`),
    so the chunks' exchanges interleave back into the whole exchange.

    ```mlir
    %c = moe.chunk %buf dim = 1 index = 1 chunks = 4
        : (tensor<8x16x32xf32>) -> tensor<8x4x32xf32>
    ```
  }];
  let arguments = (ins MoE_AnyTensor:$input, I64Attr:$dim, I64Attr:$index,
                       I64Attr:$chunks);
  let results = (outs MoE_AnyTensor:$output);
  let assemblyFormat = [{
    $input `dim` `=` $dim `index` `=` $index `chunks` `=` $chunks attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_InterleaveOp : MoE_Op<"interleave", [Pure]> {
  let summary = "the inverse of moe.chunk: n chunks back into one tensor";
  let description = [{
    With `n` inputs of the same type, element `j` of dimension `dim` of
    input `i` becomes element `j * n + i` of the result.
  }];
  let arguments = (ins Variadic<MoE_AnyTensor>:$inputs, I64Attr:$dim);
  let results = (outs MoE_AnyTensor:$output);
  let assemblyFormat = [{
    $inputs `dim` `=` $dim attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

// The re-layouts of the hierarchical all-to-all (moe-hierarchical-a2a).
def MoE_RegroupOp : MoE_Op<"regroup", [Pure]> {
  let summary = "block transpose of packed rows, sized by a count tensor";
  let description = [{
    `counts` `[A, G*K]` gives the number of rows of each block `(a, g, k)`
    (row-major); the input's rows are those blocks packed in that order from
    row 0. The result holds the same blocks in the order `(g, a, k)`, its
    rows past the total zero, and `new_counts` `[G, A*K]` their counts
    (`new_counts[g, a*K + k] = counts[a, g*K + k]`). A total larger than the
    rows is a run-time error.

    The hierarchical all-to-all uses it to put the rows of an uneven
    exchange in the order of the next phase's peers: rows packed by
    destination `(node, local)` become packed by `(local, node)`, so that
    each local peer's rows are consecutive.

    ```mlir
    %rows, %counts = moe.regroup %buf, %c groups = 4
        : (tensor<64x32xf32>, tensor<2x8xi32>) -> (tensor<64x32xf32>, tensor<4x4xi32>)
    ```
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_I32_2D:$counts,
                       MoE_PositiveI64:$groups);
  let results = (outs MoE_Act2D:$output, MoE_I32_2D:$new_counts);
  let assemblyFormat = [{
    $input `,` $counts `groups` `=` $groups attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

// The receive bound of dropless exchanges (moe-shard's max-recv-tokens).
def MoE_CheckRecvBoundOp : MoE_Op<"check_recv_bound",
    [MemoryEffects<[MemWrite]>]> {
  let summary = "stop every rank when a rank of the group would receive more rows than the bound";
  let description = [{
    `counts` `[n*n, K]` are the receive counts of the `n` ranks of an
    expert-parallel group (all-gathered: rows `p*n .. p*n + n - 1` are what
    rank `p` receives from each source). When some rank's total exceeds
    `bound`, the run stops on every rank with the same error, which names
    the rank, its rows and the bound (`MOERT_ERR_RECV_BOUND`), before any rank
    sends a row; nothing is dropped silently. `moe-shard{max-recv-tokens=N}`
    sizes the dropless receive buffer at `N` rows and puts this check after
    the counts exchange.

    ```mlir
    moe.check_recv_bound %all bound = 96 : tensor<16x2xi32>
    ```
  }];
  let arguments = (ins MoE_I32_2D:$counts, MoE_PositiveI64:$bound);
  let assemblyFormat = "$counts `bound` `=` $bound attr-dict `:` type($counts)";
  let hasVerifier = 1;
}

// Chunks of a pipelined dropless exchange (moe-overlap): rows packed in
// segments sized by a count tensor.
def MoE_ChunkCountsOp : MoE_Op<"chunk_counts", [Pure]> {
  let summary = "each count's share in one of n row chunks";
  let description = [{
    Element-wise: a segment of `c` rows gives chunk `index` of `chunks` the
    `c * (index + 1) / chunks - c * index / chunks` rows (integer division),
    i.e. rows `[c * index / chunks, c * (index + 1) / chunks)` of the
    segment. Computed from the count alone, so the sender of an uneven
    all-to-all (its send counts) and the receiver (its receive counts, the
    same numbers) cut every segment the same way.

    ```mlir
    %c1 = moe.chunk_counts %c index = 1 chunks = 4
        : (tensor<2x4xi32>) -> tensor<2x4xi32>
    ```
  }];
  let arguments = (ins MoE_I32_2D:$counts, I64Attr:$index, I64Attr:$chunks);
  let results = (outs MoE_I32_2D:$output);
  let assemblyFormat = [{
    $counts `index` `=` $index `chunks` `=` $chunks attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ChunkRowsOp : MoE_Op<"chunk_rows", [Pure]> {
  let summary = "one row chunk of a buffer packed by counts";
  let description = [{
    The input's rows are packed segments, one per element of `counts` in
    row-major order (the layout of a dropless buffer and of what
    `moe.all_to_all_v` receives). The result packs, segment after segment,
    the block of rows that `moe.chunk_counts` gives chunk `index` (a
    contiguous block of each segment); its remaining rows are zero. Its
    static row count is the worst case
    `min(rows, (rows + segments * (chunks - 1)) / chunks)`.
    `moe.join_rows` of the `chunks` chunks undoes it.

    ```mlir
    %r1 = moe.chunk_rows %buf, %c index = 1 chunks = 4
        : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<22x32xf32>
    ```
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_I32_2D:$counts, I64Attr:$index,
                       I64Attr:$chunks);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $input `,` $counts `index` `=` $index `chunks` `=` $chunks attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// The static rows of a chunk of `rows` packed rows in `segments`.
    static int64_t chunkRowsBound(int64_t rows, int64_t segments,
                                  int64_t chunks);
  }];
}

def MoE_JoinRowsOp : MoE_Op<"join_rows", [Pure]> {
  let summary = "the inverse of moe.chunk_rows: n row chunks back into one";
  let description = [{
    With `n` inputs, input `i` being chunk `i` of `n` of the result
    (`moe.chunk_rows` with the same `counts`): every segment of the result
    is the concatenation of its blocks in the inputs, in chunk order; rows
    past the counted ones are zero.
  }];
  let arguments = (ins Variadic<MoE_Act2D>:$inputs, MoE_I32_2D:$counts);
  let results = (outs MoE_Act2D:$output);
  let assemblyFormat = [{
    $inputs `counts` $counts attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_WaitOp : MoE_Op<"wait", [
    TypesMatchWith<"result is the future's tensor", "future", "result",
                   "::llvm::cast<::mlir::moe::FutureType>($_self).getValueType()">]> {
  let summary = "complete a started collective and get its result";
  let description = [{
    Blocks until the collective that produced `future` is complete. A start
    immediately followed by its wait canonicalizes to the synchronous form.
  }];
  let arguments = (ins MoE_FutureType:$future);
  let results = (outs MoE_AnyTensor:$result);
  let assemblyFormat = "$future attr-dict `:` qualified(type($future))";
  let hasCanonicalizer = 1;
}

#endif // MOE_DIALECT_MOE_IR_MOEOPS_TD
