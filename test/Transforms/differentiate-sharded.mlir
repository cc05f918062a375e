// RUN: moe-opt %s -split-input-file -moe-decompose -canonicalize -moe-shard="mesh=dp=2,ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate | FileCheck %s

// moe-differentiate on a sharded program (dp=2, ep=2, tp=2 with DTD; a
// Qwen-style layer whose shared expert, split over tp, has a replicated
// sigmoid gate):
//  - the mse loss is summed over dp x ep, with the global element count;
//  - every collective has its adjoint: the DTD slice/all-gather pair and the
//    uneven all-to-alls (counts swapped) appear mirrored, so the backward's
//    all-to-all bytes are the forward's;
//  - the tp-split MLP's input and sigmoid-gate gradients are tp partial sums
//    and are summed over tp; the all-reduce over tp after it is the identity;
//  - weight gradients are summed over the axes of spec 7.1 in buckets: the
//    router, norm and shared-expert weights over dp x ep, the experts over dp;
//  - gradients and state carry their weight's moe.shard / moe.global_shape.

// CHECK-LABEL: func.func @forward_train
// CHECK-SAME: %{{[^:]*}}: tensor<4x8xf32> {moe.global_shape = array<i64: 16, 8>, moe.input = "targets", moe.shard = {{\[\[}}"dp", "ep"], []]}
// CHECK: %[[MSE:.*]], %{{.*}} = moe.mse_loss %{{.*}}, %{{.*}} total = 128
// CHECK: %[[LOSS:.*]] = moe.all_reduce %[[MSE]] on @mesh ["dp", "ep"] : (tensor<1xf32>) -> tensor<1xf32>
// CHECK: return %[[LOSS]], %[[LOSS]],

// CHECK-LABEL: func.func @backward
// CHECK-SAME: -> (tensor<4x8xf32> {moe.global_shape = array<i64: 16, 8>, moe.output = "grad.hidden_states", moe.shard = {{\[\[}}"dp", "ep"], []]}
// CHECK-SAME: tensor<2x6x8xf32> {moe.global_shape = array<i64: 4, 6, 8>, moe.output = "grad.experts.{e}.w1", moe.shard = {{\[\[}}"ep"], [], []]}
// CHECK: %[[DX:.*]], %{{.*}}, %{{.*}}, %{{.*}}, %[[DSG:.*]] = moe.mlp_grad
// CHECK: %[[DXS:.*]] = moe.all_reduce %[[DX]] on @mesh ["tp"]
// CHECK: %[[DSGS:.*]] = moe.all_reduce %[[DSG]] on @mesh ["tp"]
// CHECK: %[[DBUF:.*]], %{{.*}} = moe.combine_grad
// CHECK: %[[S1:.*]] = moe.slice %[[DBUF]] on @mesh ["tp"] dim = 1
// CHECK: %[[A1:.*]] = moe.all_to_all_v %[[S1]], %[[SEND:[^,]*]], %[[RECV:[^ ]*]] on @mesh ["ep"]
// CHECK: %[[G1:.*]] = moe.all_gather %[[A1]] on @mesh ["tp"] dim = 1
// CHECK: %[[DE:.*]], %{{.*}}, %{{.*}}, %{{.*}} = moe.expert_ffn_grad %{{.*}} counts %[[RECV]] gate %{{.*}}, %[[G1]] act = swiglu
// CHECK: %[[S2:.*]] = moe.slice %[[DE]] on @mesh ["tp"] dim = 1
// CHECK: %[[A2:.*]] = moe.all_to_all_v %[[S2]], %[[RECV]], %[[SEND]] on @mesh ["ep"]
// CHECK: %[[G2:.*]] = moe.all_gather %[[A2]] on @mesh ["tp"] dim = 1
// CHECK: moe.dispatch_grad %[[G2]]
// CHECK: %[[B1:.*]] = moe.pack %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[DSGS]] : (tensor<8xf32>, tensor<4x8xf32>, tensor<2x8xf32>, tensor<2x8xf32>, tensor<8x2xf32>, tensor<1x8xf32>) -> tensor<96xf32>
// CHECK: %[[R1:.*]] = moe.all_reduce %[[B1]] on @mesh ["dp", "ep"] : (tensor<96xf32>) -> tensor<96xf32>
// CHECK: %[[U1:.*]]:6 = moe.unpack %[[R1]]
// CHECK: %[[B2:.*]] = moe.pack %{{.*}}, %{{.*}}, %{{.*}} : (tensor<2x6x8xf32>, tensor<2x6x8xf32>, tensor<2x8x6xf32>) -> tensor<288xf32>
// CHECK: %[[R2:.*]] = moe.all_reduce %[[B2]] on @mesh ["dp"]
// CHECK: %[[U2:.*]]:3 = moe.unpack %[[R2]]
// CHECK: return %{{.*}}, %[[U1]]#0, %[[U1]]#1, %[[U2]]#0, %[[U2]]#1, %[[U2]]#2, %[[U1]]#2, %[[U1]]#3, %[[U1]]#4, %[[U1]]#5 :

