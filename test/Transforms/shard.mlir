// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2" | FileCheck %s --check-prefix=EP
// RUN: moe-opt %s -split-input-file -moe-shard="mesh=dp=2,ep=2,tp=2 expert-tp=true" | FileCheck %s --check-prefix=ETP
// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=2" | FileCheck %s --check-prefix=TP
// RUN: moe-opt %s -split-input-file -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens | FileCheck %s --check-prefix=DTD

// Dropless expert parallelism: counts travel first, then the rows.
// EP: moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
// EP-LABEL: func.func @dropless
// EP-SAME: %[[X:.*]]: tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.input = "hidden_states", moe.shard = {{\[\["dp", "ep"\], \[\]\]}}}
// EP-SAME: %[[WR:.*]]: tensor<8x32xf32> {moe.global_shape = array<i64: 8, 32>, moe.shard = {{\[\[\], \[\]\]}}
// EP-SAME: %[[U:.*]]: tensor<4x48x32xf32> {moe.global_shape = array<i64: 8, 48, 32>, moe.shard = {{\[\["ep"\], \[\], \[\]\]}}
// EP-SAME: %[[D:.*]]: tensor<4x32x48xf32> {moe.global_shape = array<i64: 8, 32, 48>, moe.shard = {{\[\["ep"\], \[\], \[\]\]}}
// EP-SAME: -> (tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.output = "hidden_states", moe.shard = {{\[\["dp", "ep"\], \[\]\]}}})
// EP: moe.router %[[X]], %[[WR]] : (tensor<32x32xf32>, tensor<8x32xf32>) -> tensor<32x8xf32>
// EP: %[[P:.*]], %[[C:.*]] = moe.assign %{{.*}} experts = 8 : (tensor<32x2xi32>) -> (tensor<32x2xi32>, tensor<1x8xi32>)
// EP: %[[B:.*]] = moe.dispatch %[[X]], %[[P]] : (tensor<32x32xf32>, tensor<32x2xi32>) -> tensor<64x32xf32>
// EP: %[[RC:.*]] = moe.all_to_all %[[C]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<1x8xi32>) -> tensor<2x4xi32>
// EP: %[[R:.*]] = moe.all_to_all_v %[[B]], %[[C]], %[[RC]] on @mesh ["ep"] : (tensor<64x32xf32>, tensor<1x8xi32>, tensor<2x4xi32>) -> tensor<128x32xf32>
// EP: %[[Y:.*]] = moe.expert_ffn %[[R]] counts %[[RC]] up %[[U]] down %[[D]] act = relu : (tensor<128x32xf32>, tensor<2x4xi32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>) -> tensor<128x32xf32>
// EP: %[[BACK:.*]] = moe.all_to_all_v %[[Y]], %[[RC]], %[[C]] on @mesh ["ep"] : (tensor<128x32xf32>, tensor<2x4xi32>, tensor<1x8xi32>) -> tensor<64x32xf32>
// EP: moe.combine %[[BACK]], %[[P]], %{{.*}} : (tensor<64x32xf32>, tensor<32x2xi32>, tensor<32x2xf32>) -> tensor<32x32xf32>

// Expert tensor parallelism: F split over tp, partial outputs summed over tp.
// ETP: moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 2]
// ETP-LABEL: func.func @dropless
// ETP-SAME: tensor<16x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.input = "hidden_states"
// ETP-SAME: tensor<4x24x32xf32> {moe.global_shape = array<i64: 8, 48, 32>, moe.shard = {{\[\["ep"\], \["tp"\], \[\]\]}}
// ETP-SAME: tensor<4x32x24xf32> {moe.global_shape = array<i64: 8, 32, 48>, moe.shard = {{\[\["ep"\], \[\], \["tp"\]\]}}
// ETP: %[[Y:.*]] = moe.expert_ffn {{.*}} -> tensor<64x32xf32>
// ETP: %[[S:.*]] = moe.all_reduce %[[Y]] on @mesh ["tp"]
// ETP: moe.all_to_all_v %[[S]]
func.func @dropless(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x48x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x48xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<64x8xf32>) -> (tensor<64x2xf32>, tensor<64x2xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 : (tensor<64x2xi32>) -> (tensor<64x2xi32>, tensor<1x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x2xi32>) -> tensor<128x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<128x32xf32>, tensor<1x8xi32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<128x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<128x32xf32>, tensor<64x2xi32>, tensor<64x2xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}

// -----

