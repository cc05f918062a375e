// RUN: moe-opt %s -split-input-file -moe-to-runtime -canonicalize | FileCheck %s

// The runtime ABI as the lowering derives it from moert_kernels.def: every
// callee's type comes from the C parameter types (pointer -> !llvm.ptr,
// int64_t -> i64, int32_t -> i32, float -> f32, context first), the enums and
// dtypes are the MOERT_* constants, and the module records the ABI version.

// Every module exports `const int32_t moe_abi_version = MOERT_ABI_VERSION`
// (raise the number here with MOERT_ABI_VERSION).
// CHECK: llvm.mlir.global external constant @moe_abi_version(13 : i32) {addr_space = 0 : i32} : i32
// CHECK-LABEL: func.func @moe_entry_empty
func.func @empty(%x: tensor<4xf32>) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}

// -----

// Every kernel, declared with the type the list gives it.
// CHECK-DAG: func.func private @moert_arena(!llvm.ptr, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_copy(!llvm.ptr, !llvm.ptr, !llvm.ptr, i64)
// CHECK-DAG: func.func private @moert_rmsnorm(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32)
// CHECK-DAG: func.func private @moert_add(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i32)
// CHECK-DAG: func.func private @moert_router(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32)
// CHECK-DAG: func.func private @moert_topk(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32, i32, f32, i64, i64, i32)
// CHECK-DAG: func.func private @moert_assign(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64)
// CHECK-DAG: func.func private @moert_dispatch(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i32)
// CHECK-DAG: func.func private @moert_expert_ffn(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64, i32, i32)
// CHECK-DAG: func.func private @moert_combine(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32)
// CHECK-DAG: func.func private @moert_mlp(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32, i32)
// CHECK-DAG: func.func private @moert_expert_load(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64)
// CHECK-DAG: func.func private @moert_load_balance_loss(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, f32)
// CHECK-DAG: func.func private @moert_z_loss(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, f32)
// CHECK-LABEL: func.func @moe_entry_compute
func.func @compute(%x: tensor<64x32xf32>, %n: tensor<32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x16x32xf32>, %d: tensor<8x32x16xf32>, %mg: tensor<48x32xf32>, %mu: tensor<48x32xf32>, %md: tensor<32x48xf32>) -> (tensor<64x32xf32>, tensor<64x32xf32>, tensor<f32>, tensor<f32>, tensor<64x32xf32>) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-05 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  %l = moe.router %0, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax {renormalize} : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %pos, %counts = moe.assign %i experts = 8 {capacity = 20 : i64, groups = 2 : i64} : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<2x8xi32>)
  %buf = moe.dispatch %0, %pos : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<8x40x32xf32>
  %y = moe.expert_ffn %buf counts %counts up %u down %d act = gelu : (tensor<8x40x32xf32>, tensor<2x8xi32>, tensor<8x16x32xf32>, tensor<8x32x16xf32>) -> tensor<8x40x32xf32>
  %o = moe.combine %y, %pos, %w passthrough %0 : (tensor<8x40x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  %st = moe.expert_load %s, %i : (tensor<64x8xf32>, tensor<64x2xi32>) -> tensor<2x8xf32>
  %lb = moe.load_balance_loss %st tokens = 64 k = 2 coeff = 0.01 : (tensor<2x8xf32>) -> tensor<f32>
  %z = moe.z_loss %l tokens = 128 coeff = 0.001 : (tensor<64x8xf32>) -> tensor<f32>
  %m = moe.mlp %x gate %mg up %mu down %md act = geglu : (tensor<64x32xf32>, tensor<48x32xf32>, tensor<48x32xf32>, tensor<32x48xf32>) -> tensor<64x32xf32>
  %a = moe.add %o, %m : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %a, %x, %lb, %z, %m : tensor<64x32xf32>, tensor<64x32xf32>, tensor<f32>, tensor<f32>, tensor<64x32xf32>
}

// -----

