// RUN: moe-opt %s -split-input-file -moe-drop-duplicate-tokens -verify-diagnostics | FileCheck %s

// The pass reads tp from the module's one moe.mesh by axis name.

// A mesh without a tp axis has one tp rank: there are no duplicates to drop.
// CHECK-LABEL: func.func @no_tp
// CHECK-NOT: moe.slice
// CHECK: moe.all_to_all_v
// CHECK-NOT: moe.all_gather
moe.mesh @m axes = ["ep"] shape = [2]
func.func @no_tp(%b: tensor<32x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>, %u: tensor<4x48x32xf32>, %d: tensor<4x32x48xf32>) -> tensor<32x32xf32> {
  %r = moe.all_to_all_v %b, %c, %rc on @m ["ep"] : (tensor<32x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<64x32xf32>
  %y = moe.expert_ffn %r counts %rc up %u down %d act = relu : (tensor<64x32xf32>, tensor<2x4xi32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>) -> tensor<64x32xf32>
  %o = moe.all_to_all_v %y, %rc, %c on @m ["ep"] : (tensor<64x32xf32>, tensor<2x4xi32>, tensor<1x8xi32>) -> tensor<32x32xf32>
  return %o : tensor<32x32xf32>
}

// -----

// The mesh's own symbol name and axis order are used.
// CHECK-LABEL: func.func @named
// CHECK: moe.slice %{{.*}} on @grid ["tp"] dim = 1 : (tensor<32x32xf32>) -> tensor<32x16xf32>
// CHECK: moe.all_to_all_v {{.*}} on @grid ["ep"] : (tensor<32x16xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<64x16xf32>
// CHECK: moe.all_gather %{{.*}} on @grid ["tp"] dim = 1 : (tensor<64x16xf32>) -> tensor<64x32xf32>
moe.mesh @grid axes = ["tp", "ep"] shape = [2, 2]
func.func @named(%b: tensor<32x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>, %u: tensor<4x48x32xf32>, %d: tensor<4x32x48xf32>) -> tensor<32x32xf32> {
  %r = moe.all_to_all_v %b, %c, %rc on @grid ["ep"] : (tensor<32x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<64x32xf32>
  %y = moe.expert_ffn %r counts %rc up %u down %d act = relu : (tensor<64x32xf32>, tensor<2x4xi32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>) -> tensor<64x32xf32>
  %o = moe.all_to_all_v %y, %rc, %c on @grid ["ep"] : (tensor<64x32xf32>, tensor<2x4xi32>, tensor<1x8xi32>) -> tensor<32x32xf32>
  return %o : tensor<32x32xf32>
}

// -----

moe.mesh @a axes = ["ep", "tp"] shape = [2, 2]
// expected-error @+1 {{moe-drop-duplicate-tokens: the module has 2 moe.mesh ops; expected one}}
moe.mesh @b axes = ["ep", "tp"] shape = [2, 2]
