// RUN: moe-opt %s -split-input-file -moe-decompose -canonicalize -moe-differentiate | FileCheck %s

// The training entries of moe-differentiate for one layer per family: the
// structure of forward_train (loss, saved values), of backward (one gradient
// op per forward op, in reverse order, gradients summed where paths meet) and
// of the steps.

// 1. Mixtral: rmsnorm, dropless top-2 softmax with renormalize, SwiGLU experts,
//    residual.
// CHECK-LABEL: func.func @forward_train
// CHECK-SAME: %[[X:[^:]*]]: tensor<16x8xf32> {moe.input = "hidden_states"}, %[[T:[^:]*]]: tensor<16x8xf32> {moe.input = "targets"}, %{{.*}}: tensor<8xf32> {moe.weight = "norm"}
// CHECK-SAME: -> (tensor<1xf32> {moe.output = "loss"}, tensor<1xf32> {moe.output = "mse_loss"}, tensor<16x8xf32> {moe.output = "saved.0"}
// CHECK: %[[N:.*]] = moe.rmsnorm %[[X]]
// CHECK: %[[L:.*]] = moe.router %[[N]]
// CHECK: %[[W:.*]], %[[I:.*]], %{{.*}} = moe.topk %[[L]]
// CHECK: %[[P:.*]], %[[C:.*]] = moe.assign %[[I]]
// CHECK: %[[B:.*]] = moe.dispatch %[[N]], %[[P]]
// CHECK: %[[E:.*]] = moe.expert_ffn %[[B]]
// CHECK: %[[Y:.*]] = moe.add %[[X]]
// CHECK: %[[LOSS:.*]], %[[DY:.*]] = moe.mse_loss %[[Y]], %[[T]] total = 128 : (tensor<16x8xf32>, tensor<16x8xf32>) -> (tensor<1xf32>, tensor<16x8xf32>)
// CHECK: return %[[LOSS]], %[[LOSS]], %[[DY]], %[[W]], %[[P]], %[[E]], %[[C]], %[[B]], %[[I]], %[[L]], %[[N]], %[[X]] :

// CHECK-LABEL: func.func @backward
// CHECK-SAME: (%[[S0:[^:]*]]: tensor<16x8xf32> {moe.saved = "saved.0"}, %[[S1:[^:]*]]: tensor<16x2xf32> {moe.saved = "saved.1"}, %[[S2:[^:]*]]: tensor<16x2xi32> {moe.saved = "saved.2"}, %[[S3:[^:]*]]: tensor<32x8xf32> {moe.saved = "saved.3"}, %[[S4:[^:]*]]: tensor<1x4xi32> {moe.saved = "saved.4"}, %[[S5:[^:]*]]: tensor<32x8xf32> {moe.saved = "saved.5"}, %[[S6:[^:]*]]: tensor<16x2xi32> {moe.saved = "saved.6"}, %[[S7:[^:]*]]: tensor<16x4xf32> {moe.saved = "saved.7"}, %[[S8:[^:]*]]: tensor<16x8xf32> {moe.saved = "saved.8"}, %[[S9:[^:]*]]: tensor<16x8xf32> {moe.saved = "saved.9"},
// CHECK-SAME: %[[NW:[^:]*]]: tensor<8xf32> {moe.weight = "norm"}, %[[WR:[^:]*]]: tensor<4x8xf32> {moe.weight = "gate"}, %[[W1:[^:]*]]: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"}, %[[W3:[^:]*]]: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"}, %[[W2:[^:]*]]: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2", moe.weight_transpose})
// CHECK-SAME: -> (tensor<16x8xf32> {moe.output = "grad.hidden_states"}, tensor<8xf32> {moe.output = "grad.norm"}, tensor<4x8xf32> {moe.output = "grad.gate"}, tensor<4x6x8xf32> {moe.output = "grad.experts.{e}.w1"}, tensor<4x6x8xf32> {moe.output = "grad.experts.{e}.w3"}, tensor<4x8x6xf32> {moe.output = "grad.experts.{e}.w2"})
// dy reaches the combine (and, through the residual, the input).
// CHECK: %[[DBUF:.*]], %[[DW:.*]] = moe.combine_grad %[[S3]], %[[S2]], %[[S1]], %[[S0]]
// CHECK: %[[DB:.*]], %[[DG:.*]], %[[DU:.*]], %[[DD:.*]] = moe.expert_ffn_grad %[[S5]] counts %[[S4]] gate %[[W1]] up %[[W3]] down %[[W2]], %[[DBUF]] act = swiglu
// CHECK: %[[DXE:.*]] = moe.dispatch_grad %[[DB]], %[[S2]]
// CHECK: %[[DL:.*]] = moe.topk_grad %[[S7]], %[[S6]], %[[DW]] score = softmax {renormalize}
// CHECK: %[[DXR:.*]], %[[DWR:.*]] = moe.router_grad %[[S8]], %[[WR]], %[[DL]]
// CHECK: %[[DN:.*]] = moe.add %[[DXE]], %[[DXR]]
// CHECK: %[[DXN:.*]], %[[DNW:.*]] = moe.rmsnorm_grad %[[S9]], %[[NW]], %[[DN]]
// CHECK: %[[DX:.*]] = moe.add %[[S0]], %[[DXN]]
// CHECK: return %[[DX]], %[[DNW]], %[[DWR]], %[[DG]], %[[DU]], %[[DD]] :

