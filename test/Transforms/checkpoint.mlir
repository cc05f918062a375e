// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate -cse -moe-checkpoint="policy=none" | FileCheck %s --check-prefix=NONE
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate -cse -moe-checkpoint="policy=full" | FileCheck %s --check-prefix=FULL
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate -cse -moe-checkpoint="policy=cac" | FileCheck %s --check-prefix=CAC
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate -cse -moe-checkpoint="policy=auto budget=1000" | FileCheck %s --check-prefix=AUTO
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-shard="mesh=ep=2,tp=2" -moe-drop-duplicate-tokens -canonicalize -cse -moe-differentiate -cse -moe-checkpoint="policy=auto budget=100000" | FileCheck %s --check-prefix=AUTO-ALL

// moe-checkpoint on a Mixtral-style layer sharded over ep=2 x tp=2 with DTD
// (dropless: the counts go by all_to_all, the tokens by all_to_all_v, DTD's
// slice / all_gather over tp around them).

// none: everything the backward reads is kept, and the expert FFN's hidden
// activations too (moe.expert_ffn_train -> saved_u / saved_a of the grad).
// NONE: module attributes {moe.checkpoint = {policy = "none", recompute_collectives = 0 : i64, recompute_ops = 0 : i64, {{.*}}saved_bytes = 4192 : i64}}
// NONE-LABEL: func.func @forward_train
// NONE: %[[Y:.*]], %[[U:.*]], %[[A:.*]] = moe.expert_ffn_train %{{.*}} counts %{{.*}} gate %{{.*}} up %{{.*}} down %{{.*}} act = swiglu : {{.*}} -> (tensor<32x8xf32>, tensor<32x6xf32>, tensor<32x6xf32>)
// NONE: return {{.*}}, %[[U]], %[[A]] :
// NONE-LABEL: func.func @backward
// NONE-NOT: moe.recompute
// NONE: moe.expert_ffn_grad {{.*}} saved_u %{{.*}} saved_a %{{.*}} act = swiglu
// NONE-NOT: moe.recompute
// NONE-LABEL: func.func @step_adamw

// full: only the layer input (and the routing: top-k indices and gate
// weights, the loss seed) is kept; the backward replays the layer's forward
// before its adjoint, the count exchange and both token all-to-alls included.
// FULL: module attributes {moe.checkpoint = {policy = "full", recompute_collectives = 7 : i64, recompute_ops = 12 : i64, {{.*}}saved_bytes = 640 : i64}}
// FULL-LABEL: func.func @forward_train
// FULL-NOT: moe.expert_ffn_train
// FULL: %[[W:.*]], %[[I:.*]], %{{.*}} = moe.topk
// FULL: return %{{.*}}, %{{.*}}, %{{.*}}, %[[W]], %[[I]], %arg0 :
// FULL-LABEL: func.func @backward
// FULL-SAME: (%[[DY:[^:]*]]: tensor<8x8xf32> {moe.saved = "saved.0"}, %[[SW:[^:]*]]: tensor<8x2xf32> {moe.saved = "saved.1"}, %[[SI:[^:]*]]: tensor<8x2xi32> {moe.saved = "saved.2"}, %[[SX:[^:]*]]: tensor<8x8xf32> {moe.saved = "saved.3"},
// FULL-NEXT: %[[P:.*]], %[[C:.*]] = moe.assign %[[SI]] experts = 4 {moe.recompute}
// FULL-NEXT: %[[N:.*]] = moe.rmsnorm %[[SX]], {{.*}}moe.recompute}
// FULL-NEXT: moe.dispatch %[[N]], %[[P]] {moe.recompute}
// FULL-NEXT: %[[RC:.*]] = moe.all_to_all %[[C]] on @mesh ["ep"] split = 1 concat = 0 {moe.recompute}
// FULL-NEXT: moe.slice {{.*}} {moe.recompute}
// FULL-NEXT: moe.all_to_all_v {{.*}} {moe.recompute}
// FULL-NEXT: %[[X:.*]] = moe.all_gather {{.*}} {moe.recompute}
// FULL-NEXT: moe.expert_ffn %[[X]] {{.*}} {moe.recompute}
// FULL-NEXT: moe.slice {{.*}} {moe.recompute}
// FULL-NEXT: moe.all_to_all_v {{.*}} {moe.recompute}
// FULL-NEXT: %[[B:.*]] = moe.all_gather {{.*}} {moe.recompute}
// FULL-NEXT: moe.combine_grad %[[B]], %[[P]], %[[SW]], %[[DY]]
// FULL-NOT: moe.topk {{.*}}moe.recompute
// FULL: moe.router %[[N]], %{{.*}} {moe.recompute}
// FULL-NEXT: moe.topk_grad %{{.*}}, %[[SI]],
// FULL-LABEL: func.func @step_adamw

// cac: the results of the collectives (the count exchange, the expert
// buffer after the all-to-all and DTD's all_gather, the buffer that comes
// back) are kept; only local work is recomputed, and the backward's only
// collectives are the adjoints, none of them a forward collective again.
// CAC: module attributes {moe.checkpoint = {policy = "cac", recompute_collectives = 0 : i64, recompute_ops = 3 : i64, {{.*}}saved_bytes = 2192 : i64}}
// CAC-LABEL: func.func @backward
// CAC-NOT: {{moe\.(all_to_all|all_to_all_v|all_gather|slice|all_reduce|reduce_scatter) .*moe.recompute}}
// CAC: moe.assign {{.*}} {moe.recompute}
// CAC-NOT: {{moe\.(all_to_all|all_to_all_v|all_gather|slice|all_reduce|reduce_scatter) .*moe.recompute}}
// CAC: moe.rmsnorm {{.*}}moe.recompute}
// CAC-NEXT: moe.router {{.*}} {moe.recompute}
// CAC-NOT: {{moe\.(all_to_all|all_to_all_v|all_gather|slice|all_reduce|reduce_scatter) .*moe.recompute}}
// CAC-LABEL: func.func @step_adamw

// auto with 1000 bytes (between full's 640 and cac's 2192): the budget
// forces recomputing the token exchange, but the count exchange's result
// (16 bytes) is kept rather than exchanged again.
// AUTO: module attributes {moe.checkpoint = {budget_bytes = 1000 : i64, policy = "auto", recompute_collectives = 6 : i64, {{.*}}saved_bytes = 656 : i64}}
// AUTO-LABEL: func.func @backward
// AUTO-NOT: moe.all_to_all %{{.*}} split = 1 concat = 0 {moe.recompute}
// AUTO: moe.all_to_all_v {{.*}} {moe.recompute}
// AUTO-LABEL: func.func @step_adamw

// auto with a budget above none's bytes keeps what none keeps.
// AUTO-ALL: module attributes {moe.checkpoint = {budget_bytes = 100000 : i64, policy = "auto", recompute_collectives = 0 : i64, recompute_ops = 0 : i64, {{.*}}saved_bytes = 4192 : i64}}
// AUTO-ALL: moe.expert_ffn_train
func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %n: tensor<8xf32> {moe.weight = "norm"},
                   %wr: tensor<4x8xf32> {moe.weight = "gate"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.rmsnorm %x, %n {eps = 1.0e-5 : f32} : (tensor<16x8xf32>, tensor<8xf32>) -> tensor<16x8xf32>
  %1 = moe.layer %0 router %wr gate %w1 up %w3 down %w2
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  %2 = moe.add %x, %1 : (tensor<16x8xf32>, tensor<16x8xf32>) -> tensor<16x8xf32>
  return %2 : tensor<16x8xf32>
}
