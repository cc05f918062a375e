// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-checkpoint="policy=none" -moe-overlap="degree=2" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-overlap="degree=4" | FileCheck %s --check-prefix=FOUR
// RUN: moe-opt %s -moe-shard="mesh=ep=2,tp=2 expert-tp=true" -moe-drop-duplicate-tokens -moe-differentiate -moe-overlap="degree=2" | FileCheck %s --check-prefix=DTD
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e9, "gemm_latency_s": 1e-6, "copy_bytes_per_s": 1e10, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e10}}, "axes": {"ep": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e7}}}' > %t.slow.json
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e12, "gemm_latency_s": 1e-3, "copy_bytes_per_s": 1e10, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-3, "bandwidth_bytes_per_s": 1e12}}}' > %t.fast.json
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-overlap="degree=auto cluster=%t.slow.json" | FileCheck %s --check-prefix=SLOW
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-overlap="degree=auto cluster=%t.fast.json" | FileCheck %s --check-prefix=FAST

// The backward's exchange (capacity, swiglu) in 2 chunks, in reverse order:
// the all-to-all of the gradient of chunk 0 is in flight while chunk 1's
// data gradient (moe.expert_ffn_grad_data: dx and the rows' h, du, da)
// computes, and chunk 1's dx goes back while chunk 0's computes; the rows
// are interleaved back for ONE moe.expert_ffn_grad_weight over all rows,
// emitted before the last return is waited for. With checkpointing `none`
// the saved activations ([rows, F]) are viewed as [E, R, F] and chunked
// like the slots.
// CHECK-LABEL: func.func @backward
// CHECK-SAME: %[[SU:[a-z0-9]+]]: tensor<64x96xf32> {moe.saved = "saved.8"}, %[[SA:[a-z0-9]+]]: tensor<64x96xf32> {moe.saved = "saved.9"}
// CHECK: %[[DY:.*]], %{{.*}} = moe.combine_grad
// CHECK: %[[G1:.*]] = moe.chunk %[[DY]] dim = 1 index = 1 chunks = 2 : (tensor<8x8x32xf32>) -> tensor<8x4x32xf32>
// CHECK: %[[F1:.*]] = moe.all_to_all_start %[[G1]] on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
// CHECK: %[[G0:.*]] = moe.chunk %[[DY]] dim = 1 index = 0 chunks = 2
// CHECK: %[[F0:.*]] = moe.all_to_all_start %[[G0]]
// CHECK: %[[R1:.*]] = moe.wait %[[F1]]
// CHECK: %[[X1:.*]] = moe.chunk %[[X:.*]] dim = 1 index = 1 chunks = 2 : (tensor<4x16x32xf32>) -> tensor<4x8x32xf32>
// CHECK: %[[VU:.*]] = moe.reshape %[[SU]] : (tensor<64x96xf32>) -> tensor<4x16x96xf32>
// CHECK: %[[U1:.*]] = moe.chunk %[[VU]] dim = 1 index = 1 chunks = 2
// CHECK: %[[VA:.*]] = moe.reshape %[[SA]]
// CHECK: %[[A1:.*]] = moe.chunk %[[VA]] dim = 1 index = 1 chunks = 2
// CHECK: %[[DX1:.*]], %[[H1:.*]], %[[DU1:.*]], %[[DA1:.*]] = moe.expert_ffn_grad_data %[[X1]] gate %{{.*}} up %{{.*}} down %{{.*}}, %[[R1]] saved_u %[[U1]] saved_a %[[A1]] act = swiglu : ({{.*}}) -> (tensor<4x8x32xf32>, tensor<4x8x96xf32>, tensor<4x8x96xf32>, tensor<4x8x96xf32>)
// CHECK: %[[B1:.*]] = moe.all_to_all_start %[[DX1]] on @mesh ["ep"] split = 1 concat = 0
// CHECK: %[[R0:.*]] = moe.wait %[[F0]]
// CHECK: %[[X0:.*]] = moe.chunk %[[X]] dim = 1 index = 0 chunks = 2
// CHECK: %[[DX0:.*]], %[[H0:.*]], %[[DU0:.*]], %[[DA0:.*]] = moe.expert_ffn_grad_data %[[X0]] {{.*}}, %[[R0]]
// CHECK: %[[B0:.*]] = moe.all_to_all_start %[[DX0]]
// CHECK: %[[W1:.*]] = moe.wait %[[B1]]
// CHECK: %[[R:.*]] = moe.interleave %[[R0]], %[[R1]] dim = 1 : (tensor<4x8x32xf32>, tensor<4x8x32xf32>) -> tensor<4x16x32xf32>
// CHECK: %[[H:.*]] = moe.interleave %[[H0]], %[[H1]] dim = 1 : (tensor<4x8x96xf32>, tensor<4x8x96xf32>) -> tensor<4x16x96xf32>
// CHECK: %[[DU:.*]] = moe.interleave %[[DU0]], %[[DU1]] dim = 1
// CHECK: %[[DA:.*]] = moe.interleave %[[DA0]], %[[DA1]] dim = 1
// CHECK: %[[DG:.*]], %[[DUP:.*]], %[[DD:.*]] = moe.expert_ffn_grad_weight %[[X]], %[[R]] hidden %[[H]] dpre_up %[[DU]] dpre_gate %[[DA]] : ({{.*}}) -> (tensor<4x96x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>)
// CHECK: %[[W0:.*]] = moe.wait %[[B0]]
// CHECK: %[[DB:.*]] = moe.interleave %[[W0]], %[[W1]] dim = 1 : (tensor<8x4x32xf32>, tensor<8x4x32xf32>) -> tensor<8x8x32xf32>
// CHECK: moe.dispatch_grad %[[DB]]
// CHECK-NOT: moe.expert_ffn_grad
// CHECK: return {{.*}}, %[[DG]], %[[DUP]], %[[DD]]

