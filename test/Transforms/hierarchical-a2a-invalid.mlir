// Bad node sizes: the error names the ranks-per-node, the mesh and the rule.
// RUN: not moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=3" 2>&1 | FileCheck %s --check-prefix=WORLD
// RUN: not moe-opt %s -moe-shard="mesh=dp=2,ep=4" -moe-hierarchical-a2a="ranks-per-node=8" 2>&1 | FileCheck %s --check-prefix=EP
// RUN: not moe-opt %s -moe-shard="mesh=ep=4,tp=4" -moe-hierarchical-a2a="ranks-per-node=2" 2>&1 | FileCheck %s --check-prefix=TP
// RUN: not moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=0" 2>&1 | FileCheck %s --check-prefix=ZERO
// RUN: not moe-opt %s -moe-hierarchical-a2a="ranks-per-node=4" 2>&1 | FileCheck %s --check-prefix=NOMESH
// RUN: not moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=4" -moe-hierarchical-a2a="ranks-per-node=2" 2>&1 | FileCheck %s --check-prefix=TWICE
// RUN: not moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="ranks-per-node=4 mode=sometimes" 2>&1 | FileCheck %s --check-prefix=MODE

// WORLD: error: 'moe.mesh' op moe-hierarchical-a2a: ranks-per-node 3 does not divide the 8 ranks of the mesh dp=1,ep=8,tp=1
// EP: error: 'moe.mesh' op moe-hierarchical-a2a: ranks-per-node 8 holds 8 expert-parallel ranks (ranks-per-node / tp), which does not divide ep = 4 of the mesh dp=2,ep=4,tp=1
// TP: error: 'moe.mesh' op moe-hierarchical-a2a: ranks-per-node 2 is not a multiple of tp = 4 (a tensor-parallel group must share a node)
// ZERO: error: moe-hierarchical-a2a: ranks-per-node must be a positive number (got 0)
// NOMESH: error: moe-hierarchical-a2a: the module has no moe.mesh
// TWICE: error: 'moe.mesh' op moe-hierarchical-a2a: the mesh is already split (it has an ep_node axis)
// MODE: error: moe-hierarchical-a2a: mode 'sometimes' is not 'on', 'auto' or 'mesh'

func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
