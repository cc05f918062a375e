//===- Pipelines.h - The compile pipeline of moe-compiler -------*- C++ -*-===//
//
// The pipeline that moe-compile runs, built by one function from one options
// struct and registered in moe-opt, so that lit runs exactly what users run:
//
//   moe-opt model.mlir --moe-compile-pipeline="mesh=ep=2,tp=2 dtd"
//
// prints the module that `moe-compile model.mlir --mesh ep=2,tp=2 --dtd`
// writes as module.mlir.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_PIPELINES_PIPELINES_H
#define MOE_PIPELINES_PIPELINES_H

#include "mlir/Pass/PassOptions.h"
#include "mlir/Support/LLVM.h"

#include "llvm/Support/Error.h"

#include <string>

namespace mlir {
class OpPassManager;

namespace moe {

/// Options of `moe-compile-pipeline` (and of moe-compile's command line).
struct CompilePipelineOptions
    : public PassPipelineOptions<CompilePipelineOptions> {
  PassOptions::Option<std::string> mesh{
      *this, "mesh",
      llvm::cl::desc("Device mesh as axis=size pairs, e.g. dp=1,ep=2,tp=2 "
                     "(axes left out are 1); empty: one device")};
  PassOptions::Option<bool> dtd{
      *this, "dtd",
      llvm::cl::desc("Duplicate token dropping over tp (needs a mesh)"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> expertTp{
      *this, "expert-tp",
      llvm::cl::desc("Split every expert's FFN over tp (needs a mesh)"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> train{
      *this, "train",
      llvm::cl::desc("Add the training entries forward_train, backward, "
                     "step_adamw, step_sgd (moe-differentiate, after "
                     "sharding)"),
      llvm::cl::init(false)};
  PassOptions::Option<bool> zero1{
      *this, "zero1",
      llvm::cl::desc("With train: shard the optimizer state over dp "
                     "(ZeRO-1: reduce-scatter of gradients, all-gather of "
                     "updated weights)"),
      llvm::cl::init(false)};
  PassOptions::Option<std::string> overlapDegree{
      *this, "overlap-degree",
      llvm::cl::desc("Pipeline every expert-parallel exchange in this many "
                     "chunks (moe-overlap; 1: off)"),
      llvm::cl::init("1")};
  PassOptions::Option<int64_t> maxRecvTokens{
      *this, "max-recv-tokens",
      llvm::cl::desc("Rows a rank's dropless receive buffer holds (0: the "
                     "provable worst case); a run that would receive more "
                     "stops on every rank with a named error"),
      llvm::cl::init(0)};
  PassOptions::Option<std::string> hierarchicalA2A{
      *this, "hierarchical-a2a",
      llvm::cl::desc("2D hierarchical all-to-all (moe-hierarchical-a2a): "
                     "off, on (every ep exchange) or auto (where the cost "
                     "model says it pays)"),
      llvm::cl::init("off")};
  PassOptions::Option<int64_t> ranksPerNode{
      *this, "ranks-per-node",
      llvm::cl::desc("Ranks on one node for hierarchical-a2a (0 with auto: "
                     "the cluster file's devices per node)"),
      llvm::cl::init(0)};
  PassOptions::Option<bool> routing{
      *this, "routing",
      llvm::cl::desc("Routing you can see and replay (moe-routing-io): "
                     "@forward also returns routing.<layer>.experts / "
                     ".weights; adds @forward_replay (and "
                     "@forward_train_replay) taking routing.<layer>.experts"),
      llvm::cl::init(false)};
  PassOptions::Option<std::string> cluster{
      *this, "cluster",
      llvm::cl::desc("Cluster file (JSON) of the cost model that passes "
                     "choosing by cost read (include/moe/Analysis/"
                     "CostModel.h); empty: the built-in cluster")};
};

/// Checks what the passes themselves cannot: `dtd` and `expert-tp` need a
/// mesh (without one nothing would be sharded); `cluster` must be a valid
/// cluster file (the error names the file and the field).
llvm::Error verifyCompilePipelineOptions(const CompilePipelineOptions &options);

/// Adds the compile pipeline: moe-decompose, canonicalize, [moe-shard,
/// [moe-drop-duplicate-tokens]], canonicalize, cse, [moe-differentiate,
/// cse], [moe-overlap], moe-attach-manifest,
/// moe-to-runtime, canonicalize, cse. Its result is the per-rank program of
/// runtime calls that moe-compile writes as module.mlir, with the entry
/// points described in the module's `moe.manifest` attribute. The options
/// must pass verifyCompilePipelineOptions.
void buildCompilePipeline(OpPassManager &pm,
                          const CompilePipelineOptions &options);

/// Adds the lowering of the compile pipeline's output to the LLVM dialect
/// (arith and func to LLVM, reconcile casts), ready for LLVM IR translation.
void buildLowerToLLVMPipeline(OpPassManager &pm);

/// Registers `moe-compile-pipeline` and `moe-lower-to-llvm` (and the passes
/// of this library, moe-attach-manifest, and of the analyses,
/// moe-print-costs).
void registerMoECompilePipelines();

} // namespace moe
} // namespace mlir

#endif // MOE_PIPELINES_PIPELINES_H
