//===- PrintCosts.cpp - moe-print-costs: the cost model's view of ops ----===//
#include "moe/Analysis/CostModel.h"
#include "moe/Analysis/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"

#include "llvm/Support/Format.h"

using namespace mlir;
using namespace mlir::moe;

namespace {

std::string seconds(double s) {
  std::string out;
  llvm::raw_string_ostream os(out);
  os << llvm::format("%.4g s", s);
  return out;
}

struct PrintCostsPass
    : public PassWrapper<PrintCostsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(PrintCostsPass)

  PrintCostsPass() = default;
  PrintCostsPass(const PrintCostsPass &other) : PassWrapper(other) {}

  StringRef getArgument() const final { return "moe-print-costs"; }
  StringRef getDescription() const final {
    return "Remark on every moe op with its time under the cost model, and a "
           "total per function (collectives and local work, unoverlapped)";
  }

  Option<std::string> cluster{
      *this, "cluster",
      llvm::cl::desc("Cluster file (JSON); empty: the built-in cluster")};

  void runOnOperation() override {
    llvm::Expected<cost::ClusterSpec> spec = cost::loadClusterFile(cluster);
    if (!spec) {
      getOperation()->emitError() << llvm::toString(spec.takeError());
      return signalPassFailure();
    }
    cost::CostModel model(*spec);
    for (auto fn : getOperation().getOps<func::FuncOp>()) {
      double comm = 0, local = 0;
      bool complete = true;
      fn.walk([&](Operation *op) {
        if (!isa<MoEDialect>(op->getDialect()) || isa<MeshOp>(op))
          return;
        FailureOr<cost::Cost> c = model.op(op);
        if (failed(c)) {
          op->emitRemark() << op->getName()
                           << " cost: unknown (a dynamic shape)";
          complete = false;
          return;
        }
        (isa<CollectiveOpInterface>(op) ? comm : local) += c->seconds();
        op->emitRemark() << op->getName() << " cost: " << seconds(c->seconds())
                         << " (fixed " << seconds(c->fixed) << ", proportional "
                         << seconds(c->proportional) << ")";
      });
      fn.emitRemark() << "cost of @" << fn.getName() << ": "
                      << seconds(comm + local) << " (collectives "
                      << seconds(comm) << ", local " << seconds(local)
                      << ", nothing overlapped"
                      << (complete ? "" : "; some ops unknown") << ")";
    }
  }
};

} // namespace

std::unique_ptr<Pass> mlir::moe::createMoEPrintCostsPass() {
  return std::make_unique<PrintCostsPass>();
}

void mlir::moe::registerMoEAnalysisPasses() {
  PassRegistration<PrintCostsPass>();
}
