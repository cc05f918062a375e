// degree=auto: the cost model's degree for the cluster file. With a slow ep
// link (10 MB/s) and a slow GEMM the exchange is worth hiding and the fastest of
// 1, 2, 4, 8 is 8; with a fast link and a costly GEMM call (1 ms) it is 1 (the
// program is left as it is).
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e9, "gemm_latency_s": 1e-6, "copy_bytes_per_s": 1e10, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e10}}, "axes": {"ep": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e7}}}' > %t.slow.json
// RUN: echo '{"version": 1, "nodes": 1, "devices_per_node": 8, "device": {"gemm_flop_per_s": 1e12, "gemm_latency_s": 1e-3, "copy_bytes_per_s": 1e10, "memory_bytes": 1e9}, "links": {"intra_node": {"alpha_s": 1e-3, "bandwidth_bytes_per_s": 1e12}}}' > %t.fast.json
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=auto cluster=%t.slow.json" | FileCheck %s --check-prefix=SLOW
// RUN: moe-opt %s -moe-shard="mesh=ep=2" -moe-overlap="degree=auto cluster=%t.fast.json" | FileCheck %s --check-prefix=FAST

// SLOW: moe.chunk {{.*}} index = 0 chunks = 8 : (tensor<8x8x32xf32>) -> tensor<8x1x32xf32>
// SLOW-COUNT-15: moe.all_to_all_start
// SLOW: moe.interleave {{.*}} dim = 1 : {{.*}} -> tensor<8x8x32xf32>
// FAST-NOT: moe.chunk
// FAST: moe.all_to_all {{.*}} split = 0 concat = 1
func.func @capacity(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 2 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<2x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x16x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x16x32xf32>, tensor<2x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x16x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x16x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

// A dropless exchange: every degree is a candidate (a chunk keeps the
// worst-case rows), priced the same way; the slow link picks 8 here too.
// SLOW-LABEL: func.func @dropless
// SLOW: moe.chunk_rows {{.*}} index = 0 chunks = 8 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<15x32xf32>
// SLOW-COUNT-15: moe.all_to_all_v_start
// SLOW: moe.join_rows {{.*}} -> tensor<64x32xf32>
// FAST-LABEL: func.func @dropless
// FAST-NOT: moe.chunk_rows
// FAST: moe.all_to_all_v
func.func @dropless(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
