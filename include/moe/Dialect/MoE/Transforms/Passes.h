//===- Passes.h - Transformations of the moe dialect ------------*- C++ -*-===//
#ifndef MOE_DIALECT_MOE_TRANSFORMS_PASSES_H
#define MOE_DIALECT_MOE_TRANSFORMS_PASSES_H

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/Pass.h"
#include "moe/Dialect/MoE/IR/MoE.h"

namespace mlir::moe {

#define GEN_PASS_DECL
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"

/// The policies of moe-checkpoint (docs/design.md, "Activation
/// checkpointing").
enum class CheckpointPolicy { None, Full, Cac, Auto };

/// Parses none | full | cac | auto; the error names the valid ones.
llvm::Expected<CheckpointPolicy> parseCheckpointPolicy(llvm::StringRef text);
llvm::StringRef stringifyCheckpointPolicy(CheckpointPolicy policy);
/// Parses a checkpoint budget in bytes: empty gives none; anything but a
/// non-negative decimal integer is an error that quotes it.
llvm::Expected<std::optional<int64_t>>
parseCheckpointBudget(llvm::StringRef text);

/// Registers the named pipelines (moe-lower-to-primitives, ...).
void registerMoEPipelines();

} // namespace mlir::moe

#endif // MOE_DIALECT_MOE_TRANSFORMS_PASSES_H
