// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=dp=2,ep=2" -canonicalize -cse -moe-differentiate=zero1 | FileCheck %s

// ZeRO-1 (moe-differentiate{zero1}) on dp=2 x ep=2: the gradient of every
// weight replicated over dp is summed over its other axes (the router and the
// norm over ep, in one bucket) and reduce-scattered over dp along dimension 0;
// gradients and optimizer state carry dp in their shard spec (after ep for the
// experts); the steps update this rank's chunk and all-gather the weight.

// CHECK-LABEL: func.func @backward
// CHECK-SAME: tensor<2x6x8xf32> {moe.global_shape = array<i64: 8, 6, 8>, moe.output = "grad.experts.{e}.w1", moe.shard = {{\[\[}}"ep", "dp"], [], []]}
// CHECK: %[[B:.*]] = moe.pack %{{.*}}, %{{.*}} : (tensor<8xf32>, tensor<8x8xf32>) -> tensor<72xf32>
// CHECK: %[[R:.*]] = moe.all_reduce %[[B]] on @mesh ["ep"]
// CHECK: %[[U:.*]]:2 = moe.unpack %[[R]]
// CHECK: moe.reduce_scatter %[[U]]#0 on @mesh ["dp"] dim = 0 : (tensor<8xf32>) -> tensor<4xf32>
// CHECK: moe.reduce_scatter %[[U]]#1 on @mesh ["dp"] dim = 0 : (tensor<8x8xf32>) -> tensor<4x8xf32>
// CHECK: moe.reduce_scatter %{{.*}} on @mesh ["dp"] dim = 0 : (tensor<4x6x8xf32>) -> tensor<2x6x8xf32>
// CHECK-NOT: moe.all_reduce %{{.*}} on @mesh ["dp"

// CHECK-LABEL: func.func @step_adamw
// CHECK-SAME: %[[W:[^:]*]]: tensor<8xf32> {moe.global_shape = array<i64: 8>, moe.shard = {{\[\[}}]], moe.weight = "norm"}
// CHECK-SAME: %[[G:[^:]*]]: tensor<4xf32> {moe.global_shape = array<i64: 8>, moe.grad = "grad.norm", moe.shard = {{\[\[}}"dp"]]}
// CHECK-SAME: tensor<4xf32> {moe.global_shape = array<i64: 8>, moe.shard = {{\[\[}}"dp"]], moe.state = "norm.exp_avg"}
// CHECK-SAME: -> (tensor<8xf32> {moe.global_shape = array<i64: 8>, moe.output = "norm", moe.shard = {{\[\[}}]]}
// CHECK-SAME: tensor<4xf32> {moe.global_shape = array<i64: 8>, moe.output = "norm.exp_avg", moe.shard = {{\[\[}}"dp"]]}
// CHECK: %[[S:.*]] = moe.slice %[[W]] on @mesh ["dp"] dim = 0 : (tensor<8xf32>) -> tensor<4xf32>
// CHECK: %[[NW:.*]], %{{.*}}, %{{.*}} = moe.adamw %[[S]], %[[G]],
// CHECK: moe.all_gather %[[NW]] on @mesh ["dp"] dim = 0 : (tensor<4xf32>) -> tensor<8xf32>
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "norm"},
                   %wr: tensor<8x8xf32> {moe.weight = "gate"},
                   %w1: tensor<8x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<8x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<8x8x6xf32> {moe.weight = "experts.{e}.w2"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<16x8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %1 = moe.layer %0 router %wr gate %w1 up %w3 down %w2
      {num_experts = 8 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<8x8xf32>, tensor<8x6x8xf32>, tensor<8x6x8xf32>, tensor<8x8x6xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %2 : tensor<16x8xf32>
}
