//===- MoE.h - The moe dialect ----------------------------------*- C++ -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOE_H
#define MOE_DIALECT_MOE_IR_MOE_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "moe/Dialect/MoE/IR/Mesh.h"

#include <optional>

#include "moe/Dialect/MoE/IR/MoEShardingInterface.h"

#include "moe/Dialect/MoE/IR/MoEDialect.h.inc"
#include "moe/Dialect/MoE/IR/MoEEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoEAttrs.h.inc"

#define GET_TYPEDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoETypes.h.inc"

namespace mlir::moe {
class MeshOp;
namespace detail {
/// Implementations behind CollectiveOpInterface's shared methods.
int64_t getCollectiveGroupSize(Operation *op);
bool isCollectiveStart(Operation *op);
} // namespace detail
} // namespace mlir::moe

#include "moe/Dialect/MoE/IR/MoEInterfaces.h.inc"

#define GET_OP_CLASSES
#include "moe/Dialect/MoE/IR/MoEOps.h.inc"

namespace mlir::moe {

/// The mesh a pass works on: the module's one `moe.mesh`, which must have
/// every known axis and no other, and agree with `spec` when one is given;
/// without a mesh in the module, a new `@mesh` built from `spec`. Errors
/// (prefixed with `who`) when neither exists or they disagree.
FailureOr<MeshOp> getOrCreateModuleMesh(ModuleOp module,
                                        const std::optional<MeshSpec> &spec,
                                        StringRef who);

/// True for swiglu / geglu, whose FFN has a gate projection.
inline bool isGated(Activation act) {
  return act == Activation::swiglu || act == Activation::geglu;
}

} // namespace mlir::moe

#endif // MOE_DIALECT_MOE_IR_MOE_H
