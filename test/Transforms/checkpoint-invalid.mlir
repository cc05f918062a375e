// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=some" 2>&1 | FileCheck %s --check-prefix=POLICY
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=auto budget=-5" 2>&1 | FileCheck %s --check-prefix=NEGATIVE
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=auto budget=1MB" 2>&1 | FileCheck %s --check-prefix=WORD
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=auto" 2>&1 | FileCheck %s --check-prefix=NOBUDGET
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=cac budget=100" 2>&1 | FileCheck %s --check-prefix=NOTAUTO
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=auto budget=10" 2>&1 | FileCheck %s --check-prefix=MINIMUM
// RUN: not moe-opt %s -moe-decompose -canonicalize -moe-checkpoint="policy=full" 2>&1 | FileCheck %s --check-prefix=UNDIFF
// RUN: moe-opt %s -moe-decompose -canonicalize -moe-differentiate -moe-checkpoint="policy=auto budget=1280" | FileCheck %s --check-prefix=EXACT

// POLICY: error: moe-checkpoint: unknown checkpoint policy 'some' (none, full, cac or auto)
// NEGATIVE: error: moe-checkpoint: checkpoint budget '-5' is not a non-negative number of bytes
// WORD: error: moe-checkpoint: checkpoint budget '1MB' is not a non-negative number of bytes
// NOBUDGET: error: moe-checkpoint: policy auto needs a budget (bytes)
// NOTAUTO: error: moe-checkpoint: a budget is only for policy auto
// The smallest plan (full) keeps the layer input and the loss seed (16 x 8
// f32 each) and the routing (indices and gate weights, 16 x 2 each): 1280.
// MINIMUM: error: moe-checkpoint: budget 10 bytes is below the minimum of 1280 bytes per rank (policy full: the layer inputs and the routing)
// UNDIFF: error: moe-checkpoint: the module has no @forward_train and @backward (run moe-differentiate first)
// A budget of exactly the minimum is the full plan.
// EXACT: moe.checkpoint = {budget_bytes = 1280 : i64, policy = "auto", {{.*}}saved_bytes = 1280 : i64}

func.func @forward(%x: tensor<16x8xf32> {moe.input = "hidden_states"},
                   %wr: tensor<4x8xf32> {moe.weight = "gate"},
                   %w1: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w1"},
                   %w3: tensor<4x6x8xf32> {moe.weight = "experts.{e}.w3"},
                   %w2: tensor<4x8x6xf32> {moe.weight = "experts.{e}.w2"})
    -> (tensor<16x8xf32> {moe.output = "hidden_states"}) {
  %0 = moe.layer %x router %wr gate %w1 up %w3 down %w2
      {num_experts = 4 : i64, top_k = 2 : i64, renormalize, activation = #moe<activation swiglu>}
      : (tensor<16x8xf32>, tensor<4x8xf32>, tensor<4x6x8xf32>, tensor<4x6x8xf32>, tensor<4x8x6xf32>) -> tensor<16x8xf32>
  return %0 : tensor<16x8xf32>
}
