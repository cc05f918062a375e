//===- Passes.h - Passes of the analyses ------------------------*- C++ -*-===//
//
// moe-print-costs: a remark on every op of the moe dialect with its time under
// the cost model (include/moe/Analysis/CostModel.h) and a total per function,
// to inspect a cluster file's effect:
//
//   moe-opt model.mlir --moe-decompose --moe-shard=mesh=ep=4 \
//       --moe-print-costs=cluster=cluster.json
//
//===----------------------------------------------------------------------===//
#ifndef MOE_ANALYSIS_PASSES_H
#define MOE_ANALYSIS_PASSES_H

#include "mlir/Pass/Pass.h"

#include <memory>

namespace mlir::moe {

/// The pass, and its registration (moe-opt gets it through
/// registerMoECompilePipelines).
std::unique_ptr<Pass> createMoEPrintCostsPass();
void registerMoEAnalysisPasses();

} // namespace mlir::moe

#endif // MOE_ANALYSIS_PASSES_H
