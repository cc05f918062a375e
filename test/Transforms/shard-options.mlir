// RUN: not moe-opt %s -moe-shard="mesh=ep=2,xp=2" 2>&1 | FileCheck %s --check-prefix=AXIS
// RUN: not moe-opt %s -moe-shard="mesh=ep=0" 2>&1 | FileCheck %s --check-prefix=SIZE
// RUN: not moe-opt %s -moe-shard 2>&1 | FileCheck %s --check-prefix=NONE

// AXIS: unknown mesh axis 'xp' (axes are dp, ep, tp)
// SIZE: mesh entry 'ep=0' is not axis=size with a positive size
// NONE: moe-shard needs a mesh, e.g. mesh=dp=1,ep=2,tp=2
func.func @f(%x: tensor<16x32xf32> {moe.input = "hidden_states"}) -> tensor<16x32xf32> {
  return %x : tensor<16x32xf32>
}
