// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=2" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=4" | FileCheck %s --check-prefix=FOUR
// RUN: moe-opt %s -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -moe-overlap="degree=2" | FileCheck %s --check-prefix=DTD
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-differentiate -moe-overlap="degree=2" | FileCheck %s --check-prefix=TRAIN

// Dropless (all_to_all_v) exchange of degree 2: each chunk takes a block of
// the rows of every (destination, expert) segment, with its counts computed
// from the counts (moe.chunk_counts) on both sides; the returned chunks are
// joined back into the original row order for the one combine.
// CHECK-LABEL: func.func @forward
// CHECK: %[[P:.*]], %[[C:.*]] = moe.assign
// CHECK: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<64x32xf32>
// CHECK: %[[RC:.*]] = moe.all_to_all %[[C]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<2x4xi32>
// CHECK: %[[C0:.*]] = moe.chunk_counts %[[C]] index = 0 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
// CHECK: %[[RC0:.*]] = moe.chunk_counts %[[RC]] index = 0 chunks = 2 : (tensor<2x4xi32>) -> tensor<2x4xi32>
// CHECK: %[[B0:.*]] = moe.chunk_rows %[[B]], %[[C]] index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
// CHECK: %[[F0:.*]] = moe.all_to_all_v_start %[[B0]], %[[C0]], %[[RC0]] on @mesh ["ep"] : (tensor<36x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<68x32xf32>>
// CHECK: %[[C1:.*]] = moe.chunk_counts %[[C]] index = 1 chunks = 2
// CHECK: %[[RC1:.*]] = moe.chunk_counts %[[RC]] index = 1 chunks = 2
// CHECK: %[[B1:.*]] = moe.chunk_rows %[[B]], %[[C]] index = 1 chunks = 2
// CHECK: %[[F1:.*]] = moe.all_to_all_v_start %[[B1]], %[[C1]], %[[RC1]]
// CHECK: %[[X0:.*]] = moe.wait %[[F0]]
// CHECK: %[[Y0:.*]] = moe.expert_ffn %[[X0]] counts %[[RC0]] {{.*}} -> tensor<68x32xf32>
// CHECK: %[[R0:.*]] = moe.all_to_all_v_start %[[Y0]], %[[RC0]], %[[C0]] on @mesh ["ep"] : (tensor<68x32xf32>, tensor<2x4xi32>, tensor<1x8xi32>) -> !moe.future<tensor<36x32xf32>>
// CHECK: %[[X1:.*]] = moe.wait %[[F1]]
// CHECK: %[[Y1:.*]] = moe.expert_ffn %[[X1]] counts %[[RC1]]
// CHECK: %[[R1:.*]] = moe.all_to_all_v_start %[[Y1]], %[[RC1]], %[[C1]]
// CHECK: %[[W0:.*]] = moe.wait %[[R0]]
// CHECK: %[[W1:.*]] = moe.wait %[[R1]]
// CHECK: %[[J:.*]] = moe.join_rows %[[W0]], %[[W1]] counts %[[C]] : (tensor<36x32xf32>, tensor<36x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
// CHECK: moe.combine %[[J]], %[[P]]
// CHECK-NOT: moe.all_to_all_v

// Degree 4: the same schedule as a capacity exchange's, one chunk ahead.
// FOUR-LABEL: func.func @forward
// FOUR: %[[F0:.*]] = moe.all_to_all_v_start {{.*}} : (tensor<22x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<38x32xf32>>
// FOUR: moe.chunk_rows {{.*}} index = 1 chunks = 4
// FOUR-NEXT: %[[F1:.*]] = moe.all_to_all_v_start
// FOUR-NEXT: moe.expert_ffn_prepare up %arg2 down %arg3 act = relu
// FOUR-NEXT: moe.wait %[[F0]]
// FOUR-NEXT: moe.expert_ffn
// FOUR-NEXT: %[[R0:.*]] = moe.all_to_all_v_start
// FOUR-NEXT: moe.chunk_counts {{.*}} index = 2 chunks = 4
// FOUR-NEXT: moe.chunk_counts {{.*}} index = 2 chunks = 4
// FOUR-NEXT: moe.chunk_rows {{.*}} index = 2 chunks = 4
// FOUR-NEXT: %[[F2:.*]] = moe.all_to_all_v_start
// FOUR-NEXT: moe.wait %[[F1]]
// FOUR-NEXT: moe.expert_ffn
// FOUR-NEXT: %[[R1:.*]] = moe.all_to_all_v_start
// FOUR-NEXT: moe.wait %[[R0]]
// FOUR: moe.join_rows {{.*}} : (tensor<22x32xf32>, tensor<22x32xf32>, tensor<22x32xf32>, tensor<22x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>

