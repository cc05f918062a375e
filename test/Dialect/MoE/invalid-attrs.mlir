// RUN: moe-opt %s -split-input-file -verify-diagnostics

// The moe.* attributes on functions, their arguments and results and on the
// module: one case per rule of MoEDialect's attribute verifiers.

// Accepted: every attribute where it belongs, consistent with the mesh.
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
func.func @ok(%x: tensor<8x32xf32> {moe.input = "hidden_states", moe.shard = [["dp", "ep"], []], moe.global_shape = array<i64: 16, 32>},
              %w: tensor<4x24x32xf32> {moe.weight = "experts.{e}.w", moe.weight_transpose, moe.shard = [["ep"], ["tp"], []], moe.global_shape = array<i64: 8, 48, 32>},
              %n: tensor<32xf32> {moe.weight = "norm", moe.shard = [[]], moe.global_shape = array<i64: 32>})
    -> (tensor<8x32xf32> {moe.output = "hidden_states", moe.shard = [["dp", "ep"], []], moe.global_shape = array<i64: 16, 32>}) {
  return %x : tensor<8x32xf32>
}
func.func @moe_entry_ok(%ctx: !llvm.ptr, %a: !llvm.ptr, %r: !llvm.ptr) attributes {moe.arena_bytes = 0 : i64} {
  return
}

// -----

// Unannotated dimensions need no mesh.
module attributes {moe.manifest = "{\"entries\": []}"} {
  func.func @replicated(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [[], []], moe.global_shape = array<i64: 8, 32>}) {
    return
  }
}

// -----

// expected-error @+1 {{unknown moe dialect attribute 'moe.inputs'}}
func.func @f(%x: tensor<8x32xf32> {moe.inputs = "x"}) {
  return
}

// -----

// expected-error @+1 {{unknown moe dialect attribute 'moe.note'}}
func.func @f() attributes {moe.note = "x"} {
  return
}

// -----

// expected-error @+1 {{'moe.output' is not valid on an argument (it belongs on a result)}}
func.func @f(%x: tensor<8x32xf32> {moe.output = "x"}) {
  return
}

// -----

// expected-error @+1 {{'moe.input' is not valid on a result (it belongs on an argument)}}
func.func @f(%x: tensor<8x32xf32>) -> (tensor<8x32xf32> {moe.input = "x"}) {
  return %x : tensor<8x32xf32>
}

// -----

// expected-error @+1 {{'moe.arena_bytes' is not valid on an argument (it belongs on an operation)}}
func.func @f(%x: tensor<8x32xf32> {moe.arena_bytes = 0 : i64}) {
  return
}

// -----

// expected-error @+1 {{'moe.shard' is not valid on an operation (it belongs on an argument)}}
func.func @f() attributes {moe.shard = []} {
  return
}

// -----

// expected-error @+1 {{'moe.input' must be a non-empty string, got ""}}
func.func @f(%x: tensor<8x32xf32> {moe.input = ""}) {
  return
}

// -----

// expected-error @+1 {{'moe.weight' must be a non-empty string, got 1 : i64}}
func.func @f(%x: tensor<8x32xf32> {moe.weight = 1 : i64}) {
  return
}

// -----

// expected-error @+1 {{'moe.output' must be a non-empty string, got ""}}
func.func @f(%x: tensor<8x32xf32>) -> (tensor<8x32xf32> {moe.output = ""}) {
  return %x : tensor<8x32xf32>
}

// -----

// expected-error @+1 {{argument 0 has both 'moe.input' and 'moe.weight'}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.weight = "x"}) {
  return
}

// -----

// expected-error @+1 {{'moe.weight_transpose' is a unit attribute, got true}}
func.func @f(%x: tensor<8x32xf32> {moe.weight = "w", moe.weight_transpose = true}) {
  return
}

// -----

// expected-error @+1 {{'moe.weight_transpose' needs 'moe.weight' on argument 0}}
func.func @f(%x: tensor<8x32xf32> {moe.weight_transpose}) {
  return
}

