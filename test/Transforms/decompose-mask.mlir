// RUN: moe-opt %s -moe-decompose | FileCheck %s
// RUN: moe-opt %s -moe-decompose -moe-shard="mesh=ep=2,tp=2" -canonicalize -cse | FileCheck %s --check-prefix=SHARD

// A masked layer (spec.md 3.11): padding rows leave top-k as expert -1 and
// weight 0, so assign and expert_load skip them; the output, the scores of the
// load statistics and the z-loss are masked; both losses divide by the real
// token count. Shared experts are inside the masked output.
// CHECK-LABEL: func.func @masked
// CHECK-SAME: %[[M:[a-z0-9]+]]: tensor<16xi32> {moe.input = "token_mask"}
// CHECK: %[[L:.*]] = moe.router
// CHECK: %[[W:.*]], %[[I:.*]], %[[S:.*]] = moe.topk %[[L]]
// CHECK: %[[MI:.*]] = moe.mask_rows %[[I]], %[[M]] : (tensor<16x2xi32>, tensor<16xi32>) -> tensor<16x2xi32>
// CHECK: %[[MW:.*]] = moe.mask_rows %[[W]], %[[M]] : (tensor<16x2xf32>, tensor<16xi32>) -> tensor<16x2xf32>
// CHECK: %[[P:.*]], %{{.*}} = moe.assign %[[MI]] experts = 4 {capacity = 4 : i64, groups = 2 : i64}
// CHECK: moe.combine %{{.*}}, %[[P]], %[[MW]]
// CHECK: %[[SH:.*]] = moe.mlp
// CHECK: %[[SUM:.*]] = moe.add %{{.*}}, %[[SH]]
// CHECK: %[[Y:.*]] = moe.mask_rows %[[SUM]], %[[M]] : (tensor<16x8xf32>, tensor<16xi32>) -> tensor<16x8xf32>
// CHECK: %[[N:.*]] = moe.token_count %[[M]] : (tensor<16xi32>) -> tensor<f32>
// CHECK: %[[MS:.*]] = moe.mask_rows %[[S]], %[[M]] : (tensor<16x4xf32>, tensor<16xi32>) -> tensor<16x4xf32>
// CHECK: %[[ST:.*]] = moe.expert_load %[[MS]], %[[MI]]
// CHECK: %[[A:.*]] = moe.load_balance_loss %[[ST]] count %[[N]] tokens = 16 k = 2
// CHECK: %[[Z:.*]] = moe.z_loss %[[L]] mask %[[M]] count %[[N]] tokens = 16
// CHECK: return %[[Y]], %[[A]], %[[Z]]

// On a mesh the mask is split like the tokens and the count summed over them.
// SHARD: moe.input = "token_mask", moe.shard = {{\[}}["dp", "ep"]]
// SHARD: %[[N:.*]] = moe.token_count %{{.*}} : (tensor<8xi32>) -> tensor<f32>
// SHARD: %[[NS:.*]] = moe.all_reduce %[[N]] on @mesh ["dp", "ep"] : (tensor<f32>) -> tensor<f32>
// SHARD: moe.load_balance_loss %{{.*}} count %[[NS]]
// SHARD: %[[Z:.*]] = moe.z_loss %{{.*}} mask %{{.*}} count %[[NS]] tokens = 16
// SHARD: moe.all_reduce %[[Z]] on @mesh ["dp", "ep"]
func.func @masked(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                  %wr: tensor<4x8xf32> {moe.weight = "r"},
                  %u: tensor<4x12x8xf32> {moe.weight = "u"},
                  %d: tensor<4x8x12xf32> {moe.weight = "d"},
                  %su: tensor<12x8xf32> {moe.weight = "su"},
                  %sd: tensor<8x12xf32> {moe.weight = "sd"},
                  %m: tensor<16xi32> {moe.input = "token_mask"})
    -> (tensor<16x8xf32>, tensor<f32>, tensor<f32>) {
  %y:3 = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd token_mask %m {num_experts = 4 : i64, top_k = 2 : i64, capacity = 4 : i64, token_groups = 2 : i64, activation = #moe<activation gelu>, num_shared_experts = 1 : i64, shared_intermediate = 12 : i64, aux_loss_coeff = 0.01 : f32, z_loss_coeff = 0.001 : f32} : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x12x8xf32>, tensor<4x8x12xf32>, tensor<12x8xf32>, tensor<8x12xf32>, tensor<16xi32>) -> (tensor<16x8xf32>, tensor<f32>, tensor<f32>)
  return %y#0, %y#1, %y#2 : tensor<16x8xf32>, tensor<f32>, tensor<f32>
}
