// RUN: moe-opt %s -split-input-file -verify-diagnostics

// One case per verifier rule (and a few ODS constraints), in op order.

// -----

// mesh: names vs sizes
// expected-error @+1 {{has 2 axis names but 3 axis sizes}}
moe.mesh @m axes = ["dp", "ep"] shape = [1, 2, 2]

// -----

// mesh: empty name
// expected-error @+1 {{has an empty axis name}}
moe.mesh @m axes = [""] shape = [2]

// -----

// mesh: duplicate axis
// expected-error @+1 {{axis 'ep' appears twice}}
moe.mesh @m axes = ["ep", "ep"] shape = [2, 2]

// -----

// mesh: size < 1
// expected-error @+1 {{axis 'ep' has size 0, expected at least 1}}
moe.mesh @m axes = ["ep"] shape = [0]

// -----

// rmsnorm: eps
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xf32>) {
  // expected-error @+1 {{eps (0.000000e+00) must be positive}}
  %0 = moe.rmsnorm %x, %w {eps = 0.0 : f32} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  return
}

// -----

// rmsnorm: weight shape
func.func @f(%x: tensor<4x32xf32>, %w: tensor<16xf32>) {
  // expected-error @+1 {{weight has shape [16], expected [32]}}
  %0 = moe.rmsnorm %x, %w {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// rmsnorm: element types
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xbf16>) {
  // expected-error @+1 {{input element type 'f32' differs from weight element type 'bf16'}}
  %0 = moe.rmsnorm %x, %w {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<32xbf16>) -> tensor<4x32xf32>
  return
}

// -----

// layernorm: eps
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xf32>) {
  // expected-error @+1 {{eps (-1.000000e+00) must be positive}}
  %0 = moe.layernorm %x, %w {eps = -1.0 : f32} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<4x32xf32>
  return
}

// -----

