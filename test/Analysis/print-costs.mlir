// moe-print-costs: the cost model's time of every op under a cluster file.
// A slow named ep link (1 ms per message, 1 MB/s) against the placement of
// the built-in cluster; a bad file is an error naming the field.
// RUN: rm -rf %t && mkdir -p %t
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e9, "gemm_latency_s": 1e-3, "copy_bytes_per_s": 1e9, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e9}}, "axes": {"ep": {"alpha_s": 1e-3, "bandwidth_bytes_per_s": 1e6}}}' > %t/slow.json
// RUN: moe-opt %s --moe-print-costs=cluster=%t/slow.json -o /dev/null 2>&1 | FileCheck %s --check-prefix=SLOW
// RUN: moe-opt %s --moe-print-costs -o /dev/null 2>&1 | FileCheck %s --check-prefix=DEFAULT
// RUN: echo '{"version": 1}' > %t/bad.json
// RUN: not moe-opt %s --moe-print-costs=cluster=%t/bad.json -o /dev/null 2>&1 | FileCheck %s --check-prefix=BAD

moe.mesh @mesh axes = ["ep"] shape = [4]
func.func @f(%x: tensor<8x4x16xf32>, %g: tensor<2x32x16xf32>,
             %u: tensor<2x32x16xf32>, %d: tensor<2x16x32xf32>,
             %t: tensor<8x16xf32>, %dyn: tensor<?x16xf32>) -> tensor<8x4x16xf32> {
  // 2048 bytes, 3/4 sent: 3 x 1 ms + 1536 B / 1 MB/s.
  // SLOW: remark: moe.all_to_all cost: 0.004536 s (fixed 0.003 s, proportional 0.001536 s)
  // Built in: one node of 8, 3 x 5 us + 1536 B / 5 GB/s.
  // DEFAULT: remark: moe.all_to_all cost: 1.531e-05 s (fixed 1.5e-05 s, proportional 3.072e-07 s)
  %a = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x16xf32>) -> tensor<2x16x16xf32>
  // 2 x 16 rows x D=16 x F=32 x 2 x 3 (swiglu) = 98304 flops at 1e9/s + 1 ms.
  // SLOW: remark: moe.expert_ffn cost: 0.001098 s (fixed 0.001 s, proportional 9.83e-05 s)
  %y = moe.expert_ffn %a gate %g up %u down %d act = swiglu : (tensor<2x16x16xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x16x32xf32>) -> tensor<2x16x16xf32>
  // SLOW: remark: moe.all_to_all cost: 0.004536 s
  %b = moe.all_to_all %y on @mesh ["ep"] split = 1 concat = 0 : (tensor<2x16x16xf32>) -> tensor<8x4x16xf32>
  // 512 bytes over a 4-rank ring: 6 x 1 ms + 768 B / 1 MB/s.
  // SLOW: remark: moe.all_reduce cost: 0.006768 s
  %r = moe.all_reduce %t on @mesh ["ep"] : (tensor<8x16xf32>) -> tensor<8x16xf32>
  // SLOW: remark: moe.all_reduce cost: unknown (a dynamic shape)
  %h = moe.all_reduce %dyn on @mesh ["ep"] : (tensor<?x16xf32>) -> tensor<?x16xf32>
  // SLOW: remark: cost of @f: 0.01694 s (collectives 0.01584 s, local 0.001098 s, nothing overlapped; some ops unknown)
  return %b : tensor<8x4x16xf32>
}
// BAD: error: cluster file {{.*}}bad.json: nodes: missing (an integer >= 1)
