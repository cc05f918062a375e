// RUN: moe-opt %s -split-input-file -moe-attach-manifest=check-runner=false | FileCheck %s --check-prefix=IR
// RUN: moe-opt %s -split-input-file -moe-attach-manifest=check-runner=false | %python %S/Inputs/manifest-attr.py - | FileCheck %s

// A sharded module: the mesh, every public function (not the private helper),
// roles, names, transpose, dtypes, global and local shapes, shard specs, and
// a result without moe.output.

// IR: module attributes {moe.manifest = "{\22entries\22:[{\22args\22:[{\22dtype\22:\22f32\22,\22index\22:0,
// IR: moe.mesh @mesh
// IR: func.func @forward(
// IR: func.func private @helper(
// IR: func.func @probe(

// CHECK: manifest
// CHECK-NEXT: mesh dp=1 ep=2 tp=2
// CHECK-NEXT: entry forward symbol moe_entry_forward keys args,collectives,name,results,role,symbol
// CHECK-NEXT: arg 0 input hidden_states f32 global [64, 32] local [32, 32] shard dp*ep x -
// CHECK-NEXT: arg 1 weight model.layers.0.mlp.experts.{e}.w1.weight bf16 global [8, 64, 32] local [4, 32, 32] shard ep x tp x - transpose True
// CHECK-NEXT: arg 2 weight model.layers.0.mlp.gate.weight f32 global [8, 32] local [8, 32] shard - x - transpose False
// CHECK-NEXT: result 0 hidden_states f32 global [64, 32] local [32, 32] shard dp*ep x -
// CHECK-NEXT: result 1 result1 i64 global [8] local [8] shard -
// CHECK-NEXT: entry probe symbol moe_entry_probe keys args,collectives,name,results,role,symbol
// CHECK-NEXT: arg 0 input ids i32 global [4] local [4] shard -
// CHECK-NEXT: arg 1 input half f16 global [2, 3] local [2, 3] shard - x -
module {
  moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
  func.func @forward(
      %x: tensor<32x32xf32> {moe.input = "hidden_states", moe.global_shape = array<i64: 64, 32>, moe.shard = [["dp", "ep"], []]},
      %w: tensor<4x32x32xbf16> {moe.weight = "model.layers.0.mlp.experts.{e}.w1.weight", moe.weight_transpose, moe.global_shape = array<i64: 8, 64, 32>, moe.shard = [["ep"], ["tp"], []]},
      %r: tensor<8x32xf32> {moe.weight = "model.layers.0.mlp.gate.weight"})
      -> (tensor<32x32xf32> {moe.output = "hidden_states", moe.global_shape = array<i64: 64, 32>, moe.shard = [["dp", "ep"], []]}, tensor<8xi64>) {
    %c = func.call @helper(%r) : (tensor<8x32xf32>) -> tensor<8xi64>
    return %x, %c : tensor<32x32xf32>, tensor<8xi64>
  }
  func.func private @helper(%r: tensor<8x32xf32>) -> tensor<8xi64>
  func.func @probe(%i: tensor<4xi32> {moe.input = "ids"}, %h: tensor<2x3xf16> {moe.input = "half"}) {
    return
  }
}

// -----

// One device: no mesh, nothing sharded.

// CHECK: manifest
// CHECK-NEXT: mesh none
// CHECK-NEXT: entry forward symbol moe_entry_forward
// CHECK-NEXT: arg 0 input hidden_states f32 global [16, 8] local [16, 8] shard - x -
// CHECK-NEXT: result 0 hidden_states f32 global [16, 8] local [16, 8] shard - x -
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"}) -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  return %x : tensor<16x8xf32>
}

// -----

// The training roles (moe-differentiate): each argument's role is its moe.*
// naming attribute; a step entry's role is "step".

// IR: \22name\22:\22step_sgd\22,\22results\22:[{{.*}}],\22role\22:\22step\22
// CHECK: manifest
// CHECK-NEXT: mesh none
// CHECK-NEXT: entry step_sgd symbol moe_entry_step_sgd keys args,collectives,name,results,role,symbol
// CHECK-NEXT: arg 0 weight w f32 global [4] local [4] shard - transpose False
// CHECK-NEXT: arg 1 grad grad.w f32 global [4] local [4] shard -
// CHECK-NEXT: arg 2 state w.momentum_buffer f32 global [4] local [4] shard -
// CHECK-NEXT: arg 3 hparams optimizer.hparams f32 global [8] local [8] shard -
// CHECK-NEXT: arg 4 saved saved.0 f32 global [4] local [4] shard -
func.func @step_sgd(%w: tensor<4xf32> {moe.weight = "w"}, %g: tensor<4xf32> {moe.grad = "grad.w"},
                    %m: tensor<4xf32> {moe.state = "w.momentum_buffer"},
                    %hp: tensor<8xf32> {moe.hparams = "optimizer.hparams"},
                    %s: tensor<4xf32> {moe.saved = "saved.0"})
    -> (tensor<4xf32> {moe.output = "w"}) {
  return %w : tensor<4xf32>
}
