// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-overlap="degree=2" | FileCheck %s

// Training (after moe-differentiate): forward_train is pipelined, and the
// values it saves from inside the exchange (the FFN's input, the buffer that
// comes back) are the interleaves of the chunks; the backward is pipelined
// too (overlap-backward.mlir): a data gradient per chunk, one weight
// gradient over the whole buffer.
// CHECK-LABEL: func.func @forward_train
// CHECK: %[[X0:.*]] = moe.wait
// CHECK: %[[Y0:.*]] = moe.expert_ffn %[[X0]]
// CHECK: %[[X1:.*]] = moe.wait
// CHECK: %[[Y1:.*]] = moe.expert_ffn %[[X1]]
// CHECK: %[[B0:.*]] = moe.wait
// CHECK: %[[B1:.*]] = moe.wait
// CHECK-DAG: %[[XS:.*]] = moe.interleave %[[X0]], %[[X1]] dim = 1 : {{.*}} -> tensor<4x16x32xf32>
// CHECK-DAG: %[[BS:.*]] = moe.interleave %[[B0]], %[[B1]] dim = 1 : {{.*}} -> tensor<8x8x32xf32>
// CHECK: return {{.*}}%[[BS]], %[[XS]]
// CHECK-LABEL: func.func @backward
// CHECK: moe.all_to_all_start
// CHECK: moe.expert_ffn_grad_data {{.*}} -> (tensor<4x8x32xf32>, tensor<4x8x96xf32>, tensor<4x8x96xf32>)
// CHECK: moe.expert_ffn_grad_data
// CHECK: moe.expert_ffn_grad_weight {{.*}} : (tensor<4x16x32xf32>
// CHECK-NOT: moe.expert_ffn_grad
// CHECK-LABEL: func.func @step_adamw
func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x16x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x16x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x16x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x16x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