// CHECK-LABEL: func.func @step_adamw
// CHECK-SAME: (%[[A0:[^:]*]]: tensor<8xf32> {moe.weight = "norm"}
// CHECK-SAME: %[[G0:[^:]*]]: tensor<8xf32> {moe.grad = "grad.norm"}
// CHECK-SAME: %[[M0:[^:]*]]: tensor<8xf32> {moe.state = "norm.exp_avg"}
// CHECK-SAME: %[[V0:[^:]*]]: tensor<8xf32> {moe.state = "norm.exp_avg_sq"}
// CHECK-SAME: %[[HP:[^:]*]]: tensor<8xf32> {moe.hparams = "optimizer.hparams"})
// CHECK-SAME: -> (tensor<8xf32> {moe.output = "norm"}
// CHECK-SAME: tensor<8xf32> {moe.output = "norm.exp_avg"}
// CHECK-SAME: tensor<4x8x6xf32> {moe.output = "experts.{e}.w2.exp_avg_sq"})
// CHECK: moe.adamw %[[A0]], %[[G0]], %[[M0]], %[[V0]], %[[HP]]
// CHECK-COUNT-4: moe.adamw
// CHECK-NOT: moe.bias_update
// CHECK: return

// CHECK-LABEL: func.func @step_sgd
// CHECK-SAME: {moe.state = "norm.momentum_buffer"}
// CHECK-SAME: -> (tensor<8xf32> {moe.output = "norm"}
// CHECK-SAME: tensor<4x8x6xf32> {moe.output = "experts.{e}.w2.momentum_buffer"})
// CHECK-COUNT-5: moe.sgd
// CHECK: return
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "norm"},
                   %wr: tensor<4x8xf32> {moe.weight = "gate"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2", moe.weight_transpose})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<16x8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %1 = moe.layer %0 router %wr gate %w1 up %w3 down %w2
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %2 : tensor<16x8xf32>
}

// -----

