//===- MoEToRuntime.cpp - moe ops to moert calls (moe-to-runtime) ---------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETORUNTIME
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;

namespace {
struct ConvertMoEToRuntimePass
    : moe::impl::ConvertMoEToRuntimeBase<ConvertMoEToRuntimePass> {
  void runOnOperation() override {
    getOperation().emitError("moe-to-runtime: not written yet");
    signalPassFailure();
  }
};
} // namespace
