// RUN: moe-opt %s -split-input-file -verify-diagnostics

// The verifiers of the gradient, loss and optimizer ops (MoETrainOps.td): one
// case per rule, in op order.

func.func @f(%x: tensor<8x32xf32>, %n: tensor<16xf32>, %dy: tensor<8x32xf32>) {
  // expected-error @+1 {{weight has shape [16], expected [32]}}
  %0:2 = moe.rmsnorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<16xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<4x32xf32>) {
  // expected-error @+1 {{dout type 'tensor<4x32xf32>' differs from input type 'tensor<8x32xf32>'}}
  %0:2 = moe.rmsnorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<4x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<8x32xf32>) {
  // expected-error @+1 {{eps (0.000000e+00) must be positive}}
  %0:2 = moe.rmsnorm_grad %x, %n, %dy {eps = 0.0 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %w: tensor<4x32xf32>, %dl: tensor<8x5xf32>) {
  // expected-error @+1 {{dlogits has shape [8, 5], expected [8, 4]}}
  %0:2 = moe.router_grad %x, %w, %dl : (tensor<8x32xf32>, tensor<4x32xf32>, tensor<8x5xf32>) -> (tensor<8x32xf32>, tensor<4x32xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %w: tensor<4x16xf32>, %dl: tensor<8x4xf32>) {
  // expected-error @+1 {{router weight has 16 columns but tokens have D = 32}}
  %0:2 = moe.router_grad %x, %w, %dl : (tensor<8x32xf32>, tensor<4x16xf32>, tensor<8x4xf32>) -> (tensor<8x32xf32>, tensor<4x16xf32>)
  return
}

// -----

func.func @f(%l: tensor<8x4xf32>, %i: tensor<8x2xi32>, %dw: tensor<8x3xf32>) {
  // expected-error @+1 {{dweights has shape [8, 3], expected [8, 2]}}
  %0 = moe.topk_grad %l, %i, %dw score = softmax : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x3xf32>) -> tensor<8x4xf32>
  return
}

// -----

func.func @f(%l: tensor<8x4xf32>, %i: tensor<8x2xi32>, %dw: tensor<8x2xf32>, %ds: tensor<8x5xf32>) {
  // expected-error @+1 {{dscores type 'tensor<8x5xf32>' differs from logits type 'tensor<8x4xf32>'}}
  %0 = moe.topk_grad %l, %i, %dw dscores %ds score = softmax : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x5xf32>) -> tensor<8x4xf32>
  return
}

// -----