// Degree 4 (the hidden activations recomputed by each chunk): chunks 3, 2,
// 1, 0, one weight gradient after the last data gradient.
// FOUR-LABEL: func.func @backward
// FOUR-NOT: moe.expert_ffn_grad_data
// FOUR: moe.chunk {{.*}} index = 3 chunks = 4
// FOUR: moe.expert_ffn_grad_data {{.*}} : ({{.*}}) -> (tensor<4x4x32xf32>, tensor<4x4x96xf32>, tensor<4x4x96xf32>, tensor<4x4x96xf32>)
// FOUR: moe.chunk {{.*}} index = 2 chunks = 4
// FOUR: moe.expert_ffn_grad_data
// FOUR: moe.chunk {{.*}} index = 1 chunks = 4
// FOUR: moe.expert_ffn_grad_data
// FOUR: moe.chunk {{.*}} index = 0 chunks = 4
// FOUR: moe.expert_ffn_grad_data
// FOUR-NOT: moe.expert_ffn_grad_data
// FOUR: moe.expert_ffn_grad_weight
// FOUR-NEXT: moe.wait
// FOUR-NOT: moe.expert_ffn_grad

// DTD with expert-tp: every chunk's gradient slice over tp, all-to-all over
// ep, all-gather over tp; its dx (a partial sum over tp) reduce-scattered
// over tp before it goes back.
// DTD-LABEL: func.func @backward
// DTD: moe.slice {{.*}} on @mesh ["tp"] dim = 2 : (tensor<8x4x32xf32>) -> tensor<8x4x16xf32>
// DTD-NEXT: moe.all_to_all_start
// DTD: moe.wait
// DTD-NEXT: moe.all_gather {{.*}} on @mesh ["tp"] dim = 2 : (tensor<4x8x16xf32>) -> tensor<4x8x32xf32>
// DTD: %[[D1:.*]], %{{.*}}, %{{.*}}, %{{.*}} = moe.expert_ffn_grad_data
// DTD-NEXT: %[[P1:.*]] = moe.reduce_scatter %[[D1]] on @mesh ["tp"] dim = 2
// DTD-NEXT: moe.all_to_all_start %[[P1]]
// DTD: moe.expert_ffn_grad_data
// DTD: moe.expert_ffn_grad_weight {{.*}} -> (tensor<4x48x32xf32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>)
// DTD-NOT: moe.expert_ffn_grad
// degree=auto prices the backward's exchange (expert_ffn_grad between its
// all-to-alls) like the forward's: a slow ep link gets 8 chunks (the most
// that divide the 8 slots), a fast one none.
// SLOW-LABEL: func.func @backward
// SLOW: moe.chunk {{.*}} index = 7 chunks = 8
// SLOW: moe.expert_ffn_grad_weight
// FAST-LABEL: func.func @backward
// FAST-NOT: _start
// FAST: moe.expert_ffn_grad %
// FAST-NOT: moe.expert_ffn_grad_data
func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %g: tensor<8x96x32xf32> {moe.weight = "experts.{e}.gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x16x32xf32>
  %y = moe.expert_ffn %b counts %c gate %g up %u down %d act = swiglu : (tensor<8x16x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x16x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x16x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
