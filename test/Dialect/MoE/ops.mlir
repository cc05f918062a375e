// RUN: moe-opt %s | moe-opt | FileCheck %s
// RUN: moe-opt %s --mlir-print-op-generic | moe-opt | FileCheck %s

// Every op of the dialect, printed, re-parsed and printed again (and once
// through the generic form).

// CHECK: moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 2]
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 2]

// CHECK-LABEL: func.func @graph
func.func @graph(%x: tensor<64x32xf32>, %n: tensor<32xf32>) -> tensor<64x32xf32> {
  // CHECK: moe.rmsnorm %{{.*}}, %{{.*}} {eps = 9.99999974E-6 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-05 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  // CHECK: moe.add %{{.*}}, %{{.*}} : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  %1 = moe.add %x, %0 : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %1 : tensor<64x32xf32>
}

// CHECK-LABEL: func.func @layernorm
func.func @layernorm(%x: tensor<64x32xbf16>, %n: tensor<32xbf16>, %b: tensor<32xbf16>) -> (tensor<64x32xbf16>, tensor<64x32xbf16>) {
  // CHECK: moe.layernorm %{{.*}}, %{{.*}} {eps = 9.99999974E-6 : f32} : (tensor<64x32xbf16>, tensor<32xbf16>) -> tensor<64x32xbf16>
  %0 = moe.layernorm %x, %n {eps = 1.0e-05 : f32} : (tensor<64x32xbf16>, tensor<32xbf16>) -> tensor<64x32xbf16>
  // CHECK: moe.layernorm %{{.*}}, %{{.*}} bias %{{.*}} {eps = 9.99999974E-6 : f32} : (tensor<64x32xbf16>, tensor<32xbf16>, tensor<32xbf16>) -> tensor<64x32xbf16>
  %1 = moe.layernorm %x, %n bias %b {eps = 1.0e-05 : f32} : (tensor<64x32xbf16>, tensor<32xbf16>, tensor<32xbf16>) -> tensor<64x32xbf16>
  return %0, %1 : tensor<64x32xbf16>, tensor<64x32xbf16>
}