// Every collective and its *_start form, and moert_wait.
// CHECK-DAG: func.func private @moert_all_to_all(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64, i64)
// CHECK-DAG: func.func private @moert_all_to_all_v(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64)
// CHECK-DAG: func.func private @moert_all_gather(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64)
// CHECK-DAG: func.func private @moert_reduce_scatter(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i32)
// CHECK-DAG: func.func private @moert_all_reduce(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i32)
// CHECK-DAG: func.func private @moert_slice(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64)
// CHECK-DAG: func.func private @moert_all_to_all_start(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_all_to_all_v_start(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_all_gather_start(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_reduce_scatter_start(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i32) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_all_reduce_start(!llvm.ptr, i64, !llvm.ptr, !llvm.ptr, i64, i32) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_wait(!llvm.ptr, !llvm.ptr)
// CHECK-LABEL: func.func @moe_entry_collectives
// The reduce-scatter over dp (axis 0) and ep (axis 1) has the mask 3; its
// element type i32 is MOERT_I32 = 3, its dim 0.
// CHECK-DAG: %[[C3:.*]] = arith.constant 3 : i64
// CHECK-DAG: %[[I32:.*]] = arith.constant 3 : i32
// CHECK-DAG: %[[C0:.*]] = arith.constant 0 : i64
// CHECK: call @moert_reduce_scatter(%{{.*}}, %[[C3]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[C0]], %[[I32]])
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 2]
func.func @collectives(%b: tensor<8x4x32xf32>, %r: tensor<64x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>, %ri: tensor<64x32xi32>) -> (tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<16x32xi32>, tensor<64x32xf32>, tensor<64x16xf32>, tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<32x32xf32>, tensor<64x32xf32>) {
  %3 = moe.reduce_scatter %ri on @mesh ["dp", "ep"] dim = 0 : (tensor<64x32xi32>) -> tensor<16x32xi32>
  %0 = moe.all_to_all %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
  %1 = moe.all_to_all_v %r, %c, %rc on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
  %2 = moe.all_gather %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x64xf32>
  %4 = moe.all_reduce %r on @mesh ["tp"] : (tensor<64x32xf32>) -> tensor<64x32xf32>
  %5 = moe.slice %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x16xf32>
  %f0 = moe.all_to_all_start %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
  %f1 = moe.all_to_all_v_start %r, %c, %rc on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<128x32xf32>>
  %f2 = moe.all_gather_start %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> !moe.future<tensor<64x64xf32>>
  %f3 = moe.reduce_scatter_start %r on @mesh ["tp"] dim = 0 : (tensor<64x32xf32>) -> !moe.future<tensor<32x32xf32>>
  %f4 = moe.all_reduce_start %r on @mesh ["tp"] : (tensor<64x32xf32>) -> !moe.future<tensor<64x32xf32>>
  %6 = moe.wait %f0 : !moe.future<tensor<4x8x32xf32>>
  %7 = moe.wait %f1 : !moe.future<tensor<128x32xf32>>
  %8 = moe.wait %f2 : !moe.future<tensor<64x64xf32>>
  %9 = moe.wait %f3 : !moe.future<tensor<32x32xf32>>
  %10 = moe.wait %f4 : !moe.future<tensor<64x32xf32>>
  return %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10 : tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<16x32xi32>, tensor<64x32xf32>, tensor<64x16xf32>, tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<32x32xf32>, tensor<64x32xf32>
}

// -----

