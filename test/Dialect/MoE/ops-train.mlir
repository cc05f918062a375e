// RUN: moe-opt %s | moe-opt | FileCheck %s
// RUN: moe-opt %s --mlir-print-op-generic | moe-opt | FileCheck %s

// Every gradient, loss and optimizer op of the dialect, printed, re-parsed and
// printed again (and once through the generic form).

// CHECK-LABEL: func.func @grads
func.func @grads(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<8x32xf32>,
                 %wr: tensor<4x32xf32>, %logits: tensor<8x4xf32>, %idx: tensor<8x2xi32>,
                 %dw: tensor<8x2xf32>, %pos: tensor<8x2xi32>, %buf: tensor<16x32xf32>,
                 %counts: tensor<1x4xi32>, %g: tensor<4x16x32xf32>, %u: tensor<4x16x32xf32>,
                 %d: tensor<4x32x16xf32>, %cap: tensor<4x6x32xf32>,
                 %mg: tensor<16x32xf32>, %mu: tensor<16x32xf32>, %md: tensor<32x16xf32>,
                 %sg: tensor<1x32xf32>, %stats: tensor<2x4xf32>, %one: tensor<f32>,
                 %sv: tensor<24x16xf32>) {
  // CHECK: moe.rmsnorm_grad %{{.*}}, %{{.*}}, %{{.*}} {eps = 9.99999997E-7 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  %0:2 = moe.rmsnorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  // CHECK: moe.layernorm_grad %{{.*}}, %{{.*}}, %{{.*}} {eps = 9.99999997E-7 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  %ln:2 = moe.layernorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  // CHECK: moe.layernorm_grad %{{.*}}, %{{.*}}, %{{.*}} {eps = 9.99999997E-7 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>, tensor<32xf32>)
  %lnb:3 = moe.layernorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>, tensor<32xf32>)
  // CHECK: moe.router_grad %{{.*}}, %{{.*}}, %{{.*}} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<8x4xf32>) -> (tensor<8x32xf32>, tensor<4x32xf32>)
  %1:2 = moe.router_grad %x, %wr, %logits : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<8x4xf32>) -> (tensor<8x32xf32>, tensor<4x32xf32>)
  // CHECK: moe.topk_grad %{{.*}}, %{{.*}}, %{{.*}} dscores %{{.*}} score = sigmoid {renormalize, routed_scaling = 2.500000e+00 : f32} : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  %2 = moe.topk_grad %logits, %idx, %dw dscores %logits score = sigmoid {renormalize, routed_scaling = 2.5 : f32} : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x4xf32>) -> tensor<8x4xf32>
  // CHECK: moe.topk_grad %{{.*}}, %{{.*}}, %{{.*}} score = softmax : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x4xf32>
  %3 = moe.topk_grad %logits, %idx, %dw score = softmax : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x4xf32>
  // CHECK: moe.dispatch_grad %{{.*}}, %{{.*}} : (tensor<16x32xf32>, tensor<8x2xi32>) -> tensor<8x32xf32>
  %4 = moe.dispatch_grad %buf, %pos : (tensor<16x32xf32>, tensor<8x2xi32>) -> tensor<8x32xf32>
  // CHECK: moe.combine_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<16x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>) -> (tensor<16x32xf32>, tensor<8x2xf32>)
  %5:2 = moe.combine_grad %buf, %pos, %dw, %dy : (tensor<16x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>) -> (tensor<16x32xf32>, tensor<8x2xf32>)
  // CHECK: moe.combine_grad %{{.*}}, %{{.*}}, %{{.*}} passthrough %{{.*}}, %{{.*}} : (tensor<4x6x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<4x6x32xf32>, tensor<8x2xf32>, tensor<8x32xf32>)
  %6:3 = moe.combine_grad %cap, %pos, %dw passthrough %x, %dy : (tensor<4x6x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<4x6x32xf32>, tensor<8x2xf32>, tensor<8x32xf32>)
  // CHECK: moe.expert_ffn_grad %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  %7:4 = moe.expert_ffn_grad %buf counts %counts gate %g up %u down %d, %buf act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  // CHECK: moe.expert_ffn_grad %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} act = gelu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>) -> (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  %8:3 = moe.expert_ffn_grad %cap up %u down %d, %cap act = gelu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>) -> (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  // CHECK: moe.expert_ffn_grad_data %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>)
  %dd:4 = moe.expert_ffn_grad_data %buf counts %counts gate %g up %u down %d, %buf act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>)
  // CHECK: moe.expert_ffn_grad_weight %{{.*}} counts %{{.*}}, %{{.*}} hidden %{{.*}} dpre_up %{{.*}} dpre_gate %{{.*}} : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  %dw3:3 = moe.expert_ffn_grad_weight %buf counts %counts, %buf hidden %dd#1 dpre_up %dd#2 dpre_gate %dd#3 : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  // CHECK: moe.expert_ffn_grad_data %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} saved_u %{{.*}} act = gelu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>, tensor<24x16xf32>) -> (tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>)
  %cd:3 = moe.expert_ffn_grad_data %cap up %u down %d, %cap saved_u %sv act = gelu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>, tensor<24x16xf32>) -> (tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>)
  // CHECK: moe.expert_ffn_grad_weight %{{.*}}, %{{.*}} hidden %{{.*}} dpre_up %{{.*}} : (tensor<4x6x32xf32>, tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  %cw:2 = moe.expert_ffn_grad_weight %cap, %cap hidden %cd#1 dpre_up %cd#2 : (tensor<4x6x32xf32>, tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  // CHECK: moe.mlp_grad %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} sigmoid_gate %{{.*}}, %{{.*}} act = swiglu {{.*}}: (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>)
  %9:5 = moe.mlp_grad %x gate %mg up %mu down %md sigmoid_gate %sg, %dy act = swiglu {resultSegmentSizes = array<i32: 1, 1, 1, 1, 1>} : (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>)
  // CHECK: moe.mlp_grad %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} act = relu {{.*}}: (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>)
  %10:3 = moe.mlp_grad %x up %mu down %md, %dy act = relu {resultSegmentSizes = array<i32: 1, 0, 1, 1, 0>} : (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>)
  // CHECK: moe.expert_load_grad %{{.*}} : (tensor<2x4xf32>) -> tensor<8x4xf32>
  %11 = moe.expert_load_grad %stats : (tensor<2x4xf32>) -> tensor<8x4xf32>
  // CHECK: moe.load_balance_loss_grad %{{.*}}, %{{.*}} tokens = 8 k = 2 coeff = 0.00999999977 : (tensor<2x4xf32>, tensor<f32>) -> tensor<2x4xf32>
  %12 = moe.load_balance_loss_grad %stats, %one tokens = 8 k = 2 coeff = 0.01 : (tensor<2x4xf32>, tensor<f32>) -> tensor<2x4xf32>
  // CHECK: moe.z_loss_grad %{{.*}}, %{{.*}} tokens = 8 coeff = 1.000000e-03 : (tensor<8x4xf32>, tensor<f32>) -> tensor<8x4xf32>
  %13 = moe.z_loss_grad %logits, %one tokens = 8 coeff = 0.001 : (tensor<8x4xf32>, tensor<f32>) -> tensor<8x4xf32>
  return
}

