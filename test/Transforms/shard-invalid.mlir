// RUN: moe-opt %s -split-input-file -moe-shard="mesh=dp=2,ep=4" -verify-diagnostics

// Meshes that do not fit the model are diagnosed with the numbers involved.

// expected-error @+1 {{input "hidden_states" has 12 tokens, not divisible by dp x ep = 8}}
func.func @tokens(%x: tensor<12x32xf32> {moe.input = "hidden_states"}, %n: tensor<32xf32> {moe.weight = "n"}) -> tensor<12x32xf32> {
  %y = moe.rmsnorm %x, %n {eps = 1.0e-6 : f32} : (tensor<12x32xf32>, tensor<32xf32>) -> tensor<12x32xf32>
  return %y : tensor<12x32xf32>
}

// -----

func.func @experts(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %b: tensor<96x32xf32> {moe.weight = "b"}, %c: tensor<1x6xi32> {moe.weight = "c"}, %u: tensor<6x48x32xf32> {moe.weight = "experts.{e}.up"}, %d: tensor<6x32x48xf32> {moe.weight = "experts.{e}.down"}) -> tensor<96x32xf32> {
  // expected-error @+1 {{expert weight "experts.{e}.up" has 6 experts in dimension 0, not divisible by ep = 4}}
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<96x32xf32>, tensor<1x6xi32>, tensor<6x48x32xf32>, tensor<6x32x48xf32>) -> tensor<96x32xf32>
  return %y : tensor<96x32xf32>
}

// -----

func.func @groups(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %i: tensor<16x1xi32> {moe.weight = "i"}) -> tensor<16x1xi32> {
  // expected-error @+1 {{has 4 token groups, not divisible by dp x ep = 8; capacity is per token group, so each rank must hold whole groups (set token_groups to a multiple of dp x ep)}}
  %p, %c = moe.assign %i experts = 8 {capacity = 2 : i64, groups = 4 : i64} : (tensor<16x1xi32>) -> (tensor<16x1xi32>, tensor<4x8xi32>)
  return %p : tensor<16x1xi32>
}

// -----

// expected-error @+1 {{moe-shard needs an argument with moe.input (the tokens) to know what to split over dp x ep}}
func.func @no_tokens(%x: tensor<16x32xf32> {moe.weight = "x"}) -> tensor<16x32xf32> {
  return %x : tensor<16x32xf32>
}

// -----

func.func @layer(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "r"}, %u: tensor<8x48x32xf32> {moe.weight = "u.{e}"}, %d: tensor<8x32x48xf32> {moe.weight = "d.{e}"}) -> tensor<16x32xf32> {
  // expected-error @+1 {{must be decomposed before moe-shard (run moe-decompose first)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<16x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

func.func @computed_weights(%x: tensor<16x32xf32> {moe.input = "hidden_states"}, %b: tensor<16x32xf32> {moe.weight = "b"}, %c: tensor<1x8xi32> {moe.weight = "c"}, %u: tensor<8x48x32xf32> {moe.weight = "u"}, %d: tensor<8x32x48xf32> {moe.weight = "d"}) -> tensor<16x32xf32> {
  %u2 = moe.add %u, %u : (tensor<8x48x32xf32>, tensor<8x48x32xf32>) -> tensor<8x48x32xf32>
  // expected-error @+1 {{moe-shard needs expert weights to be function arguments so that each rank loads only its experts}}
  %y = moe.expert_ffn %b counts %c up %u2 down %d act = relu : (tensor<16x32xf32>, tensor<1x8xi32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

// A mesh in the module is the source; an option that disagrees is an error.
// expected-error @+1 {{moe-shard: the mesh option (dp=2,ep=4,tp=1) disagrees with @mesh (dp=1,ep=2,tp=1) on axis 'dp'}}
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @f(%x: tensor<16x32xf32> {moe.input = "hidden_states"}) -> tensor<16x32xf32> {
  return %x : tensor<16x32xf32>
}

// -----

// An op of another dialect has no sharding rule.
func.func @foreign_op(%x: tensor<16x32xf32> {moe.input = "hidden_states"}) -> tensor<16x32xf32> {
  // expected-error @+1 {{'tensor.empty' op is not supported by moe-shard (it has no sharding rule)}}
  %e = tensor.empty() : tensor<16x32xf32>
  %y = moe.add %x, %e : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 4, 1]
// expected-error @+1 {{moe-shard: @sharded is sharded already (its arguments carry moe.shard)}}
func.func @sharded(%x: tensor<2x32xf32> {moe.input = "hidden_states", moe.shard = [["dp", "ep"], []], moe.global_shape = array<i64: 16, 32>}) -> tensor<2x32xf32> {
  return %x : tensor<2x32xf32>
}

// -----

// expected-error @+1 {{input "hidden_states" has no token dimension (it is a scalar)}}
func.func @scalar_input(%x: tensor<f32> {moe.input = "hidden_states"}) -> tensor<f32> {
  return %x : tensor<f32>
}

// -----

// expected-error @+1 {{moe-shard: the mesh has no axis 'tp'; give every axis of dp, ep, tp (size 1 for an unused one)}}
moe.mesh @mesh axes = ["dp", "ep"] shape = [2, 4]

// -----

// expected-error @+1 {{moe-shard: axis 'pp' is not one it can shard over (axes are dp, ep, tp)}}
moe.mesh @mesh axes = ["dp", "ep", "tp", "pp"] shape = [2, 4, 1, 1]

// -----

moe.mesh @a axes = ["dp", "ep", "tp"] shape = [2, 4, 1]
// expected-error @+1 {{moe-shard: the module has 2 moe.mesh ops; expected at most one}}
moe.mesh @b axes = ["dp", "ep", "tp"] shape = [2, 4, 1]
