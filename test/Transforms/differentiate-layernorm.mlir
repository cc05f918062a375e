// RUN: moe-opt %s -moe-differentiate | FileCheck %s
// RUN: moe-opt %s -moe-shard="mesh=dp=2,ep=2" -canonicalize -cse -moe-differentiate | FileCheck %s --check-prefix=MESH

// moe.layernorm's adjoint: one moe.layernorm_grad giving dx, dw and (with a
// bias) db, the bias's gradient and optimizer state named like the weight's;
// on a mesh the norm weight and bias are replicated, so their gradients are
// summed over dp x ep (spec 7.1) like every replicated weight's.

// CHECK-LABEL: func.func @forward_train
// CHECK: moe.layernorm %{{.*}}, %{{.*}} bias %{{.*}} {eps = 9.99999974E-6 : f32}
// CHECK-LABEL: func.func @backward
// CHECK-SAME: %[[W:[^:]*]]: tensor<8xf32> {moe.weight = "ln.weight"}, %{{[^:]*}}: tensor<8xf32> {moe.weight = "ln.bias"}
// CHECK-SAME: tensor<8xf32> {moe.output = "grad.ln.weight"}, tensor<8xf32> {moe.output = "grad.ln.bias"}
// CHECK: moe.mlp_grad
// CHECK: %[[DX:.*]], %[[DW:.*]], %[[DB:.*]] = moe.layernorm_grad %{{.*}}, %[[W]], %{{.*}} {eps = 9.99999974E-6 : f32} : (tensor<16x8xf32>, tensor<8xf32>, tensor<16x8xf32>) -> (tensor<16x8xf32>, tensor<8xf32>, tensor<8xf32>)
// CHECK: return %{{.*}}, %[[DW]], %[[DB]],
// CHECK-LABEL: func.func @step_adamw
// CHECK-SAME: {moe.state = "ln.bias.exp_avg"}

// MESH-LABEL: func.func @backward
// MESH: %{{.*}}, %[[DW:.*]], %[[DB:.*]] = moe.layernorm_grad %{{.*}} : (tensor<4x8xf32>, tensor<8xf32>, tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<8xf32>, tensor<8xf32>)
// MESH: %[[P:.*]] = moe.pack %[[DW]], %[[DB]],
// MESH: moe.all_reduce %[[P]] on @mesh ["dp", "ep"]
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "ln.weight"},
                   %b: tensor<8xf32> {moe.weight = "ln.bias"},
                   %mu: tensor<12x8xf32> {moe.weight = "mlp.up"},
                   %md: tensor<8x12xf32> {moe.weight = "mlp.down"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.layernorm %x, %n bias %b {eps = 1.0e-5 : f32} : (tensor<16x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %1 = moe.mlp %0 up %mu down %md act = gelu : (tensor<16x8xf32>, tensor<12x8xf32>, tensor<8x12xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %2 : tensor<16x8xf32>
}
