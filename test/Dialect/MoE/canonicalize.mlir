// RUN: moe-opt %s -canonicalize -split-input-file | FileCheck %s

// A collective over mesh axes of size 1 moves nothing: it folds to its input.

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 4, 1]

// CHECK-LABEL: func.func @trivial_groups
// CHECK-SAME: (%[[X:.*]]: tensor<8x32xf32>)
func.func @trivial_groups(%x: tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>) {
  // CHECK-NOT: moe.all_reduce
  // CHECK-NOT: moe.all_gather
  // CHECK-NOT: moe.reduce_scatter
  // CHECK-NOT: moe.slice
  %0 = moe.all_reduce %x on @mesh ["tp"] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  %1 = moe.all_gather %0 on @mesh ["dp", "tp"] dim = 0 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  %2 = moe.reduce_scatter %1 on @mesh ["dp"] dim = 1 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  %3 = moe.all_to_all %2 on @mesh ["tp"] split = 0 concat = 1 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  %4 = moe.slice %3 on @mesh ["dp"] dim = 1 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  // CHECK: return %[[X]], %[[X]], %[[X]], %[[X]], %[[X]]
  return %0, %1, %2, %3, %4 : tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>, tensor<8x32xf32>
}

// CHECK-LABEL: func.func @real_groups_stay
func.func @real_groups_stay(%x: tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<2x32xf32>) {
  // CHECK: moe.all_reduce %{{.*}} on @mesh ["ep"]
  %0 = moe.all_reduce %x on @mesh ["ep"] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  // CHECK: moe.slice %{{.*}} on @mesh ["dp", "ep"] dim = 0
  %1 = moe.slice %x on @mesh ["dp", "ep"] dim = 0 : (tensor<8x32xf32>) -> tensor<2x32xf32>
  return %0, %1 : tensor<8x32xf32>, tensor<2x32xf32>
}

// -----

// A start immediately waited is the synchronous form; a start with compute
// before its wait keeps the overlap.

moe.mesh @mesh axes = ["ep", "tp"] shape = [2, 2]

// CHECK-LABEL: func.func @immediate_wait
func.func @immediate_wait(%b: tensor<8x4x32xf32>, %r: tensor<64x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>) -> (tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<32x32xf32>, tensor<64x32xf32>) {
  // CHECK: moe.all_to_all %{{.*}} on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
  %f0 = moe.all_to_all_start %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
  %0 = moe.wait %f0 : !moe.future<tensor<4x8x32xf32>>
  // CHECK: moe.all_to_all_v %{{.*}}, %{{.*}}, %{{.*}} on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
  %f1 = moe.all_to_all_v_start %r, %c, %rc on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<128x32xf32>>
  %1 = moe.wait %f1 : !moe.future<tensor<128x32xf32>>
  // CHECK: moe.all_gather %{{.*}} on @mesh ["tp"] dim = 1
  %f2 = moe.all_gather_start %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> !moe.future<tensor<64x64xf32>>
  %2 = moe.wait %f2 : !moe.future<tensor<64x64xf32>>
  // CHECK: moe.reduce_scatter %{{.*}} on @mesh ["tp"] dim = 0
  %f3 = moe.reduce_scatter_start %r on @mesh ["tp"] dim = 0 : (tensor<64x32xf32>) -> !moe.future<tensor<32x32xf32>>
  %3 = moe.wait %f3 : !moe.future<tensor<32x32xf32>>
  // CHECK: moe.all_reduce %{{.*}} on @mesh ["ep", "tp"]
  %f4 = moe.all_reduce_start %r on @mesh ["ep", "tp"] : (tensor<64x32xf32>) -> !moe.future<tensor<64x32xf32>>
  %4 = moe.wait %f4 : !moe.future<tensor<64x32xf32>>
  // CHECK-NOT: moe.wait
  return %0, %1, %2, %3, %4 : tensor<4x8x32xf32>, tensor<128x32xf32>, tensor<64x64xf32>, tensor<32x32xf32>, tensor<64x32xf32>
}

// CHECK-LABEL: func.func @overlapped_wait
func.func @overlapped_wait(%b: tensor<8x4x32xf32>, %x: tensor<8x4x32xf32>) -> (tensor<4x8x32xf32>, tensor<8x4x32xf32>) {
  // CHECK: %[[F:.*]] = moe.all_to_all_start
  %f = moe.all_to_all_start %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
  // CHECK-NEXT: moe.add
  %y = moe.add %x, %x : (tensor<8x4x32xf32>, tensor<8x4x32xf32>) -> tensor<8x4x32xf32>
  // CHECK-NEXT: moe.wait %[[F]]
  %r = moe.wait %f : !moe.future<tensor<4x8x32xf32>>
  return %r, %y : tensor<4x8x32xf32>, tensor<8x4x32xf32>
}
