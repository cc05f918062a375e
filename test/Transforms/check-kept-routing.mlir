// RUN: moe-opt %s -split-input-file -moe-check-kept-routing -verify-diagnostics
// RUN: moe-opt %S/routing-io.mlir -moe-decompose -canonicalize -moe-shard=mesh=ep=2 -moe-differentiate -moe-routing-io -moe-check-kept-routing -o /dev/null

// The backward reads the kept indices: fine. Forward entries select experts.
func.func @forward_train(%l: tensor<4x8xf32>) -> tensor<4x2xi32> {
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return %i : tensor<4x2xi32>
}
func.func @backward(%l: tensor<4x8xf32>, %i: tensor<4x2xi32>, %dw: tensor<4x2xf32>) -> tensor<4x8xf32> {
  %d = moe.topk_grad %l, %i, %dw score = softmax : (tensor<4x8xf32>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<4x8xf32>
  return %d : tensor<4x8xf32>
}

// -----

// A backward that recomputes the routing (a checkpointing policy that
// recomputed the router and top-k) is refused.
func.func @backward(%l: tensor<4x8xf32>, %dw: tensor<4x2xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{'moe.topk' op in @backward: only a forward entry selects experts; the backward must read the top-k indices its forward entry kept (saved.N), never derive them again}}
  %w, %i, %s = moe.topk %l k = 2 score = softmax : (tensor<4x8xf32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  %d = moe.topk_grad %l, %i, %dw score = softmax : (tensor<4x8xf32>, tensor<4x2xi32>, tensor<4x2xf32>) -> tensor<4x8xf32>
  return %d : tensor<4x8xf32>
}

// -----

func.func @backward(%l: tensor<4x8xf32>, %f: tensor<4x2xi32>) -> tensor<4x2xi32> {
  // expected-error @+1 {{'moe.topk_forced' op in @backward: only a forward entry selects experts}}
  %w, %i, %s = moe.topk_forced %l, %f score = softmax : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return %i : tensor<4x2xi32>
}
