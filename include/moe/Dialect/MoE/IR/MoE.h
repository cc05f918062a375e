//===- MoE.h - The moe dialect ----------------------------------*- C++ -*-===//
#ifndef MOE_DIALECT_MOE_IR_MOE_H
#define MOE_DIALECT_MOE_IR_MOE_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "moe/Dialect/MoE/IR/Mesh.h"

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

/// True for swiglu / geglu, whose FFN has a gate projection.
inline bool isGated(Activation act) {
  return act == Activation::swiglu || act == Activation::geglu;
}

} // namespace mlir::moe

#endif // MOE_DIALECT_MOE_IR_MOE_H
