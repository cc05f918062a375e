// Every collective of the dialect, synchronous and started/waited with
// compute in between, on a 2 x 2 mesh (run by multi/collectives.test).
moe.mesh @mesh axes = ["ep", "tp"] shape = [2, 2]

func.func @forward(
    %x: tensor<8x16xf32> {moe.input = "x", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>},
    %b: tensor<8x16xf32> {moe.input = "b", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>})
    -> (tensor<8x16xf32> {moe.output = "a2a_sync", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>},
        tensor<8x16xf32> {moe.output = "a2a_async", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>},
        tensor<8x16xf32> {moe.output = "sum_sync", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>},
        tensor<8x16xf32> {moe.output = "sum_async", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>},
        tensor<16x16xf32> {moe.output = "gather_async", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 64, 16>},
        tensor<4x16xf32> {moe.output = "scatter_async", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 16, 16>},
        tensor<8x16xf32> {moe.output = "overlapped", moe.shard = [["ep", "tp"], []], moe.global_shape = array<i64: 32, 16>}) {
  %s0 = moe.all_to_all %x on @mesh ["ep"] split = 0 concat = 0 : (tensor<8x16xf32>) -> tensor<8x16xf32>
  %f0 = moe.all_to_all_start %x on @mesh ["ep"] split = 0 concat = 0 : (tensor<8x16xf32>) -> !moe.future<tensor<8x16xf32>>
  %s1 = moe.all_reduce %x on @mesh ["tp"] : (tensor<8x16xf32>) -> tensor<8x16xf32>
  %f1 = moe.all_reduce_start %x on @mesh ["tp"] : (tensor<8x16xf32>) -> !moe.future<tensor<8x16xf32>>
  %f2 = moe.all_gather_start %x on @mesh ["tp"] dim = 0 : (tensor<8x16xf32>) -> !moe.future<tensor<16x16xf32>>
  %f3 = moe.reduce_scatter_start %x on @mesh ["ep"] dim = 0 : (tensor<8x16xf32>) -> !moe.future<tensor<4x16xf32>>
  // Compute while four collectives are in flight.
  %c = moe.add %b, %b : (tensor<8x16xf32>, tensor<8x16xf32>) -> tensor<8x16xf32>
  %a0 = moe.wait %f0 : !moe.future<tensor<8x16xf32>>
  %a1 = moe.wait %f1 : !moe.future<tensor<8x16xf32>>
  %a2 = moe.wait %f2 : !moe.future<tensor<16x16xf32>>
  %a3 = moe.wait %f3 : !moe.future<tensor<4x16xf32>>
  return %s0, %a0, %s1, %a1, %a2, %a3, %c : tensor<8x16xf32>, tensor<8x16xf32>, tensor<8x16xf32>, tensor<8x16xf32>, tensor<16x16xf32>, tensor<4x16xf32>, tensor<8x16xf32>
}