// With DTD, each chunk is sliced over tp before its all-to-all and gathered after
// it and after its return; the slice cuts the hidden dimension, the chunks
// the rows.
// DTD-LABEL: func.func @forward
// DTD: %[[B0:.*]] = moe.chunk_rows {{.*}} index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
// DTD: %[[S0:.*]] = moe.slice %[[B0]] on @mesh ["tp"] dim = 1 : (tensor<36x32xf32>) -> tensor<36x16xf32>
// DTD: %[[F0:.*]] = moe.all_to_all_v_start %[[S0]], {{.*}} -> !moe.future<tensor<68x16xf32>>
// DTD: %[[X0:.*]] = moe.wait %[[F0]]
// DTD: %[[G0:.*]] = moe.all_gather %[[X0]] on @mesh ["tp"] dim = 1 : (tensor<68x16xf32>) -> tensor<68x32xf32>
// DTD: %[[Y0:.*]] = moe.expert_ffn %[[G0]]
// DTD: %[[YS0:.*]] = moe.slice %[[Y0]] on @mesh ["tp"] dim = 1 : (tensor<68x32xf32>) -> tensor<68x16xf32>
// DTD: moe.all_to_all_v_start %[[YS0]]
// DTD: %[[W0:.*]] = moe.wait {{.*}}<tensor<36x16xf32>>
// DTD: %[[A0:.*]] = moe.all_gather %[[W0]] on @mesh ["tp"] dim = 1 : (tensor<36x16xf32>) -> tensor<36x32xf32>
// DTD: %[[W1:.*]] = moe.wait {{.*}}<tensor<36x16xf32>>
// DTD: %[[A1:.*]] = moe.all_gather %[[W1]]
// DTD: moe.join_rows %[[A0]], %[[A1]] counts {{.*}} -> tensor<64x32xf32>
// DTD-NOT: moe.all_to_all_v

// Training: forward_train's saved FFN input is rebuilt with the received
// counts; the backward keeps its synchronous exchange.
// TRAIN-LABEL: func.func @forward_train
// TRAIN: %[[RC:.*]] = moe.all_to_all {{.*}} -> tensor<2x4xi32>
// TRAIN: moe.all_to_all_v_start
// TRAIN: %[[XIN:.*]] = moe.join_rows {{.*}} counts %[[RC]] : (tensor<68x32xf32>, tensor<68x32xf32>, tensor<2x4xi32>) -> tensor<128x32xf32>
// TRAIN: moe.join_rows {{.*}} -> tensor<64x32xf32>
// TRAIN: return {{.*}}%[[XIN]]
// The backward: the same schedule on the gradient (chunks in reverse
// order), a data gradient per chunk on its received counts and the chunk
// of the FFN's input, one weight gradient on the joined rows.
// TRAIN-LABEL: func.func @backward
// TRAIN-SAME: %[[SX:[a-z0-9]+]]: tensor<128x32xf32> {moe.saved
// TRAIN: %[[C1:.*]] = moe.chunk_counts %[[SC:.*]] index = 1 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
// TRAIN: %[[RC1:.*]] = moe.chunk_counts %[[RC:.*]] index = 1 chunks = 2 : (tensor<2x4xi32>) -> tensor<2x4xi32>
// TRAIN: %[[F1:.*]] = moe.all_to_all_v_start %{{.*}}, %[[C1]], %[[RC1]]
// TRAIN: moe.chunk_counts %[[SC]] index = 0 chunks = 2
// TRAIN: %[[F0:.*]] = moe.all_to_all_v_start
// TRAIN: %[[G1:.*]] = moe.wait %[[F1]]
// TRAIN: %[[X1:.*]] = moe.chunk_rows %[[SX]], %[[RC]] index = 1 chunks = 2 : (tensor<128x32xf32>, tensor<2x4xi32>) -> tensor<68x32xf32>
// TRAIN: %[[D1:.*]], %[[H1:.*]], %[[U1:.*]] = moe.expert_ffn_grad_data %[[X1]] counts %[[RC1]] up %{{.*}} down %{{.*}}, %[[G1]] act = relu
// TRAIN: moe.all_to_all_v_start %[[D1]], %[[RC1]], %[[C1]]
// TRAIN: %[[G0:.*]] = moe.wait %[[F0]]
// TRAIN: %[[D0:.*]], %[[H0:.*]], %[[U0:.*]] = moe.expert_ffn_grad_data
// TRAIN: %[[G:.*]] = moe.join_rows %[[G0]], %[[G1]] counts %[[RC]] : (tensor<68x32xf32>, tensor<68x32xf32>, tensor<2x4xi32>) -> tensor<128x32xf32>
// TRAIN: %[[H:.*]] = moe.join_rows %[[H0]], %[[H1]] counts %[[RC]] : (tensor<68x96xf32>, tensor<68x96xf32>, tensor<2x4xi32>) -> tensor<128x96xf32>
// TRAIN: %[[U:.*]] = moe.join_rows %[[U0]], %[[U1]] counts %[[RC]]
// TRAIN: moe.expert_ffn_grad_weight %[[SX]] counts %[[RC]], %[[G]] hidden %[[H]] dpre_up %[[U]]
// TRAIN: moe.wait
// TRAIN: moe.join_rows {{.*}} counts %[[SC]] {{.*}} -> tensor<64x32xf32>
// TRAIN-NOT: moe.expert_ffn_grad
func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