// 2. Switch: top-1, capacity with token groups, ReLU, dropped tokens pass
//    through: the combine's gradient has a passthrough part, which is summed
//    into the layer input with the experts' and the router's.
// CHECK-LABEL: func.func @backward
// CHECK: %[[DBUF:.*]], %[[DW:.*]], %[[DP:.*]] = moe.combine_grad %{{.*}}, %{{.*}}, %{{.*}} passthrough %{{.*}}, %{{.*}} : (tensor<4x4x8xf32>, tensor<16x1xi32>, tensor<16x1xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> (tensor<4x4x8xf32>, tensor<16x1xf32>, tensor<16x8xf32>)
// CHECK: %[[DB:.*]], %{{.*}}, %{{.*}} = moe.expert_ffn_grad %{{.*}} counts %{{.*}} up %{{.*}} down %{{.*}}, %[[DBUF]] act = relu : (tensor<4x4x8xf32>, tensor<2x4xi32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>, tensor<4x4x8xf32>) -> (tensor<4x4x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>)
// CHECK: %[[DXE:.*]] = moe.dispatch_grad %[[DB]], %{{.*}} : (tensor<4x4x8xf32>, tensor<16x1xi32>) -> tensor<16x8xf32>
// CHECK: %[[S1:.*]] = moe.add %[[DP]], %[[DXE]]
// CHECK: %[[DL:.*]] = moe.topk_grad %{{.*}}, %{{.*}}, %[[DW]] score = softmax :
// CHECK: %[[DXR:.*]], %{{.*}} = moe.router_grad %{{.*}}, %{{.*}}, %[[DL]]
// CHECK: %[[DX:.*]] = moe.add %[[S1]], %[[DXR]]
// CHECK: return %[[DX]],
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "router"},
                   %wi: tensor<4x6x8xf32> {moe.weight = "experts.{e}.wi"},
                   %wo: tensor<4x8x6xf32> {moe.weight = "experts.{e}.wo"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %y = moe.layer %x router %wr up %wi down %wo
      {num_experts = 4 : i64, top_k = 1 : i64, capacity_factor = 1.0 : f32, token_groups = 2 : i64,
       drop_policy = #moe<drop_policy passthrough>, activation = #moe<activation relu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  return %y : tensor<16x8xf32>
}

// -----

// 3. Aux and z losses: loss = mse + aux + z (each tensor<1xf32>), the loss
//    gradient 1 computed exactly (top-1 softmax over one logit) and saved; the
//    load-balance gradient reaches the scores through expert_load_grad, the
//    z-loss gradient the logits, summed with the gate weights' gradient.
// CHECK-LABEL: func.func @forward_train
// CHECK-SAME: -> (tensor<1xf32> {moe.output = "loss"}, tensor<1xf32> {moe.output = "mse_loss"}, tensor<1xf32> {moe.output = "aux_loss"}, tensor<1xf32> {moe.output = "z_loss"}, tensor<16x8xf32> {moe.output = "saved.0"}, tensor<f32> {moe.output = "saved.1"}
// CHECK: %[[LB:.*]] = moe.load_balance_loss
// CHECK: %[[Z:.*]] = moe.z_loss
// CHECK: %[[MSE:.*]], %[[DY:.*]] = moe.mse_loss
// CHECK: %[[AUX1:.*]] = moe.reshape %[[LB]] : (tensor<f32>) -> tensor<1xf32>
// CHECK: %[[T1:.*]] = moe.add %[[MSE]], %[[AUX1]] : (tensor<1xf32>, tensor<1xf32>) -> tensor<1xf32>
// CHECK: %[[Z1:.*]] = moe.reshape %[[Z]] : (tensor<f32>) -> tensor<1xf32>
// CHECK: %[[LOSS:.*]] = moe.add %[[T1]], %[[Z1]]
// CHECK: %[[L11:.*]] = moe.reshape %[[LOSS]] : (tensor<1xf32>) -> tensor<1x1xf32>
// CHECK: %[[ONE:.*]], %{{.*}}, %{{.*}} = moe.topk %[[L11]] k = 1 score = softmax : (tensor<1x1xf32>)
// CHECK: %[[SEED:.*]] = moe.reshape %[[ONE]] : (tensor<1x1xf32>) -> tensor<f32>
// CHECK: return %[[LOSS]], %[[MSE]], %[[AUX1]], %[[Z1]], %[[DY]], %[[SEED]],
// CHECK-LABEL: func.func @backward
// CHECK-SAME: %[[S1:[^:]*]]: tensor<f32> {moe.saved = "saved.1"}
// CHECK: %[[DZ:.*]] = moe.z_loss_grad %{{.*}}, %[[S1]] tokens = 16 coeff = 1.000000e-03
// CHECK: %[[DST:.*]] = moe.load_balance_loss_grad %{{.*}}, %[[S1]] tokens = 16 k = 2 coeff = 0.00999999977
// CHECK: %[[DS:.*]] = moe.expert_load_grad %[[DST]] : (tensor<2x4xf32>) -> tensor<16x4xf32>
// CHECK: %[[DL:.*]] = moe.topk_grad %{{.*}}, %{{.*}}, %{{.*}} dscores %[[DS]] score = softmax
// CHECK: %[[DLS:.*]] = moe.add %[[DZ]], %[[DL]]
// CHECK: moe.router_grad %{{.*}}, %{{.*}}, %[[DLS]]
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "router"},
                   %g: tensor<4x6x8xf32> {moe.weight = "experts.{e}.g"},
                   %u: tensor<4x6x8xf32> {moe.weight = "experts.{e}.u"},
                   %d: tensor<4x8x6xf32> {moe.weight = "experts.{e}.d"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}, tensor<f32> {moe.output = "aux_loss"},
        tensor<f32> {moe.output = "z_loss"}) {
  %y:3 = moe.layer %x router %wr gate %g up %u down %d
      {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation geglu>,
       aux_loss_coeff = 0.01 : f32, z_loss_coeff = 0.001 : f32}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>)
      -> (tensor<16x8xf32>, tensor<f32>, tensor<f32>)
  return %y#0, %y#1, %y#2 : tensor<16x8xf32>, tensor<f32>, tensor<f32>
}

