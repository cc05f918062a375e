// RUN: moe-opt %s -split-input-file -moe-to-runtime -canonicalize | FileCheck %s

// Each public function becomes moe_entry_<name>(ctx, args, results); each op
// one moert_* call. Intermediates live in one arena planned from lifetimes.

// CHECK-DAG: func.func private @moert_arena(!llvm.ptr, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @moert_rmsnorm(!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32)
// CHECK-LABEL: func.func @moe_entry_mlp_block
// CHECK-SAME: (%[[CTX:.*]]: !llvm.ptr, %[[ARGS:.*]]: !llvm.ptr, %[[RES:.*]]: !llvm.ptr)
// CHECK-SAME: attributes {moe.arena_bytes = 8192 : i64}
// CHECK: %[[X:.*]] = llvm.load %[[ARGS]] : !llvm.ptr -> !llvm.ptr
// CHECK: llvm.getelementptr %[[ARGS]][1] : (!llvm.ptr) -> !llvm.ptr, !llvm.ptr
// CHECK: %[[BASE:.*]] = call @moert_arena(%[[CTX]], %{{.*}}) : (!llvm.ptr, i64) -> !llvm.ptr
// The final add writes straight into the caller's result buffer.
// CHECK: %[[OUT:.*]] = llvm.load %[[RES]] : !llvm.ptr -> !llvm.ptr
// CHECK: call @moert_rmsnorm(%[[CTX]], %[[X]], %{{.*}}, %[[BASE]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : (!llvm.ptr, !llvm.ptr, !llvm.ptr, !llvm.ptr, i64, i64, f32, i32) -> ()
// CHECK: call @moert_mlp(%[[CTX]], %[[BASE]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[SECOND:.*]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}})
// CHECK: call @moert_add(%[[CTX]], %[[X]], %[[SECOND]], %[[OUT]], %{{.*}}, %{{.*}})
// CHECK-NOT: moert_copy
// CHECK: return
func.func @mlp_block(%x: tensor<16x64xf32>, %n: tensor<64xf32>, %g: tensor<32x64xf32>, %u: tensor<32x64xf32>, %d: tensor<64x32xf32>) -> tensor<16x64xf32> {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-6 : f32} : (tensor<16x64xf32>, tensor<64xf32>) -> tensor<16x64xf32>
  %1 = moe.mlp %0 gate %g up %u down %d act = swiglu : (tensor<16x64xf32>, tensor<32x64xf32>, tensor<32x64xf32>, tensor<64x32xf32>) -> tensor<16x64xf32>
  %2 = moe.add %x, %1 : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
  return %2 : tensor<16x64xf32>
}

// -----

// Buffers whose lifetimes do not overlap share arena space: %0 dies after %1
// is made, so %2 reuses its 4 KiB (three 4 KiB values fit in 8 KiB).
// CHECK-LABEL: func.func @moe_entry_reuse
// CHECK-SAME: attributes {moe.arena_bytes = 8192 : i64}
// A returned argument is copied into the result buffer.
// CHECK: call @moert_copy(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : (!llvm.ptr, !llvm.ptr, !llvm.ptr, i64) -> ()
func.func @reuse(%x: tensor<16x64xf32>) -> (tensor<16x64xf32>, tensor<16x64xf32>) {
  %0 = moe.add %x, %x : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
  %1 = moe.add %0, %0 : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
  %2 = moe.add %1, %1 : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
  %3 = moe.add %2, %2 : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32>
  return %3, %x : tensor<16x64xf32>, tensor<16x64xf32>
}

// -----

// The routing chain, with enums and shapes as constants.
// CHECK-LABEL: func.func @moe_entry_routing
// CHECK-DAG: %[[E:.*]] = arith.constant 8 : i64
// CHECK-DAG: %[[SIGMOID:.*]] = arith.constant 1 : i32
// CHECK-DAG: %[[SCALE:.*]] = arith.constant 2.500000e+00 : f32
// CHECK: call @moert_router
// CHECK: call @moert_topk(%{{.*}}, %{{.*}}, %[[BIAS:.*]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[E]], %{{.*}}, %[[SIGMOID]], %{{.*}}, %[[SCALE]]
// CHECK: call @moert_assign
// CHECK: call @moert_dispatch
// CHECK: call @moert_expert_ffn
// CHECK: call @moert_combine
func.func @routing(%x: tensor<16x64xf32>, %wr: tensor<8x64xf32>, %b: tensor<8xf32>, %u: tensor<8x32x64xf32>, %d: tensor<8x64x32xf32>) -> tensor<16x64xf32> {
  %l = moe.router %x, %wr : (tensor<16x64xf32>, tensor<8x64xf32>) -> tensor<16x8xf32>
  %w, %i, %s = moe.topk %l bias %b k = 2 score = sigmoid {renormalize, routed_scaling = 2.5 : f32} : (tensor<16x8xf32>, tensor<8xf32>) -> (tensor<16x2xf32>, tensor<16x2xi32>, tensor<16x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<16x2xi32>) -> (tensor<16x2xi32>, tensor<1x8xi32>)
  %buf = moe.dispatch %x, %p : (tensor<16x64xf32>, tensor<16x2xi32>) -> tensor<32x64xf32>
  %y = moe.expert_ffn %buf counts %c up %u down %d act = relu : (tensor<32x64xf32>, tensor<1x8xi32>, tensor<8x32x64xf32>, tensor<8x64x32xf32>) -> tensor<32x64xf32>
  %o = moe.combine %y, %p, %w : (tensor<32x64xf32>, tensor<16x2xi32>, tensor<16x2xf32>) -> tensor<16x64xf32>
  return %o : tensor<16x64xf32>
}

