// RUN: moe-opt %s -moe-shard | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=2" | FileCheck %s

// With a moe.mesh in the module and no mesh option, moe-shard shards over
// that mesh (axis order and symbol name are the module's); an option that
// agrees changes nothing.

// CHECK: moe.mesh @grid axes = ["tp", "ep", "dp"] shape = [1, 2, 1]
// CHECK-NOT: moe.mesh
// CHECK-LABEL: func.func @dropless
// CHECK-SAME: tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.input = "hidden_states", moe.shard = {{\[\["dp", "ep"\], \[\]\]}}}
// CHECK-SAME: tensor<4x48x32xf32> {moe.global_shape = array<i64: 8, 48, 32>, moe.shard = {{\[\["ep"\], \[\], \[\]\]}}
// CHECK: moe.all_to_all %{{.*}} on @grid ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<2x4xi32>
// CHECK: moe.all_to_all_v %{{.*}} on @grid ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
moe.mesh @grid axes = ["tp", "ep", "dp"] shape = [1, 2, 1]
func.func @dropless(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x48x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x48xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
