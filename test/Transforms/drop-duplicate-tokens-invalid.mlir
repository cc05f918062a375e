// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=4" -moe-drop-duplicate-tokens -verify-diagnostics

func.func @odd_hidden(%x: tensor<16x30xf32> {moe.input = "hidden_states"}, %b: tensor<32x30xf32> {moe.weight = "b"}, %c: tensor<1x8xi32> {moe.weight = "c"}, %u: tensor<8x48x30xf32> {moe.weight = "u.{e}"}, %d: tensor<8x30x48xf32> {moe.weight = "d.{e}"}) -> tensor<32x30xf32> {
  // expected-error @+1 {{hidden size 30 is not divisible by tp = 4, which duplicate token dropping needs}}
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<32x30xf32>, tensor<1x8xi32>, tensor<8x48x30xf32>, tensor<8x30x48xf32>) -> tensor<32x30xf32>
  return %y : tensor<32x30xf32>
}