// -----

// Collectives pass the mesh axes as a bit mask (ep = axis 1 -> 2, tp = axis
// 2 -> 4); the mesh itself is gone (it lives on in the manifest).
// CHECK-NOT: moe.mesh
// CHECK-LABEL: func.func @moe_entry_collectives
// CHECK-DAG: %[[EP:.*]] = arith.constant 2 : i64
// CHECK-DAG: %[[TP:.*]] = arith.constant 4 : i64
// CHECK: call @moert_all_to_all(%{{.*}}, %[[EP]],
// CHECK: call @moert_all_gather(%{{.*}}, %[[TP]],
// CHECK: %[[H:.*]] = call @moert_all_reduce_start(%{{.*}}, %[[TP]], {{.*}}) : {{.*}} -> !llvm.ptr
// CHECK: call @moert_add
// CHECK: call @moert_wait(%{{.*}}, %[[H]])
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
func.func @collectives(%x: tensor<8x4x32xf32>, %r: tensor<16x32xf32>) -> (tensor<4x8x32xf32>, tensor<16x64xf32>, tensor<16x32xf32>, tensor<16x32xf32>) {
  %0 = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
  %1 = moe.all_gather %r on @mesh ["tp"] dim = 1 : (tensor<16x32xf32>) -> tensor<16x64xf32>
  %f = moe.all_reduce_start %r on @mesh ["tp"] : (tensor<16x32xf32>) -> !moe.future<tensor<16x32xf32>>
  %2 = moe.add %r, %r : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
  %3 = moe.wait %f : !moe.future<tensor<16x32xf32>>
  return %0, %1, %2, %3 : tensor<4x8x32xf32>, tensor<16x64xf32>, tensor<16x32xf32>, tensor<16x32xf32>
}

// -----

// moe.chunk and moe.interleave: one strided copy per chunk. Chunk 1 of 2 of
// dimension 1 of [8, 16, 32] f32: 64 rows of 128 bytes, every other one of
// the input starting at byte 128; the interleave writes each chunk to every
// other row of the result.
// CHECK-LABEL: func.func @moe_entry_chunks
// CHECK-DAG: %[[W:.*]] = arith.constant 128 : i64
// CHECK-DAG: %[[P:.*]] = arith.constant 256 : i64
// CHECK-DAG: %[[H:.*]] = arith.constant 64 : i64
// CHECK: %[[X:.*]] = llvm.load %{{.*}} : !llvm.ptr -> !llvm.ptr
// CHECK: %[[C1:.*]] = llvm.getelementptr %[[X]][128] : (!llvm.ptr) -> !llvm.ptr, i8
// CHECK: call @moert_copy_2d(%{{.*}}, %[[C1]], %[[T1:.*]], %[[W]], %[[H]], %[[P]], %[[W]])
// CHECK: call @moert_copy_2d(%{{.*}}, %[[X]], %[[T0:.*]], %[[W]], %[[H]], %[[P]], %[[W]])
// CHECK: call @moert_copy_2d(%{{.*}}, %[[T1]], %[[OUT:.*]], %[[W]], %[[H]], %[[W]], %[[P]])
// CHECK: %[[O1:.*]] = llvm.getelementptr %[[OUT]][128]
// CHECK: call @moert_copy_2d(%{{.*}}, %[[T0]], %[[O1]], %[[W]], %[[H]], %[[W]], %[[P]])
func.func @chunks(%x: tensor<8x16x32xf32>) -> tensor<8x16x32xf32> {
  %1 = moe.chunk %x dim = 1 index = 1 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x8x32xf32>
  %0 = moe.chunk %x dim = 1 index = 0 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x8x32xf32>
  %2 = moe.interleave %1, %0 dim = 1 : (tensor<8x8x32xf32>, tensor<8x8x32xf32>) -> tensor<8x16x32xf32>
  return %2 : tensor<8x16x32xf32>
}

// -----

