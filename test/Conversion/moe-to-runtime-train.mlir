// RUN: moe-opt %s -split-input-file -moe-to-runtime -canonicalize | FileCheck %s

// The training ops of moe-differentiate lower to one ABI v2 kernel call each,
// with their scalars from the op's types and attributes; optional operands
// and results absent from the op are null pointers.

// A backward: capacity buffer with passthrough, an ungated (gelu) expert FFN,
// both aux-loss gradients and the router/norm gradients.
// CHECK-LABEL: func.func @moe_entry_backward
// CHECK-DAG: %[[NULL:.*]] = llvm.mlir.zero : !llvm.ptr
// CHECK-DAG: %[[X:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK-DAG: %[[C24:.*]] = arith.constant 24 : i64
// CHECK-DAG: %[[GELU:.*]] = arith.constant 1 : i32
// CHECK-DAG: %[[EPS:.*]] = arith.constant 9.99999997E-7 : f32
// CHECK: %[[BASE:.*]] = call @moert_arena
// CHECK: call @moert_combine_grad(%arg0, %[[BUF:[^,]*]], %[[POS:[^,]*]], %[[W:[^,]*]], %[[X]], %[[DY:[^,]*]], %[[BASE]], %[[DW:[^,]*]], %[[DP:[^,]*]], %c8_i64, %c2_i64, %c32_i64, %[[C24]], %c0_i32)
// CHECK: call @moert_expert_ffn_grad(%arg0, %[[BUF]], %[[NULL]], %[[NULL]], %{{[^,]*}}, %{{[^,]*}}, %[[BASE]], %[[NULL]], %[[NULL]], %[[DB:[^,]*]], %[[NULL]], %{{[^,]*}}, %{{[^,]*}}, %c4_i64, %c1_i64, %c6_i64, %[[C24]], %c32_i64, %c16_i64, %[[GELU]], %c0_i32)
// CHECK: call @moert_dispatch_grad(%arg0, %[[DB]], %[[POS]], %{{[^,]*}}, %c8_i64, %c2_i64, %c32_i64, %[[C24]], %c0_i32)
// CHECK: call @moert_load_balance_loss_grad(%arg0, %{{[^,]*}}, %[[ONE:[^,]*]], %[[NULL]], %[[DST:[^,]*]], %c4_i64, %c8_i64, %c2_i64, %{{[^)]*}})
// CHECK: call @moert_expert_load_grad(%arg0, %[[DST]], %[[DS:[^,]*]], %c8_i64, %c4_i64)
// CHECK: call @moert_z_loss_grad(%arg0, %[[LOGITS:[^,]*]], %[[ONE]], %[[NULL]], %[[NULL]], %{{[^,]*}}, %c8_i64, %c4_i64, %c8_i64, %{{[^)]*}})
// CHECK: call @moert_topk_grad(%arg0, %[[LOGITS]], %{{[^,]*}}, %[[DW]], %[[DS]], %{{[^,]*}}, %c8_i64, %c4_i64, %c2_i64, %c0_i32, %c1_i32, %{{[^)]*}})
// CHECK: call @moert_router_grad(%arg0, %[[X]],
// CHECK: call @moert_rmsnorm_grad(%arg0, %[[X]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %c8_i64, %c32_i64, %[[EPS]], %c0_i32)
func.func @backward(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<8x32xf32>,
                    %wr: tensor<4x32xf32>, %logits: tensor<8x4xf32>, %idx: tensor<8x2xi32>,
                    %w: tensor<8x2xf32>, %pos: tensor<8x2xi32>, %buf: tensor<4x6x32xf32>,
                    %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %stats: tensor<2x4xf32>,
                    %one: tensor<f32>)
    -> (tensor<8x32xf32>, tensor<32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) {
  %dbuf, %dw, %dp = moe.combine_grad %buf, %pos, %w passthrough %x, %dy : (tensor<4x6x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<4x6x32xf32>, tensor<8x2xf32>, tensor<8x32xf32>)
  %db:3 = moe.expert_ffn_grad %buf up %u down %d, %dbuf act = gelu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>) -> (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  %dx0 = moe.dispatch_grad %db#0, %pos : (tensor<4x6x32xf32>, tensor<8x2xi32>) -> tensor<8x32xf32>
  %dst = moe.load_balance_loss_grad %stats, %one tokens = 8 k = 2 coeff = 0.01 : (tensor<2x4xf32>, tensor<f32>) -> tensor<2x4xf32>
  %ds = moe.expert_load_grad %dst : (tensor<2x4xf32>) -> tensor<8x4xf32>
  %dz = moe.z_loss_grad %logits, %one tokens = 8 coeff = 0.001 : (tensor<8x4xf32>, tensor<f32>) -> tensor<8x4xf32>
  %dl = moe.topk_grad %logits, %idx, %dw dscores %ds score = softmax {renormalize} : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  %dl2 = moe.add %dz, %dl : (tensor<8x4xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  %dxr, %dwr = moe.router_grad %x, %wr, %dl2 : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<8x4xf32>) -> (tensor<8x32xf32>, tensor<4x32xf32>)
  %s0 = moe.add %dp, %dx0 : (tensor<8x32xf32>, tensor<8x32xf32>) -> tensor<8x32xf32>
  %s1 = moe.add %s0, %dxr : (tensor<8x32xf32>, tensor<8x32xf32>) -> tensor<8x32xf32>
  %dxn, %dn = moe.rmsnorm_grad %x, %n, %s1 {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  return %dxn, %dn, %dwr, %db#1, %db#2 : tensor<8x32xf32>, tensor<32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>
}

// -----

// forward_train's pieces and the steps: mse_loss, the reshapes and
// load_counts as copies, the optimizer kernels writing straight into the
// result buffers (which the driver may alias with the arguments).
// CHECK-LABEL: func.func @moe_entry_train_bits
// CHECK-DAG: %[[Y:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK-DAG: %[[R0:.*]] = llvm.load %arg2 : !llvm.ptr -> !llvm.ptr
// CHECK: call @moert_mse_loss(%arg0, %[[Y]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %[[R0]], %{{[^,]*}}, %c8_i64, %c256_i64, %c512_i64, %c0_i32)
// CHECK: call @moert_copy(%arg0, %{{[^,]*}}, %{{[^,]*}}, %c4_i64)
// CHECK: call @moert_copy(%arg0, %{{[^,]*}}, %{{[^,]*}}, %c16_i64)
// CHECK: return
func.func @train_bits(%y: tensor<8x32xf32>, %t: tensor<8x32xf32>, %aux: tensor<f32>, %stats: tensor<2x4xf32>)
    -> (tensor<1xf32>, tensor<8x32xf32>, tensor<1xf32>, tensor<4xf32>) {
  %loss, %dy = moe.mse_loss %y, %t total = 512 : (tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<1xf32>, tensor<8x32xf32>)
  %a = moe.reshape %aux : (tensor<f32>) -> tensor<1xf32>
  %l = moe.load_counts %stats : (tensor<2x4xf32>) -> tensor<4xf32>
  return %loss, %dy, %a, %l : tensor<1xf32>, tensor<8x32xf32>, tensor<1xf32>, tensor<4xf32>
}

// CHECK-LABEL: func.func @moe_entry_step
// CHECK-DAG: %[[W:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK-DAG: %[[NW:.*]] = llvm.load %arg2 : !llvm.ptr -> !llvm.ptr
// CHECK: call @moert_adamw(%arg0, %[[W]], %[[G:[^,]*]], %[[M:[^,]*]], %[[V:[^,]*]], %[[HP:[^,]*]], %[[NW]], %{{[^,]*}}, %{{[^,]*}}, %c64_i64)
// CHECK: call @moert_sgd(%arg0, %[[W]], %[[G]], %[[M]], %[[HP]], %{{[^,]*}}, %{{[^,]*}}, %c64_i64)
// CHECK: call @moert_bias_update(%arg0, %[[B:[^,]*]], %[[L:[^,]*]], %[[HP]], %{{[^,]*}}, %c4_i64, %c8_i64, %c2_i64)
// CHECK: return
func.func @step(%w: tensor<4x16xf32>, %g: tensor<4x16xf32>, %m: tensor<4x16xf32>, %v: tensor<4x16xf32>,
                %hp: tensor<8xf32>, %b: tensor<4xf32>, %load: tensor<4xf32>)
    -> (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4xf32>) {
  %0:3 = moe.adamw %w, %g, %m, %v, %hp : (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<8xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>)
  %1:2 = moe.sgd %w, %g, %m, %hp : (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<8xf32>) -> (tensor<4x16xf32>, tensor<4x16xf32>)
  %2 = moe.bias_update %b, %load, %hp tokens = 8 k = 2 : (tensor<4xf32>, tensor<4xf32>, tensor<8xf32>) -> tensor<4xf32>
  return %0#0, %0#1, %0#2, %1#0, %1#1, %2 : tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, tensor<4xf32>
}

// -----

// A SwiGLU MLP with a sigmoid gate: every pointer present.
// CHECK-LABEL: func.func @moe_entry_mlp
// CHECK-NOT: llvm.mlir.zero
// CHECK: call @moert_mlp_grad(%arg0, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %c8_i64, %c32_i64, %c16_i64, %c2_i32, %c0_i32)
func.func @mlp(%x: tensor<8x32xf32>, %g: tensor<16x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>, %s: tensor<1x32xf32>, %dy: tensor<8x32xf32>)
    -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>) {
  %0:5 = moe.mlp_grad %x gate %g up %u down %d sigmoid_gate %s, %dy act = swiglu {resultSegmentSizes = array<i32: 1, 1, 1, 1, 1>} : (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>)
  return %0#0, %0#1, %0#2, %0#3, %0#4 : tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>
}

