// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-overlap="degree=2" -moe-hierarchical-a2a="ranks-per-node=2" | FileCheck %s --check-prefix=OVERLAP
// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-differentiate -moe-hierarchical-a2a="ranks-per-node=4" | FileCheck %s --check-prefix=TRAIN

// Overlap, then 4 nodes of 2: each started chunk runs its local phase at the
// start and leaves the node phase in flight until its wait.
// OVERLAP: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 4, 2, 1]
// OVERLAP-LABEL: func.func @forward
// OVERLAP: moe.chunk {{.*}} index = 0 chunks = 2 : (tensor<8x8x32xf32>) -> tensor<8x4x32xf32>
// OVERLAP-NEXT: moe.reshape {{.*}} -> tensor<4x2x4x32xf32>
// OVERLAP-NEXT: moe.all_to_all {{.*}} on @mesh ["ep_local"] split = 1 concat = 2 : (tensor<4x2x4x32xf32>) -> tensor<4x1x8x32xf32>
// OVERLAP-NEXT: %[[F0:.*]] = moe.all_to_all_start {{.*}} on @mesh ["ep_node"] split = 0 concat = 2 : (tensor<4x1x8x32xf32>) -> !moe.future<tensor<1x1x32x32xf32>>
// OVERLAP: %[[W0:.*]] = moe.wait %[[F0]] : !moe.future<tensor<1x1x32x32xf32>>
// OVERLAP-NEXT: %[[X0:.*]] = moe.reshape %[[W0]] : (tensor<1x1x32x32xf32>) -> tensor<1x32x32xf32>
// OVERLAP-NEXT: moe.expert_ffn %[[X0]]
// OVERLAP-NOT: ["ep_node", "ep_local"] split

// Training: the backward's exchanges (the inverses of the forward's) are
// split like the forward's: no all-to-all over the whole of ep is left.
// TRAIN: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 2, 4, 1]
// TRAIN-LABEL: func.func @backward
// TRAIN: moe.all_to_all {{.*}} on @mesh ["ep_local"] split = 1 concat = 2
// TRAIN: moe.all_to_all {{.*}} on @mesh ["ep_node"] split = 0 concat = 2
// TRAIN: moe.expert_ffn_grad
// TRAIN: moe.all_to_all {{.*}} on @mesh ["ep_local"] split = 2 concat = 0
// TRAIN: moe.all_to_all {{.*}} on @mesh ["ep_node"] split = 1 concat = 0
// TRAIN-NOT: ["ep_node", "ep_local"] split

func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 8 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<8x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x64x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x64x32xf32>, tensor<8x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x64x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x64x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

