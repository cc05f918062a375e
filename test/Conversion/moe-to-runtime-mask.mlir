// RUN: moe-opt %s -moe-to-runtime -canonicalize | FileCheck %s

// The token mask's ops lower to moert_mask_rows (fill byte 0 for floats,
// 255 for i32 indices: -1) and moert_token_count; the masked losses pass the
// mask and the count, the unmasked ones null (docs/spec.md 3.11).
// CHECK-LABEL: func.func @moe_entry_masked
// CHECK-DAG: %[[NULL:.*]] = llvm.mlir.zero : !llvm.ptr
// CHECK-DAG: %[[X:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK-DAG: %[[M:.*]] = llvm.load %{{.*}} : !llvm.ptr -> !llvm.ptr
// CHECK: call @moert_mask_rows(%arg0, %[[X]], %{{[^,]*}}, %{{[^,]*}}, %c8_i64, %c16_i64, %c0_i32)
// CHECK: call @moert_mask_rows(%arg0, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %c8_i64, %c8_i64, %c255_i32)
// CHECK: call @moert_token_count(%arg0, %{{[^,]*}}, %[[N:[^,]*]], %c8_i64)
// CHECK: call @moert_load_balance_loss(%arg0, %{{[^,]*}}, %[[N]], %{{[^,]*}}, %c4_i64, %c8_i64, %c2_i64, %{{[^)]*}})
// CHECK: call @moert_z_loss(%arg0, %{{[^,]*}}, %{{[^,]*}}, %[[N]], %{{[^,]*}}, %c8_i64, %c4_i64, %c8_i64, %{{[^)]*}})
// CHECK: call @moert_z_loss(%arg0, %{{[^,]*}}, %[[NULL]], %[[NULL]], %{{[^,]*}}, %c8_i64, %c4_i64, %c8_i64, %{{[^)]*}})
func.func @masked(%x: tensor<8x4xf32>, %i: tensor<8x2xi32>, %m: tensor<8xi32>,
                  %l: tensor<8x4xf32>, %s: tensor<2x4xf32>)
    -> (tensor<8x4xf32>, tensor<8x2xi32>, tensor<f32>, tensor<f32>, tensor<f32>) {
  %0 = moe.mask_rows %x, %m : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<8x4xf32>
  %1 = moe.mask_rows %i, %m : (tensor<8x2xi32>, tensor<8xi32>) -> tensor<8x2xi32>
  %c = moe.token_count %m : (tensor<8xi32>) -> tensor<f32>
  %2 = moe.load_balance_loss %s count %c tokens = 8 k = 2 coeff = 0.01 : (tensor<2x4xf32>, tensor<f32>) -> tensor<f32>
  %3 = moe.z_loss %l mask %m count %c tokens = 8 coeff = 0.001 : (tensor<8x4xf32>, tensor<8xi32>, tensor<f32>) -> tensor<f32>
  %4 = moe.z_loss %l tokens = 8 coeff = 0.001 : (tensor<8x4xf32>) -> tensor<f32>
  return %0, %1, %2, %3, %4 : tensor<8x4xf32>, tensor<8x2xi32>, tensor<f32>, tensor<f32>, tensor<f32>
}
