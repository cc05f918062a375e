func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %w: tensor<32xf32> {moe.weight = "model.layers.0.post_attention_layernorm.weight"}, %wr: tensor<8x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.gate.weight"}, %wg: tensor<8x64x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w1.weight"}, %wu: tensor<8x64x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w3.weight"}, %wd: tensor<8x32x64xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w2.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %n = moe.rmsnorm %x, %w {eps = 1.0e-05 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  %y = moe.layer %n router %wr gate %wg up %wu down %wd {num_experts = 8 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x64x32xf32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>) -> tensor<64x32xf32>
  %r = moe.add %x, %y : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %r : tensor<64x32xf32>
}
