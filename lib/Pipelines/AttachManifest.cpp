//===- AttachManifest.cpp - The moe-attach-manifest pass ------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Pipelines/Manifest.h"
#include "moe/Pipelines/Passes.h"

#include "mlir/IR/Builders.h"

#include "llvm/Support/FormatVariadic.h"

#include "support/Manifest.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEATTACHMANIFEST
#include "moe/Pipelines/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;

namespace {

/// moe-run's verdict on `description`: its manifest parser, which also
/// checks how the entries fit together (a training module's forward_train,
/// backward and step_* entries and the tensors they pass), run with
/// placeholders for the files.
moert::Status askRunner(const llvm::json::Object &description) {
  moe::ManifestFiles files;
  files.source = "(check)";
  moert::Manifest runnerView;
  return moert::parseManifest(
      moe::renderManifest(llvm::json::Object(description), files),
      "manifest.json", runnerView);
}

struct AttachManifestPass
    : moe::impl::MoEAttachManifestBase<AttachManifestPass> {
  using Base::Base;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    FailureOr<llvm::json::Object> description =
        moe::describeEntryPoints(module);
    if (failed(description))
      return signalPassFailure();
    // A module moe-run would refuse is refused here, with moe-run's message,
    // instead of after lowering.
    if (checkRunner) {
      moert::Status status = askRunner(*description);
      if (!status.isOk()) {
        module.emitError() << "moe-run would refuse this module: "
                           << status.message();
        return signalPassFailure();
      }
    }
    std::string text =
        llvm::formatv("{0}", llvm::json::Value(std::move(*description))).str();
    module->setAttr(moe::MoEDialect::kManifestAttrName,
                    StringAttr::get(module.getContext(), text));
    markAllAnalysesPreserved();
  }
};

} // namespace