// layernorm: bias shape
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xf32>, %b: tensor<16xf32>) {
  // expected-error @+1 {{bias has shape [16], expected [32]}}
  %0 = moe.layernorm %x, %w bias %b {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<32xf32>, tensor<16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// layernorm: bias element type
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xf32>, %b: tensor<32xf16>) {
  // expected-error @+1 {{input element type 'f32' differs from bias element type 'f16'}}
  %0 = moe.layernorm %x, %w bias %b {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<32xf32>, tensor<32xf16>) -> tensor<4x32xf32>
  return
}

// -----

// layernorm: weight shape
func.func @f(%x: tensor<4x32xf32>, %w: tensor<8xf32>) {
  // expected-error @+1 {{weight has shape [8], expected [32]}}
  %0 = moe.layernorm %x, %w {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<8xf32>) -> tensor<4x32xf32>
  return
}

// -----

// rmsnorm: result type
func.func @f(%x: tensor<4x32xf32>, %w: tensor<32xf32>) {
  // expected-error @+1 {{result type 'tensor<8x32xf32>' differs from input type 'tensor<4x32xf32>'}}
  %0 = moe.rmsnorm %x, %w {eps = 1.0e-6 : f32} : (tensor<4x32xf32>, tensor<32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// add: same types (ODS)
func.func @f(%a: tensor<4x32xf32>, %b: tensor<4x16xf32>) {
  // expected-error @+1 {{requires the same type for all operands and results}}
  %0 = moe.add %a, %b : (tensor<4x32xf32>, tensor<4x16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// router: D
func.func @f(%x: tensor<4x32xf32>, %w: tensor<8x16xf32>) {
  // expected-error @+1 {{router weight has 16 columns but tokens have D = 32}}
  %0 = moe.router %x, %w : (tensor<4x32xf32>, tensor<8x16xf32>) -> tensor<4x8xf32>
  return
}

// -----

// router: element types
func.func @f(%x: tensor<4x32xf32>, %w: tensor<8x32xbf16>) {
  // expected-error @+1 {{input element type 'f32' differs from weight element type 'bf16'}}
  %0 = moe.router %x, %w : (tensor<4x32xf32>, tensor<8x32xbf16>) -> tensor<4x8xf32>
  return
}

// -----

// router: result shape
func.func @f(%x: tensor<4x32xf32>, %w: tensor<8x32xf32>) {
  // expected-error @+1 {{result has shape [4, 6], expected [4, 8]}}
  %0 = moe.router %x, %w : (tensor<4x32xf32>, tensor<8x32xf32>) -> tensor<4x6xf32>
  return
}

// -----

// router: logits must be f32 (ODS)
func.func @f(%x: tensor<4x32xbf16>, %w: tensor<8x32xbf16>) {
  // expected-error @+1 {{result #0 must be 2D tensor of 32-bit float values, but got 'tensor<4x8xbf16>'}}
  %0 = moe.router %x, %w : (tensor<4x32xbf16>, tensor<8x32xbf16>) -> tensor<4x8xbf16>
  return
}

// -----

// topk: k > E
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{k (9) exceeds the number of experts (8)}}
  %w, %i, %s = moe.topk %l k = 9 score = softmax : (tensor<4x8xf32>) -> (tensor<4x9xf32>, tensor<4x9xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: k positive (ODS)
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{attribute 'k' failed to satisfy constraint: 64-bit signless integer attribute whose value is positive}}
  %w, %i, %s = moe.topk %l k = 0 score = softmax : (tensor<4x8xf32>) -> (tensor<4x0xf32>, tensor<4x0xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: bias shape
func.func @f(%l: tensor<4x8xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{bias has shape [4], expected [8]}}
  %w, %i, %s = moe.topk %l bias %b k = 2 score = sigmoid : (tensor<4x8xf32>, tensor<4xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: groups_kept > num_groups
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{groups_kept (3) exceeds num_groups (2)}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax {num_groups = 2 : i64, groups_kept = 3 : i64} : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: groups divide experts
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{num_groups (3) does not divide the number of experts (8)}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax {num_groups = 3 : i64, groups_kept = 2 : i64} : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: k selectable in kept groups
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{k (3) exceeds the 2 experts selectable in 1 kept groups}}
  %w, %i, %s = moe.topk %l k = 3 score = softmax {num_groups = 4 : i64, groups_kept = 1 : i64} : (tensor<4x8xf32>) -> (tensor<4x3xf32>, tensor<4x3xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: top2_sum needs 2 experts per group
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{group score 'top2_sum' needs at least 2 experts per group, got 1}}
  %w, %i, %s = moe.topk %l k = 2 score = sigmoid {num_groups = 8 : i64, groups_kept = 4 : i64, group_score = #moe<group_score top2_sum>} : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: routed scaling positive
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{routed_scaling (0.000000e+00) must be positive}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax {routed_scaling = 0.0 : f32} : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: weights shape
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{weights result has shape [4, 3], expected [4, 2]}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<4x8xf32>) -> (tensor<4x3xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// topk: scores shape
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{scores result has shape [4, 4], expected [4, 8]}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x4xf32>)
  return
}

// -----

// assign: dropless has no groups
func.func @f(%i: tensor<4x2xi32>) {
  // expected-error @+1 {{dropless assignment (capacity 0) has no token groups, got groups = 2}}
  %p, %c = moe.assign %i experts = 8 {groups = 2 : i64} : (tensor<4x2xi32>) -> (tensor<4x2xi32>, tensor<2x8xi32>)
  return
}

// -----

// assign: groups divide tokens
func.func @f(%i: tensor<6x2xi32>) {
  // expected-error @+1 {{groups (4) does not divide the number of tokens (6)}}
  %p, %c = moe.assign %i experts = 8 {capacity = 2 : i64, groups = 4 : i64} : (tensor<6x2xi32>) -> (tensor<6x2xi32>, tensor<4x8xi32>)
  return
}

// -----

// assign: counts shape
func.func @f(%i: tensor<4x2xi32>) {
  // expected-error @+1 {{counts result has shape [1, 8], expected [2, 8]}}
  %p, %c = moe.assign %i experts = 8 {capacity = 2 : i64, groups = 2 : i64} : (tensor<4x2xi32>) -> (tensor<4x2xi32>, tensor<1x8xi32>)
  return
}

// -----

// assign: positions shape
func.func @f(%i: tensor<4x2xi32>) {
  // expected-error @+1 {{positions result has shape [4, 1], expected [4, 2]}}
  %p, %c = moe.assign %i experts = 8 : (tensor<4x2xi32>) -> (tensor<4x1xi32>, tensor<1x8xi32>)
  return
}

// -----

// dispatch: D
func.func @f(%x: tensor<4x32xf32>, %p: tensor<4x2xi32>) {
  // expected-error @+1 {{buffer rows have 16 elements but tokens have D = 32}}
  %0 = moe.dispatch %x, %p : (tensor<4x32xf32>, tensor<4x2xi32>) -> tensor<8x16xf32>
  return
}

// -----

// dispatch: tokens
func.func @f(%x: tensor<4x32xf32>, %p: tensor<8x2xi32>) {
  // expected-error @+1 {{positions are for 8 tokens but the input has 4}}
  %0 = moe.dispatch %x, %p : (tensor<4x32xf32>, tensor<8x2xi32>) -> tensor<8x32xf32>
  return
}

// -----

// dispatch: element type
func.func @f(%x: tensor<4x32xf32>, %p: tensor<4x2xi32>) {
  // expected-error @+1 {{input element type 'f32' differs from result element type 'bf16'}}
  %0 = moe.dispatch %x, %p : (tensor<4x32xf32>, tensor<4x2xi32>) -> tensor<8x32xbf16>
  return
}

// -----

// expert_ffn: packed needs counts
func.func @f(%x: tensor<8x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{packed (2-D) input needs counts}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<8x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// expert_ffn: capacity experts
func.func @f(%x: tensor<2x4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{capacity buffer has 2 experts but the weights have 4}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<2x4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<2x4x32xf32>
  return
}

// -----

// expert_ffn_prepare: the weights of moe.expert_ffn (a gated act needs its
// gate, down is [E, D, F]).
func.func @f(%u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{activation 'swiglu' needs the gate weight}}
  moe.expert_ffn_prepare up %u down %d act = swiglu : tensor<4x16x32xf32>, tensor<4x32x16xf32>
  return
}

// -----

func.func @f(%u: tensor<4x16x32xf32>, %d: tensor<4x16x32xf32>) {
  // expected-error @+1 {{down weight}}
  moe.expert_ffn_prepare up %u down %d act = relu : tensor<4x16x32xf32>, tensor<4x16x32xf32>
  return
}

// -----

// expert_ffn: gated act needs gate
func.func @f(%x: tensor<4x4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{activation 'swiglu' needs the gate weight}}
  %0 = moe.expert_ffn %x up %u down %d act = swiglu : (tensor<4x4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: plain act takes no gate
func.func @f(%x: tensor<4x4x32xf32>, %g: tensor<4x16x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{activation 'gelu' takes no gate weight}}
  %0 = moe.expert_ffn %x gate %g up %u down %d act = gelu : (tensor<4x4x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: up D
func.func @f(%x: tensor<4x4x32xf32>, %u: tensor<4x16x8xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{up weight has shape [4, 16, 8], expected [4, 16, 32]}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<4x4x32xf32>, tensor<4x16x8xf32>, tensor<4x32x16xf32>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: down shape
func.func @f(%x: tensor<4x4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x8xf32>) {
  // expected-error @+1 {{down weight has shape [4, 32, 8], expected [4, 32, 16]}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<4x4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x8xf32>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: gate shape
func.func @f(%x: tensor<4x4x32xf32>, %g: tensor<4x8x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{gate weight has shape [4, 8, 32], expected [4, 16, 32]}}
  %0 = moe.expert_ffn %x gate %g up %u down %d act = swiglu : (tensor<4x4x32xf32>, tensor<4x8x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: counts experts
func.func @f(%x: tensor<8x32xf32>, %c: tensor<1x2xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{counts have 2 experts but the weights have 4}}
  %0 = moe.expert_ffn %x counts %c up %u down %d act = relu : (tensor<8x32xf32>, tensor<1x2xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// expert_ffn: capacity rows per segment
func.func @f(%x: tensor<4x5x32xf32>, %c: tensor<2x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{capacity rows per expert (5) are not divisible by the 2 count segments}}
  %0 = moe.expert_ffn %x counts %c up %u down %d act = relu : (tensor<4x5x32xf32>, tensor<2x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<4x5x32xf32>
  return
}

// -----

// expert_ffn: weight element type
func.func @f(%x: tensor<4x4x32xf32>, %u: tensor<4x16x32xbf16>, %d: tensor<4x32x16xbf16>) {
  // expected-error @+1 {{input element type 'f32' differs from up weight element type 'bf16'}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<4x4x32xf32>, tensor<4x16x32xbf16>, tensor<4x32x16xbf16>) -> tensor<4x4x32xf32>
  return
}

// -----

// expert_ffn: result type
func.func @f(%x: tensor<4x4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{result type 'tensor<16x32xf32>' differs from input type 'tensor<4x4x32xf32>'}}
  %0 = moe.expert_ffn %x up %u down %d act = relu : (tensor<4x4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<16x32xf32>
  return
}

// -----

// combine: weights shape
func.func @f(%y: tensor<8x32xf32>, %p: tensor<4x2xi32>, %w: tensor<4x1xf32>) {
  // expected-error @+1 {{weights has shape [4, 1], expected [4, 2]}}
  %0 = moe.combine %y, %p, %w : (tensor<8x32xf32>, tensor<4x2xi32>, tensor<4x1xf32>) -> tensor<4x32xf32>
  return
}

// -----

// combine: result shape
func.func @f(%y: tensor<8x32xf32>, %p: tensor<4x2xi32>, %w: tensor<4x2xf32>) {
  // expected-error @+1 {{result has shape [8, 32], expected [4, 32]}}
  %0 = moe.combine %y, %p, %w : (tensor<8x32xf32>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<8x32xf32>
  return
}

// -----

// combine: element type
func.func @f(%y: tensor<8x32xf32>, %p: tensor<4x2xi32>, %w: tensor<4x2xf32>) {
  // expected-error @+1 {{input element type 'f32' differs from result element type 'bf16'}}
  %0 = moe.combine %y, %p, %w : (tensor<8x32xf32>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<4x32xbf16>
  return
}

// -----

// combine: passthrough shape
func.func @f(%y: tensor<8x32xf32>, %p: tensor<4x2xi32>, %w: tensor<4x2xf32>, %x: tensor<4x16xf32>) {
  // expected-error @+1 {{passthrough has shape [4, 16], expected [4, 32]}}
  %0 = moe.combine %y, %p, %w passthrough %x : (tensor<8x32xf32>, tensor<4x2xi32>, tensor<4x2xf32>, tensor<4x16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// mlp: gated act needs gate
func.func @f(%x: tensor<4x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>) {
  // expected-error @+1 {{activation 'geglu' needs the gate weight}}
  %0 = moe.mlp %x up %u down %d act = geglu : (tensor<4x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// mlp: down shape
func.func @f(%x: tensor<4x32xf32>, %u: tensor<16x32xf32>, %d: tensor<16x32xf32>) {
  // expected-error @+1 {{down weight has shape [16, 32], expected [32, 16]}}
  %0 = moe.mlp %x up %u down %d act = relu : (tensor<4x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<4x32xf32>
  return
}

// -----

// mlp: sigmoid gate shape
func.func @f(%x: tensor<4x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>, %s: tensor<32x1xf32>) {
  // expected-error @+1 {{sigmoid gate has shape [32, 1], expected [1, 32]}}
  %0 = moe.mlp %x up %u down %d sigmoid_gate %s act = relu : (tensor<4x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<32x1xf32>) -> tensor<4x32xf32>
  return
}

// -----

// mlp: result type
func.func @f(%x: tensor<4x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>) {
  // expected-error @+1 {{result type 'tensor<4x16xf32>' differs from input type 'tensor<4x32xf32>'}}
  %0 = moe.mlp %x up %u down %d act = relu : (tensor<4x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<4x16xf32>
  return
}

// -----

// expert_load: tokens
func.func @f(%s: tensor<4x8xf32>, %i: tensor<2x2xi32>) {
  // expected-error @+1 {{indices are for 2 tokens but scores for 4}}
  %0 = moe.expert_load %s, %i : (tensor<4x8xf32>, tensor<2x2xi32>) -> tensor<2x8xf32>
  return
}

// -----

// expert_load: result shape
func.func @f(%s: tensor<4x8xf32>, %i: tensor<4x2xi32>) {
  // expected-error @+1 {{result has shape [2, 4], expected [2, 8]}}
  %0 = moe.expert_load %s, %i : (tensor<4x8xf32>, tensor<4x2xi32>) -> tensor<2x4xf32>
  return
}

// -----

// load_balance_loss: stats
func.func @f(%s: tensor<3x8xf32>) {
  // expected-error @+1 {{stats have shape [3, 8], expected [2, E] (counts and score sums)}}
  %0 = moe.load_balance_loss %s tokens = 4 k = 2 coeff = 0.01 : (tensor<3x8xf32>) -> tensor<f32>
  return
}

// -----

// load_balance_loss: tokens positive (ODS)
func.func @f(%s: tensor<2x8xf32>) {
  // expected-error @+1 {{attribute 'tokens' failed to satisfy constraint: 64-bit signless integer attribute whose value is positive}}
  %0 = moe.load_balance_loss %s tokens = 0 k = 2 coeff = 0.01 : (tensor<2x8xf32>) -> tensor<f32>
  return
}

// -----

// z_loss: tokens
func.func @f(%l: tensor<4x8xf32>) {
  // expected-error @+1 {{tokens (2) is less than the 4 tokens of the logits}}
  %0 = moe.z_loss %l tokens = 2 coeff = 0.001 : (tensor<4x8xf32>) -> tensor<f32>
  return
}

// -----

// layer: top_k > experts
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{top_k (5) exceeds the number of experts (4)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 5 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: router weight
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<8x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{router weight has shape [8, 32], expected [4, 32]}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<8x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: bias
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %b: tensor<8xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{bias has shape [8], expected [4]}}
  %y = moe.layer %x router %wr bias %b up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<8xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: experts in weights
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<2x16x32xf32>, %d: tensor<2x32x16xf32>) {
  // expected-error @+1 {{expert weights hold 2 experts but num_experts is 4}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<2x16x32xf32>, tensor<2x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: gated activation needs gate
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{activation 'swiglu' needs the expert gate weight}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation swiglu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: expert down shape
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x16x32xf32>) {
  // expected-error @+1 {{expert down weight has shape [4, 16, 32], expected [4, 32, 16]}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: groups divide experts
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{num_groups (3) does not divide the number of experts (4)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, num_groups = 3 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: groups kept
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{groups_kept (3) exceeds num_groups (2)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, num_groups = 2 : i64, groups_kept = 3 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: top_k selectable
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{top_k (3) exceeds the 2 experts selectable in 1 kept groups}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 3 : i64, num_groups = 2 : i64, groups_kept = 1 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: top2_sum
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{group score 'top2_sum' needs at least 2 experts per group, got 1}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, num_groups = 4 : i64, groups_kept = 2 : i64, group_score = #moe<group_score top2_sum>, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: routed scaling
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{routed_scaling (-1.000000e+00) must be positive}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, routed_scaling = -1.0 : f32, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: capacity factor
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{capacity_factor (-1.000000e+00) must be >= 0 (0 = dropless)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, capacity_factor = -1.0 : f32, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: capacity factor NaN
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{capacity_factor (nan) must be >= 0 (0 = dropless)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, capacity_factor = 0x7FC00000 : f32, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: token groups divide tokens
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{token_groups (3) does not divide the number of tokens (8)}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, capacity_factor = 1.0 : f32, token_groups = 3 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: dropless has no token groups
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{token_groups (2) needs a capacity: dropless routing has no token groups}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, token_groups = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: passthrough needs capacity
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{drop_policy 'passthrough' needs a capacity}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 1 : i64, drop_policy = #moe<drop_policy passthrough>, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared count without weights
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{num_shared_experts is 1 but shared up/down weights are missing}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared weights without count
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>) {
  // expected-error @+1 {{shared expert weights given but num_shared_experts is 0}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared weights shape
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<16x32xf32>) {
  // expected-error @+1 {{shared down weight has shape [16, 32], expected [32, 16]}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared intermediate
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>) {
  // expected-error @+1 {{shared_intermediate (8) differs from the shared weights' 16 rows}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 2 : i64, shared_intermediate = 8 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared_gated needs its weight
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>) {
  // expected-error @+1 {{shared_gated needs a shared_sigmoid_gate weight}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, shared_gated, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: sigmoid gate without shared_gated
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>, %g: tensor<1x32xf32>) {
  // expected-error @+1 {{shared_sigmoid_gate given without shared_gated}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd shared_sigmoid_gate %g {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: shared_gated without shared experts
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %g: tensor<1x32xf32>) {
  // expected-error @+1 {{shared_gated without shared experts}}
  %y = moe.layer %x router %wr up %u down %d shared_sigmoid_gate %g {num_experts = 4 : i64, top_k = 2 : i64, shared_gated, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<1x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: sigmoid gate shape
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %su: tensor<16x32xf32>, %sd: tensor<32x16xf32>, %g: tensor<2x32xf32>) {
  // expected-error @+1 {{shared sigmoid gate has shape [2, 32], expected [1, 32]}}
  %y = moe.layer %x router %wr up %u down %d shared_up %su shared_down %sd shared_sigmoid_gate %g {num_experts = 4 : i64, top_k = 2 : i64, num_shared_experts = 1 : i64, shared_intermediate = 16 : i64, shared_gated, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<2x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: loss results
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{has 0 loss results but 1 loss coefficients are non-zero}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, aux_loss_coeff = 0.01 : f32, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<8x32xf32>
  return
}

// -----

// layer: result type
func.func @f(%x: tensor<8x32xf32>, %wr: tensor<4x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{result type 'tensor<4x32xf32>' differs from input type 'tensor<8x32xf32>'}}
  %y = moe.layer %x router %wr up %u down %d {num_experts = 4 : i64, top_k = 2 : i64, activation = #moe<activation relu>} : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> tensor<4x32xf32>
  return
}

// -----

// collective: mesh must exist
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{refers to @nomesh, which is not a moe.mesh}}
  %0 = moe.all_reduce %x on @nomesh ["tp"] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// collective: axes non-empty
moe.mesh @mesh axes = ["ep", "tp"] shape = [2, 2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{names no mesh axes}}
  %0 = moe.all_reduce %x on @mesh [] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// collective: axis exists
moe.mesh @mesh axes = ["ep", "tp"] shape = [2, 2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{axis 'dp' is not an axis of @mesh}}
  %0 = moe.all_reduce %x on @mesh ["dp"] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// collective: axes distinct
moe.mesh @mesh axes = ["ep", "tp"] shape = [2, 2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{axis 'tp' appears twice}}
  %0 = moe.all_reduce %x on @mesh ["tp", "tp"] : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// all_to_all: dims valid
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{split (2) and concat (0) must be dimensions of the rank-2 input}}
  %0 = moe.all_to_all %x on @mesh ["ep"] split = 2 concat = 0 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// all_to_all: split divisible
moe.mesh @mesh axes = ["ep"] shape = [4]
func.func @f(%x: tensor<6x32xf32>) {
  // expected-error @+1 {{split dimension 0 (6) is not divisible by the group size (4)}}
  %0 = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<6x32xf32>) -> tensor<6x32xf32>
  return
}

// -----

// all_to_all: result shape
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x4x32xf32>) {
  // expected-error @+1 {{result has shape [8, 4, 32], expected [4, 8, 32]}}
  %0 = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<8x4x32xf32>
  return
}

// -----

// all_to_all_start: result shape
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x4x32xf32>) {
  // expected-error @+1 {{result has shape [4, 4, 32], expected [4, 8, 32]}}
  %0 = moe.all_to_all_start %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> !moe.future<tensor<4x4x32xf32>>
  return
}

// -----

// all_to_all: element type
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x4x32xf32>) {
  // expected-error @+1 {{result element type 'bf16' differs from input element type 'f32'}}
  %0 = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x4x32xf32>) -> tensor<4x8x32xbf16>
  return
}

// -----

// all_to_all_v: result rows
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x32xf32>, %s: tensor<1x4xi32>, %r: tensor<2x2xi32>) {
  // expected-error @+1 {{result has shape [16, 16], expected [rows, 32]}}
  %0 = moe.all_to_all_v %x, %s, %r on @mesh ["ep"] : (tensor<8x32xf32>, tensor<1x4xi32>, tensor<2x2xi32>) -> tensor<16x16xf32>
  return
}

// -----

// all_to_all_v: element type
moe.mesh @mesh axes = ["ep"] shape = [2]
func.func @f(%x: tensor<8x32xf32>, %s: tensor<1x4xi32>, %r: tensor<2x2xi32>) {
  // expected-error @+1 {{result element type 'f16' differs from input element type 'f32'}}
  %0 = moe.all_to_all_v %x, %s, %r on @mesh ["ep"] : (tensor<8x32xf32>, tensor<1x4xi32>, tensor<2x2xi32>) -> tensor<16x32xf16>
  return
}

// -----

// all_to_all_v: counts split over the group
moe.mesh @mesh axes = ["ep"] shape = [4]
func.func @f(%x: tensor<8x32xf32>, %s: tensor<1x6xi32>, %r: tensor<4x2xi32>) {
  // expected-error @+1 {{send_counts has 6 elements, which do not split evenly over the group of 4 ranks}}
  %0 = moe.all_to_all_v %x, %s, %r on @mesh ["ep"] : (tensor<8x32xf32>, tensor<1x6xi32>, tensor<4x2xi32>) -> tensor<32x32xf32>
  return
}

// -----

// all_gather: dim valid
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{dim (-1) is not a dimension of the rank-2 input}}
  %0 = moe.all_gather %x on @mesh ["tp"] dim = -1 : (tensor<8x32xf32>) -> tensor<8x32xf32>
  return
}

// -----

// all_gather: result shape
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{result has shape [8, 64], expected [16, 32]}}
  %0 = moe.all_gather %x on @mesh ["tp"] dim = 0 : (tensor<8x32xf32>) -> tensor<8x64xf32>
  return
}

// -----

// all_gather: element type
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{result element type 'i32' differs from input element type 'f32'}}
  %0 = moe.all_gather %x on @mesh ["tp"] dim = 0 : (tensor<8x32xf32>) -> tensor<16x32xi32>
  return
}

// -----

// reduce_scatter: divisible
moe.mesh @mesh axes = ["tp"] shape = [4]
func.func @f(%x: tensor<6x32xf32>) {
  // expected-error @+1 {{dimension 0 (6) is not divisible by the group size (4)}}
  %0 = moe.reduce_scatter %x on @mesh ["tp"] dim = 0 : (tensor<6x32xf32>) -> tensor<1x32xf32>
  return
}

// -----

// reduce_scatter_start: result shape
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{result has shape [8, 32], expected [4, 32]}}
  %0 = moe.reduce_scatter_start %x on @mesh ["tp"] dim = 0 : (tensor<8x32xf32>) -> !moe.future<tensor<8x32xf32>>
  return
}

// -----

// slice: divisible
moe.mesh @mesh axes = ["tp"] shape = [4]
func.func @f(%x: tensor<8x30xf32>) {
  // expected-error @+1 {{dimension 1 (30) is not divisible by the group size (4)}}
  %0 = moe.slice %x on @mesh ["tp"] dim = 1 : (tensor<8x30xf32>) -> tensor<8x7xf32>
  return
}

// -----

// all_reduce: same type
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{result type 'tensor<8x16xf32>' differs from input type 'tensor<8x32xf32>'}}
  %0 = moe.all_reduce %x on @mesh ["tp"] : (tensor<8x32xf32>) -> tensor<8x16xf32>
  return
}

// -----

// all_reduce_start: same type
moe.mesh @mesh axes = ["tp"] shape = [2]
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{result type 'tensor<4x32xf32>' differs from input type 'tensor<8x32xf32>'}}
  %0 = moe.all_reduce_start %x on @mesh ["tp"] : (tensor<8x32xf32>) -> !moe.future<tensor<4x32xf32>>
  return
}

// -----

// collective start: symbol checked too
func.func @f(%x: tensor<8x32xf32>) {
  // expected-error @+1 {{refers to @nomesh, which is not a moe.mesh}}
  %0 = moe.all_gather_start %x on @nomesh ["tp"] dim = 0 : (tensor<8x32xf32>) -> !moe.future<tensor<16x32xf32>>
  return
}

// -----

// chunk: the index is one of the chunks
func.func @f(%x: tensor<8x16x32xf32>) {
  // expected-error @+1 {{index 4 is not in [0, chunks = 4)}}
  %0 = moe.chunk %x dim = 1 index = 4 chunks = 4 : (tensor<8x16x32xf32>) -> tensor<8x4x32xf32>
  return
}

// -----

// chunk: the dimension divides into the chunks
func.func @f(%x: tensor<8x16x32xf32>) {
  // expected-error @+1 {{dimension 1 of the input (16) does not divide into 3 chunks}}
  %0 = moe.chunk %x dim = 1 index = 0 chunks = 3 : (tensor<8x16x32xf32>) -> tensor<8x5x32xf32>
  return
}

// -----

// chunk: the dimension exists
func.func @f(%x: tensor<8x16x32xf32>) {
  // expected-error @+1 {{dim 3 is out of range for the input of rank 3}}
  %0 = moe.chunk %x dim = 3 index = 0 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x16x32xf32>
  return
}

// -----

// chunk: the result has the chunk's shape
func.func @f(%x: tensor<8x16x32xf32>) {
  // expected-error @+1 {{result has shape [8, 16, 16], expected [8, 8, 32]}}
  %0 = moe.chunk %x dim = 1 index = 0 chunks = 2 : (tensor<8x16x32xf32>) -> tensor<8x16x16xf32>
  return
}

// -----

// interleave: the inputs are chunks of the result
func.func @f(%a: tensor<8x4x32xf32>, %b: tensor<8x4x32xf32>) {
  // expected-error @+1 {{input has shape [8, 4, 32], expected [8, 8, 32]}}
  %0 = moe.interleave %a, %b dim = 1 : (tensor<8x4x32xf32>, tensor<8x4x32xf32>) -> tensor<8x16x32xf32>
  return
}

// -----

// interleave: the inputs have one type
func.func @f(%a: tensor<8x4x32xf32>, %b: tensor<8x4x16xf32>) {
  // expected-error @+1 {{inputs differ in type: 'tensor<8x4x32xf32>' and 'tensor<8x4x16xf32>'}}
  %0 = moe.interleave %a, %b dim = 1 : (tensor<8x4x32xf32>, tensor<8x4x16xf32>) -> tensor<8x8x32xf32>
  return
}

// -----

// regroup: the counts' rows divide into the groups
func.func @f(%a: tensor<16x32xf32>, %c: tensor<2x6xi32>) {
  // expected-error @+1 {{counts have 6 entries per row, not divisible by groups = 4}}
  %0, %1 = moe.regroup %a, %c groups = 4 : (tensor<16x32xf32>, tensor<2x6xi32>) -> (tensor<16x32xf32>, tensor<4x3xi32>)
  return
}

// -----

// regroup: new_counts is the counts' block transpose [G, A*K]
func.func @f(%a: tensor<16x32xf32>, %c: tensor<2x8xi32>) {
  // expected-error @+1 {{new_counts}}
  %0, %1 = moe.regroup %a, %c groups = 4 : (tensor<16x32xf32>, tensor<2x8xi32>) -> (tensor<16x32xf32>, tensor<2x8xi32>)
  return
}

// -----

// regroup: the rows keep their type
func.func @f(%a: tensor<16x32xf32>, %c: tensor<2x8xi32>) {
  // expected-error @+1 {{result type 'tensor<8x32xf32>' differs from the input type 'tensor<16x32xf32>'}}
  %0, %1 = moe.regroup %a, %c groups = 4 : (tensor<16x32xf32>, tensor<2x8xi32>) -> (tensor<8x32xf32>, tensor<4x4xi32>)
  return
}

// -----

// check_recv_bound: the counts of n ranks of n ranks each
func.func @f(%c: tensor<12x2xi32>) {
  // expected-error @+1 {{counts have 12 rows, not n x n for a group of n ranks}}
  moe.check_recv_bound %c bound = 10 : tensor<12x2xi32>
  return
}

// -----

// chunk_counts: the index is one of the chunks
func.func @f(%c: tensor<1x8xi32>) {
  // expected-error @+1 {{index 2 is not in [0, chunks = 2)}}
  %0 = moe.chunk_counts %c index = 2 chunks = 2 : (tensor<1x8xi32>) -> tensor<1x8xi32>
  return
}

// -----

// chunk_counts: one count per count
func.func @f(%c: tensor<1x8xi32>) {
  // expected-error @+1 {{result type 'tensor<2x4xi32>' differs from the counts' 'tensor<1x8xi32>'}}
  %0 = moe.chunk_counts %c index = 0 chunks = 2 : (tensor<1x8xi32>) -> tensor<2x4xi32>
  return
}

// -----

// chunk_rows: the result has the worst-case rows of a chunk,
// min(64, (64 + 8 * (2 - 1)) / 2) = 36
func.func @f(%b: tensor<64x32xf32>, %c: tensor<1x8xi32>) {
  // expected-error @+1 {{result has shape [32, 32], expected [36, 32]}}
  %0 = moe.chunk_rows %b, %c index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<32x32xf32>
  return
}

// -----

// chunk_rows: positive chunks
func.func @f(%b: tensor<64x32xf32>, %c: tensor<1x8xi32>) {
  // expected-error @+1 {{chunks (0) must be positive}}
  %0 = moe.chunk_rows %b, %c index = 0 chunks = 0 : (tensor<64x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
  return
}

// -----

// chunk_rows: counts of a static shape
func.func @f(%b: tensor<64x32xf32>, %c: tensor<?x8xi32>) {
  // expected-error @+1 {{needs counts of a static shape}}
  %0 = moe.chunk_rows %b, %c index = 0 chunks = 2 : (tensor<64x32xf32>, tensor<?x8xi32>) -> tensor<36x32xf32>
  return
}

// -----

// join_rows: the inputs are chunks of the result
func.func @f(%a: tensor<36x32xf32>, %b: tensor<36x16xf32>, %c: tensor<1x8xi32>) {
  // expected-error @+1 {{input has shape [36, 16], expected [36, 32]}}
  %0 = moe.join_rows %a, %b counts %c : (tensor<36x32xf32>, tensor<36x16xf32>, tensor<1x8xi32>) -> tensor<64x32xf32>
  return
}

// -----

// join_rows: one element type
func.func @f(%a: tensor<36x32xf32>, %b: tensor<36x32xf32>, %c: tensor<1x8xi32>) {
  // expected-error @+1 {{element type}}
  %0 = moe.join_rows %a, %b counts %c : (tensor<36x32xf32>, tensor<36x32xf32>, tensor<1x8xi32>) -> tensor<64x32xf16>
  return
}
