// RUN: moe-opt %s -split-input-file -moe-attach-manifest -verify-diagnostics

// expected-error @+1 {{argument 1 of @f has no moe.input, moe.weight, moe.saved, moe.grad, moe.state or moe.hparams: the runner cannot know where its data comes from}}
func.func @f(%x: tensor<4xf32> {moe.input = "x"}, %y: tensor<4xf32>) {
  return
}

// -----

// expected-error @+1 {{argument 0 of @f has type 'tensor<?x32xf32>': entry points take statically shaped tensors}}
func.func @f(%x: tensor<?x32xf32> {moe.input = "x"}) {
  return
}

// -----

// (A non-tensor argument with moe.input is refused by the dialect's verifier,
// so only a result can reach the pass with a non-tensor type.)
// expected-error @+1 {{result 0 of @f has type 'i32': entry points take statically shaped tensors}}
func.func @f(%x: tensor<4xf32> {moe.input = "x"}) -> i32 {
  %c = arith.constant 0 : i32
  return %c : i32
}

// -----

// expected-error @+1 {{result 0 of @f has element type 'f64', which the runtime does not support (f32, f16, bf16, i32, i64)}}
func.func @f(%x: tensor<4xf32> {moe.input = "x"}) -> tensor<4xf64> {
  %y = arith.extf %x : tensor<4xf32> to tensor<4xf64>
  return %y : tensor<4xf64>
}

// -----

// expected-error @+1 {{the module has no public function to compile}}
module {
  func.func private @f(%x: tensor<4xf32>) {
    return
  }
}

// -----

// MLIR symbol names may contain dots; a C symbol cannot (found by
// moe-fuzz-pipeline: the manifest named a symbol moe-run could not look up).
// expected-error @+1 {{entry point @forwar.d cannot be exported: its name must be a C identifier (letters, digits and '_', not starting with a digit), because the library exports it as moe_entry_forwar.d}}
func.func @forwar.d(%x: tensor<4xf32> {moe.input = "x"}) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}

// -----

// A hand-written training entry without the rest of the training set: the
// runner's own manifest check refuses it, so the compiler does too (found by
// moe-fuzz-pipeline).
// expected-error @+1 {{moe-run would refuse this module: manifest.json: entries: the module has training entry points but no entry 'forward_train'}}
module {
  func.func @backward(%x: tensor<4xf32> {moe.input = "x"}) -> tensor<4xf32> {
    return %x : tensor<4xf32>
  }
}
