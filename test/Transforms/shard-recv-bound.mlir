// RUN: moe-opt %s -moe-shard="mesh=ep=4" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=4 max-recv-tokens=100" | FileCheck %s --check-prefix=BOUND
// RUN: moe-opt %s -moe-shard="mesh=ep=4 max-recv-tokens=500" | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=ep=4 max-recv-tokens=100" -moe-differentiate | FileCheck %s --check-prefix=TRAIN

// The dropless receive buffer. A token picks k = 4 distinct experts of 8, and
// a rank holds 2 of them: a token sends a rank at most min(k, 2) = 2 rows, so
// a rank receives at most ep x 16 tokens x 2 = 128 rows (not ep x 16 x k = 256).
// CHECK-LABEL: func.func @forward
// CHECK: %[[RC:.*]] = moe.all_to_all %{{.*}} on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<4x2xi32>
// CHECK-NOT: moe.check_recv_bound
// CHECK: moe.all_to_all_v %{{.*}}, %{{.*}}, %[[RC]] on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<4x2xi32>) -> tensor<128x32xf32>
// CHECK: moe.expert_ffn {{.*}} -> tensor<128x32xf32>
// CHECK: moe.all_to_all_v {{.*}} : (tensor<128x32xf32>, tensor<4x2xi32>, tensor<1x8xi32>) -> tensor<64x32xf32>

// An explicit bound below it: 100 rows, and every rank checks every rank's
// receive counts (all-gathered) before a row moves. A bound above the provable
// one changes nothing (third RUN).
// BOUND-LABEL: func.func @forward
// BOUND: %[[RC:.*]] = moe.all_to_all %{{.*}} on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<4x2xi32>
// BOUND-NEXT: %[[ALL:.*]] = moe.all_gather %[[RC]] on @mesh ["ep"] dim = 0 : (tensor<4x2xi32>) -> tensor<16x2xi32>
// BOUND-NEXT: moe.check_recv_bound %[[ALL]] bound = 100 : tensor<16x2xi32>
// BOUND-NEXT: moe.all_to_all_v %{{.*}}, %{{.*}}, %[[RC]] on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<4x2xi32>) -> tensor<100x32xf32>
// BOUND: moe.expert_ffn {{.*}} -> tensor<100x32xf32>

// Training: forward_train keeps the check; the backward's exchanges use the
// bounded buffers (they reuse the forward's counts).
// TRAIN-LABEL: func.func @forward_train
// TRAIN: moe.check_recv_bound
// TRAIN-LABEL: func.func @backward
// TRAIN-NOT: moe.check_recv_bound
// TRAIN: moe.all_to_all_v {{.*}} -> tensor<100x32xf32>

func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 4 score = softmax : (tensor<64x8xf32>) -> (tensor<64x4xf32>, tensor<64x4xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x4xi32>) -> (tensor<64x4xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x4xi32>) -> tensor<256x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<256x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<256x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<256x32xf32>, tensor<64x4xi32>, tensor<64x4xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
