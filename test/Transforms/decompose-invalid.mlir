// RUN: moe-opt %s -moe-decompose -verify-diagnostics

// A layer over dynamic token counts cannot size its buffers: the pass says so.
func.func @dynamic(%x: tensor<?x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x48x32xf32>, %d: tensor<8x32x48xf32>) -> tensor<?x32xf32> {
  // expected-error @+1 {{moe.layer could not be decomposed: token count and hidden size must be static}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<?x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}
