// RUN: moe-opt %s -split-input-file -moe-overlap="degree=2" -verify-diagnostics | FileCheck %s

// The backward's exchange stays at degree 1 (a remark says why) when it
// cannot be pipelined; the program is unchanged and correct.

// A weight gradient read before the exchange ends: the chunked backward
// computes it once after the last chunk, too late for this reader.
// CHECK-LABEL: func.func @early_reader
// CHECK-NOT: _start
// CHECK: moe.expert_ffn_grad %
// CHECK-NOT: moe.expert_ffn_grad_data
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @early_reader(%x: tensor<4x16x32xf32>, %dy: tensor<8x8x32xf32>, %u: tensor<4x96x32xf32>, %d: tensor<4x32x96xf32>) -> (tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x96x32xf32>) {
  %0 = moe.all_to_all %dy on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x8x32xf32>) -> tensor<4x16x32xf32>
  // expected-remark @+1 {{moe-overlap: the backward's exchange stays at degree 1: 'moe.add' reads a weight gradient before the exchange ends}}
  %dx, %dup, %ddown = moe.expert_ffn_grad %x up %u down %d, %0 act = relu : (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) -> (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>)
  %s = moe.add %dup, %dup : (tensor<4x96x32xf32>, tensor<4x96x32xf32>) -> tensor<4x96x32xf32>
  %1 = moe.all_to_all %dx on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x16x32xf32>) -> tensor<8x8x32xf32>
  return %1, %dup, %ddown, %s : tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x96x32xf32>
}

// -----

// A capacity buffer with counts: a chunk of the slots has no counts.
// CHECK-LABEL: func.func @capacity_counts
// CHECK-NOT: _start
// CHECK: moe.expert_ffn_grad %
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @capacity_counts(%x: tensor<4x16x32xf32>, %c: tensor<2x4xi32>, %dy: tensor<8x8x32xf32>, %u: tensor<4x96x32xf32>, %d: tensor<4x32x96xf32>) -> (tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>) {
  %0 = moe.all_to_all %dy on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x8x32xf32>) -> tensor<4x16x32xf32>
  // expected-remark @+1 {{moe-overlap: the backward's exchange stays at degree 1: its capacity buffer has counts}}
  %dx, %dup, %ddown = moe.expert_ffn_grad %x counts %c up %u down %d, %0 act = relu : (tensor<4x16x32xf32>, tensor<2x4xi32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) -> (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>)
  %1 = moe.all_to_all %dx on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x16x32xf32>) -> tensor<8x8x32xf32>
  return %1, %dup, %ddown : tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>
}

// -----

// The received gradient read by another op inside the exchange.
// CHECK-LABEL: func.func @early_use
// CHECK-NOT: _start
// CHECK: moe.expert_ffn_grad %
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @early_use(%x: tensor<4x16x32xf32>, %dy: tensor<8x8x32xf32>, %u: tensor<4x96x32xf32>, %d: tensor<4x32x96xf32>) -> (tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) {
  %0 = moe.all_to_all %dy on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x8x32xf32>) -> tensor<4x16x32xf32>
  // expected-remark @+1 {{moe-overlap: the backward's exchange stays at degree 1: 'moe.add' uses the exchange before it ends}}
  %dx, %dup, %ddown = moe.expert_ffn_grad %x up %u down %d, %0 act = relu : (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) -> (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>)
  %s = moe.add %0, %0 : (tensor<4x16x32xf32>, tensor<4x16x32xf32>) -> tensor<4x16x32xf32>
  %1 = moe.all_to_all %dx on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x16x32xf32>) -> tensor<8x8x32xf32>
  return %1, %dup, %ddown, %s : tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>
}

// -----

// The input gradient does not go back through one all-to-all (a second
// reader): not an error in the backward, a remark.
// CHECK-LABEL: func.func @two_readers
// CHECK-NOT: _start
// CHECK: moe.expert_ffn_grad %
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
func.func @two_readers(%x: tensor<4x16x32xf32>, %dy: tensor<8x8x32xf32>, %u: tensor<4x96x32xf32>, %d: tensor<4x32x96xf32>) -> (tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) {
  %0 = moe.all_to_all %dy on @mesh ["ep"] split = 0 concat = 1 : (tensor<8x8x32xf32>) -> tensor<4x16x32xf32>
  // expected-remark @+1 {{moe-overlap: the backward's exchange stays at degree 1: expected the expert output to go back through one all-to-all over ep}}
  %dx, %dup, %ddown = moe.expert_ffn_grad %x up %u down %d, %0 act = relu : (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>) -> (tensor<4x16x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>)
  %1 = moe.all_to_all %dx on @mesh ["ep"] split = 1 concat = 0 : (tensor<4x16x32xf32>) -> tensor<8x8x32xf32>
  %s = moe.add %dx, %dx : (tensor<4x16x32xf32>, tensor<4x16x32xf32>) -> tensor<4x16x32xf32>
  return %1, %dup, %ddown, %s : tensor<8x8x32xf32>, tensor<4x96x32xf32>, tensor<4x32x96xf32>, tensor<4x16x32xf32>
}
