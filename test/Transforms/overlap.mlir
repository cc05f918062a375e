// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=2" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=4" | FileCheck %s --check-prefix=FOUR
// RUN: moe-opt %s -moe-shard="mesh=ep=2,tp=2 expert-tp=true" -moe-drop-duplicate-tokens -moe-overlap="degree=2" | FileCheck %s --check-prefix=DTD
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=1" | FileCheck %s --check-prefix=ONE

// The schedule of degree 2: chunk 1's all-to-all starts before chunk 0's FFN,
// chunk 0's return before chunk 1's FFN, and both returns are waited after
// the last FFN; the chunks are interleaved back for the combine.
// CHECK-LABEL: func.func @capacity
// CHECK: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<8x8x32xf32>
// CHECK: %[[C0:.*]] = moe.chunk %[[B]] dim = 1 index = 0 chunks = 2 : (tensor<8x8x32xf32>) -> tensor<8x4x32xf32>
// CHECK: %[[F0:.*]] = moe.all_to_all_start %[[C0]] on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
// CHECK: %[[C1:.*]] = moe.chunk %[[B]] dim = 1 index = 1 chunks = 2
// CHECK: %[[F1:.*]] = moe.all_to_all_start %[[C1]]
// CHECK: %[[X0:.*]] = moe.wait %[[F0]]
// CHECK: %[[Y0:.*]] = moe.expert_ffn %[[X0]] {{.*}} -> tensor<4x8x32xf32>
// CHECK: %[[R0:.*]] = moe.all_to_all_start %[[Y0]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x8x32xf32>) -> !moe.future<tensor<8x4x32xf32>>
// CHECK: %[[X1:.*]] = moe.wait %[[F1]]
// CHECK: %[[Y1:.*]] = moe.expert_ffn %[[X1]]
// CHECK: %[[R1:.*]] = moe.all_to_all_start %[[Y1]]
// CHECK: %[[B0:.*]] = moe.wait %[[R0]]
// CHECK: %[[B1:.*]] = moe.wait %[[R1]]
// CHECK: %[[J:.*]] = moe.interleave %[[B0]], %[[B1]] dim = 1 : (tensor<8x4x32xf32>, tensor<8x4x32xf32>) -> tensor<8x8x32xf32>
// CHECK: moe.combine %[[J]]
// CHECK-NOT: moe.all_to_all

// Degree 4: at most one chunk ahead. Chunk i+1 is started before FFN(i), and
// the return of chunk i-1 is waited after FFN(i). The weights are held and
// prepared (moe.expert_ffn_prepare) before the first wait, while chunks 0 and
// 1 are in flight, until the last chunk's FFN ("close"; the first is marked
// "open").
// FOUR-LABEL: func.func @capacity
// FOUR: %[[F0:.*]] = moe.all_to_all_start {{.*}} -> !moe.future<tensor<4x4x32xf32>>
// FOUR: %[[F1:.*]] = moe.all_to_all_start
// FOUR-NEXT: moe.expert_ffn_prepare up %arg2 down %arg3 act = relu : tensor<4x96x32xf32>, tensor<4x32x96xf32>
// FOUR-NEXT: moe.wait %[[F0]]
// FOUR-NEXT: moe.expert_ffn {{.*}} {moe.hold_weights = "open"}
// FOUR-NEXT: %[[R0:.*]] = moe.all_to_all_start {{.*}} split = 1 concat = 0
// FOUR-NEXT: moe.chunk {{.*}} index = 2 chunks = 4
// FOUR-NEXT: %[[F2:.*]] = moe.all_to_all_start
// FOUR-NEXT: moe.wait %[[F1]]
// FOUR-NEXT: moe.expert_ffn {{.*}} act = relu :
// FOUR-NEXT: %[[R1:.*]] = moe.all_to_all_start {{.*}} split = 1 concat = 0
// FOUR-NEXT: moe.wait %[[R0]]
// FOUR-NEXT: moe.chunk {{.*}} index = 3 chunks = 4
// FOUR-NEXT: %[[F3:.*]] = moe.all_to_all_start
// FOUR-NEXT: moe.wait %[[F2]]
// FOUR-NEXT: moe.expert_ffn {{.*}} act = relu :
// FOUR-NEXT: %[[R2:.*]] = moe.all_to_all_start
// FOUR-NEXT: moe.wait %[[R1]]
// FOUR-NEXT: moe.wait %[[F3]]
// FOUR-NEXT: moe.expert_ffn {{.*}} {moe.hold_weights = "close"}
// FOUR-NEXT: %[[R3:.*]] = moe.all_to_all_start
// FOUR-NEXT: %[[B2:.*]] = moe.wait %[[R2]]
// FOUR-NEXT: %[[B3:.*]] = moe.wait %[[R3]]
// FOUR-NEXT: moe.interleave {{.*}}, {{.*}}, %[[B2]], %[[B3]] dim = 1 : {{.*}} -> tensor<8x8x32xf32>

// DTD with expert-tp: the slice goes with each chunk before its all-to-all,
// the all-gather and the reduce-scatter over tp around each chunk's FFN, the
// all-gather after each return.
// DTD-LABEL: func.func @capacity
// DTD: %[[C0:.*]] = moe.chunk {{.*}} index = 0 chunks = 2 : (tensor<8x8x32xf32>) -> tensor<8x4x32xf32>
// DTD: %[[S0:.*]] = moe.slice %[[C0]] on @mesh ["tp"] dim = 2 : (tensor<8x4x32xf32>) -> tensor<8x4x16xf32>
// DTD: %[[F0:.*]] = moe.all_to_all_start %[[S0]] on @mesh ["ep"] {{.*}} -> !moe.future<tensor<4x8x16xf32>>
// DTD: moe.chunk {{.*}} index = 1
// DTD: moe.slice
// DTD: %[[F1:.*]] = moe.all_to_all_start
// DTD: %[[X0:.*]] = moe.wait %[[F0]]
// DTD: %[[G0:.*]] = moe.all_gather %[[X0]] on @mesh ["tp"] dim = 2 : (tensor<4x8x16xf32>) -> tensor<4x8x32xf32>
// DTD: %[[Y0:.*]] = moe.expert_ffn %[[G0]]
// DTD: %[[RS0:.*]] = moe.reduce_scatter %[[Y0]] on @mesh ["tp"] dim = 2
// DTD: %[[R0:.*]] = moe.all_to_all_start %[[RS0]]
// DTD: moe.wait %[[F1]]
// DTD: moe.expert_ffn
// DTD: %[[R1:.*]] = moe.all_to_all_start
// DTD: %[[B0:.*]] = moe.wait %[[R0]]
// DTD: %[[A0:.*]] = moe.all_gather %[[B0]] on @mesh ["tp"] dim = 2 : (tensor<8x4x16xf32>) -> tensor<8x4x32xf32>
// DTD: %[[B1:.*]] = moe.wait %[[R1]]
// DTD: %[[A1:.*]] = moe.all_gather %[[B1]]
// DTD: moe.interleave %[[A0]], %[[A1]] dim = 1
// DTD-NOT: moe.all_reduce

// Degree 1 leaves the program as it is.
// ONE-LABEL: func.func @capacity
// ONE-NOT: moe.chunk
// ONE-NOT: _start
// ONE: moe.all_to_all {{.*}} split = 0 concat = 1
// ONE: moe.all_to_all {{.*}} split = 1 concat = 0

func.func @capacity(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x16x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x16x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x16x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x16x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
