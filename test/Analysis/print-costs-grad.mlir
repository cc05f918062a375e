// moe-print-costs of the expert FFN's gradient and of moe-overlap's split of
// it: the data part prices the recomputation (2 matrices, gated) and dh, dx
// (3), the weight part the 3 weight gradients, together the fused op's 8.
// RUN: rm -rf %t && mkdir -p %t
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e9, "gemm_latency_s": 1e-3, "copy_bytes_per_s": 1e9, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e9}}}' > %t/c.json
// RUN: moe-opt %s --moe-print-costs=cluster=%t/c.json -o /dev/null 2>&1 | FileCheck %s

func.func @f(%x: tensor<2x16x16xf32>, %g: tensor<2x32x16xf32>,
             %u: tensor<2x32x16xf32>, %d: tensor<2x16x32xf32>, %su: tensor<32x32xf32>,
             %sa: tensor<32x32xf32>) {
  // 32 rows x D=16 x F=32 x 2 = 32768 flops a matrix.
  // CHECK: remark: moe.expert_ffn_grad cost: 0.001262 s (fixed 0.001 s, proportional 0.0002621 s)
  %0:4 = moe.expert_ffn_grad %x gate %g up %u down %d, %x act = swiglu : (tensor<2x16x16xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>, tensor<2x16x16xf32>) -> (tensor<2x16x16xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>)
  // CHECK: remark: moe.expert_ffn_grad_data cost: 0.001164 s (fixed 0.001 s, proportional 0.0001638 s)
  %1:4 = moe.expert_ffn_grad_data %x gate %g up %u down %d, %x act = swiglu : (tensor<2x16x16xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>, tensor<2x16x16xf32>) -> (tensor<2x16x16xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>)
  // With saved activations: dh and dx only.
  // CHECK: remark: moe.expert_ffn_grad_data cost: 0.001098 s (fixed 0.001 s, proportional 9.83e-05 s)
  %2:4 = moe.expert_ffn_grad_data %x gate %g up %u down %d, %x saved_u %su saved_a %sa act = swiglu : (tensor<2x16x16xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>, tensor<2x16x16xf32>, tensor<32x32xf32>, tensor<32x32xf32>) -> (tensor<2x16x16xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>)
  // CHECK: remark: moe.expert_ffn_grad_weight cost: 0.001098 s (fixed 0.001 s, proportional 9.83e-05 s)
  %3:3 = moe.expert_ffn_grad_weight %x, %x hidden %1#1 dpre_up %1#2 dpre_gate %1#3 : (tensor<2x16x16xf32>, tensor<2x16x16xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>, tensor<2x16x32xf32>) -> (tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>)
  return
}
