// RUN: moe-opt %s -split-input-file -moe-differentiate -verify-diagnostics

// What moe-differentiate refuses, with a message naming the problem.

// expected-error @+1 {{moe-differentiate: the module has no @forward function to differentiate}}
module {
  func.func @f(%x: tensor<4x8xf32> {moe.input = "hidden_states"}) -> tensor<4x8xf32> {
    return %x : tensor<4x8xf32>
  }
}

// -----

// expected-error @+1 {{moe-differentiate: training supports f32 models only, argument 1 is 'tensor<8xbf16>'}}
func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"}, %n: tensor<8xbf16> {moe.weight = "norm"}) -> tensor<4x8xf32> {
  return %x : tensor<4x8xf32>
}

// -----

// expected-error @+1 {{moe-differentiate: argument 0 of @forward must be its moe.input (hidden_states)}}
func.func @forward(%n: tensor<8xf32> {moe.weight = "norm"}, %x: tensor<4x8xf32> {moe.input = "hidden_states"}) -> tensor<4x8xf32> {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"}) -> tensor<4x8xf32> {
  // expected-error @+1 {{has no adjoint yet: moe-differentiate takes the synchronous collectives (canonicalize a start followed by its wait)}}
  %f = moe.all_reduce_start %x on @mesh ["ep"] : (tensor<4x8xf32>) -> !moe.future<tensor<4x8xf32>>
  %0 = moe.wait %f : !moe.future<tensor<4x8xf32>>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"}, %wr: tensor<4x8xf32> {moe.weight = "r"},
                   %u: tensor<4x6x8xf32> {moe.weight = "u"}, %d: tensor<4x8x6xf32> {moe.weight = "d"}) -> tensor<4x8xf32> {
  // expected-error @+1 {{must be decomposed before moe-differentiate (run moe-decompose)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 1 : i64, activation = #moe<activation relu>} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}

// -----

func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"}) -> tensor<4x8xf32> {
  return %x : tensor<4x8xf32>
}
// expected-error @+1 {{moe-differentiate builds @backward, which the module already defines}}
func.func @backward() {
  return
}

// -----

// expected-error @+1 {{moe-differentiate: result 1 ('extra') is none of hidden_states, aux_loss, z_loss}}
func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"}) -> (tensor<4x8xf32> {moe.output = "hidden_states"}, tensor<4x8xf32> {moe.output = "extra"}) {
  return %x, %x : tensor<4x8xf32>, tensor<4x8xf32>
}
