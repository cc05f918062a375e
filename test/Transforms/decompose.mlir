// RUN: moe-opt %s -moe-decompose -split-input-file | FileCheck %s

// One moe.layer per model family, expanded into primitives. The checks pin
// the op sequence and the attributes that carry each family's semantics.

// Mixtral-like: softmax -> top-2 -> renormalize, SwiGLU, dropless.
// CHECK-LABEL: func.func @mixtral
// CHECK-SAME: (%[[X:.*]]: tensor<64x32xf32>, %[[WR:.*]]: tensor<8x32xf32>, %[[G:.*]]: tensor<8x48x32xf32>, %[[U:.*]]: tensor<8x48x32xf32>, %[[D:.*]]: tensor<8x32x48xf32>)
// CHECK: %[[L:.*]] = moe.router %[[X]], %[[WR]] : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
// CHECK: %[[W:.*]], %[[I:.*]], %{{.*}} = moe.topk %[[L]] k = 2 score = softmax {renormalize}
// CHECK: %[[P:.*]], %[[C:.*]] = moe.assign %[[I]] experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
// CHECK: %[[B:.*]] = moe.dispatch %[[X]], %[[P]] : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
// CHECK: %[[Y:.*]] = moe.expert_ffn %[[B]] counts %[[C]] gate %[[G]] up %[[U]] down %[[D]] act = swiglu
// CHECK: %[[O:.*]] = moe.combine %[[Y]], %[[P]], %[[W]] : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
// CHECK-NOT: moe.layer
// CHECK: return %[[O]]
func.func @mixtral(%x: tensor<64x32xf32>, %wr: tensor<8x32xf32>, %g: tensor<8x48x32xf32>, %u: tensor<8x48x32xf32>, %d: tensor<8x32x48xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr gate %g up %u down %d {num_experts = 8 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// Switch-like: top-1, capacity factor 1.0 over 4 token groups (C = ceil(16 *
// 1 / 8) = 2), ReLU, dropped tokens pass through (Hugging Face behaviour).
// CHECK-LABEL: func.func @switch
// CHECK: moe.topk %{{.*}} k = 1 score = softmax :
// CHECK: %[[P:.*]], %[[C:.*]] = moe.assign %{{.*}} experts = 8 {capacity = 2 : i64, groups = 4 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<4x8xi32>)
// CHECK: %[[B:.*]] = moe.dispatch %[[X:.*]], %[[P]] : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x8x32xf32>
// CHECK: %[[Y:.*]] = moe.expert_ffn %[[B]] counts %[[C]] up %{{.*}} down %{{.*}} act = relu : (tensor<8x8x32xf32>, tensor<4x8xi32>,
// CHECK: moe.combine %[[Y]], %[[P]], %{{.*}} passthrough %[[X]]
func.func @switch(%x: tensor<64x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x48x32xf32>, %d: tensor<8x32x48xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 1 : i64, capacity_factor = 1.0 : f32, token_groups = 4 : i64, drop_policy = #moe<drop_policy passthrough>, activation = #moe<activation relu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// GShard-like: top-2, capacity factor 1.25 over 2 groups (C = ceil(1.25 * 32
// * 2 / 8) = 10), GeLU, load-balancing loss.
// CHECK-LABEL: func.func @gshard
// CHECK: %[[L:.*]] = moe.router
// CHECK: %{{.*}}, %[[I:.*]], %[[S:.*]] = moe.topk %[[L]] k = 2 score = softmax :
// CHECK: moe.assign %[[I]] experts = 8 {capacity = 10 : i64, groups = 2 : i64}
// CHECK: moe.dispatch {{.*}} -> tensor<8x20x32xf32>
// CHECK: moe.expert_ffn {{.*}} act = gelu
// CHECK: %[[O:.*]] = moe.combine
// CHECK: %[[ST:.*]] = moe.expert_load %[[S]], %[[I]] : (tensor<64x8xf32>, tensor<64x2xi32>) -> tensor<2x8xf32>
// CHECK: %[[AUX:.*]] = moe.load_balance_loss %[[ST]] tokens = 64 k = 2 coeff = 0.00999999977
// CHECK: return %[[O]], %[[AUX]]
func.func @gshard(%x: tensor<64x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x48x32xf32>, %d: tensor<8x32x48xf32>) -> (tensor<64x32xf32>, tensor<f32>) {
  %y, %aux = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 2 : i64, capacity_factor = 1.25 : f32, token_groups = 2 : i64, aux_loss_coeff = 0.01 : f32, activation = #moe<activation gelu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> (tensor<64x32xf32>, tensor<f32>)
  return %y, %aux : tensor<64x32xf32>, tensor<f32>
}

// -----

// DeepSeek-V2-like: group-limited greedy (8 groups, keep 3, group score =
// max), top-6 of 16 fine-grained experts, routed scaling, 2 shared experts
// fused into one MLP of 2 x 16.
// CHECK-LABEL: func.func @deepseek_v2
// CHECK: moe.topk %{{.*}} k = 6 score = softmax {groups_kept = 3 : i64, num_groups = 8 : i64, routed_scaling = 1.600000e+01 : f32}
// CHECK: moe.assign %{{.*}} experts = 16 : (tensor<64x6xi32>) -> (tensor<64x6xi32>, tensor<1x16xi32>)
// CHECK: moe.dispatch {{.*}} -> tensor<384x32xf32>
// CHECK: %[[R:.*]] = moe.combine
// CHECK: %[[S:.*]] = moe.mlp %[[X:.*]] gate %{{.*}} up %{{.*}} down %{{.*}} act = swiglu : (tensor<64x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>) -> tensor<64x32xf32>
// CHECK: %[[O:.*]] = moe.add %[[R]], %[[S]]
// CHECK: return %[[O]]
func.func @deepseek_v2(%x: tensor<64x32xf32>, %wr: tensor<16x32xf32>, %g: tensor<16x16x32xf32>, %u: tensor<16x16x32xf32>, %d: tensor<16x32x16xf32>, %sg: tensor<32x32xf32>, %su: tensor<32x32xf32>, %sd: tensor<32x32xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr gate %g up %u down %d shared_gate %sg shared_up %su shared_down %sd {num_experts = 16 : i64, top_k = 6 : i64, num_groups = 8 : i64, groups_kept = 3 : i64, routed_scaling = 16.0 : f32, num_shared_experts = 2 : i64, shared_intermediate = 32 : i64, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<16x32xf32>, tensor<16x16x32xf32>, tensor<16x16x32xf32>, tensor<16x32x16xf32>, tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// DeepSeek-V3-like: sigmoid scores, selection bias, group score = sum of the
// two best, renormalize, routed scaling 2.5, one shared expert.
// CHECK-LABEL: func.func @deepseek_v3
// CHECK-SAME: %[[BIAS:[^:]*]]: tensor<16xf32>
// CHECK: moe.topk %{{.*}} bias %[[BIAS]] k = 4 score = sigmoid {group_score = #moe<group_score top2_sum>, groups_kept = 2 : i64, num_groups = 4 : i64, renormalize, routed_scaling = 2.500000e+00 : f32}
// CHECK: moe.expert_ffn
// CHECK: moe.combine
// CHECK: moe.mlp
// CHECK: moe.add
func.func @deepseek_v3(%x: tensor<64x32xf32>, %wr: tensor<16x32xf32>, %b: tensor<16xf32>, %g: tensor<16x16x32xf32>, %u: tensor<16x16x32xf32>, %d: tensor<16x32x16xf32>, %sg: tensor<16x32xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr bias %b gate %g up %u down %d shared_gate %sg shared_up %su shared_down %sd {num_experts = 16 : i64, top_k = 4 : i64, score_func = #moe<score_func sigmoid>, renormalize, routed_scaling = 2.5 : f32, num_groups = 4 : i64, groups_kept = 2 : i64, group_score = #moe<group_score top2_sum>, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<16x32xf32>, tensor<16xf32>, tensor<16x16x32xf32>, tensor<16x16x32xf32>, tensor<16x32x16xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// Qwen-MoE-like: top-4 without renormalization (norm_topk_prob = false) and a
// shared expert scaled by sigmoid(x . w_gate).
// CHECK-LABEL: func.func @qwen_moe
// CHECK-SAME: %[[SGW:[^:]*]]: tensor<1x32xf32>
// CHECK: moe.topk %{{.*}} k = 4 score = softmax :
// CHECK: %[[R:.*]] = moe.combine
// CHECK: %[[S:.*]] = moe.mlp %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} sigmoid_gate %[[SGW]] act = swiglu
// CHECK: moe.add %[[R]], %[[S]]
func.func @qwen_moe(%x: tensor<64x32xf32>, %wr: tensor<16x32xf32>, %g: tensor<16x16x32xf32>, %u: tensor<16x16x32xf32>, %d: tensor<16x32x16xf32>, %sg: tensor<64x32xf32>, %su: tensor<64x32xf32>, %sd: tensor<32x64xf32>, %sgw: tensor<1x32xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr gate %g up %u down %d shared_gate %sg shared_up %su shared_down %sd shared_sigmoid_gate %sgw {num_experts = 16 : i64, top_k = 4 : i64, num_shared_experts = 1 : i64, shared_intermediate = 64 : i64, shared_gated, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<16x32xf32>, tensor<16x16x32xf32>, tensor<16x16x32xf32>, tensor<16x32x16xf32>, tensor<64x32xf32>, tensor<64x32xf32>, tensor<32x64xf32>, tensor<1x32xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// PR-MoE / residual MoE: top-1 expert plus a fixed dense MLP branch (the
// residual expert), GeLU.
// CHECK-LABEL: func.func @pr_moe
// CHECK: moe.topk %{{.*}} k = 1 score = softmax :
// CHECK: moe.expert_ffn {{.*}} act = gelu
// CHECK: %[[R:.*]] = moe.combine
// CHECK: %[[S:.*]] = moe.mlp %{{.*}} up %{{.*}} down %{{.*}} act = gelu : (tensor<64x32xf32>, tensor<128x32xf32>, tensor<32x128xf32>)
// CHECK: moe.add %[[R]], %[[S]]
func.func @pr_moe(%x: tensor<64x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x128x32xf32>, %d: tensor<4x32x128xf32>, %su: tensor<128x32xf32>, %sd: tensor<32x128xf32>) -> tensor<64x32xf32> {
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd {num_experts = 4 : i64, top_k = 1 : i64, num_shared_experts = 1 : i64, shared_intermediate = 128 : i64, activation = #moe<activation gelu>} : (tensor<64x32xf32>, tensor<4x32xf32>, tensor<4x128x32xf32>, tensor<4x32x128xf32>, tensor<128x32xf32>, tensor<32x128xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// -----

// ST-MoE-like: GEGLU, capacity with a minimum, load-balance and z-loss.
// (C = max(3, ceil(1.25 * 64 * 2 / 32)) = max(3, 5) = 5.)
// CHECK-LABEL: func.func @st_moe
// CHECK: %[[L:.*]] = moe.router
// CHECK: moe.assign %{{.*}} experts = 32 {capacity = 5 : i64}
// CHECK: moe.expert_ffn {{.*}} act = geglu
// CHECK: moe.load_balance_loss %{{.*}} tokens = 64 k = 2 coeff = 0.00999999977
// CHECK: moe.z_loss %[[L]] tokens = 64 coeff = 1.000000e-03
func.func @st_moe(%x: tensor<64x32xf32>, %wr: tensor<32x32xf32>, %g: tensor<32x48x32xf32>, %u: tensor<32x48x32xf32>, %d: tensor<32x32x48xf32>) -> (tensor<64x32xf32>, tensor<f32>, tensor<f32>) {
  %y, %aux, %z = moe.layer %x router %wr gate %g up %u down %d {num_experts = 32 : i64, top_k = 2 : i64, capacity_factor = 1.25 : f32, min_capacity = 3 : i64, aux_loss_coeff = 0.01 : f32, z_loss_coeff = 0.001 : f32, activation = #moe<activation geglu>} : (tensor<64x32xf32>, tensor<32x32xf32>, tensor<32x48x32xf32>, tensor<32x48x32xf32>, tensor<32x32x48xf32>) -> (tensor<64x32xf32>, tensor<f32>, tensor<f32>)
  return %y, %aux, %z : tensor<64x32xf32>, tensor<f32>, tensor<f32>
}

