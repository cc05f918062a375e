// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2" -moe-overlap="degree=3" -verify-diagnostics
// RUN: echo '{"version": 1}' > %t.bad.json
// RUN: not moe-opt %s -split-input-file -moe-shard="mesh=ep=2" -moe-overlap="degree=auto cluster=%t.bad.json" 2>&1 | FileCheck %s --check-prefix=AUTO
// RUN: not moe-opt %s -split-input-file -moe-shard="mesh=ep=2" -moe-overlap="degree=0" 2>&1 | FileCheck %s --check-prefix=ZERO
// RUN: not moe-opt %s -split-input-file -moe-shard="mesh=ep=2" -moe-overlap="degree=two" 2>&1 | FileCheck %s --check-prefix=WORD

// AUTO: error: moe-overlap: cluster file {{.*}}bad.json: nodes: missing
// ZERO: moe-overlap: degree '0' is not a positive number or 'auto'
// WORD: moe-overlap: degree 'two' is not a positive number or 'auto'

// A degree that does not divide the slots: each rank holds one group of
// C = 8 slots per expert, and 3 does not divide 8.
func.func @slots(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x16x32xf32>
  // expected-error @+1 {{moe-overlap: degree 3 does not divide the 8 capacity slots of each expert on this rank}}
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x16x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x16x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x16x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