// moe.chunk_counts: one call on the 8 counts. moe.chunk_rows: one gather of
// chunk 1 of 2 (rows of 128 bytes, 64 in, 36 out, join = 0); moe.join_rows:
// one scatter per input, in chunk order (join = 1).
// CHECK-LABEL: func.func @moe_entry_row_chunks
// CHECK-DAG: %[[ZERO:.*]] = arith.constant 0 : i32
// CHECK-DAG: %[[ONE:.*]] = arith.constant 1 : i32
// CHECK-DAG: %[[I0:.*]] = arith.constant 0 : i64
// CHECK-DAG: %[[I1:.*]] = arith.constant 1 : i64
// CHECK-DAG: %[[N2:.*]] = arith.constant 2 : i64
// CHECK-DAG: %[[N8:.*]] = arith.constant 8 : i64
// CHECK-DAG: %[[RB:.*]] = arith.constant 128 : i64
// CHECK-DAG: %[[R64:.*]] = arith.constant 64 : i64
// CHECK-DAG: %[[R36:.*]] = arith.constant 36 : i64
// CHECK: call @moert_chunk_counts(%{{.*}}, %[[C:.*]], %{{.*}}, %[[N8]], %[[I1]], %[[N2]])
// CHECK: call @moert_chunk_rows(%{{.*}}, %[[X:.*]], %[[T1:.*]], %[[C]], %[[N8]], %[[RB]], %[[R64]], %[[R36]], %[[I1]], %[[N2]], %[[ZERO]])
// CHECK: call @moert_chunk_rows(%{{.*}}, %[[X]], %[[T0:.*]], %[[C]], %[[N8]], %[[RB]], %[[R64]], %[[R36]], %[[I0]], %[[N2]], %[[ZERO]])
// CHECK: call @moert_chunk_rows(%{{.*}}, %[[T1]], %[[OUT:.*]], %[[C]], %[[N8]], %[[RB]], %[[R36]], %[[R64]], %[[I0]], %[[N2]], %[[ONE]])
// CHECK: call @moert_chunk_rows(%{{.*}}, %[[T0]], %[[OUT]], %[[C]], %[[N8]], %[[RB]], %[[R36]], %[[R64]], %[[I1]], %[[N2]], %[[ONE]])
func.func @row_chunks(%x: tensor<64x32xf32>, %c: tensor<1x8xi32>) -> (tensor<64x32xf32>, tensor<1x8xi32>) {
  %n = moe.chunk_counts %c index = 1 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
  %1 = moe.chunk_rows %x, %c index = 1 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
  %0 = moe.chunk_rows %x, %c index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
  %2 = moe.join_rows %1, %0 counts %c : (tensor<36x32xf32>, tensor<36x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
  return %2, %n : tensor<64x32xf32>, tensor<1x8xi32>
}

// -----

// moe.hold_weights (moe-overlap's chunks of one FFN): moert_hold_weights 1
// before the "open" FFN, 0 after the "close" one; an "open" left unclosed is
// closed at the return, so nothing stays held past the entry.
// CHECK-LABEL: func.func @moe_entry_held
// CHECK: call @moert_hold_weights(%{{.*}}, %[[ON:.*]]) :
// CHECK-NEXT: call @moert_expert_ffn
// CHECK-NEXT: call @moert_expert_ffn
// CHECK-NEXT: call @moert_hold_weights(%{{.*}}, %[[OFF:.*]]) :
// CHECK-NEXT: call @moert_hold_weights(%{{.*}}, %[[ON]]) :
// CHECK-NEXT: call @moert_expert_ffn
// CHECK-NEXT: call @moert_hold_weights(%{{.*}}, %[[OFF]]) :
// CHECK-NEXT: return
func.func @held(%x: tensor<2x4x8xf32>, %u: tensor<2x16x8xf32>, %d: tensor<2x8x16xf32>) -> (tensor<2x4x8xf32>, tensor<2x4x8xf32>, tensor<2x4x8xf32>) {
  %a = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "open"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  %b = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "close"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  %c = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "open"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  return %a, %b, %c : tensor<2x4x8xf32>, tensor<2x4x8xf32>, tensor<2x4x8xf32>
}

// -----

// moe.expert_ffn_prepare (moe-overlap, before the first wait): one
// moert_expert_ffn_prepare (E, D, F, act) that holds the weights itself, so
// the "open" FFN after it emits no second hold; "close" releases.
// CHECK-LABEL: func.func @moe_entry_prepared
// CHECK-DAG: %[[E:.*]] = arith.constant 2 : i64
// CHECK-DAG: %[[D:.*]] = arith.constant 8 : i64
// CHECK-DAG: %[[F:.*]] = arith.constant 16 : i64
// CHECK: call @moert_expert_ffn_prepare(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[E]], %[[D]], %[[F]], %{{.*}}, %{{.*}}) :
// CHECK-NOT: moert_hold_weights
// CHECK: call @moert_expert_ffn
// CHECK-NEXT: call @moert_expert_ffn
// CHECK-NEXT: call @moert_hold_weights(%{{.*}}, %{{.*}}) :
// CHECK-NEXT: return
func.func @prepared(%x: tensor<2x4x8xf32>, %u: tensor<2x16x8xf32>, %d: tensor<2x8x16xf32>) -> (tensor<2x4x8xf32>, tensor<2x4x8xf32>) {
  moe.expert_ffn_prepare up %u down %d act = relu : tensor<2x16x8xf32>, tensor<2x8x16xf32>
  %a = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "open"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  %b = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "close"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  return %a, %b : tensor<2x4x8xf32>, tensor<2x4x8xf32>
}
