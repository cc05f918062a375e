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

// -----

// The lowering defines moe_abi_version itself.
// expected-error @+1 {{'moe_abi_version' is reserved: moe-to-runtime defines it as the runtime ABI version the module is built for}}
llvm.mlir.global external constant @moe_abi_version(7 : i32) : i32

// -----

// A declaration of a kernel that disagrees with the runtime ABI is refused,
// not called with operands of the wrong types.
// expected-error @+1 {{'moert_add' is declared with type '(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i32, i32) -> ()', but the runtime ABI (moert_kernels.def) gives it the type '(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i32) -> ()'}}
func.func private @moert_add(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i32, i32)
func.func @add(%x: tensor<16x32xf32>) -> tensor<16x32xf32> {
  %y = moe.add %x, %x : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
  return %y : tensor<16x32xf32>
}

// -----

// Sizes that overflow int64 are errors, not an arena of a few bytes
// (2^62 x 64 f32 is 2^70 bytes).
// expected-error @+1 {{moe-to-runtime: 'tensor<4611686018427387904x64xf32>' has more bytes than fit in 64 bits}}
func.func @huge(%x: tensor<4611686018427387904x64xf32>, %w: tensor<64xf32>) -> tensor<4611686018427387904x64xf32> {
  %n = moe.rmsnorm %x, %w {eps = 1.0e-05 : f32} : (tensor<4611686018427387904x64xf32>, tensor<64xf32>) -> tensor<4611686018427387904x64xf32>
  return %n : tensor<4611686018427387904x64xf32>
}