// -----

// expected-error @+1 {{'moe.weight_transpose' needs a weight of matrices (rank >= 2), got 'tensor<32xf32>'}}
func.func @f(%x: tensor<32xf32> {moe.weight = "w", moe.weight_transpose}) {
  return
}

// -----

// expected-error @+1 {{'moe.input' needs a ranked tensor, got 'i32'}}
func.func @f(%x: i32 {moe.input = "x"}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
// expected-error @+1 {{'moe.shard' must be an array of axis-name arrays, got "ep"}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = "ep"}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
// expected-error @+1 {{'moe.shard' has 1 entries but the tensor 'tensor<8x32xf32>' has 2 dimensions}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["ep"]]}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
// expected-error @+1 {{'moe.shard' entry 1 must be an array of axis names, got [2]}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["ep"], [2]]}) {
  return
}

// -----

// expected-error @+1 {{'moe.shard' names mesh axes but the module has no moe.mesh}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["ep"], []]}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 1]
// expected-error @+1 {{'moe.shard' names axis 'pp', which is not an axis of @mesh}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["pp"], []]}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
// expected-error @+1 {{'moe.shard' uses axis 'tp' twice}}
func.func @f(%x: tensor<8x32xf32> {moe.weight = "x", moe.shard = [["tp"], ["tp"]]}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [1, 2, 2]
// expected-error @+1 {{'moe.shard' uses axis 'ep' twice}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["ep", "ep"], []]}) {
  return
}

// -----

moe.mesh @a axes = ["ep"] shape = [2]
moe.mesh @b axes = ["ep"] shape = [2]
// expected-error @+1 {{'moe.shard' is ambiguous: the module has 2 moe.mesh ops}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.shard = [["ep"], []]}) {
  return
}

// -----

// expected-error @+1 {{'moe.global_shape' must be an array<i64: ...>, got [16, 32]}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.global_shape = [16, 32]}) {
  return
}

// -----

// expected-error @+1 {{'moe.global_shape' has rank 1 but the tensor 'tensor<8x32xf32>' has rank 2}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.global_shape = array<i64: 8>}) {
  return
}

// -----

moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [2, 2, 1]
// expected-error @+1 {{'moe.global_shape' dimension 0 is 16 but the local size 8 split 4 ways gives 32}}
func.func @f(%x: tensor<8x32xf32>) -> (tensor<8x32xf32> {moe.output = "y", moe.shard = [["dp", "ep"], []], moe.global_shape = array<i64: 16, 32>}) {
  return %x : tensor<8x32xf32>
}

// -----

// Without moe.shard nothing is split: the global shape is the local one.
// expected-error @+1 {{'moe.global_shape' dimension 1 is 64 but the local size 32 split 1 ways gives 32}}
func.func @f(%x: tensor<8x32xf32> {moe.input = "x", moe.global_shape = array<i64: 8, 64>}) {
  return
}

// -----

// expected-error @+1 {{'moe.arena_bytes' must be a non-negative i64, got -8 : i64}}
func.func @f() attributes {moe.arena_bytes = -8 : i64} {
  return
}

// -----

// expected-error @+1 {{'moe.arena_bytes' must be a non-negative i64, got 8 : i32}}
func.func @f() attributes {moe.arena_bytes = 8 : i32} {
  return
}

// -----

// expected-error @+1 {{'moe.arena_bytes' belongs on a lowered entry function}}
module attributes {moe.arena_bytes = 8 : i64} {
}

// -----

// expected-error @+1 {{'moe.manifest' must be a string, got 1 : i64}}
module attributes {moe.manifest = 1 : i64} {
}

// -----

// expected-error @+1 {{'moe.manifest' belongs on the module}}
func.func @f() attributes {moe.manifest = "{}"} {
  return
}

// -----

