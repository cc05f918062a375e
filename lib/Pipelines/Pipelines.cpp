//===- Pipelines.cpp - The compile pipeline of moe-compiler ---------------===//
#include "moe/Pipelines/Pipelines.h"
#include "moe/Analysis/CostModel.h"
#include "moe/Analysis/Passes.h"
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"
#include "moe/Pipelines/Passes.h"

#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h"
#include "mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

llvm::Error
moe::verifyCompilePipelineOptions(const CompilePipelineOptions &options) {
  if (options.mesh.empty() && (options.dtd || options.expertTp))
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "dtd and expert-tp need a mesh with tp > 1 (mesh=...)");
  if (options.zero1 && !options.train)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "zero1 shards optimizer state: it needs "
                                   "train");
  StringRef degree = StringRef(options.overlapDegree).trim();
  int64_t n;
  if (degree != "auto" && (degree.getAsInteger(10, n) || n < 1))
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "overlap-degree '" + degree.str() +
                                       "' is not a positive number or auto");
  if (degree != "1" && options.mesh.empty())
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "overlap-degree pipelines the expert-parallel exchange: it needs a "
        "mesh with ep > 1 (mesh=...)");
  if (options.maxRecvTokens < 0)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "max-recv-tokens " +
                                       std::to_string(options.maxRecvTokens) +
                                       " is negative");
  if (options.maxRecvTokens > 0 && options.mesh.empty())
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "max-recv-tokens bounds the dropless expert-parallel exchange: it "
        "needs a mesh with ep > 1 (mesh=...)");
  StringRef hier = StringRef(options.hierarchicalA2A).trim();
  if (hier != "off" && hier != "on" && hier != "auto" && hier != "mesh")
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "hierarchical-a2a '" + hier.str() +
                                       "' is not off, on, auto or mesh");
  if (hier != "off" && options.mesh.empty())
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "hierarchical-a2a splits the expert-parallel exchange: it needs a "
        "mesh with ep > 1 (mesh=...)");
  if ((hier == "on" || hier == "mesh") && options.ranksPerNode < 1)
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "hierarchical-a2a needs ranks-per-node (the ranks on one node; "
        "with auto, the cluster file's devices per node is the default)");
  if (options.ranksPerNode < 0 || (hier == "off" && options.ranksPerNode != 0))
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "ranks-per-node " + std::to_string(options.ranksPerNode) +
            (options.ranksPerNode < 0
                 ? " is negative"
                 : " is only used by hierarchical-a2a (on or auto)"));
  if (!options.cluster.empty())
    if (llvm::Expected<cost::ClusterSpec> c =
            cost::loadClusterFile(options.cluster);
        !c)
      return c.takeError();
  return llvm::Error::success();
}

void moe::buildCompilePipeline(OpPassManager &pm,
                               const CompilePipelineOptions &options) {
  // Decompose, then distribute: the per-rank graph of primitives.
  pm.addPass(createMoEDecompose());
  pm.addPass(createCanonicalizerPass());
  if (!options.mesh.empty()) {
    MoEShardOptions shard;
    shard.mesh = options.mesh;
    shard.expertTp = options.expertTp;
    shard.maxRecvTokens = options.maxRecvTokens;
    pm.addPass(createMoEShard(shard));
    if (options.dtd)
      pm.addPass(createMoEDropDuplicateTokens());
  }
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  // Training entries from the per-rank forward (docs/design.md, Training).
  if (options.train) {
    MoEDifferentiateOptions differentiate;
    differentiate.zero1 = options.zero1;
    pm.addPass(createMoEDifferentiate(differentiate));
    pm.addPass(createCSEPass());
  }
  // Pipelined exchanges, after differentiation: the backward is built from
  // the unchunked forward (docs/design.md, Overlap).
  if (options.overlapDegree != "1") {
    MoEOverlapOptions overlap;
    overlap.degree = options.overlapDegree;
    overlap.cluster = options.cluster;
    pm.addPass(createMoEOverlap(overlap));
  }
  // Two-phase exchanges over the node and local parts of ep, last among
  // the rewrites of the per-rank program: the backward's exchanges and the
  // pipelined chunks are split too (docs/design.md, Hierarchical all-to-all).
  if (StringRef(options.hierarchicalA2A).trim() != "off") {
    MoEHierarchicalA2AOptions hier;
    hier.ranksPerNode = options.ranksPerNode;
    hier.mode = StringRef(options.hierarchicalA2A).trim().str();
    hier.cluster = options.cluster;
    pm.addPass(createMoEHierarchicalA2A(hier));
  }
  // Routing outputs and replay entries, from the finished per-rank entries.
  if (options.routing)
    pm.addPass(createMoERoutingIO());
  // Whatever the backward recomputes, it never selects experts again.
  if (options.train)
    pm.addPass(createMoECheckKeptRouting());
  // Describe the entry points while the tensor signatures still exist.
  pm.addPass(createMoEAttachManifest());
  // Buffers and runtime calls.
  pm.addPass(createConvertMoEToRuntime());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
}

void moe::buildLowerToLLVMPipeline(OpPassManager &pm) {
  pm.addPass(createArithToLLVMConversionPass());
  pm.addPass(createConvertFuncToLLVMPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
}

void moe::registerMoECompilePipelines() {
  registerMoEPipelinesPasses();
  registerMoEAnalysisPasses();
  // PassPipelineRegistration<CompilePipelineOptions> without its silence on
  // option combinations the builder cannot honour.
  registerPassPipeline(
      "moe-compile-pipeline",
      "What moe-compile runs: decompose, shard over the mesh, describe the "
      "entry points (moe.manifest), lower to runtime calls",
      [](OpPassManager &pm, StringRef optionsText,
         function_ref<LogicalResult(const Twine &)> errorHandler) {
        CompilePipelineOptions options;
        if (failed(options.parseFromString(optionsText)))
          return failure();
        if (llvm::Error e = verifyCompilePipelineOptions(options))
          return errorHandler("moe-compile-pipeline: " +
                              llvm::toString(std::move(e)));
        buildCompilePipeline(pm, options);
        return success();
      },
      [](function_ref<void(const mlir::detail::PassOptions &)> optHandler) {
        optHandler(CompilePipelineOptions());
      });
  PassPipelineRegistration<>(
      "moe-lower-to-llvm",
      "Lower the output of moe-compile-pipeline to the LLVM dialect",
      buildLowerToLLVMPipeline);
}
