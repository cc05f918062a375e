// RUN: moe-opt %s -split-input-file -moe-decompose -moe-routing-io -verify-diagnostics

// No routed layer: nothing to dump or replay.
// expected-error @+1 {{moe-routing-io: @forward has no routed MoE layer}}
func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "norm"})
    -> (tensor<4x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

// The replay entry's name is taken.
// expected-error @+1 {{moe-routing-io: the module already has a symbol @forward_replay}}
func.func @forward(%x: tensor<4x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "router"},
                   %wi: tensor<4x6x8xf32> {moe.weight = "experts.{e}.wi"},
                   %wo: tensor<4x8x6xf32> {moe.weight = "experts.{e}.wo"})
    -> (tensor<4x8xf32> {moe.output = "hidden_states"}) {
  %y = moe.layer %x router %wr up %wi down %wo
      {num_experts = 4 : i64, top_k = 1 : i64, activation = #moe<activation relu>}
      : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
func.func private @forward_replay()

// -----

// expected-error @+1 {{moe-routing-io needs a function @forward with a body}}
module {
  func.func @main(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
    return %x : tensor<4x8xf32>
  }
}