// The training roles (moe-differentiate): accepted where they belong.
func.func @step(%w: tensor<4xf32> {moe.weight = "w"}, %g: tensor<4xf32> {moe.grad = "grad.w"},
                %m: tensor<4xf32> {moe.state = "w.exp_avg"}, %hp: tensor<8xf32> {moe.hparams = "optimizer.hparams"},
                %s: tensor<4xf32> {moe.saved = "saved.0"})
    -> (tensor<4xf32> {moe.output = "w"}) {
  return %w : tensor<4xf32>
}

// -----

// expected-error @+1 {{'moe.saved' must be a non-empty string, got ""}}
func.func @f(%x: tensor<8xf32> {moe.saved = ""}) {
  return
}

// -----

// expected-error @+1 {{'moe.grad' must be a non-empty string, got 3 : i64}}
func.func @f(%x: tensor<8xf32> {moe.grad = 3}) {
  return
}

// -----

// expected-error @+1 {{argument 0 has both 'moe.weight' and 'moe.state'}}
func.func @f(%x: tensor<8xf32> {moe.weight = "w", moe.state = "w.exp_avg"}) {
  return
}

// -----

// expected-error @+1 {{argument 0 has both 'moe.saved' and 'moe.grad'}}
func.func @f(%x: tensor<8xf32> {moe.grad = "grad.w", moe.saved = "saved.1"}) {
  return
}

// -----

// expected-error @+1 {{'moe.hparams' needs the f32 [8] hyperparameter tensor, got 'tensor<7xf32>'}}
func.func @f(%x: tensor<7xf32> {moe.hparams = "optimizer.hparams"}) {
  return
}

// -----

// expected-error @+1 {{'moe.state' is not valid on a result (it belongs on an argument)}}
func.func @f(%x: tensor<8xf32>) -> (tensor<8xf32> {moe.state = "w.exp_avg"}) {
  return %x : tensor<8xf32>
}

// -----

// A model graph's tensor whose byte size overflows int64 (2^62 x 64 f32
// wraps to 0): every size computed from it would be wrong.
// expected-error @+1 {{argument 0 (4611686018427387904x64xf32) has more bytes than fit in 64 bits}}
func.func @huge(%x: tensor<4611686018427387904x64xf32> {moe.input = "hidden_states"}) {
  return
}

// -----

// expected-error @+1 {{result 0 (4294967296x4294967296xf32) has more bytes than fit in 64 bits}}
func.func private @huge_result() -> (tensor<4294967296x4294967296xf32> {moe.output = "y"})

// -----

// The global shape too: 2^60 x 4 f32 (2^64 bytes) split 16 ways.
moe.mesh @mesh axes = ["dp", "ep", "tp"] shape = [16, 1, 1]
// expected-error @+1 {{'moe.global_shape' (1152921504606846976x4xf32) has more bytes than fit in 64 bits}}
func.func @huge_global(%x: tensor<72057594037927936x4xf32> {moe.input = "x", moe.shard = [["dp"], []], moe.global_shape = array<i64: 1152921504606846976, 4>}) {
  return
}

// -----

// moe.hold_weights marks moe-overlap's chunks of one expert FFN: only on the
// expert FFN ops, only "open" or "close".
func.func @hold_on_other(%x: tensor<4x8xf32>, %w: tensor<8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{'moe.hold_weights' belongs on moe.expert_ffn or moe.expert_ffn_train}}
  %y = moe.rmsnorm %x, %w {eps = 1.0e-05 : f32, moe.hold_weights = "open"} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}

// -----

func.func @hold_value(%x: tensor<2x4x8xf32>, %u: tensor<2x16x8xf32>, %d: tensor<2x8x16xf32>) -> tensor<2x4x8xf32> {
  // expected-error @+1 {{'moe.hold_weights' must be "open" or "close", got "keep"}}
  %y = moe.expert_ffn %x up %u down %d act = relu {moe.hold_weights = "keep"} : (tensor<2x4x8xf32>, tensor<2x16x8xf32>, tensor<2x8x16xf32>) -> tensor<2x4x8xf32>
  return %y : tensor<2x4x8xf32>
}
