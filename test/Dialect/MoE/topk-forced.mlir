// RUN: moe-opt %s | moe-opt | FileCheck %s
// moe.topk_forced (routing replay): round trip, and every verifier rule.

// CHECK-LABEL: func.func @replay
// CHECK: moe.topk_forced %{{.*}}, %{{.*}} score = softmax {renormalize, routed_scaling = 2.500000e+00 : f32}
// CHECK: moe.topk_forced %{{.*}}, %{{.*}} score = sigmoid :
func.func @replay(%l: tensor<4x8xf32>, %f: tensor<4x2xi32>)
    -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>) {
  %w, %i, %s = moe.topk_forced %l, %f score = softmax {renormalize, routed_scaling = 2.5 : f32}
      : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  %w2, %i2, %s2 = moe.topk_forced %l, %i score = sigmoid
      : (tensor<4x8xf32>, tensor<4x2xi32>) -> (tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>)
  return %w2, %i2, %s : tensor<4x2xf32>, tensor<4x2xi32>, tensor<4x8xf32>
}
