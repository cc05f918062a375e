//===- AttachManifest.cpp - The moe-attach-manifest pass ------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Pipelines/Manifest.h"
#include "moe/Pipelines/Passes.h"

#include "mlir/IR/Builders.h"

#include "llvm/Support/FormatVariadic.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEATTACHMANIFEST
#include "moe/Pipelines/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;

namespace {

struct AttachManifestPass
    : moe::impl::MoEAttachManifestBase<AttachManifestPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    FailureOr<llvm::json::Object> description =
        moe::describeEntryPoints(module);
    if (failed(description))
      return signalPassFailure();
    std::string text =
        llvm::formatv("{0}", llvm::json::Value(std::move(*description))).str();
    module->setAttr(moe::MoEDialect::kManifestAttrName,
                    StringAttr::get(module.getContext(), text));
    markAllAnalysesPreserved();
  }
};

} // namespace
