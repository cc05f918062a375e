//===- moe-opt.cpp - The optimizer driver of moe-compiler -----------------===//
//
// mlir-opt with the moe dialect, its passes and pipelines registered beside
// every upstream dialect and pass. Used for pass development and lit tests;
// --moe-compile-pipeline runs exactly what moe-compile runs.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"
#include "moe/Pipelines/Pipelines.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  mlir::registerAllPasses();
  registry.insert<mlir::moe::MoEDialect>();
  mlir::moe::registerMoEPasses();
  mlir::moe::registerMoEConversionPasses();
  mlir::moe::registerMoEPipelines();
  mlir::moe::registerMoECompilePipelines();
  return mlir::asMainReturnCode(mlir::MlirOptMain(
      argc, argv, "moe-compiler optimizer driver\n", registry));
}
