//===- Pipelines.cpp - Named pass pipelines of the moe dialect ------------===//
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::moe::registerMoEPipelines() {
  PassPipelineRegistration<>(
      "moe-lower-to-primitives",
      "Decompose moe.layer into primitives, then canonicalize and CSE",
      [](OpPassManager &pm) {
        pm.addPass(createMoEDecompose());
        pm.addPass(createCanonicalizerPass());
        pm.addPass(createCSEPass());
      });
}