func.func @f(%l: tensor<8x4xf32>, %i: tensor<8x2xi32>, %dw: tensor<8x2xf32>) {
  // expected-error @+1 {{routed_scaling (0.000000e+00) must be positive}}
  %0 = moe.topk_grad %l, %i, %dw score = softmax {routed_scaling = 0.0 : f32} : (tensor<8x4xf32>, tensor<8x2xi32>, tensor<8x2xf32>) -> tensor<8x4xf32>
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %p: tensor<4x2xi32>) {
  // expected-error @+1 {{positions are for 4 tokens but dinput has 8}}
  %0 = moe.dispatch_grad %b, %p : (tensor<16x32xf32>, tensor<4x2xi32>) -> tensor<8x32xf32>
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %p: tensor<8x2xi32>) {
  // expected-error @+1 {{buffer rows have 32 elements but dinput has D = 16}}
  %0 = moe.dispatch_grad %b, %p : (tensor<16x32xf32>, tensor<8x2xi32>) -> tensor<8x16xf32>
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %p: tensor<8x2xi32>, %w: tensor<8x2xf32>, %dy: tensor<8x16xf32>) {
  // expected-error @+1 {{dout has shape [8, 16], expected [8, 32]}}
  %0:2 = moe.combine_grad %b, %p, %w, %dy : (tensor<16x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x16xf32>) -> (tensor<16x32xf32>, tensor<8x2xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %p: tensor<8x2xi32>, %w: tensor<8x2xf32>, %dy: tensor<8x32xf32>) {
  // expected-error @+1 {{dinput type 'tensor<8x32xf32>' differs from input type 'tensor<16x32xf32>'}}
  %0:2 = moe.combine_grad %b, %p, %w, %dy : (tensor<16x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<8x2xf32>)
  return
}

// -----

func.func @f(%b: tensor<4x4x32xf32>, %p: tensor<8x2xi32>, %w: tensor<8x2xf32>, %x: tensor<8x32xf32>) {
  // expected-error @+1 {{has a passthrough operand but no dpassthrough result}}
  %0:2 = moe.combine_grad %b, %p, %w passthrough %x, %x : (tensor<4x4x32xf32>, tensor<8x2xi32>, tensor<8x2xf32>, tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<4x4x32xf32>, tensor<8x2xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{packed (2-D) input needs counts}}
  %0:3 = moe.expert_ffn_grad %b up %u down %d, %b act = relu : (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{activation 'swiglu' needs the gate weight}}
  %0:3 = moe.expert_ffn_grad %b counts %c up %u down %d, %b act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{ddown type 'tensor<4x16x32xf32>' differs from down weight type 'tensor<4x32x16xf32>'}}
  %0:3 = moe.expert_ffn_grad %b counts %c up %u down %d, %b act = relu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>, %s: tensor<1x32xf32>) {
  // expected-error @+1 {{has a sigmoid gate but no dsigmoid_gate result}}
  %0:3 = moe.mlp_grad %x up %u down %d sigmoid_gate %s, %x act = relu {resultSegmentSizes = array<i32: 1, 0, 1, 1, 0>} : (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<1x32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %u: tensor<16x32xf32>, %d: tensor<32x16xf32>, %dy: tensor<8x16xf32>) {
  // expected-error @+1 {{dout type 'tensor<8x16xf32>' differs from input type 'tensor<8x32xf32>'}}
  %0:3 = moe.mlp_grad %x up %u down %d, %dy act = relu {resultSegmentSizes = array<i32: 1, 0, 1, 1, 0>} : (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>, tensor<8x16xf32>) -> (tensor<8x32xf32>, tensor<16x32xf32>, tensor<32x16xf32>)
  return
}

// -----

func.func @f(%s: tensor<3x4xf32>) {
  // expected-error @+1 {{dstats have shape [3, 4], expected [2, E]}}
  %0 = moe.expert_load_grad %s : (tensor<3x4xf32>) -> tensor<8x4xf32>
  return
}

// -----

func.func @f(%s: tensor<2x4xf32>) {
  // expected-error @+1 {{dscores have 5 experts but dstats have 4}}
  %0 = moe.expert_load_grad %s : (tensor<2x4xf32>) -> tensor<8x5xf32>
  return
}

// -----

func.func @f(%s: tensor<3x4xf32>, %l: tensor<f32>) {
  // expected-error @+1 {{stats have shape [3, 4], expected [2, E] (counts and score sums)}}
  %0 = moe.load_balance_loss_grad %s, %l tokens = 8 k = 2 coeff = 0.01 : (tensor<3x4xf32>, tensor<f32>) -> tensor<3x4xf32>
  return
}

// -----

func.func @f(%lg: tensor<8x4xf32>, %l: tensor<f32>) {
  // expected-error @+1 {{dlogits type 'tensor<8x5xf32>' differs from logits type 'tensor<8x4xf32>'}}
  %0 = moe.z_loss_grad %lg, %l tokens = 8 coeff = 0.01 : (tensor<8x4xf32>, tensor<f32>) -> tensor<8x5xf32>
  return
}

// -----

func.func @f(%y: tensor<8x32xf32>, %t: tensor<8x16xf32>) {
  // expected-error @+1 {{target type 'tensor<8x16xf32>' differs from output type 'tensor<8x32xf32>'}}
  %0:2 = moe.mse_loss %y, %t total = 256 : (tensor<8x32xf32>, tensor<8x16xf32>) -> (tensor<1xf32>, tensor<8x32xf32>)
  return
}

// -----

func.func @f(%y: tensor<8x32xf32>, %t: tensor<8x32xf32>) {
  // expected-error @+1 {{total (100) is less than the 256 elements of this rank's output}}
  %0:2 = moe.mse_loss %y, %t total = 100 : (tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<1xf32>, tensor<8x32xf32>)
  return
}

// -----

func.func @f(%y: tensor<8x32xf32>, %t: tensor<8x32xf32>) {
  // expected-error @+1 {{loss has shape [2], expected [1]}}
  %0:2 = moe.mse_loss %y, %t total = 256 : (tensor<8x32xf32>, tensor<8x32xf32>) -> (tensor<2xf32>, tensor<8x32xf32>)
  return
}

// -----

func.func @f(%w: tensor<4x8xf32>, %g: tensor<8x4xf32>, %hp: tensor<8xf32>) {
  // expected-error @+1 {{grad type 'tensor<8x4xf32>' differs from weight type 'tensor<4x8xf32>'}}
  %0:3 = moe.adamw %w, %g, %w, %w, %hp : (tensor<4x8xf32>, tensor<8x4xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

func.func @f(%w: tensor<4x8xf32>, %hp: tensor<7xf32>) {
  // expected-error @+1 {{hparams has shape [7], expected [8]}}
  %0:3 = moe.adamw %w, %w, %w, %w, %hp : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<7xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>)
  return
}

// -----

func.func @f(%w: tensor<4x8xbf16>, %hp: tensor<8xf32>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of 32-bit float values}}
  %0:3 = moe.adamw %w, %w, %w, %w, %hp : (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<8xf32>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x8xbf16>)
  return
}

