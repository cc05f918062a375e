// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=4" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=4,tp=2" -moe-drop-duplicate-tokens -moe-hierarchical-a2a="ranks-per-node=4" | FileCheck %s --check-prefix=DTD
// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=8" | FileCheck %s --check-prefix=ONENODE

// ep = 8 on 2 nodes of 4: the mesh axis ep becomes ep_node x ep_local (rank
// order unchanged), and so do the shard annotations.
// CHECK: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 2, 4, 1]
// CHECK-LABEL: func.func @capacity
// CHECK-SAME: moe.shard = {{\[}}["dp", "ep_node", "ep_local"], []]
// CHECK-SAME: moe.shard = {{\[}}["ep_node", "ep_local"], [], []]
// The capacity exchange [8, 8, 32] -> [1, 64, 32]: the expert dimension as
// [node, local * experts], the local phase splits the second and the node
// phase the first, both concatenate the slots.
// CHECK: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<8x8x32xf32>
// CHECK: %[[V:.*]] = moe.reshape %[[B]] : (tensor<8x8x32xf32>) -> tensor<2x4x8x32xf32>
// CHECK: %[[L:.*]] = moe.all_to_all %[[V]] on @mesh ["ep_local"] split = 1 concat = 2 : (tensor<2x4x8x32xf32>) -> tensor<2x1x32x32xf32>
// CHECK: %[[N:.*]] = moe.all_to_all %[[L]] on @mesh ["ep_node"] split = 0 concat = 2 : (tensor<2x1x32x32xf32>) -> tensor<1x1x64x32xf32>
// CHECK: %[[X:.*]] = moe.reshape %[[N]] : (tensor<1x1x64x32xf32>) -> tensor<1x64x32xf32>
// CHECK: %[[Y:.*]] = moe.expert_ffn %[[X]]
// The return: [1, 64, 32] split = 1 concat = 0.
// CHECK: %[[V2:.*]] = moe.reshape %[[Y]] : (tensor<1x64x32xf32>) -> tensor<1x2x32x32xf32>
// CHECK: %[[L2:.*]] = moe.all_to_all %[[V2]] on @mesh ["ep_local"] split = 2 concat = 0 : (tensor<1x2x32x32xf32>) -> tensor<4x2x8x32xf32>
// CHECK: %[[N2:.*]] = moe.all_to_all %[[L2]] on @mesh ["ep_node"] split = 1 concat = 0 : (tensor<4x2x8x32xf32>) -> tensor<8x1x8x32xf32>
// CHECK: %[[Z:.*]] = moe.reshape %[[N2]] : (tensor<8x1x8x32xf32>) -> tensor<8x8x32xf32>
// CHECK: moe.combine %[[Z]]
// CHECK-NOT: ["ep_node", "ep_local"] split

// Dropless: the counts [1, 8] go in two even phases too; the rows are
// regrouped by (local, node) destination, sent over ep_local with the counts
// the local peers exchanged, regrouped by (node, local source) and sent over
// ep_node with the flat exchange's receive counts.
// CHECK-LABEL: func.func @dropless
// CHECK: %[[P:.*]], %[[C:.*]] = moe.assign
// CHECK: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<16x32xf32>
// CHECK: %[[CV:.*]] = moe.reshape %[[C]] : (tensor<1x8xi32>) -> tensor<1x2x4xi32>
// CHECK: moe.all_to_all %[[CV]] on @mesh ["ep_local"] split = 2 concat = 0 : (tensor<1x2x4xi32>) -> tensor<4x2x1xi32>
// CHECK: moe.all_to_all {{.*}} on @mesh ["ep_node"] split = 1 concat = 0 : (tensor<4x2x1xi32>) -> tensor<8x1x1xi32>
// CHECK: %[[RC:.*]] = moe.reshape {{.*}} : (tensor<8x1x1xi32>) -> tensor<8x1xi32>
// CHECK: %[[D:.*]] = moe.reshape %[[C]] : (tensor<1x8xi32>) -> tensor<2x4xi32>
// CHECK: %[[R1:.*]], %[[T1:.*]] = moe.regroup %[[B]], %[[D]] groups = 4 : (tensor<16x32xf32>, tensor<2x4xi32>) -> (tensor<16x32xf32>, tensor<4x2xi32>)
// CHECK: %[[LC:.*]] = moe.all_to_all %[[D]] on @mesh ["ep_local"] split = 1 concat = 0 : (tensor<2x4xi32>) -> tensor<8x1xi32>
// CHECK: %[[M:.*]] = moe.all_to_all_v %[[R1]], %[[T1]], %[[LC]] on @mesh ["ep_local"] : (tensor<16x32xf32>, tensor<4x2xi32>, tensor<8x1xi32>) -> tensor<64x32xf32>
// CHECK: %[[LC2:.*]] = moe.reshape %[[LC]] : (tensor<8x1xi32>) -> tensor<4x2xi32>
// CHECK: %[[R2:.*]], %[[T2:.*]] = moe.regroup %[[M]], %[[LC2]] groups = 2 : (tensor<64x32xf32>, tensor<4x2xi32>) -> (tensor<64x32xf32>, tensor<2x4xi32>)
// A token sends a rank at most min(k, 1 local expert) = 1 row: 8 x 8 rows.
// CHECK: %[[X:.*]] = moe.all_to_all_v %[[R2]], %[[T2]], %[[RC]] on @mesh ["ep_node"] : (tensor<64x32xf32>, tensor<2x4xi32>, tensor<8x1xi32>) -> tensor<64x32xf32>
// CHECK: moe.expert_ffn %[[X]] counts %[[RC]]
// CHECK-NOT: ["ep_node", "ep_local"] :

// DTD on ep = 4, tp = 2, 4 ranks a node: 2 expert-parallel ranks a node, 2
// nodes; the slices and gathers over tp stay as they are.
// DTD: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 2, 2, 2]
// DTD-LABEL: func.func @capacity
// DTD: moe.slice {{.*}} on @mesh ["tp"] dim = 2 : (tensor<8x16x32xf32>) -> tensor<8x16x16xf32>
// DTD-NEXT: moe.reshape {{.*}} -> tensor<2x4x16x16xf32>
// DTD-NEXT: moe.all_to_all {{.*}} on @mesh ["ep_local"] split = 1 concat = 2 : (tensor<2x4x16x16xf32>) -> tensor<2x2x32x16xf32>
// DTD-NEXT: moe.all_to_all {{.*}} on @mesh ["ep_node"] split = 0 concat = 2 : (tensor<2x2x32x16xf32>) -> tensor<1x2x64x16xf32>
// DTD-NEXT: moe.reshape {{.*}} -> tensor<2x64x16xf32>
// DTD-NEXT: moe.all_gather {{.*}} on @mesh ["tp"] dim = 2

// One node holds every expert-parallel rank: nothing to split.
// ONENODE: moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 8, 1]
// ONENODE-NOT: ep_node

func.func @capacity(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 8 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<8x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x64x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x64x32xf32>, tensor<8x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x64x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x64x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

func.func @dropless(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
