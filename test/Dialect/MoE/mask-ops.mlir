// RUN: moe-opt %s | moe-opt | FileCheck %s
// The token mask's ops and operands round-trip (spec.md 3.11).

// CHECK-LABEL: func.func @mask
func.func @mask(%x: tensor<8x4xf32>, %i: tensor<8x2xi32>, %m: tensor<8xi32>,
                %l: tensor<8x4xf32>, %s: tensor<2x4xf32>, %d: tensor<f32>)
    -> (tensor<8x4xf32>, tensor<8x2xi32>, tensor<f32>, tensor<f32>, tensor<f32>,
        tensor<8x4xf32>, tensor<2x4xf32>, tensor<1xf32>) {
  // CHECK: moe.mask_rows %{{.*}}, %{{.*}} : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<8x4xf32>
  %0 = moe.mask_rows %x, %m : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<8x4xf32>
  // CHECK: moe.mask_rows %{{.*}}, %{{.*}} : (tensor<8x2xi32>, tensor<8xi32>) -> tensor<8x2xi32>
  %1 = moe.mask_rows %i, %m : (tensor<8x2xi32>, tensor<8xi32>) -> tensor<8x2xi32>
  // CHECK: moe.token_count %{{.*}} : (tensor<8xi32>) -> tensor<f32>
  %c = moe.token_count %m : (tensor<8xi32>) -> tensor<f32>
  // CHECK: moe.load_balance_loss %{{.*}} count %{{.*}} tokens = 8 k = 2
  %2 = moe.load_balance_loss %s count %c tokens = 8 k = 2 coeff = 0.01 : (tensor<2x4xf32>, tensor<f32>) -> tensor<f32>
  // CHECK: moe.z_loss %{{.*}} mask %{{.*}} count %{{.*}} tokens = 8
  %3 = moe.z_loss %l mask %m count %c tokens = 8 coeff = 0.001 : (tensor<8x4xf32>, tensor<8xi32>, tensor<f32>) -> tensor<f32>
  // CHECK: moe.z_loss_grad %{{.*}}, %{{.*}} mask %{{.*}} count %{{.*}} tokens = 8
  %4 = moe.z_loss_grad %l, %d mask %m count %c tokens = 8 coeff = 0.001 : (tensor<8x4xf32>, tensor<f32>, tensor<8xi32>, tensor<f32>) -> tensor<8x4xf32>
  // CHECK: moe.load_balance_loss_grad %{{.*}}, %{{.*}} count %{{.*}} tokens = 8
  %5 = moe.load_balance_loss_grad %s, %d count %c tokens = 8 k = 2 coeff = 0.01 : (tensor<2x4xf32>, tensor<f32>, tensor<f32>) -> tensor<2x4xf32>
  // CHECK: moe.mse_loss %{{.*}}, %{{.*}} mask %{{.*}} count %{{.*}} total = 32
  %6:2 = moe.mse_loss %x, %l mask %m count %c total = 32 : (tensor<8x4xf32>, tensor<8x4xf32>, tensor<8xi32>, tensor<f32>) -> (tensor<1xf32>, tensor<8x4xf32>)
  return %0, %1, %c, %2, %3, %4, %5, %6#0 : tensor<8x4xf32>, tensor<8x2xi32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<8x4xf32>, tensor<2x4xf32>, tensor<1xf32>
}
