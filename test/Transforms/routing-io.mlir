// RUN: moe-opt %s -moe-decompose -canonicalize -moe-routing-io | FileCheck %s
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard=mesh=ep=2,tp=2 -moe-drop-duplicate-tokens -moe-routing-io | FileCheck %s --check-prefix=SHARD
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard=mesh=ep=2 -moe-differentiate -moe-routing-io | FileCheck %s --check-prefix=TRAIN

// moe-routing-io: @forward returns each layer's experts and gate weights
// (layer keys from the router names: 3 and 5), @forward_replay takes the
// experts and forces them (moe.topk_forced), @forward_train_replay does the
// same to @forward_train.

// CHECK-LABEL: func.func @forward(
// CHECK-SAME: -> (tensor<16x8xf32> {moe.output = "hidden_states"}, tensor<16x2xi32> {moe.output = "routing.3.experts"}, tensor<16x2xf32> {moe.output = "routing.3.weights"}, tensor<16x1xi32> {moe.output = "routing.5.experts"}, tensor<16x1xf32> {moe.output = "routing.5.weights"})
// CHECK: %[[W3:.*]], %[[I3:.*]], %{{.*}} = moe.topk
// CHECK: %[[W5:.*]], %[[I5:.*]], %{{.*}} = moe.topk
// CHECK: return %{{.*}}, %[[I3]], %[[W3]], %[[I5]], %[[W5]] :
// CHECK-LABEL: func.func @forward_replay(
// CHECK-SAME: %[[F3:[^:]*]]: tensor<16x2xi32> {moe.input = "routing.3.experts"}, %[[F5:[^:]*]]: tensor<16x1xi32> {moe.input = "routing.5.experts"})
// CHECK-SAME: -> (tensor<16x8xf32> {moe.output = "hidden_states"}, tensor<16x2xi32> {moe.output = "routing.3.experts"}, tensor<16x2xf32> {moe.output = "routing.3.weights"}, tensor<16x1xi32> {moe.output = "routing.5.experts"}, tensor<16x1xf32> {moe.output = "routing.5.weights"})
// CHECK-NOT: moe.topk {{.*}}k =
// CHECK: %[[R3:.*]], %[[J3:.*]], %{{.*}} = moe.topk_forced %{{.*}}, %[[F3]] score = softmax {renormalize}
// CHECK: moe.assign %[[J3]]
// CHECK-NOT: moe.topk {{.*}}k =
// CHECK: %[[R5:.*]], %[[J5:.*]], %{{.*}} = moe.topk_forced %{{.*}}, %[[F5]] score = softmax :
// CHECK-NOT: moe.topk {{.*}}k =
// CHECK: return %{{.*}}, %[[J3]], %[[R3]], %[[J5]], %[[R5]] :

// Sharded: token rows, split like hidden_states (dp, ep), replicated over tp.
// SHARD-LABEL: func.func @forward(
// SHARD-SAME: tensor<8x2xi32> {moe.global_shape = array<i64: 16, 2>, moe.output = "routing.3.experts", moe.shard = {{\[\[}}"dp", "ep"], []]}
// SHARD-LABEL: func.func @forward_replay(
// SHARD-SAME: tensor<8x2xi32> {moe.global_shape = array<i64: 16, 2>, moe.input = "routing.3.experts", moe.shard = {{\[\[}}"dp", "ep"], []]}

// Training: forward_train_replay is forward_train with the experts given
// (same results, so backward takes its saved values); backward never
// selects experts: it reads the kept indices.
// TRAIN-LABEL: func.func @forward_train(
// TRAIN-SAME: moe.output = "loss"
// TRAIN-SAME: moe.output = "routing.3.experts"
// TRAIN-SAME: moe.output = "routing.5.weights"
// TRAIN-LABEL: func.func @forward_train_replay(
// TRAIN-SAME: moe.input = "routing.3.experts"
// TRAIN-SAME: -> (tensor<1xf32> {moe.output = "loss"}
// TRAIN-SAME: moe.output = "routing.5.weights"
// TRAIN: moe.topk_forced
// TRAIN: moe.topk_forced
// TRAIN-LABEL: func.func @backward(
// TRAIN-NOT: moe.topk{{(_forced)?}} 
// TRAIN: moe.topk_grad
// TRAIN-NOT: moe.topk{{(_forced)?}} 
// TRAIN: moe.topk_grad
// TRAIN-NOT: moe.topk{{(_forced)?}} 
// TRAIN-LABEL: func.func @step_adamw(

func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "model.layers.3.mlp.gate.weight"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "model.layers.3.mlp.experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "model.layers.3.mlp.experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "model.layers.3.mlp.experts.{e}.w2"},
                   %vr: tensor<4x8xf32> {moe.weight = "model.layers.5.mlp.gate.weight"},
                   %vi: tensor<4x6x8xf32> {moe.weight = "model.layers.5.mlp.experts.{e}.wi"},
                   %vo: tensor<4x8x6xf32> {moe.weight = "model.layers.5.mlp.experts.{e}.wo"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %1 = moe.layer %x router %wr gate %w1 up %w3 down %w2
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  %3 = moe.layer %2 router %vr up %vi down %vo
      {num_experts = 4 : i64, top_k = 1 : i64, capacity_factor = 1.0 : f32, token_groups = 2 : i64,
       activation = #moe<activation relu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  %4 = moe.add %2, %3 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %4 : tensor<16x8xf32>
}
