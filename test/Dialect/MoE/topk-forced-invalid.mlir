// RUN: moe-opt %s -split-input-file -verify-diagnostics
// The verifier rules of moe.topk_forced (routing replay).

// forced rows must be the logits' tokens
func.func @f(%l: tensor<4x8xf32>, %f: tensor<3x2xi32>) {
  // expected-error @+1 {{forced indices have 3 rows but the logits have 4 tokens}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x8xf32>, tensor<3x2xi32>) -> (tensor<3x2xf32>, tensor<3x2xi32>, tensor<3x8xf32>)
  return
}

// -----

// k <= E
func.func @f(%l: tensor<4x2xf32>, %f: tensor<4x3xi32>) {
  // expected-error @+1 {{the forced indices choose 3 experts per token, more than the 2 experts of the logits}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x2xf32>, tensor<4x3xi32>) -> (tensor<4x3xf32>, tensor<4x3xi32>, tensor<4x2xf32>)
  return
}

// -----

// forced indices are i32 (ODS)
func.func @f(%l: tensor<4x8xf32>, %f: tensor<4x2xi64>) {
  // expected-error @+1 {{operand #1 must be 2D tensor of 32-bit signless integer values}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x8xf32>, tensor<4x2xi64>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// routed_scaling > 0
func.func @f(%l: tensor<4x8xf32>, %f: tensor<4x2xi32>) {
  // expected-error @+1 {{routed_scaling (0.000000e+00) must be positive}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax {routed_scaling = 0.0 : f32} : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

// result shapes
func.func @f(%l: tensor<4x8xf32>, %f: tensor<4x2xi32>) {
  // expected-error @+1 {{weights result has shape [4, 3], expected [4, 2]}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x3xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return
}

// -----

func.func @f(%l: tensor<4x8xf32>, %f: tensor<4x2xi32>) {
  // expected-error @+1 {{scores result has shape [4, 7], expected [4, 8]}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x7xf32>)
  return
}