// Enums by name: softmax = MOERT_SCORE_SOFTMAX (0), top2_sum =
// MOERT_GROUP_SCORE_TOP2_SUM (1); bf16 = MOERT_BF16 (2).
// CHECK-LABEL: func.func @moe_entry_grouped_topk
// CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
// CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
// CHECK-DAG: %[[BF16:.*]] = arith.constant 2 : i32
// CHECK: call @moert_router(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[BF16]])
// CHECK: call @moert_topk(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[ZERO]], %[[ONE]], %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]])
func.func @grouped_topk(%x: tensor<64x32xbf16>, %wr: tensor<16x32xbf16>) -> tensor<64x4xi32> {
  %l = moe.router %x, %wr : (tensor<64x32xbf16>, tensor<16x32xbf16>) -> tensor<64x16xf32>
  %w, %i, %s = moe.topk %l k = 4 score = softmax {num_groups = 4 : i64, groups_kept = 2 : i64, group_score = #moe<group_score top2_sum>, renormalize} : (tensor<64x16xf32>) -> (tensor<64x4xf32>, tensor<64x4xi32>, tensor<64x16xf32>)
  return %i : tensor<64x4xi32>
}

// -----

// Activations: gelu = MOERT_ACT_GELU (1), geglu = MOERT_ACT_GEGLU (3); f16 =
// MOERT_F16 (1).
// CHECK-LABEL: func.func @moe_entry_activations
// CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
// CHECK-DAG: %[[THREE:.*]] = arith.constant 3 : i32
// CHECK: call @moert_mlp(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[ONE]], %[[ONE]])
// CHECK: call @moert_mlp(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[THREE]], %[[ONE]])
func.func @activations(%x: tensor<16x32xf16>, %g: tensor<48x32xf16>, %u: tensor<48x32xf16>, %d: tensor<32x48xf16>) -> tensor<16x32xf16> {
  %0 = moe.mlp %x up %u down %d act = gelu : (tensor<16x32xf16>, tensor<48x32xf16>, tensor<32x48xf16>) -> tensor<16x32xf16>
  %1 = moe.mlp %0 gate %g up %u down %d act = geglu : (tensor<16x32xf16>, tensor<48x32xf16>, tensor<48x32xf16>, tensor<32x48xf16>) -> tensor<16x32xf16>
  return %1 : tensor<16x32xf16>
}


// -----

// LayerNorm (ABI 4): the forward with and without a bias (a null pointer), and
// its gradient with and without db.
// CHECK-DAG: func.func private @moert_layernorm(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32)
// CHECK-DAG: func.func private @moert_layernorm_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32)
// CHECK-LABEL: func.func @moe_entry_layernorm
// CHECK-DAG: %[[NULL:.*]] = llvm.mlir.zero : !llvm.ptr
// CHECK-DAG: %[[X:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK: call @moert_layernorm(%arg0, %[[X]], %[[W:[^,]*]], %[[NULL]], %[[Y0:[^,]*]], %c16_i64, %c32_i64, %[[EPS:[^,]*]], %c0_i32)
// CHECK: call @moert_layernorm(%arg0, %[[Y0]], %[[W]], %[[B:[^,]*]], %[[Y1:[^,]*]], %c16_i64, %c32_i64, %[[EPS]], %c0_i32)
// CHECK: call @moert_layernorm_grad(%arg0, %[[X]], %[[W]], %[[Y1]], %{{[^,]*}}, %{{[^,]*}}, %[[NULL]], %c16_i64, %c32_i64, %[[EPS]], %c0_i32)
// CHECK: call @moert_layernorm_grad(%arg0, %[[X]], %[[W]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %[[DB:[^,]*]], %c16_i64, %c32_i64, %[[EPS]], %c0_i32)
func.func @layernorm(%x: tensor<16x32xf32>, %w: tensor<32xf32>, %b: tensor<32xf32>) -> (tensor<16x32xf32>, tensor<32xf32>, tensor<32xf32>) {
  %0 = moe.layernorm %x, %w {eps = 1.0e-5 : f32} : (tensor<16x32xf32>, tensor<32xf32>) -> tensor<16x32xf32>
  %1 = moe.layernorm %0, %w bias %b {eps = 1.0e-5 : f32} : (tensor<16x32xf32>, tensor<32xf32>, tensor<32xf32>) -> tensor<16x32xf32>
  %2:2 = moe.layernorm_grad %x, %w, %1 {eps = 1.0e-5 : f32} : (tensor<16x32xf32>, tensor<32xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<32xf32>)
  %3:3 = moe.layernorm_grad %x, %w, %2#0 {eps = 1.0e-5 : f32} : (tensor<16x32xf32>, tensor<32xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<32xf32>, tensor<32xf32>)
  return %3#0, %2#1, %3#2 : tensor<16x32xf32>, tensor<32xf32>, tensor<32xf32>
}

// The training kernels of ABI 2 (docs/spec.md section 7). The lowering
// declares a callee on first use, and no op of this file lowers to them yet,
// so these are the types it derives, to become CHECK-DAG lines with the
// first lowering that calls them:
//   func.func private @moert_rmsnorm_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32)
//   func.func private @moert_router_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32)
//   func.func private @moert_topk_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32, i32, f32)
//   func.func private @moert_dispatch_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i32)
//   func.func private @moert_combine_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i32)
//   func.func private @moert_expert_ffn_train(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64, i32, i32)
//   func.func private @moert_expert_ffn_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i64, i64, i64, i32, i32)
//   func.func private @moert_mlp_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32, i32)
//   func.func private @moert_expert_load_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64)
//   func.func private @moert_load_balance_loss_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, f32)
//   func.func private @moert_z_loss_grad(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, f32)
//   func.func private @moert_mse_loss(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64, i32)
//   func.func private @moert_adamw(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64)
//   func.func private @moert_sgd(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64)
//   func.func private @moert_bias_update(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, i64)