// -----

// 4. A dense MLP with a sigmoid gate (Qwen's shared expert shape): the
//    gradient of the sigmoid gate weight is a result like any other.
// CHECK-LABEL: func.func @backward
// CHECK-SAME: -> (tensor<16x8xf32> {moe.output = "grad.hidden_states"}, tensor<12x8xf32> {moe.output = "grad.mlp.gate"}, tensor<12x8xf32> {moe.output = "grad.mlp.up"}, tensor<8x12xf32> {moe.output = "grad.mlp.down"}, tensor<1x8xf32> {moe.output = "grad.mlp.sigmoid_gate"})
// CHECK: %[[DX:.*]], %[[DG:.*]], %[[DU:.*]], %[[DD:.*]], %[[DS:.*]] = moe.mlp_grad %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} sigmoid_gate %{{.*}}, %{{.*}} act = swiglu
// CHECK: %[[SUM:.*]] = moe.add %{{.*}}, %[[DX]]
// CHECK: return %[[SUM]], %[[DG]], %[[DU]], %[[DD]], %[[DS]] :
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %g: tensor<12x8xf32> {moe.weight = "mlp.gate"},
                   %u: tensor<12x8xf32> {moe.weight = "mlp.up"},
                   %d: tensor<8x12xf32> {moe.weight = "mlp.down"},
                   %s: tensor<1x8xf32> {moe.weight = "mlp.sigmoid_gate"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.mlp %x gate %g up %u down %d sigmoid_gate %s act = swiglu : (tensor<16x8xf32>, tensor<12x8xf32>, tensor<12x8xf32>, tensor<8x12xf32>, tensor<1x8xf32>) -> tensor<16x8xf32>
  %1 = moe.add %x, %0 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %1 : tensor<16x8xf32>
}

// -----