// -----

func.func @f(%w: tensor<4x8xf32>, %b: tensor<8x4xf32>, %hp: tensor<8xf32>) {
  // expected-error @+1 {{momentum_buffer type 'tensor<8x4xf32>' differs from weight type 'tensor<4x8xf32>'}}
  %0:2 = moe.sgd %w, %w, %b, %hp : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<8x4xf32>, tensor<8xf32>) -> (tensor<4x8xf32>, tensor<8x4xf32>)
  return
}

// -----

func.func @f(%b: tensor<4xf32>, %l: tensor<5xf32>, %hp: tensor<8xf32>) {
  // expected-error @+1 {{load type 'tensor<5xf32>' differs from bias type 'tensor<4xf32>'}}
  %0 = moe.bias_update %b, %l, %hp tokens = 8 k = 2 : (tensor<4xf32>, tensor<5xf32>, tensor<8xf32>) -> tensor<4xf32>
  return
}

// -----

func.func @f(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{input [2, 3] has 6 elements but the result [4] has 4}}
  %0 = moe.reshape %x : (tensor<2x3xf32>) -> tensor<4xf32>
  return
}

// -----

func.func @f(%x: tensor<2x3xf32>) {
  // expected-error @+1 {{input element type 'f32' differs from result element type 'i32'}}
  %0 = moe.reshape %x : (tensor<2x3xf32>) -> tensor<6xi32>
  return
}

// -----

func.func @f(%s: tensor<2x4xf32>) {
  // expected-error @+1 {{result has shape [5], expected [4]}}
  %0 = moe.load_counts %s : (tensor<2x4xf32>) -> tensor<5xf32>
  return
}

// -----

func.func @f(%a: tensor<2x3xf32>, %b: tensor<4xf32>) {
  // expected-error @+1 {{buffer 'tensor<9xf32>' does not hold the 10 elements of the 2 tensors}}
  %0 = moe.pack %a, %b : (tensor<2x3xf32>, tensor<4xf32>) -> tensor<9xf32>
  return
}

// -----

func.func @f(%a: tensor<10xf32>) {
  // expected-error @+1 {{buffer 'tensor<10xf32>' does not hold the 12 elements of the 2 tensors}}
  %0:2 = moe.unpack %a : (tensor<10xf32>) -> (tensor<2x4xf32>, tensor<4xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<8x32xf32>) {
  // expected-error @+1 {{dbias type 'tensor<16xf32>' differs from weight type 'tensor<32xf32>'}}
  %0:3 = moe.layernorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<8x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>, tensor<16xf32>)
  return
}

// -----

func.func @f(%x: tensor<8x32xf32>, %n: tensor<32xf32>, %dy: tensor<4x32xf32>) {
  // expected-error @+1 {{dout type 'tensor<4x32xf32>' differs from input type 'tensor<8x32xf32>'}}
  %0:2 = moe.layernorm_grad %x, %n, %dy {eps = 1.0e-6 : f32} : (tensor<8x32xf32>, tensor<32xf32>, tensor<4x32xf32>) -> (tensor<8x32xf32>, tensor<32xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %g: tensor<4x16x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %s: tensor<16x16xf32>) {
  // expected-error @+1 {{has a gate weight but no saved_a}}
  %0:4 = moe.expert_ffn_grad %b counts %c gate %g up %u down %d, %b saved_u %s act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<16x16xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %s: tensor<16x16xf32>) {
  // expected-error @+1 {{has saved_a but no saved_u}}
  %0:3 = moe.expert_ffn_grad %b counts %c up %u down %d, %b saved_a %s act = relu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<16x16xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %s: tensor<8x16xf32>) {
  // expected-error @+1 {{saved_u must be [16, 16] (rows of the buffer, F), got [8, 16]}}
  %0:3 = moe.expert_ffn_grad %b counts %c up %u down %d, %b saved_u %s act = relu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>, tensor<8x16xf32>) -> (tensor<16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{saved_u result must be [16, 16] (rows of the buffer, F), got [16, 32]}}
  %y, %s = moe.expert_ffn_train %b counts %c up %u down %d act = relu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<16x32xf32>, tensor<16x32xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %g: tensor<4x16x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{has a gate weight but no saved_a result}}
  %y, %s = moe.expert_ffn_train %b counts %c gate %g up %u down %d act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xbf16>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xbf16>, %d: tensor<4x32x16xbf16>) {
  // expected-error @+1 {{saves f32 activations: the input must be f32}}
  %y, %s = moe.expert_ffn_train %b counts %c up %u down %d act = relu : (tensor<16x32xbf16>, tensor<1x4xi32>, tensor<4x16x32xbf16>, tensor<4x32x16xbf16>) -> (tensor<16x32xbf16>, tensor<16x16xf32>)
  return
}