// Capacity: each rank holds whole token groups; experts are exchanged with
// an even all-to-all of the [E, C, D] buffer (split experts, concat slots).
// EP-LABEL: func.func @capacity
// EP-SAME: -> (tensor<32x32xf32> {{.*}}, tensor<f32> {moe.global_shape = array<i64>, moe.output = "aux_loss", moe.shard = []}, tensor<f32>
// EP: moe.assign %{{.*}} experts = 8 {capacity = 3 : i64, groups = 2 : i64} : (tensor<32x1xi32>) -> (tensor<32x1xi32>, tensor<2x8xi32>)
// EP: %[[B:.*]] = moe.dispatch {{.*}} -> tensor<8x6x32xf32>
// EP: %[[R:.*]] = moe.all_to_all %[[B]] on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x6x32xf32>) -> tensor<4x12x32xf32>
// EP: %[[Y:.*]] = moe.expert_ffn %[[R]] up %{{.*}} down %{{.*}} act = relu : (tensor<4x12x32xf32>, tensor<4x48x32xf32>, tensor<4x32x48xf32>) -> tensor<4x12x32xf32>
// EP: %[[BACK:.*]] = moe.all_to_all %[[Y]] on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x12x32xf32>) -> tensor<8x6x32xf32>
// EP: moe.combine %[[BACK]]

// Load-balance statistics and the z-loss are summed over the token axes.
// EP: %[[ST:.*]] = moe.expert_load
// EP: %[[STS:.*]] = moe.all_reduce %[[ST]] on @mesh ["dp", "ep"] : (tensor<2x8xf32>) -> tensor<2x8xf32>
// EP: moe.load_balance_loss %[[STS]] tokens = 64
// EP: %[[Z:.*]] = moe.z_loss %{{.*}} tokens = 64
// EP: %[[ZS:.*]] = moe.all_reduce %[[Z]] on @mesh ["dp", "ep"] : (tensor<f32>) -> tensor<f32>
// EP: return {{.*}}, %[[ZS]]

