// mode=auto: the cost model decides per exchange, with R from the cluster
// file's devices per node when ranks-per-node is not given.
// RUN: rm -rf %t && mkdir -p %t
// A slow link between nodes (1 ms a message): the two phases pay 1 node
// latency where the flat exchange pays 4.
// RUN: echo '{"version": 1, "nodes": 2, "devices_per_node": 4, "device": {"gemm_flop_per_s": 1e10, "gemm_latency_s": 1e-5, "copy_bytes_per_s": 1e10, "memory_bytes": 1e10}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e10}, "inter_node": {"alpha_s": 1e-3, "bandwidth_bytes_per_s": 1e8}}}' > %t/slow.json
// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="mode=auto cluster=%t/slow.json" | FileCheck %s --check-prefix=SLOW
// One fast link everywhere and slow copies: the re-layouts cost more than the
// latencies saved, so the exchanges stay flat (over the split axis).
// RUN: echo '{"version": 1, "nodes": 2, "devices_per_node": 4, "device": {"gemm_flop_per_s": 1e10, "gemm_latency_s": 1e-5, "copy_bytes_per_s": 1e6, "memory_bytes": 1e10}, "links": {"intra_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e10}, "inter_node": {"alpha_s": 1e-6, "bandwidth_bytes_per_s": 1e10}}}' > %t/fast.json
// RUN: moe-opt %s -moe-shard="mesh=ep=8" -moe-hierarchical-a2a="mode=auto cluster=%t/fast.json" | FileCheck %s --check-prefix=FAST
// The flag in moe-compile: auto takes R from the cluster.
// RUN: moe-compile %s -o %t/mod --mesh ep=8 --hierarchical-a2a=auto --cluster %t/slow.json
// RUN: %python -c "import json, sys; m = json.load(open(sys.argv[1])); print('mesh', m['mesh']['axes'], m['mesh']['shape']); print('axes', sorted({c['axis'] for e in m['entries'] for c in e['collectives']}))" %t/mod/manifest.json | FileCheck %s --check-prefix=MANIFEST
// RUN: not moe-compile %s -o %t/bad --mesh ep=8 --hierarchical-a2a 2>&1 | FileCheck %s --check-prefix=NOR
// RUN: not moe-compile %s -o %t/bad --mesh ep=8 --ranks-per-node 4 2>&1 | FileCheck %s --check-prefix=ALONE
// RUN: not moe-compile %s -o %t/bad --hierarchical-a2a --ranks-per-node 4 2>&1 | FileCheck %s --check-prefix=NOMESH
// RUN: not moe-compile %s -o %t/bad --mesh ep=8 --hierarchical-a2a --ranks-per-node 3 2>&1 | FileCheck %s --check-prefix=THREE

// SLOW: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 2, 4, 1]
// SLOW-NOT: ["ep_node", "ep_local"] split
// SLOW: ["ep_local"] split = 1 concat = 2
// SLOW: ["ep_node"] split = 0 concat = 2
// SLOW-NOT: ["ep_node", "ep_local"] split

// FAST: moe.mesh @mesh axes = ["dp", "ep_node", "ep_local", "tp"] shape = [1, 2, 4, 1]
// FAST-NOT: ["ep_local"]
// FAST: moe.all_to_all %{{.*}} on @mesh ["ep_node", "ep_local"] split = 0 concat = 1
// FAST: moe.all_to_all %{{.*}} on @mesh ["ep_node", "ep_local"] split = 1 concat = 0
// FAST-NOT: ["ep_local"]

// MANIFEST: mesh ['dp', 'ep_node', 'ep_local', 'tp'] [1, 2, 4, 1]
// MANIFEST-NEXT: axes ['ep_local', 'ep_node']

// NOR: moe-compile: error: hierarchical-a2a needs ranks-per-node
// ALONE: --ranks-per-node is used by --hierarchical-a2a
// NOMESH: hierarchical-a2a splits the expert-parallel exchange: it needs a mesh with ep > 1
// THREE: ranks-per-node 3 does not divide the 8 ranks of the mesh dp=1,ep=8,tp=1

func.func @forward(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x96x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x96xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 8 : i64, groups = 8 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<8x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x64x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x64x32xf32>, tensor<8x8xi32>, tensor<8x96x32xf32>, tensor<8x32x96xf32>) -> tensor<8x64x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x64x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