// -----

// moe.expert_ffn_grad_data / _weight (moe-overlap's split of expert_ffn_grad).
func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %g: tensor<4x16x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{has a gate weight but no dpre_gate result}}
  %0:3 = moe.expert_ffn_grad_data %b counts %c gate %g up %u down %d, %b act = swiglu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>) {
  // expected-error @+1 {{hidden has shape [16, 32], expected [16, 16]}}
  %0:3 = moe.expert_ffn_grad_data %b counts %c up %u down %d, %b act = relu : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<16x32xf32>) -> (tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<4x6x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %s: tensor<24x32xf32>) {
  // expected-error @+1 {{saved_u has shape [24, 32], expected [24, 16]}}
  %0:3 = moe.expert_ffn_grad_data %b up %u down %d, %b saved_u %s act = relu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>, tensor<24x32xf32>) -> (tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<4x6x32xf32>, %u: tensor<4x16x32xf32>, %d: tensor<4x32x16xf32>, %s: tensor<4x3x16xf32>) {
  // expected-error @+1 {{saved_u has shape [4, 3, 16], expected [4, 6, 16]}}
  %0:3 = moe.expert_ffn_grad_data %b up %u down %d, %b saved_u %s act = relu : (tensor<4x6x32xf32>, tensor<4x16x32xf32>, tensor<4x32x16xf32>, tensor<4x6x32xf32>, tensor<4x3x16xf32>) -> (tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf16>, %c: tensor<1x4xi32>, %u: tensor<4x16x32xf16>, %d: tensor<4x32x16xf16>) {
  // expected-error @+1 {{returns f32 row values: the input must be f32}}
  %0:3 = moe.expert_ffn_grad_data %b counts %c up %u down %d, %b act = relu : (tensor<16x32xf16>, tensor<1x4xi32>, tensor<4x16x32xf16>, tensor<4x32x16xf16>, tensor<16x32xf16>) -> (tensor<16x32xf16>, tensor<16x16xf32>, tensor<16x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %h: tensor<16x16xf32>) {
  // expected-error @+1 {{packed (2-D) input needs counts}}
  %0:2 = moe.expert_ffn_grad_weight %b, %b hidden %h dpre_up %h : (tensor<16x32xf32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %h: tensor<16x16xf32>, %e: tensor<8x16xf32>) {
  // expected-error @+1 {{dpre_up has shape [8, 16], expected [16, 16]}}
  %0:2 = moe.expert_ffn_grad_weight %b counts %c, %b hidden %h dpre_up %e : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<8x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<16x32xf32>, %c: tensor<1x4xi32>, %h: tensor<16x16xf32>) {
  // expected-error @+1 {{has a dpre_gate operand but no dgate result}}
  %0:2 = moe.expert_ffn_grad_weight %b counts %c, %b hidden %h dpre_up %h dpre_gate %h : (tensor<16x32xf32>, tensor<1x4xi32>, tensor<16x32xf32>, tensor<16x16xf32>, tensor<16x16xf32>, tensor<16x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x32x16xf32>)
  return
}

// -----

func.func @f(%b: tensor<4x6x32xf32>, %h: tensor<4x6x16xf32>) {
  // expected-error @+1 {{ddown has shape [4, 16, 32], expected [4, 32, 16]}}
  %0:2 = moe.expert_ffn_grad_weight %b, %b hidden %h dpre_up %h : (tensor<4x6x32xf32>, tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>) -> (tensor<4x16x32xf32>, tensor<4x16x32xf32>)
  return
}

// -----

func.func @f(%b: tensor<4x6x32xf32>, %h: tensor<4x6x16xf32>) {
  // expected-error @+1 {{dup has shape [2, 16, 32], expected [4, 16, 32]}}
  %0:2 = moe.expert_ffn_grad_weight %b, %b hidden %h dpre_up %h : (tensor<4x6x32xf32>, tensor<4x6x32xf32>, tensor<4x6x16xf32>, tensor<4x6x16xf32>) -> (tensor<2x16x32xf32>, tensor<4x32x16xf32>)
  return
}