// ETP-LABEL: func.func @capacity
// ETP: moe.assign %{{.*}} experts = 8 {capacity = 3 : i64} : (tensor<16x1xi32>) -> (tensor<16x1xi32>, tensor<1x8xi32>)
func.func @capacity(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %wr: tensor<8x32xf32> {moe.weight = "gate.weight"}, %u: tensor<8x48x32xf32> {moe.weight = "experts.{e}.up.weight"}, %d: tensor<8x32x48xf32> {moe.weight = "experts.{e}.down.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}, tensor<f32> {moe.output = "aux_loss"}, tensor<f32> {moe.output = "z_loss"}) {
  %l = moe.router %x, %wr : (tensor<64x32xf32>, tensor<8x32xf32>) -> tensor<64x8xf32>
  %w, %i, %s = moe.topk %l k = 1 score = softmax : (tensor<64x8xf32>) -> (tensor<64x1xf32>, tensor<64x1xi32>, tensor<64x8xf32>)
  %p, %c = moe.assign %i experts = 8 {capacity = 3 : i64, groups = 4 : i64} : (tensor<64x1xi32>) -> (tensor<64x1xi32>, tensor<4x8xi32>)
  %b = moe.dispatch %x, %p : (tensor<64x32xf32>, tensor<64x1xi32>) -> tensor<8x12x32xf32>
  %y = moe.expert_ffn %b counts %c up %u down %d act = relu : (tensor<8x12x32xf32>, tensor<4x8xi32>, tensor<8x48x32xf32>, tensor<8x32x48xf32>) -> tensor<8x12x32xf32>
  %o = moe.combine %y, %p, %w : (tensor<8x12x32xf32>, tensor<64x1xi32>, tensor<64x1xf32>) -> tensor<64x32xf32>
  %st = moe.expert_load %s, %i : (tensor<64x8xf32>, tensor<64x1xi32>) -> tensor<2x8xf32>
  %aux = moe.load_balance_loss %st tokens = 64 k = 1 coeff = 0.01 : (tensor<2x8xf32>) -> tensor<f32>
  %z = moe.z_loss %l tokens = 64 coeff = 0.001 : (tensor<64x8xf32>) -> tensor<f32>
  return %o, %aux, %z : tensor<64x32xf32>, tensor<f32>, tensor<f32>
}

// -----

// Dense MLPs (a dense layer, a shared expert) are split over tp Megatron-style
// whenever tp > 1: gate/up column-parallel (F/tp rows each), down row-parallel
// (F/tp columns), partial outputs summed over tp. The shared expert's sigmoid
// gate stays replicated; it scales the partial sums before the all_reduce.
// Without tp nothing changes.
// EP-LABEL: func.func @dense_and_shared
// EP-SAME: tensor<32x64xf32> {moe.global_shape = array<i64: 32, 64>, moe.shard = {{\[\[\], \[\]\]}}, moe.weight = "mlp.down_proj.weight"}
// EP-NOT: moe.all_reduce
// EP: return

// TP: moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
// TP-LABEL: func.func @dense_and_shared
// TP-SAME: %[[X:.*]]: tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.input = "hidden_states", moe.shard = {{\[\["dp", "ep"\], \[\]\]}}}
// TP-SAME: %[[N:.*]]: tensor<32xf32> {moe.global_shape = array<i64: 32>, moe.shard = {{\[\[\]\]}}
// TP-SAME: %[[G:.*]]: tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.shard = {{\[\["tp"\], \[\]\]}}, moe.weight = "mlp.gate_proj.weight"}
// TP-SAME: %[[U:.*]]: tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.shard = {{\[\["tp"\], \[\]\]}}, moe.weight = "mlp.up_proj.weight"}
// TP-SAME: %[[D:.*]]: tensor<32x32xf32> {moe.global_shape = array<i64: 32, 64>, moe.shard = {{\[\[\], \["tp"\]\]}}, moe.weight = "mlp.down_proj.weight"}
// TP-SAME: %[[SU:.*]]: tensor<24x32xf32> {moe.global_shape = array<i64: 48, 32>, moe.shard = {{\[\["tp"\], \[\]\]}}, moe.weight = "shared_expert.up_proj.weight"}
// TP-SAME: %[[SD:.*]]: tensor<32x24xf32> {moe.global_shape = array<i64: 32, 48>, moe.shard = {{\[\[\], \["tp"\]\]}}, moe.weight = "shared_expert.down_proj.weight"}
// TP-SAME: %[[SG:.*]]: tensor<1x32xf32> {moe.global_shape = array<i64: 1, 32>, moe.shard = {{\[\[\], \[\]\]}}, moe.weight = "shared_expert_gate.weight"}
// TP-SAME: -> (tensor<32x32xf32> {moe.global_shape = array<i64: 64, 32>, moe.output = "hidden_states", moe.shard = {{\[\["dp", "ep"\], \[\]\]}}})
// TP: %[[H:.*]] = moe.rmsnorm %[[X]], %[[N]]
// TP: %[[Y:.*]] = moe.mlp %[[H]] gate %[[G]] up %[[U]] down %[[D]] act = swiglu : (tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>, tensor<32x32xf32>) -> tensor<32x32xf32>
// TP-NEXT: %[[YS:.*]] = moe.all_reduce %[[Y]] on @mesh ["tp"] : (tensor<32x32xf32>) -> tensor<32x32xf32>
// TP-NEXT: %[[R:.*]] = moe.add %[[X]], %[[YS]]
// TP-NEXT: %[[S:.*]] = moe.mlp %[[R]] up %[[SU]] down %[[SD]] sigmoid_gate %[[SG]] act = gelu : (tensor<32x32xf32>, tensor<24x32xf32>, tensor<32x24xf32>, tensor<1x32xf32>) -> tensor<32x32xf32>
// TP-NEXT: %[[SS:.*]] = moe.all_reduce %[[S]] on @mesh ["tp"] : (tensor<32x32xf32>) -> tensor<32x32xf32>
// TP-NEXT: %[[O:.*]] = moe.add %[[R]], %[[SS]]
// TP-NEXT: return %[[O]]

// Duplicate token dropping leaves the dense MLPs' all_reduce as it is: their
// output joins the residual stream, which needs full rows on every tp rank
// (docs/distributed.md says why a reduce-scatter would not pay).
// DTD-LABEL: func.func @dense_and_shared
// DTD: %[[Y:.*]] = moe.mlp
// DTD-NEXT: moe.all_reduce %[[Y]] on @mesh ["tp"] : (tensor<32x32xf32>) -> tensor<32x32xf32>
// DTD: %[[S:.*]] = moe.mlp
// DTD-NEXT: moe.all_reduce %[[S]] on @mesh ["tp"] : (tensor<32x32xf32>) -> tensor<32x32xf32>
// DTD-NOT: moe.reduce_scatter
func.func @dense_and_shared(%x: tensor<64x32xf32> {moe.input = "hidden_states"}, %n: tensor<32xf32> {moe.weight = "norm.weight"}, %g: tensor<64x32xf32> {moe.weight = "mlp.gate_proj.weight"}, %u: tensor<64x32xf32> {moe.weight = "mlp.up_proj.weight"}, %d: tensor<32x64xf32> {moe.weight = "mlp.down_proj.weight"}, %su: tensor<48x32xf32> {moe.weight = "shared_expert.up_proj.weight"}, %sd: tensor<32x48xf32> {moe.weight = "shared_expert.down_proj.weight"}, %sg: tensor<1x32xf32> {moe.weight = "shared_expert_gate.weight"}) -> (tensor<64x32xf32> {moe.output = "hidden_states"}) {
  %h = moe.rmsnorm %x, %n {eps = 1.0e-6 : f32} : (tensor<64x32xf32>, tensor<32xf32>) -> tensor<64x32xf32>
  %y = moe.mlp %h gate %g up %u down %d act = swiglu : (tensor<64x32xf32>, tensor<64x32xf32>, tensor<64x32xf32>, tensor<32x64xf32>) -> tensor<64x32xf32>
  %r = moe.add %x, %y : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  %s = moe.mlp %r up %su down %sd sigmoid_gate %sg act = gelu : (tensor<64x32xf32>, tensor<48x32xf32>, tensor<32x48xf32>, tensor<1x32xf32>) -> tensor<64x32xf32>
  %o = moe.add %r, %s : (tensor<64x32xf32>, tensor<64x32xf32>) -> tensor<64x32xf32>
  return %o : tensor<64x32xf32>
}
