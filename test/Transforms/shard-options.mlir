// The mesh option goes through parseMeshSpec; its message names the bad part.
// RUN: not moe-opt %s -moe-shard="mesh=ep=2,xp=2" 2>&1 | FileCheck %s --check-prefix=AXIS
// RUN: not moe-opt %s -moe-shard="mesh=ep=0" 2>&1 | FileCheck %s --check-prefix=SIZE
// RUN: not moe-opt %s -moe-shard="mesh=ep=two" 2>&1 | FileCheck %s --check-prefix=NOTINT
// RUN: not moe-opt %s -moe-shard="mesh=ep=99999999999999999999" 2>&1 | FileCheck %s --check-prefix=BIG
// RUN: not moe-opt %s -moe-shard="mesh=dp=65536,ep=65536" 2>&1 | FileCheck %s --check-prefix=RANKS
// RUN: not moe-opt %s -moe-shard="mesh=ep=2,ep=4" 2>&1 | FileCheck %s --check-prefix=TWICE
// RUN: not moe-opt %s -moe-shard="mesh=ep" 2>&1 | FileCheck %s --check-prefix=PAIR
// RUN: not moe-opt %s -moe-shard="mesh=ep=2,,tp=2" 2>&1 | FileCheck %s --check-prefix=EMPTY
// RUN: not moe-opt %s -moe-shard 2>&1 | FileCheck %s --check-prefix=NONE

// AXIS: moe-shard: mesh option 'ep=2,xp=2': unknown axis 'xp' (axes are dp, ep, tp)
// SIZE: moe-shard: mesh option 'ep=0': 'ep=0': size 0 is not a positive integer
// NOTINT: moe-shard: mesh option 'ep=two': 'ep=two': size 'two' is not a positive integer
// BIG: 'ep=99999999999999999999': size 99999999999999999999 is too large
// RANKS: 'dp=65536,ep=65536' has more than 2147483647 ranks
// TWICE: moe-shard: mesh option 'ep=2,ep=4': axis 'ep' is given twice ('ep=2' and 'ep=4')
// PAIR: moe-shard: mesh option 'ep': 'ep' is not axis=size (e.g. ep=2)
// EMPTY: empty entry in 'ep=2,,tp=2' (expected axis=size pairs separated by commas)
// NONE: moe-shard needs a mesh: a moe.mesh op in the module or the mesh option, e.g. mesh=dp=1,ep=2,tp=2
func.func @f(%x: tensor<16x32xf32> {moe.input = "hidden_states"}) -> tensor<16x32xf32> {
  return %x : tensor<16x32xf32>
}
