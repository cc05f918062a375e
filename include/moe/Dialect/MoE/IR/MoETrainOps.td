//===- MoETrainOps.td - Gradient and optimizer ops of moe ---*- tablegen -*-===//
//
// Included by MoEOps.td. The ops that `moe-differentiate` writes: one
// gradient op per forward op (its kernel is the moert_*_grad of the same
// name, docs/spec.md 7.2), the loss seed, the optimizer updates (7.3, 7.4)
// and two data-movement helpers. They are created after `moe-shard` and are
// never sharded themselves (MoEShardingRules.cpp lists them).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_DIALECT_MOE_IR_MOETRAINOPS_TD
#define MOE_DIALECT_MOE_IR_MOETRAINOPS_TD

def MoE_F32_0D1D : AnyTypeOf<[MoE_Scalar, MoE_F32_1D],
    "f32 tensor<f32> or tensor<1xf32>">;

//===----------------------------------------------------------------------===//
// Gradients of the forward ops
//===----------------------------------------------------------------------===//

def MoE_RMSNormGradOp : MoE_Op<"rmsnorm_grad", [Pure]> {
  let summary = "gradient of moe.rmsnorm: input and weight";
  let description = [{
    For `y = moe.rmsnorm(x, w)` and the gradient `dy` of `y`: `dx` [T, D] and
    `dw` [D] (summed over the tokens), docs/spec.md 7.2.
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_Act1D:$weight, MoE_Act2D:$dout,
                       F32Attr:$eps);
  let results = (outs MoE_Act2D:$dinput, MoE_Act1D:$dweight);
  let assemblyFormat = [{
    $input `,` $weight `,` $dout attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_LayerNormGradOp : MoE_Op<"layernorm_grad", [Pure]> {
  let summary = "gradient of moe.layernorm: input, weight and bias";
  let description = [{
    For `y = moe.layernorm(x, w [, b])` and the gradient `dy` of `y`: `dx`
    [T, D], `dw` [D] and, when the forward has a bias, `db` [D] (both summed
    over the tokens), docs/spec.md 7.2. The bias's value is not needed.
  }];
  let arguments = (ins MoE_Act2D:$input, MoE_Act1D:$weight, MoE_Act2D:$dout,
                       F32Attr:$eps);
  let results = (outs MoE_Act2D:$dinput, MoE_Act1D:$dweight,
                      Optional<MoE_Act1D>:$dbias);
  let assemblyFormat = [{
    $input `,` $weight `,` $dout attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_RouterGradOp : MoE_Op<"router_grad", [Pure]> {
  let summary = "gradient of moe.router: dx = dl.W, dW = dl^T.x";
  let arguments = (ins MoE_Act2D:$input, MoE_Act2D:$weight,
                       MoE_F32_2D:$dlogits);
  let results = (outs MoE_Act2D:$dinput, MoE_Act2D:$dweight);
  let assemblyFormat = [{
    $input `,` $weight `,` $dlogits attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_TopKGradOp : MoE_Op<"topk_grad", [Pure]> {
  let summary = "gradient of moe.topk's gate weights and scores into the logits";
  let description = [{
    With the selection `indices` of the forward held fixed: the gradient of
    `sum dweights * weights + sum dscores * scores` with respect to the
    logits, through the gate weights (renormalize, routed scaling) and the
    score function. The selection bias and the group mask carry no gradient.
    `dscores` is optional (zero when absent).
  }];
  let arguments = (ins MoE_F32_2D:$logits, MoE_I32_2D:$indices,
                       MoE_F32_2D:$dweights, Optional<MoE_F32_2D>:$dscores,
                       MoE_ScoreFuncAttr:$score, UnitAttr:$renormalize,
                       DefaultValuedAttr<F32Attr, "1.0">:$routed_scaling);
  let results = (outs MoE_F32_2D:$dlogits);
  let assemblyFormat = [{
    $logits `,` $indices `,` $dweights (`dscores` $dscores^)? `score` `=` ``
    $score attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_DispatchGradOp : MoE_Op<"dispatch_grad", [Pure]> {
  let summary = "gradient of moe.dispatch (a gather of buffer rows per token)";
  let description = [{
    `dx[t] = sum_j dout[positions[t, j]]` over the kept assignments, `j` in
    increasing order: the transpose of dispatch, i.e. a combine with unit
    weights.
  }];
  let arguments = (ins MoE_ActBuffer:$dout, MoE_I32_2D:$positions);
  let results = (outs MoE_Act2D:$dinput);
  let assemblyFormat = [{
    $dout `,` $positions attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_CombineGradOp : MoE_Op<"combine_grad", [Pure]> {
  let summary = "gradient of moe.combine: buffer rows, gate weights, passthrough";
  let description = [{
    `dinput` (the buffer) gets `weights[t, j] * dout[t]` at `positions[t, j]`
    and zero elsewhere (the transpose of combine is a weighted dispatch);
    `dweights[t, j] = dout[t] . input[positions[t, j]]` when kept, `dout[t] .
    passthrough[t]` when dropped with a passthrough, else 0; `dpassthrough`
    (only with `passthrough`) sums `weights[t, j] * dout[t]` over the dropped
    `j`.
  }];
  let arguments = (ins MoE_ActBuffer:$input, MoE_I32_2D:$positions,
                       MoE_F32_2D:$weights, Optional<MoE_Act2D>:$passthrough,
                       MoE_Act2D:$dout);
  let results = (outs MoE_ActBuffer:$dinput, MoE_F32_2D:$dweights,
                      Optional<MoE_Act2D>:$dpassthrough);
  let assemblyFormat = [{
    $input `,` $positions `,` $weights (`passthrough` $passthrough^)? `,` $dout
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertFFNTrainOp : MoE_Op<"expert_ffn_train", [Pure,
    AttrSizedOperandSegments]> {
  let summary = "moe.expert_ffn that also returns its hidden activations";
  let description = [{
    `output` is that of `moe.expert_ffn` with the same operands. `saved_u`
    `[rows, F]` gets `u = x . up_e^T` and, for gated activations (swiglu,
    geglu), `saved_a` `[rows, F]` gets `a = x . gate_e^T`, on the live rows
    (`rows` = all rows of the buffer; dead rows are left undefined). Given to
    `moe.expert_ffn_grad`, they spare its recomputation with the same bits.
    Written by `moe-checkpoint` for the activations that the backward keeps
    (f32 only).
  }];
  let arguments = (ins MoE_ActBuffer:$input, Optional<MoE_I32_2D>:$counts,
                       Optional<MoE_Act3D>:$gate, MoE_Act3D:$up,
                       MoE_Act3D:$down, MoE_ActivationAttr:$activation);
  let results = (outs MoE_ActBuffer:$output, MoE_F32_2D:$saved_u,
                      Optional<MoE_F32_2D>:$saved_a);
  let assemblyFormat = [{
    $input (`counts` $counts^)? (`gate` $gate^)? `up` $up `down` $down
    `act` `=` `` $activation attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertFFNGradOp : MoE_Op<"expert_ffn_grad", [Pure,
    AttrSizedOperandSegments]> {
  let summary = "gradient of moe.expert_ffn: data and weights, grouped GEMMs";
  let description = [{
    Same layouts and live rows as `moe.expert_ffn`. Recomputes the hidden
    activations from `input`, unless `saved_u` (and, for gated activations,
    `saved_a`) are given: then it reads them as `moe.expert_ffn_train` wrote
    them, with the same bits as the recomputation. `dinput` is zero on dead
    rows; `dgate`, `dup`, `ddown` are each expert's sums over its live rows
    (an expert without a live row gets 0).
  }];
  let arguments = (ins MoE_ActBuffer:$input, Optional<MoE_I32_2D>:$counts,
                       Optional<MoE_Act3D>:$gate, MoE_Act3D:$up,
                       MoE_Act3D:$down, MoE_ActBuffer:$dout,
                       Optional<MoE_F32_2D>:$saved_u,
                       Optional<MoE_F32_2D>:$saved_a,
                       MoE_ActivationAttr:$activation);
  let results = (outs MoE_ActBuffer:$dinput, Optional<MoE_Act3D>:$dgate,
                      MoE_Act3D:$dup, MoE_Act3D:$ddown);
  let assemblyFormat = [{
    $input (`counts` $counts^)? (`gate` $gate^)? `up` $up `down` $down `,` $dout
    (`saved_u` $saved_u^)? (`saved_a` $saved_a^)?
    `act` `=` `` $activation attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_F32Buffer : AnyTypeOf<[MoE_F32_2D, 3DTensorOf<[F32]>],
    "f32 buffer (2-D packed or 3-D capacity layout)">;

def MoE_ExpertFFNGradDataOp : MoE_Op<"expert_ffn_grad_data", [Pure,
    AttrSizedOperandSegments]> {
  let summary = "data part of moe.expert_ffn_grad, row by row (moe-overlap)";
  let description = [{
    The rows of `moe.expert_ffn_grad` that do not sum over rows, on the same
    operands: `dinput` as there, and per live row the values its weight
    gradients sum: `hidden` = h = act(a) u (or act(u)), `dpre_up` = the
    gradient at u = x . up^T and, for gated activations, `dpre_gate` = the
    gradient at a = x . gate^T. These three have the buffer's layout with F
    columns (`[E, R, F]` or `[rows, F]`), zero on dead rows. Every value of
    a row depends only on that row (row-independent GEMMs), so the op can
    run on chunks of the rows (moe-overlap's backward) and
    `moe.expert_ffn_grad_weight` on the joined results gives bit for bit
    the weight gradients of `moe.expert_ffn_grad`. `saved_u` / `saved_a`
    (as `moe.expert_ffn_train` writes them, `[rows, F]` or in the buffer's
    layout with F columns) spare the recomputation of a and u.
  }];
  let arguments = (ins MoE_ActBuffer:$input, Optional<MoE_I32_2D>:$counts,
                       Optional<MoE_Act3D>:$gate, MoE_Act3D:$up,
                       MoE_Act3D:$down, MoE_ActBuffer:$dout,
                       Optional<MoE_F32Buffer>:$saved_u,
                       Optional<MoE_F32Buffer>:$saved_a,
                       MoE_ActivationAttr:$activation);
  let results = (outs MoE_ActBuffer:$dinput, MoE_F32Buffer:$hidden,
                      MoE_F32Buffer:$dpre_up,
                      Optional<MoE_F32Buffer>:$dpre_gate);
  let assemblyFormat = [{
    $input (`counts` $counts^)? (`gate` $gate^)? `up` $up `down` $down `,` $dout
    (`saved_u` $saved_u^)? (`saved_a` $saved_a^)?
    `act` `=` `` $activation attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertFFNGradWeightOp : MoE_Op<"expert_ffn_grad_weight", [Pure,
    AttrSizedOperandSegments]> {
  let summary = "weight part of moe.expert_ffn_grad, over all rows at once";
  let description = [{
    Each expert's sums over its live rows: `ddown` = dout^T . hidden,
    `dup` = dpre_up^T . input and, when `dpre_gate` is given, `dgate` =
    dpre_gate^T . input, from what `moe.expert_ffn_grad_data` returns for
    the whole buffer (`hidden`, `dpre_up`, `dpre_gate` in the buffer's
    layout with F columns). The sums are split as `moe.expert_ffn_grad`
    splits them, so the results are bit for bit its weight gradients (an
    expert without a live row gets 0).
  }];
  let arguments = (ins MoE_ActBuffer:$input, Optional<MoE_I32_2D>:$counts,
                       MoE_ActBuffer:$dout, MoE_F32Buffer:$hidden,
                       MoE_F32Buffer:$dpre_up,
                       Optional<MoE_F32Buffer>:$dpre_gate);
  let results = (outs Optional<MoE_Act3D>:$dgate, MoE_Act3D:$dup,
                      MoE_Act3D:$ddown);
  let assemblyFormat = [{
    $input (`counts` $counts^)? `,` $dout `hidden` $hidden `dpre_up` $dpre_up
    (`dpre_gate` $dpre_gate^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_MLPGradOp : MoE_Op<"mlp_grad", [Pure, AttrSizedOperandSegments,
    AttrSizedResultSegments]> {
  let summary = "gradient of moe.mlp, sigmoid gate included";
  let arguments = (ins MoE_Act2D:$input, Optional<MoE_Act2D>:$gate,
                       MoE_Act2D:$up, MoE_Act2D:$down,
                       Optional<MoE_Act2D>:$sigmoid_gate, MoE_Act2D:$dout,
                       MoE_ActivationAttr:$activation);
  let results = (outs MoE_Act2D:$dinput, Optional<MoE_Act2D>:$dgate,
                      MoE_Act2D:$dup, MoE_Act2D:$ddown,
                      Optional<MoE_Act2D>:$dsigmoid_gate);
  let assemblyFormat = [{
    $input (`gate` $gate^)? `up` $up `down` $down
    (`sigmoid_gate` $sigmoid_gate^)? `,` $dout `act` `=` `` $activation
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertLoadGradOp : MoE_Op<"expert_load_grad", [Pure]> {
  let summary = "gradient of moe.expert_load's score sums into the scores";
  let description = [{
    `dscores[t, e] = dstats[1, e]`; the counts (row 0) carry no gradient.
  }];
  let arguments = (ins MoE_F32_2D:$dstats);
  let results = (outs MoE_F32_2D:$dscores);
  let assemblyFormat = "$dstats attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def MoE_LoadBalanceLossGradOp : MoE_Op<"load_balance_loss_grad", [Pure]> {
  let summary = "gradient of moe.load_balance_loss into its statistics";
  let description = [{
    `dstats[0, :] = 0`, `dstats[1, e] = dloss * coeff * E * f_e / tokens`
    (the counts `f_e` are constants); `tokens` is `count` when given
    (moe.load_balance_loss with a token mask).
  }];
  let arguments = (ins MoE_F32_2D:$stats, MoE_Scalar:$dloss,
                       Optional<MoE_Scalar>:$count,
                       MoE_PositiveI64:$tokens, MoE_PositiveI64:$k,
                       F32Attr:$coeff);
  let results = (outs MoE_F32_2D:$dstats);
  let assemblyFormat = [{
    $stats `,` $dloss (`count` $count^)? `tokens` `=` $tokens `k` `=` $k
    `coeff` `=` $coeff attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ZLossGradOp : MoE_Op<"z_loss_grad", [Pure,
    AttrSizedOperandSegments]> {
  let summary = "gradient of moe.z_loss into the logits";
  let description = [{
    `dlogits[t, e] = dloss * coeff * 2 * lse_t * softmax(logits[t])[e] /
    tokens`; with `mask` and `count` (moe.z_loss with a token mask) rows
    with `mask = 0` are 0 and `tokens` is `count`.
  }];
  let arguments = (ins MoE_F32_2D:$logits, MoE_Scalar:$dloss,
                       Optional<MoE_I32_1D>:$mask,
                       Optional<MoE_Scalar>:$count,
                       MoE_PositiveI64:$tokens, F32Attr:$coeff);
  let results = (outs MoE_F32_2D:$dlogits);
  let assemblyFormat = [{
    $logits `,` $dloss (`mask` $mask^)? (`count` $count^)? `tokens` `=`
    $tokens `coeff` `=` $coeff attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// The training loss
//===----------------------------------------------------------------------===//

def MoE_MSELossOp : MoE_Op<"mse_loss", [Pure, AttrSizedOperandSegments]> {
  let summary = "mean squared error against targets, and its gradient (the seed)";
  let description = [{
    `loss[0] = sum_i (y_i - target_i)^2 / total` (this rank's share, summed in
    double) and `dy = 2 (y - target) / total`, where `total` is the element
    count of the global batch (docs/spec.md 7.1): the seed of the backward
    pass. With `mask` (`[T]` i32, the token mask) and `count` (the real
    tokens of the global batch): the sum is over the rows with `mask = 1`,
    `dy` is 0 on the other rows and `total` is `count * D`.
  }];
  let arguments = (ins MoE_Act2D:$output, MoE_Act2D:$target,
                       Optional<MoE_I32_1D>:$mask,
                       Optional<MoE_Scalar>:$count,
                       MoE_PositiveI64:$total);
  let results = (outs MoE_F32_1D:$loss, MoE_Act2D:$doutput);
  let assemblyFormat = [{
    $output `,` $target (`mask` $mask^)? (`count` $count^)? `total` `=`
    $total attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Optimizer steps (docs/spec.md 7.3, 7.4)
//===----------------------------------------------------------------------===//

def MoE_F32Tensor : RankedTensorOf<[F32]>;

def MoE_AdamWOp : MoE_Op<"adamw", [Pure]> {
  let summary = "one AdamW update of a weight and its moments";
  let description = [{
    `hparams` is the f32 [8] tensor `[lr, beta1, beta2, eps, weight_decay,
    momentum, step, bias_update_rate]`; every tensor has the weight's shape.
    Formulas and rounding as docs/spec.md 7.3 (the kernel allows each result
    to share its operand's buffer).
  }];
  let arguments = (ins MoE_F32Tensor:$weight, MoE_F32Tensor:$grad,
                       MoE_F32Tensor:$exp_avg, MoE_F32Tensor:$exp_avg_sq,
                       MoE_F32_1D:$hparams);
  let results = (outs MoE_F32Tensor:$new_weight, MoE_F32Tensor:$new_exp_avg,
                      MoE_F32Tensor:$new_exp_avg_sq);
  let assemblyFormat = [{
    $weight `,` $grad `,` $exp_avg `,` $exp_avg_sq `,` $hparams attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_SGDOp : MoE_Op<"sgd", [Pure]> {
  let summary = "one SGD-with-momentum update of a weight and its buffer";
  let arguments = (ins MoE_F32Tensor:$weight, MoE_F32Tensor:$grad,
                       MoE_F32Tensor:$momentum_buffer, MoE_F32_1D:$hparams);
  let results = (outs MoE_F32Tensor:$new_weight,
                      MoE_F32Tensor:$new_momentum_buffer);
  let assemblyFormat = [{
    $weight `,` $grad `,` $momentum_buffer `,` $hparams attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_BiasUpdateOp : MoE_Op<"bias_update", [Pure]> {
  let summary = "DeepSeek-V3's selection-bias update from the expert load";
  let description = [{
    `bias[e] += rate * sign(tokens * k / E - load[e])` with `rate` =
    `hparams[7]` (docs/spec.md 7.4); `load` holds the global counts of all
    `tokens * k` choices before capacity.
  }];
  let arguments = (ins MoE_F32_1D:$bias, MoE_F32_1D:$load,
                       MoE_F32_1D:$hparams, MoE_PositiveI64:$tokens,
                       MoE_PositiveI64:$k);
  let results = (outs MoE_F32_1D:$new_bias);
  let assemblyFormat = [{
    $bias `,` $load `,` $hparams `tokens` `=` $tokens `k` `=` $k attr-dict `:`
    functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Data movement of the training entries
//===----------------------------------------------------------------------===//

def MoE_ReshapeOp : MoE_Op<"reshape", [Pure]> {
  let summary = "same elements, another static shape";
  let description = [{
    The result holds the input's elements in row-major order (a copy; used
    for the `tensor<f32>` losses that the training entries return as
    `tensor<1xf32>`).
  }];
  let arguments = (ins MoE_AnyTensor:$input);
  let results = (outs MoE_AnyTensor:$output);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def MoE_LoadCountsOp : MoE_Op<"load_counts", [Pure]> {
  let summary = "row 0 of moe.expert_load's statistics: the expert counts";
  let arguments = (ins MoE_F32_2D:$stats);
  let results = (outs MoE_F32_1D:$load);
  let assemblyFormat = "$stats attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def MoE_PackOp : MoE_Op<"pack", [Pure]> {
  let summary = "concatenate the elements of tensors into one buffer";
  let description = [{
    The inputs' elements, each in row-major order, one after the other: the
    bucket that one `moe.all_reduce` sums for many gradients
    (`moe-differentiate`'s gradient synchronization); `moe.unpack` undoes
    it.
  }];
  let arguments = (ins Variadic<MoE_F32Tensor>:$inputs);
  let results = (outs MoE_F32_1D:$output);
  let assemblyFormat = "$inputs attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

def MoE_UnpackOp : MoE_Op<"unpack", [Pure]> {
  let summary = "split a buffer into tensors (the inverse of moe.pack)";
  let arguments = (ins MoE_F32_1D:$input);
  let results = (outs Variadic<MoE_F32Tensor>:$outputs);
  let assemblyFormat = "$input attr-dict `:` functional-type(operands, results)";
  let hasVerifier = 1;
}

#endif // MOE_DIALECT_MOE_IR_MOETRAINOPS_TD
