//===- Passes.td - Passes of the compile pipeline ----------*- tablegen -*-===//
#ifndef MOE_PIPELINES_PASSES_TD
#define MOE_PIPELINES_PASSES_TD

include "mlir/Pass/PassBase.td"

def MoEAttachManifest : Pass<"moe-attach-manifest", "::mlir::ModuleOp"> {
  let summary = "Describe the entry points for manifest.json as a moe.manifest attribute";
  let description = [{
    Runs on the per-rank tensor program (after moe-shard, before
    moe-to-runtime rewrites the signatures) and attaches to the module a
    `moe.manifest` string attribute: JSON text with the mesh (`axes`,
    `shape`) and one entry per public function (`name`, `symbol`, and for
    every argument and result its `index`, `role`, `name`, `dtype`, global
    `shape`, `local_shape` and `shard` spec), in the format of
    docs/module-format.md. moe-compile completes it (arena size, library
    hash, target) into manifest.json.

    Every argument must carry `moe.input` or `moe.weight`, every argument and
    result must be a ranked tensor of f32, f16, bf16, i32 or i64, and the
    module must have a public function, and every public function's name
    must be a C identifier (the library exports it as `moe_entry_<name>`):
    otherwise the pass fails with a diagnostic on the offending function.
    Finally the pass reads the description with moe-run's own manifest
    parser, which also checks how training entries fit together
    (`forward_train`, `backward`, `step_*`: docs/module-format.md); a module
    moe-run would refuse fails here with moe-run's message
    (`check-runner=false` skips this last check, to look at the description
    of a partial module in a test).
  }];
  let options = [
    Option<"checkRunner", "check-runner", "bool", /*default=*/"true",
           "Refuse a module whose manifest moe-run's parser would refuse">
  ];
}

#endif // MOE_PIPELINES_PASSES_TD