// -----

// A gradient bucket: pack copies each tensor to its offset in the buffer,
// unpack copies it back out (into the result buffers here).
// CHECK-LABEL: func.func @moe_entry_bucket
// CHECK-DAG: %[[A:.*]] = llvm.load %arg1 : !llvm.ptr -> !llvm.ptr
// CHECK-DAG: %[[BASE:.*]] = call @moert_arena
// CHECK: call @moert_copy(%arg0, %[[A]], %[[BASE]], %c64_i64)
// CHECK: %[[OFF:.*]] = llvm.getelementptr %[[BASE]][64] : (!llvm.ptr) -> !llvm.ptr, i8
// CHECK: call @moert_copy(%arg0, %{{[^,]*}}, %[[OFF]], %c16_i64)
// CHECK: call @moert_copy(%arg0, %[[BASE]], %{{[^,]*}}, %c64_i64)
// CHECK: %[[OFF2:.*]] = llvm.getelementptr %[[BASE]][64] : (!llvm.ptr) -> !llvm.ptr, i8
// CHECK: call @moert_copy(%arg0, %[[OFF2]], %{{[^,]*}}, %c16_i64)
func.func @bucket(%a: tensor<4x4xf32>, %b: tensor<4xf32>) -> (tensor<4x4xf32>, tensor<4xf32>) {
  %0 = moe.pack %a, %b : (tensor<4x4xf32>, tensor<4xf32>) -> tensor<20xf32>
  %1:2 = moe.unpack %0 : (tensor<20xf32>) -> (tensor<4x4xf32>, tensor<4xf32>)
  return %1#0, %1#1 : tensor<4x4xf32>, tensor<4xf32>
}

