// RUN: moe-opt %s -split-input-file -moe-to-runtime -verify-diagnostics

func.func @layer(%x: tensor<16x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x48x32xf32>, %d: tensor<8x32x48xf32>) -> tensor<16x32xf32> {
  // expected-error @+1 {{must be decomposed before moe-to-runtime (run moe-decompose)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<16x32xf32>, tensor<8x32xf32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

func.func @foreign(%x: tensor<16x32xf32>) -> tensor<16x32xf32> {
  // expected-error @+1 {{is not supported by moe-to-runtime: entry functions may hold only moe ops}}
  %y = arith.addf %x, %x : tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

// expected-error @+1 {{moe-to-runtime needs statically shaped f32/f16/bf16/i32/i64 tensor arguments and results, got 'tensor<?x32xf32>'}}
func.func @dynamic(%x: tensor<?x32xf32>) -> tensor<?x32xf32> {
  return %x : tensor<?x32xf32>
}
