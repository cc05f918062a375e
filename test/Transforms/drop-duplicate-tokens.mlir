// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens | FileCheck %s
// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=2 expert-tp=true" -moe-drop-duplicate-tokens | FileCheck %s --check-prefix=ETP
// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2" -moe-drop-duplicate-tokens | FileCheck %s --check-prefix=NOTP

// Dropless: each tp rank sends half of every row's hidden dimension; the
// halves are gathered over tp before the experts and after the way back.
// The counts (which do not repeat tokens) travel unchanged.
// CHECK-LABEL: func.func @dropless
// CHECK: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<64x32xf32>
// CHECK: %[[RC:.*]] = moe.all_to_all %[[C:.*]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<2x4xi32>
// CHECK: %[[SH:.*]] = moe.slice %[[B]] on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x16xf32>
// CHECK: %[[R:.*]] = moe.all_to_all_v %[[SH]], %[[C]], %[[RC]] on @mesh ["ep"] : (tensor<64x16xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x16xf32>
// CHECK: %[[G:.*]] = moe.all_gather %[[R]] on @mesh ["tp"] dim = 1 : (tensor<128x16xf32>) -> tensor<128x32xf32>
// CHECK: %[[Y:.*]] = moe.expert_ffn %[[G]] counts %[[RC]]
// CHECK: %[[YS:.*]] = moe.slice %[[Y]] on @mesh ["tp"] dim = 1 : (tensor<128x32xf32>) -> tensor<128x16xf32>
// CHECK: %[[BACK:.*]] = moe.all_to_all_v %[[YS]], %[[RC]], %[[C]] on @mesh ["ep"] : (tensor<128x16xf32>, tensor<2x4xi32>, tensor<1x8xi32>) -> tensor<64x16xf32>
// CHECK: %[[FULL:.*]] = moe.all_gather %[[BACK]] on @mesh ["tp"] dim = 1 : (tensor<64x16xf32>) -> tensor<64x32xf32>
// CHECK: moe.combine %[[FULL]]

// With expert TP the all-reduce of partial outputs becomes a reduce-scatter
// that yields this rank's half directly.
// ETP-LABEL: func.func @dropless
// ETP: %[[G:.*]] = moe.all_gather %{{.*}} on @mesh ["tp"] dim = 1
// ETP: %[[Y:.*]] = moe.expert_ffn %[[G]] {{.*}} (tensor<128x32xf32>, tensor<2x4xi32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>) -> tensor<128x32xf32>
// ETP-NOT: moe.all_reduce
// ETP: %[[RS:.*]] = moe.reduce_scatter %[[Y]] on @mesh ["tp"] dim = 1 : (tensor<128x32xf32>) -> tensor<128x16xf32>
// ETP: moe.all_to_all_v %[[RS]]

// Without tp there is nothing to drop.
// NOTP-LABEL: func.func @dropless
// NOTP-NOT: moe.slice
// NOTP-NOT: moe.all_gather
func.func @dropless(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

// -----

// Capacity layout: the [E, C, D] buffer is cut along D as well.
// CHECK-LABEL: func.func @capacity
// CHECK: %[[SH:.*]] = moe.slice %{{.*}} on @mesh ["tp"] dim = 2 : (tensor<8x4x32xf32>) -> tensor<8x4x16xf32>
// CHECK: %[[R:.*]] = moe.all_to_all %[[SH]] on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x16xf32>) -> tensor<4x8x16xf32>
// CHECK: %[[G:.*]] = moe.all_gather %[[R]] on @mesh ["tp"] dim = 2 : (tensor<4x8x16xf32>) -> tensor<4x8x32xf32>
// CHECK: %[[Y:.*]] = moe.expert_ffn %[[G]]
// CHECK: %[[YS:.*]] = moe.slice %[[Y]] on @mesh ["tp"] dim = 2
// CHECK: %[[BACK:.*]] = moe.all_to_all %[[YS]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x8x16xf32>) -> tensor<8x4x16xf32>
// CHECK: moe.all_gather %[[BACK]] on @mesh ["tp"] dim = 2 : (tensor<8x4x16xf32>) -> tensor<8x4x32xf32>
func.func @capacity(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 4 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x8x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x8x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x8x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x8x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
