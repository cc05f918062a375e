// The pipeline moe-compile runs (moe-compile.test in test/Tools diffs the two).
// RUN: moe-opt %s --moe-compile-pipeline | FileCheck %s --check-prefixes=CHECK,ONE
// RUN: moe-opt %s --moe-compile-pipeline="mesh=ep=2,tp=2 dtd" | FileCheck %s --check-prefixes=CHECK,DTD
// RUN: moe-opt %s --moe-compile-pipeline="mesh=tp=2 expert-tp" | FileCheck %s --check-prefixes=CHECK,ETP
// RUN: moe-opt %s --moe-compile-pipeline="mesh=ep=2,tp=2 dtd" | %python %S/Inputs/manifest-attr.py - | FileCheck %s --check-prefix=MANIFEST
// RUN: moe-opt %s --moe-compile-pipeline="mesh=tp=2 expert-tp" | %python %S/Inputs/manifest-attr.py - | FileCheck %s --check-prefix=ETPCOMM
// RUN: moe-opt %s --moe-compile-pipeline="mesh=ep=2" --moe-lower-to-llvm | FileCheck %s --check-prefix=LLVM
// RUN: not moe-opt %s --moe-compile-pipeline=dtd 2>&1 | FileCheck %s --check-prefix=OPTS
// RUN: not moe-opt %s --moe-compile-pipeline="mesh=ep=3" 2>&1 | FileCheck %s --check-prefix=SHARD

// The entry points are described on the module (moe.manifest), the mesh is
// gone, every tensor function became an entry point of runtime calls.
// CHECK: module attributes {moe.manifest = "{\22entries\22:[{\22args\22:
// CHECK-NOT: moe.mesh
// CHECK-LABEL: func.func @moe_entry_forward(%arg0: !llvm.ptr, %arg1: !llvm.ptr, %arg2: !llvm.ptr) attributes {moe.arena_bytes = {{[1-9][0-9]*}} : i64}
// CHECK: call @moert_arena(
// CHECK: call @moert_rmsnorm(
// CHECK: call @moert_router(
// CHECK: call @moert_topk(
// CHECK: call @moert_assign(
// CHECK: call @moert_dispatch(
// ONE-NOT: call @moert_all_to_all
// DTD: call @moert_all_to_all(
// DTD: call @moert_slice(
// DTD: call @moert_all_to_all_v(
// DTD: call @moert_all_gather(
// ETP-NOT: call @moert_all_to_all
// CHECK: call @moert_expert_ffn(
// ETP: call @moert_all_reduce(
// DTD: call @moert_slice(
// DTD: call @moert_all_to_all_v(
// DTD: call @moert_all_gather(
// CHECK: call @moert_combine(
// CHECK: call @moert_add(
// CHECK-NEXT: return
// CHECK-NOT: func.func @forward
// CHECK-NOT: tensor<

// MANIFEST: manifest
// MANIFEST-NEXT: mesh dp=1 ep=2 tp=2
// MANIFEST-NEXT: entry forward symbol moe_entry_forward keys args,collectives,name,results,role,symbol
// MANIFEST-NEXT: arg 0 input hidden_states f32 global [64, 32] local [32, 32] shard dp*ep x -
// MANIFEST-NEXT: arg 1 weight model.layers.0.post_attention_layernorm.weight f32 global [32] local [32] shard -
// MANIFEST-NEXT: arg 2 weight model.layers.0.block_sparse_moe.gate.weight f32 global [8, 32] local [8, 32] shard - x -
// MANIFEST-NEXT: arg 3 weight model.layers.0.block_sparse_moe.experts.{e}.w1.weight f32 global [8, 64, 32] local [4, 64, 32] shard ep x - x - transpose False
// MANIFEST: result 0 hidden_states f32 global [64, 32] local [32, 32] shard dp*ep x -
// The collectives per call, from CollectiveOpInterface (the runtime's
// --stats counts the same; test/Integration/e2e.py compares them on every
// mesh). With DTD, each rank sends 64 rows of D/tp = 16 floats forward
// (4096 bytes at most) and receives at most 128 rows (8192 bytes) to return:
// all_to_all_v's count is data-dependent, so this is its upper bound.
// MANIFEST-NEXT: collective all_gather over tp calls 2 bytes 12288
// MANIFEST-NEXT: collective all_to_all over ep calls 1 bytes 16
// MANIFEST-NEXT: collective all_to_all_v over ep calls 2 bytes 12288 (upper bound)
// Expert-TP over tp=2: one all-reduce of the experts' partial output, the
// packed [T*k = 128, 32] f32 rows: 2 (n-1)/n of 16384 bytes.
// ETPCOMM: collective all_reduce over tp calls 1 bytes 16384

// LLVM: module attributes {moe.manifest =
// LLVM: llvm.func @moe_entry_forward(%arg0: !llvm.ptr, %arg1: !llvm.ptr, %arg2: !llvm.ptr)
// LLVM: llvm.call @moert_all_to_all_v(
// LLVM-NOT: func.func

// OPTS: error: moe-compile-pipeline: dtd and expert-tp need a mesh with tp > 1 (mesh=...)

// SHARD: error: input "hidden_states" has 64 tokens, not divisible by dp x ep = 3

func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %w: tensor<32xf32> {moe.weight = "model.layers.0.post_attention_layernorm.weight"}, %wr: tensor<8x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.gate.weight"}, %wg: tensor<8x64x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w1.weight"}, %wu: tensor<8x64x32xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w3.weight"}, %wd: tensor<8x32x64xf32> {moe.weight = "model.layers.0.block_sparse_moe.experts.{e}.w2.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %n = moe.rmsnorm %x, %w {eps = 1.0e-05 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  %y = moe.layer %n router %wr gate %wg up %wu down %wd {num_experts = 8 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x64x32xf32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>) -> tensor<64x32xf32>
  %r = moe.add %x, %y : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %r : tensor<64x32xf32>
}