// CHECK-LABEL: func.func @loss_and_steps
func.func @loss_and_steps(%y: tensor<8x32xf32>, %t: tensor<8x32xf32>, %w: tensor<4x16x32xf32>,
                          %hp: tensor<8xf32>, %b: tensor<4xf32>, %stats: tensor<2x4xf32>, %l: tensor<f32>) {
  // CHECK: moe.mse_loss %{{.*}}, %{{.*}} total = 512 : (tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<1xf32>, tensor<8x32xf32>)
  %0:2 = moe.mse_loss %y, %t total = 512 : (tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<1xf32>, tensor<8x32xf32>)
  // CHECK: moe.adamw %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<8xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  %1:3 = moe.adamw %w, %w, %w, %w, %hp : (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<8xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  // CHECK: moe.sgd %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<8xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  %2:2 = moe.sgd %w, %w, %w, %hp : (tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<8xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  // CHECK: moe.load_counts %{{.*}} : (tensor<2x4xf32>) -> tensor<4xf32>
  %3 = moe.load_counts %stats : (tensor<2x4xf32>) -> tensor<4xf32>
  // CHECK: moe.bias_update %{{.*}}, %{{.*}}, %{{.*}} tokens = 8 k = 2 : (tensor<4xf32>, tensor<4xf32>, tensor<8xf32>) -> tensor<4xf32>
  %4 = moe.bias_update %b, %3, %hp tokens = 8 k = 2 : (tensor<4xf32>, tensor<4xf32>, tensor<8xf32>) -> tensor<4xf32>
  // CHECK: moe.reshape %{{.*}} : (tensor<f32>) -> tensor<1xf32>
  %5 = moe.reshape %l : (tensor<f32>) -> tensor<1xf32>
  // CHECK: %[[P:.*]] = moe.pack %{{.*}}, %{{.*}} : (tensor<4x16x32xf32>, tensor<4xf32>) -> tensor<2052xf32>
  %6 = moe.pack %w, %b : (tensor<4x16x32xf32>, tensor<4xf32>) -> tensor<2052xf32>
  // CHECK: moe.unpack %[[P]] : (tensor<2052xf32>) -> (tensor<4x16x32xf32>, tensor<4xf32>)
  %7:2 = moe.unpack %6 : (tensor<2052xf32>) -> (tensor<4x16x32xf32>, tensor<4xf32>)
  return
}

// moe.expert_ffn_train (moe-checkpoint's forward of a kept FFN) and the
// gradient that reads what it saved.
// CHECK-LABEL: func.func @ffn_saved
func.func @ffn_saved(%buf: tensor<16x32xf32>, %counts: tensor<1x4xi32>, %g: tensor<4x16x32xf32>,
                     %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %cap: tensor<4x6x32xf32>) {
  // CHECK: %[[Y:.*]], %[[SU:.*]], %[[SA:.*]] = moe.expert_ffn_train %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>)
  %y, %su, %sa = moe.expert_ffn_train %buf counts %counts gate %g up %u down %d act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>)
  // CHECK: moe.expert_ffn_grad %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} saved_u %[[SU]] saved_a %[[SA]] act = swiglu
  %0:4 = moe.expert_ffn_grad %buf counts %counts gate %g up %u down %d, %y saved_u %su saved_a %sa act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  // Capacity layout, relu: u only, [E * R, F].
  // CHECK: %[[Y2:.*]], %[[U2:.*]] = moe.expert_ffn_train %{{.*}} up %{{.*}} down %{{.*}} act = relu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<4x6x32xf32>, tensor<24x16xf32>)
  %y2, %u2 = moe.expert_ffn_train %cap up %u down %d act = relu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<4x6x32xf32>, tensor<24x16xf32>)
  // CHECK: moe.expert_ffn_grad %{{.*}} up %{{.*}} down %{{.*}}, %{{.*}} saved_u %[[U2]] act = relu
  %1:3 = moe.expert_ffn_grad %cap up %u down %d, %y2 saved_u %u2 act = relu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>, tensor<24x16xf32>) -> (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}