// CHECK-LABEL: func.func @step_adamw
// CHECK-SAME: %{{[^:]*}}: tensor<2x6x8xf32> {moe.global_shape = array<i64: 4, 6, 8>, moe.grad = "grad.experts.{e}.w1", moe.shard = {{\[\[}}"ep"], [], []]}
// CHECK-SAME: %{{[^:]*}}: tensor<2x6x8xf32> {moe.global_shape = array<i64: 4, 6, 8>, moe.shard = {{\[\[}}"ep"], [], []], moe.state = "experts.{e}.w1.exp_avg"}
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "norm"},
                   %wr: tensor<4x8xf32> {moe.weight = "gate"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2"},
                   %sg: tensor<4x8xf32> {moe.weight = "shared.gate"},
                   %su: tensor<4x8xf32> {moe.weight = "shared.up"},
                   %sd: tensor<8x4xf32> {moe.weight = "shared.down"},
                   %ss: tensor<1x8xf32> {moe.weight = "shared.sigmoid_gate"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<16x8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %1 = moe.layer %0 router %wr gate %w1 up %w3 down %w2 shared_gate %sg shared_up %su shared_down %sd shared_sigmoid_gate %ss
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>,
       num_shared_experts = 1 : i64, shared_intermediate = 4 : i64, shared_gated}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<8x4xf32>, tensor<1x8xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %2 : tensor<16x8xf32>
}

// -----

// Expert-tp under DTD: the forward's reduce-scatter over tp comes back as an
// all-gather, and the tp sum of the expert FFN's input gradient with the
// adjoint of the gather before it is one reduce-scatter, so the backward's
// collectives mirror the forward's one for one.
// RUN: moe-opt %s -split-input-file -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2 expert-tp" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate | FileCheck %s --check-prefix=ETP
// ETP-LABEL: func.func @backward
// ETP: moe.slice %{{.*}} on @mesh ["tp"] dim = 1
// ETP-NEXT: moe.all_to_all_v
// ETP-NEXT: moe.all_gather %{{.*}} on @mesh ["tp"] dim = 1
// ETP-NEXT: %[[DX:.*]], %{{.*}}, %{{.*}}, %{{.*}} = moe.expert_ffn_grad
// ETP-NEXT: moe.reduce_scatter %[[DX]] on @mesh ["tp"] dim = 1
// ETP-NEXT: moe.all_to_all_v
// ETP-NEXT: moe.all_gather %{{.*}} on @mesh ["tp"] dim = 1
// ETP-NOT: moe.all_reduce %{{.*}} on @mesh ["tp"]
// ETP: return
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "gate"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %y = moe.layer %x router %wr gate %w1 up %w3 down %w2
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  return %y : tensor<16x8xf32>
}