// 5. DeepSeek-V3: sigmoid scores, selection bias, group-limited routing,
//    routed scaling, a shared expert. The bias has no gradient; forward_train
//    returns the expert counts (load.<bias>, from an expert_load the pass adds
//    since the layer has no aux loss) and both steps end with the bias update.
// CHECK-LABEL: func.func @forward_train
// CHECK-SAME: tensor<8xf32> {moe.output = "load.mlp.gate.e_score_correction_bias"})
// CHECK: %[[W:.*]], %[[I:.*]], %[[SC:.*]] = moe.topk %{{.*}} bias %{{.*}} k = 2 score = sigmoid
// CHECK: %[[ST:.*]] = moe.expert_load %[[SC]], %[[I]] : (tensor<16x8xf32>, tensor<16x2xi32>) -> tensor<2x8xf32>
// CHECK: %[[LOAD:.*]] = moe.load_counts %[[ST]] : (tensor<2x8xf32>) -> tensor<8xf32>
// CHECK: return {{.*}}, %[[LOAD]] :
// CHECK-LABEL: func.func @backward
// CHECK: moe.topk_grad %{{.*}}, %{{.*}}, %{{.*}} score = sigmoid {renormalize, routed_scaling = 2.500000e+00 : f32}
// CHECK-NOT: grad.mlp.gate.e_score_correction_bias
// CHECK: return
// CHECK-LABEL: func.func @step_adamw
// CHECK-SAME: %[[B:[^:]*]]: tensor<8xf32> {moe.weight = "mlp.gate.e_score_correction_bias"}
// CHECK-SAME: %[[HP:[^:]*]]: tensor<8xf32> {moe.hparams = "optimizer.hparams"}, %[[L:[^:]*]]: tensor<8xf32> {moe.saved = "load.mlp.gate.e_score_correction_bias"})
// CHECK-SAME: tensor<8xf32> {moe.output = "mlp.gate.e_score_correction_bias"})
// CHECK-COUNT-6: moe.adamw
// CHECK: %[[NB:.*]] = moe.bias_update %[[B]], %[[L]], %[[HP]] tokens = 16 k = 2
// CHECK: return {{.*}}, %[[NB]] :
// CHECK-LABEL: func.func @step_sgd
// CHECK-COUNT-6: moe.sgd
// CHECK: moe.bias_update
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<8x8xf32> {moe.weight = "mlp.gate.weight"},
                   %b: tensor<8xf32> {moe.weight = "mlp.gate.e_score_correction_bias"},
                   %g: tensor<8x4x8xf32> {moe.weight = "mlp.experts.{e}.gate_proj.weight"},
                   %u: tensor<8x4x8xf32> {moe.weight = "mlp.experts.{e}.up_proj.weight"},
                   %d: tensor<8x8x4xf32> {moe.weight = "mlp.experts.{e}.down_proj.weight"},
                   %sg: tensor<4x8xf32> {moe.weight = "mlp.shared_experts.gate_proj.weight"},
                   %su: tensor<4x8xf32> {moe.weight = "mlp.shared_experts.up_proj.weight"},
                   %sd: tensor<8x4xf32> {moe.weight = "mlp.shared_experts.down_proj.weight"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %y = moe.layer %x router %wr bias %b gate %g up %u down %d shared_gate %sg shared_up %su shared_down %sd
      {num_experts = 8 : i64, top_k = 2 : i64, score_func = #moe<score_func sigmoid>, renormalize,
       routed_scaling = 2.5 : f32, num_groups = 4 : i64, groups_kept = 2 : i64,
       group_score = #moe<group_score top2_sum>, activation = #moe<activation swiglu>,
       num_shared_experts = 1 : i64, shared_intermediate = 4 : i64}
      : (tensor<16x8xf32>, tensor<8x8xf32>, tensor<8xf32>, tensor<8x4x8xf32>, tensor<8x4x8xf32>, tensor<8x8x4xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<16x8xf32>
  return %y : tensor<16x8xf32>
}
