// RUN: moe-opt %s -split-input-file -verify-diagnostics

// The token mask (spec.md 3.11): one case per verifier rule of its operands.

// mask_rows: one mask entry per row
func.func @f(%x: tensor<8x4xf32>, %m: tensor<6xi32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{token mask has 6 entries but the input has 8 rows}}
  %0 = moe.mask_rows %x, %m : (tensor<8x4xf32>, tensor<6xi32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}

// -----

// mask_rows: the result has the input's type
func.func @f(%x: tensor<8x4xi32>, %m: tensor<8xi32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{all of {input, output} have same type}}
  %0 = moe.mask_rows %x, %m : (tensor<8x4xi32>, tensor<8xi32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}

// -----

// mask_rows: the mask is i32
func.func @f(%x: tensor<8x4xf32>, %m: tensor<8xf32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{operand #1 must be 1D tensor of 32-bit signless integer values}}
  %0 = moe.mask_rows %x, %m : (tensor<8x4xf32>, tensor<8xf32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}

// -----

// token_count: a scalar
func.func @f(%m: tensor<8xi32>) -> tensor<1xf32> {
  // expected-error @+1 {{result #0 must be 0D tensor of 32-bit float values}}
  %0 = moe.token_count %m : (tensor<8xi32>) -> tensor<1xf32>
  return %0 : tensor<1xf32>
}

// -----

// z_loss: mask and count together
func.func @f(%l: tensor<8x4xf32>, %m: tensor<8xi32>) -> tensor<f32> {
  // expected-error @+1 {{has a token mask but no count}}
  %0 = moe.z_loss %l mask %m tokens = 8 coeff = 1.0e-3 : (tensor<8x4xf32>, tensor<8xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// z_loss: one mask entry per token
func.func @f(%l: tensor<8x4xf32>, %m: tensor<4xi32>, %c: tensor<f32>) -> tensor<f32> {
  // expected-error @+1 {{token mask has 4 entries but logits have 8 rows}}
  %0 = moe.z_loss %l mask %m count %c tokens = 8 coeff = 1.0e-3 : (tensor<8x4xf32>, tensor<4xi32>, tensor<f32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// z_loss_grad: count without a mask
func.func @f(%l: tensor<8x4xf32>, %d: tensor<f32>, %c: tensor<f32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{has a count but no token mask}}
  %0 = moe.z_loss_grad %l, %d count %c tokens = 8 coeff = 1.0e-3 : (tensor<8x4xf32>, tensor<f32>, tensor<f32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}

// -----

// mse_loss: one mask entry per row
func.func @f(%y: tensor<8x4xf32>, %t: tensor<8x4xf32>, %m: tensor<7xi32>, %c: tensor<f32>) -> tensor<1xf32> {
  // expected-error @+1 {{token mask has 7 entries but output have 8 rows}}
  %0:2 = moe.mse_loss %y, %t mask %m count %c total = 32 : (tensor<8x4xf32>, tensor<8x4xf32>, tensor<7xi32>, tensor<f32>) -> (tensor<1xf32>, tensor<8x4xf32>)
  return %0#0 : tensor<1xf32>
}

// -----

// layer: token_mask has one entry per token
func.func @f(%x: tensor<8x4xf32>, %wr: tensor<2x4xf32>, %wu: tensor<2x6x4xf32>, %wd: tensor<2x4x6xf32>, %m: tensor<16xi32>) -> tensor<8x4xf32> {
  // expected-error @+1 {{token_mask has 16 entries but the input has 8 tokens}}
  %0 = moe.layer %x router %wr up %wu down %wd token_mask %m {num_experts = 2 : i64, top_k = 1 : i64, activation = #moe<activation gelu>} : (tensor<8x4xf32>, tensor<2x4xf32>, tensor<2x6x4xf32>, tensor<2x4x6xf32>, tensor<16xi32>) -> tensor<8x4xf32>
  return %0 : tensor<8x4xf32>
}
