// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=3 expert-tp=true" -verify-diagnostics

// Tensor parallelism needs tp to divide every FFN's intermediate size F.

func.func @mlp_width(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %g: tensor<64x32xf32> {moe.weight = "mlp.gate_proj.weight"}, %u: tensor<64x32xf32> {moe.weight = "mlp.up_proj.weight"}, %d: tensor<32x64xf32> {moe.weight = "mlp.down_proj.weight"}) -> tensor<16x32xf32> {
  // expected-error @+1 {{'moe.mlp' op intermediate size 64 is not divisible by tp = 3 (tensor parallelism gives each tp rank F/tp rows of gate and up and F/tp columns of down)}}
  %y = moe.mlp %x gate %g up %u down %d act = swiglu : (tensor<16x32xf32>, tensor<64x32xf32>, tensor<64x32xf32>, tensor<32x64xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

func.func @expert_width(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %b: tensor<32x32xf32> {moe.weight = "b"}, %c: tensor<1x4xi32> {moe.weight = "c"}, %u: tensor<4x64x32xf32> {moe.weight = "experts.{e}.up"}, %d: tensor<4x32x64xf32> {moe.weight = "experts.{e}.down"}) -> tensor<32x32xf32> {
  // expected-error @+1 {{expert weight "experts.{e}.up" has 64 rows in dimension 1, not divisible by tp = 3}}
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<32x32xf32>, tensor<1x4xi32>, tensor<4x64x32xf32>, tensor<4x32x64xf32>) -> tensor<32x32xf32>
  return %y : tensor<32x32xf32>
}

// -----

func.func @computed_mlp_weight(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %u: tensor<48x32xf32> {moe.weight = "up"}, %d: tensor<32x48xf32> {moe.weight = "down"}) -> tensor<16x32xf32> {
  %u2 = moe.add %u, %u : (tensor<48x32xf32>, tensor<48x32xf32>) -> tensor<48x32xf32>
  // expected-error @+1 {{moe-shard needs the weights of a tensor-parallel moe.mlp to be function arguments so that each rank loads only its slice}}
  %y = moe.mlp %x up %u2 down %d act = relu : (tensor<16x32xf32>, tensor<48x32xf32>, tensor<32x48xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

// One square tensor as the up projection of one MLP and the down projection
// of another would need two different splits of the same argument.
func.func @conflicting_splits(%x: tensor<16x48xf32> {moe.input = "hidden_states"}, %w: tensor<48x48xf32> {moe.weight = "w"}, %v: tensor<48x48xf32> {moe.weight = "v"}) -> tensor<16x48xf32> {
  %y = moe.mlp %x up %w down %v act = relu : (tensor<16x48xf32>, tensor<48x48xf32>, tensor<48x48xf32>) -> tensor<16x48xf32>
  // expected-error @+1 {{'moe.mlp' op splits weight "v" differently from another op that uses it}}
  %z = moe.mlp %y up %v down %w act = relu : (tensor<16x48xf32>, tensor<48x48xf32>, tensor<48x48xf32>) -> tensor<16x48xf32>
  return %z : tensor<16x48xf32>
}