// -----

// moe-overlap's split of expert_ffn_grad (dropless, swiglu): the data part
// with the layout of moert_expert_ffn_grad and the per-row values [rows, F]
// (here 16 x 8), then the weight part on the same layout.
// CHECK-LABEL: func.func @moe_entry_split_grad
// CHECK-DAG: %[[NULL:.*]] = llvm.mlir.zero : !llvm.ptr
// CHECK: call @moert_expert_ffn_grad_data(%arg0, %[[X:[^,]*]], %[[C:[^,]*]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %[[DY:[^,]*]], %[[NULL]], %[[NULL]], %{{[^,]*}}, %[[H:[^,]*]], %[[DA:[^,]*]], %[[DU:[^,]*]], %c4_i64, %c2_i64, %c0_i64, %c16_i64, %c32_i64, %c8_i64, %{{[^,]*}}, %c0_i32)
// CHECK: call @moert_expert_ffn_grad_weight(%arg0, %[[X]], %[[C]], %[[DY]], %[[H]], %[[DA]], %[[DU]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %c4_i64, %c2_i64, %c0_i64, %c16_i64, %c32_i64, %c8_i64, %c0_i32)
func.func @split_grad(%x: tensor<16x32xf32>, %c: tensor<2x4xi32>, %g: tensor<4x8x32xf32>,
                      %u: tensor<4x8x32xf32>, %d: tensor<4x32x8xf32>, %dy: tensor<16x32xf32>)
    -> (tensor<16x32xf32>, tensor<4x8x32xf32>, tensor<4x8x32xf32>, tensor<4x32x8xf32>) {
  %dx, %h, %du, %da = moe.expert_ffn_grad_data %x counts %c gate %g up %u down %d, %dy act = swiglu : (tensor<16x32xf32>, tensor<2x4xi32>, tensor<4x8x32xf32>, tensor<4x8x32xf32>, tensor<4x32x8xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>)
  %dg, %dup, %dd = moe.expert_ffn_grad_weight %x counts %c, %dy hidden %h dpre_up %du dpre_gate %da : (tensor<16x32xf32>, tensor<2x4xi32>, tensor<16x32xf32>, tensor<16x8xf32>, tensor<16x8xf32>, tensor<16x8xf32>) -> (tensor<4x8x32xf32>, tensor<4x8x32xf32>, tensor<4x32x8xf32>)
  return %dx, %dg, %dup, %dd : tensor<16x32xf32>, tensor<4x8x32xf32>, tensor<4x8x32xf32>, tensor<4x32x8xf32>
}