// CHECK-LABEL: func.func @routing
func.func @routing(%x: tensor<64x32xbf16>, %wr: tensor<16x32xbf16>, %b: tensor<16xf32>) -> (tensor<64x4xf32>, tensor<64x4xi32>, tensor<64x16xf32>) {
  // CHECK: moe.router %{{.*}}, %{{.*}} : (tensor<64x32xbf16>, tensor<16x32xbf16>) -> tensor<64x16xf32>
  %l = moe.router %x, %wr : (tensor<64x32xbf16>, tensor<16x32xbf16>) -> tensor<64x16xf32>
  // CHECK: moe.topk %{{.*}} k = 2 score = softmax {renormalize} :
  %w0, %i0, %s0 = moe.topk %l k = 2 score = softmax {renormalize} : (tensor<64x16xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x16xf32>)
  // CHECK: moe.topk %{{.*}} bias %{{.*}} k = 4 score = sigmoid {group_score = #moe<group_score top2_sum>, groups_kept = 2 : i64, num_groups = 4 : i64, renormalize, routed_scaling = 2.500000e+00 : f32}
  %w, %i, %s = moe.topk %l bias %b k = 4 score = sigmoid {num_groups = 4 : i64, groups_kept = 2 : i64, group_score = #moe<group_score top2_sum>, renormalize, routed_scaling = 2.5 : f32} : (tensor<64x16xf32>, tensor<16xf32>) -> (tensor<64x4xf32>, tensor<64x4xi32>, tensor<64x16xf32>)
  return %w, %i, %s : tensor<64x4xf32>, tensor<64x4xi32>, tensor<64x16xf32>
}

// CHECK-LABEL: func.func @capacity_path
func.func @capacity_path(%x: tensor<64x32xf32>, %idx: tensor<64x2xi32>, %w: tensor<64x2xf32>, %up: tensor<8x64x32xf32>, %down: tensor<8x32x64xf32>) -> tensor<64x32xf32> {
  // CHECK: moe.assign %{{.*}} experts = 8 {capacity = 10 : i64, groups = 2 : i64} : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<2x8xi32>)
  %pos, %counts = moe.assign %idx experts = 8 {capacity = 10 : i64, groups = 2 : i64} : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<2x8xi32>)
  // CHECK: moe.dispatch %{{.*}}, %{{.*}} : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<8x20x32xf32>
  %buf = moe.dispatch %x, %pos : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<8x20x32xf32>
  // CHECK: moe.expert_ffn %{{.*}} counts %{{.*}} up %{{.*}} down %{{.*}} act = gelu :
  %y = moe.expert_ffn %buf counts %counts up %up down %down act = gelu : (tensor<8x20x32xf32>, tensor<2x8xi32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>) -> tensor<8x20x32xf32>
  // CHECK: moe.combine %{{.*}}, %{{.*}}, %{{.*}} passthrough %{{.*}} :
  %o = moe.combine %y, %pos, %w passthrough %x : (tensor<8x20x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

// CHECK-LABEL: func.func @dropless_path
func.func @dropless_path(%x: tensor<64x32xf32>, %idx: tensor<64x2xi32>, %w: tensor<64x2xf32>, %g: tensor<8x64x32xf32>, %up: tensor<8x64x32xf32>, %down: tensor<8x32x64xf32>) -> tensor<64x32xf32> {
  // CHECK: moe.assign %{{.*}} experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %pos, %counts = moe.assign %idx experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %buf = moe.dispatch %x, %pos : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  // CHECK: moe.expert_ffn_prepare gate %{{.*}} up %{{.*}} down %{{.*}} act = swiglu : tensor<8x64x32xf32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>
  moe.expert_ffn_prepare gate %g up %up down %down act = swiglu : tensor<8x64x32xf32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>
  // CHECK: moe.expert_ffn %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} act = swiglu :
  %y = moe.expert_ffn %buf counts %counts gate %g up %up down %down act = swiglu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x64x32xf32>, tensor<8x64x32xf32>, tensor<8x32x64xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %pos, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

// CHECK-LABEL: func.func @dense_and_losses
func.func @dense_and_losses(%x: tensor<64x32xf32>, %g: tensor<48x32xf32>, %u: tensor<48x32xf32>, %d: tensor<32x48xf32>, %sg: tensor<1x32xf32>, %s: tensor<64x8xf32>, %i: tensor<64x2xi32>, %l: tensor<64x8xf32>) -> (tensor<64x32xf32>, tensor<f32>, tensor<f32>) {
  // CHECK: moe.mlp %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} sigmoid_gate %{{.*}} act = geglu :
  %y = moe.mlp %x gate %g up %u down %d sigmoid_gate %sg act = geglu : (tensor<64x32xf32>, tensor<48x32xf32>, tensor<48x32xf32>, tensor<32x48xf32>, tensor<1x32xf32>) -> tensor<64x32xf32>
  // CHECK: moe.expert_load %{{.*}}, %{{.*}} : (tensor<64x8xf32>, tensor<64x2xi32>) -> tensor<2x8xf32>
  %st = moe.expert_load %s, %i : (tensor<64x8xf32>, tensor<64x2xi32>) -> tensor<2x8xf32>
  // CHECK: moe.load_balance_loss %{{.*}} tokens = 64 k = 2 coeff = 0.00999999977 : (tensor<2x8xf32>) -> tensor<f32>
  %lb = moe.load_balance_loss %st tokens = 64 k = 2 coeff = 0.01 : (tensor<2x8xf32>) -> tensor<f32>
  // CHECK: moe.z_loss %{{.*}} tokens = 128 coeff = 1.000000e-03 : (tensor<64x8xf32>) -> tensor<f32>
  %z = moe.z_loss %l tokens = 128 coeff = 0.001 : (tensor<64x8xf32>) -> tensor<f32>
  return %y, %lb, %z : tensor<64x32xf32>, tensor<f32>, tensor<f32>
}

// CHECK-LABEL: func.func @layer
func.func @layer(%x: tensor<64x32xf32>, %wr: tensor<8x32xf32>, %b: tensor<8xf32>, %g: tensor<8x16x32xf32>, %u: tensor<8x16x32xf32>, %d: tensor<8x32x16xf32>, %sg: tensor<32x32xf32>, %su: tensor<32x32xf32>, %sd: tensor<32x32xf32>, %sgw: tensor<1x32xf32>) -> (tensor<64x32xf32>, tensor<f32>, tensor<f32>) {
  // CHECK: moe.layer %{{.*}} router %{{.*}} bias %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} shared_gate %{{.*}} shared_up %{{.*}} shared_down %{{.*}} shared_sigmoid_gate %{{.*}} {activation = #moe<activation swiglu>, aux_loss_coeff = 0.00999999977 : f32, capacity_factor = 1.250000e+00 : f32, group_score = #moe<group_score top2_sum>, groups_kept = 2 : i64, num_experts = 8 : i64, num_groups = 4 : i64, num_shared_experts = 2 : i64, renormalize, routed_scaling = 2.500000e+00 : f32, score_func = #moe<score_func sigmoid>, shared_gated, shared_intermediate = 32 : i64, token_groups = 2 : i64, top_k = 2 : i64, z_loss_coeff = 1.000000e-03 : f32}
  %y, %aux, %z = moe.layer %x router %wr bias %b gate %g up %u down %d shared_gate %sg shared_up %su shared_down %sd shared_sigmoid_gate %sgw {num_experts = 8 : i64, top_k = 2 : i64, score_func = #moe<score_func sigmoid>, renormalize, routed_scaling = 2.5 : f32, num_groups = 4 : i64, groups_kept = 2 : i64, group_score = #moe<group_score top2_sum>, capacity_factor = 1.25 : f32, token_groups = 2 : i64, activation = #moe<activation swiglu>, num_shared_experts = 2 : i64, shared_intermediate = 32 : i64, shared_gated, aux_loss_coeff = 0.01 : f32, z_loss_coeff = 0.001 : f32} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8xf32>, tensor<8x16x32xf32>, tensor<8x16x32xf32>, tensor<8x32x16xf32>, tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>, tensor<1x32xf32>) -> (tensor<64x32xf32>, tensor<f32>, tensor<f32>)
  return %y, %aux, %z : tensor<64x32xf32>, tensor<f32>, tensor<f32>
}

// CHECK-LABEL: func.func @switch_layer
func.func @switch_layer(%x: tensor<64x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<8x16x32xf32>, %d: tensor<8x32x16xf32>) -> tensor<64x32xf32> {
  // CHECK: moe.layer {{.*}}drop_policy = #moe<drop_policy passthrough>
  %y = moe.layer %x router %wr up %u down %d {num_experts = 8 : i64, top_k = 1 : i64, capacity = 4 : i64, min_capacity = 2 : i64, token_groups = 4 : i64, drop_policy = #moe<drop_policy passthrough>, activation = #moe<activation relu>} : (tensor<64x32xf32>, tensor<8x32xf32>, tensor<8x16x32xf32>, tensor<8x32x16xf32>) -> tensor<64x32xf32>
  return %y : tensor<64x32xf32>
}

// CHECK-LABEL: func.func @collectives
func.func @collectives(%b: tensor<8x4x32xf32>, %r: tensor<64x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>) {
  // CHECK: moe.all_to_all %{{.*}} on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
  %0 = moe.all_to_all %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xf32>
  // CHECK: moe.all_to_all_v %{{.*}}, %{{.*}}, %{{.*}} on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
  %1 = moe.all_to_all_v %r, %c, %rc on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
  // CHECK: moe.all_gather %{{.*}} on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x64xf32>
  %2 = moe.all_gather %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x64xf32>
  // CHECK: moe.reduce_scatter %{{.*}} on @mesh ["dp", "ep"] dim = 0 : (tensor<64x32xf32>) -> tensor<16x32xf32>
  %3 = moe.reduce_scatter %r on @mesh ["dp", "ep"] dim = 0 : (tensor<64x32xf32>) -> tensor<16x32xf32>
  // CHECK: moe.all_reduce %{{.*}} on @mesh ["tp"] : (tensor<64x32xf32>) -> tensor<64x32xf32>
  %4 = moe.all_reduce %r on @mesh ["tp"] : (tensor<64x32xf32>) -> tensor<64x32xf32>
  // CHECK: moe.slice %{{.*}} on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x16xf32>
  %5 = moe.slice %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> tensor<64x16xf32>
  return
}

// CHECK-LABEL: func.func @chunks
func.func @chunks(%b: tensor<8x16x32xf32>) -> tensor<8x16x32xf32> {
  // CHECK: %[[C0:.*]] = moe.chunk %{{.*}} dim = 1 index = 0 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x8x32xf32>
  %0 = moe.chunk %b dim = 1 index = 0 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x8x32xf32>
  // CHECK: %[[C1:.*]] = moe.chunk %{{.*}} dim = 1 index = 1 chunks = 2
  %1 = moe.chunk %b dim = 1 index = 1 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x8x32xf32>
  // CHECK: moe.interleave %[[C0]], %[[C1]] dim = 1 : (tensor<8x8x32xf32>, tensor<8x8x32xf32>) -> tensor<8x16x32xf32>
  %2 = moe.interleave %0, %1 dim = 1 : (tensor<8x8x32xf32>, tensor<8x8x32xf32>) -> tensor<8x16x32xf32>
  return %2 : tensor<8x16x32xf32>
}

// CHECK-LABEL: func.func @row_chunks
func.func @row_chunks(%b: tensor<64x32xf32>, %c: tensor<1x8xi32>) -> tensor<64x32xf32> {
  // CHECK: moe.chunk_counts %{{.*}} index = 1 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
  %n = moe.chunk_counts %c index = 1 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
  // CHECK: %[[R0:.*]] = moe.chunk_rows %{{.*}}, %{{.*}} index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
  %0 = moe.chunk_rows %b, %c index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
  %1 = moe.chunk_rows %b, %c index = 1 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<36x32xf32>
  // CHECK: moe.join_rows %[[R0]], %{{.*}} counts %{{.*}} : (tensor<36x32xf32>, tensor<36x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
  %2 = moe.join_rows %0, %1 counts %c : (tensor<36x32xf32>, tensor<36x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
  return %2 : tensor<64x32xf32>
}

// CHECK-LABEL: func.func @regroup
func.func @regroup(%r: tensor<64x32xf32>, %c: tensor<2x8xi32>) -> (tensor<64x32xf32>, tensor<4x4xi32>) {
  // CHECK: moe.regroup %{{.*}}, %{{.*}} groups = 4 : (tensor<64x32xf32>, tensor<2x8xi32>) -> (tensor<64x32xf32>, tensor<4x4xi32>)
  %0, %1 = moe.regroup %r, %c groups = 4 : (tensor<64x32xf32>, tensor<2x8xi32>) -> (tensor<64x32xf32>, tensor<4x4xi32>)
  // CHECK: moe.check_recv_bound %{{.*}} bound = 96 : tensor<4x4xi32>
  moe.check_recv_bound %1 bound = 96 : tensor<4x4xi32>
  return %0, %1 : tensor<64x32xf32>, tensor<4x4xi32>
}

// CHECK-LABEL: func.func @async_collectives
func.func @async_collectives(%b: tensor<8x4x32xf32>, %r: tensor<64x32xf32>, %c: tensor<1x8xi32>, %rc: tensor<2x4xi32>) {
  // CHECK: %[[F0:.*]] = moe.all_to_all_start %{{.*}} on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
  %f0 = moe.all_to_all_start %b on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x8x32xf32>>
  // CHECK: moe.all_to_all_v_start %{{.*}} : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<128x32xf32>>
  %f1 = moe.all_to_all_v_start %r, %c, %rc on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> !moe.future<tensor<128x32xf32>>
  // CHECK: moe.all_gather_start {{.*}} -> !moe.future<tensor<64x64xf32>>
  %f2 = moe.all_gather_start %r on @mesh ["tp"] dim = 1 : (tensor<64x32xf32>) -> !moe.future<tensor<64x64xf32>>
  // CHECK: moe.reduce_scatter_start {{.*}} -> !moe.future<tensor<32x32xf32>>
  %f3 = moe.reduce_scatter_start %r on @mesh ["tp"] dim = 0 : (tensor<64x32xf32>) -> !moe.future<tensor<32x32xf32>>
  // CHECK: moe.all_reduce_start {{.*}} -> !moe.future<tensor<64x32xf32>>
  %f4 = moe.all_reduce_start %r on @mesh ["tp"] : (tensor<64x32xf32>) -> !moe.future<tensor<64x32xf32>>
  // CHECK: moe.wait %[[F0]] : !moe.future<tensor<4x8x32xf32>>
  %0 = moe.wait %f0 : !moe.future<tensor<4x8x32xf32>>
  %1 = moe.wait %f1 : !moe.future<tensor<128x32xf32>>
  %2 = moe.wait %f2 : !moe.future<tensor<64x64xf32>>
  %3 = moe.wait %f3 : !moe.future<tensor<32x32xf32>>
  %4 = moe.wait %f4 : !moe.future<tensor<64x32xf32>>
  return
}
