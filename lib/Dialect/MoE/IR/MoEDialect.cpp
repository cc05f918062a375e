//===- MoEDialect.cpp - The moe dialect -----------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"

#include "base/CheckedMath.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallSet.h"
#include "llvm/ADT/TypeSwitch.h"

#include <optional>

using namespace mlir;
using namespace mlir::moe;

#include "moe/Dialect/MoE/IR/MoEDialect.cpp.inc"
#include "moe/Dialect/MoE/IR/MoEEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoEAttrs.cpp.inc"

#define GET_TYPEDEF_CLASSES
#include "moe/Dialect/MoE/IR/MoETypes.cpp.inc"

void MoEDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "moe/Dialect/MoE/IR/MoEOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "moe/Dialect/MoE/IR/MoEAttrs.cpp.inc"
      >();
  addTypes<
#define GET_TYPEDEF_LIST
#include "moe/Dialect/MoE/IR/MoETypes.cpp.inc"
      >();
}

//===----------------------------------------------------------------------===//
// Dialect attributes: moe.* on functions, their arguments and results, and
// on the module
//===----------------------------------------------------------------------===//

namespace {

enum class Place { Argument, Result, Operation };

StringRef placeName(Place p) {
  switch (p) {
  case Place::Argument:
    return "an argument";
  case Place::Result:
    return "a result";
  case Place::Operation:
    return "an operation";
  }
  llvm_unreachable("unknown place");
}

/// Where each attribute of the dialect may appear.
std::optional<SmallVector<Place, 2>> allowedPlaces(StringRef name) {
  using D = MoEDialect;
  if (name == D::kInputAttrName || name == D::kWeightAttrName ||
      name == D::kWeightTransposeAttrName || name == D::kSavedAttrName ||
      name == D::kGradAttrName || name == D::kStateAttrName ||
      name == D::kHparamsAttrName)
    return SmallVector<Place, 2>{Place::Argument};
  if (name == D::kOutputAttrName)
    return SmallVector<Place, 2>{Place::Result};
  if (name == D::kShardAttrName || name == D::kGlobalShapeAttrName)
    return SmallVector<Place, 2>{Place::Argument, Place::Result};
  if (name == D::kArenaBytesAttrName || name == D::kManifestAttrName ||
      name == D::kRecomputeAttrName || name == D::kCheckpointAttrName ||
      name == D::kHoldWeightsAttrName)
    return SmallVector<Place, 2>{Place::Operation};
  return std::nullopt;
}

/// Checks the name is one of the dialect's and belongs at `place`.
LogicalResult verifyPlace(Operation *op, StringRef name, Place place) {
  std::optional<SmallVector<Place, 2>> places = allowedPlaces(name);
  if (!places)
    return op->emitError() << "unknown moe dialect attribute '" << name << "'";
  if (llvm::is_contained(*places, place))
    return success();
  return op->emitError() << "'" << name << "' is not valid on "
                         << placeName(place) << " (it belongs on "
                         << placeName(places->front()) << ")";
}

LogicalResult verifyName(Operation *op, NamedAttribute attr) {
  auto s = dyn_cast<StringAttr>(attr.getValue());
  if (!s || s.getValue().empty())
    return op->emitError() << "'" << attr.getName().getValue()
                           << "' must be a non-empty string, got "
                           << attr.getValue();
  return success();
}

/// The one moe.mesh of the module that holds `op`, or an error naming
/// `what` (the attribute that needs it).
FailureOr<MeshOp> moduleMesh(Operation *op, StringRef what) {
  MeshOp mesh;
  int count = 0;
  if (Operation *parent = op->getParentOp())
    for (Region &region : parent->getRegions())
      for (Block &block : region)
        for (auto m : block.getOps<MeshOp>()) {
          mesh = m;
          ++count;
        }
  if (count == 1)
    return mesh;
  if (count == 0)
    return op->emitError() << "'" << what
                           << "' names mesh axes but the module has no "
                              "moe.mesh";
  return op->emitError() << "'" << what << "' is ambiguous: the module has "
                         << count << " moe.mesh ops";
}

/// The type of argument / result `index` of function `op`.
FailureOr<RankedTensorType> annotatedTensor(Operation *op, Place place,
                                            unsigned index, StringRef what) {
  auto fn = dyn_cast<FunctionOpInterface>(op);
  if (!fn)
    return op->emitError() << "'" << what << "' is only valid on function "
                           << (place == Place::Argument ? "arguments"
                                                        : "results");
  ArrayRef<Type> types =
      place == Place::Argument ? fn.getArgumentTypes() : fn.getResultTypes();
  if (index >= types.size())
    return op->emitError() << "'" << what << "' on missing "
                           << (place == Place::Argument ? "argument "
                                                        : "result ")
                           << index;
  auto t = dyn_cast<RankedTensorType>(types[index]);
  if (!t)
    return op->emitError() << "'" << what << "' needs a ranked tensor, got "
                           << types[index];
  return t;
}

DictionaryAttr attrDict(Operation *op, Place place, unsigned index) {
  auto fn = cast<FunctionOpInterface>(op);
  return place == Place::Argument ? fn.getArgAttrDict(index)
                                  : fn.getResultAttrDict(index);
}

/// `moe.shard`: per tensor dimension, the distinct mesh axes it is split
/// over. Returns the sizes' product per dimension (for moe.global_shape).
FailureOr<SmallVector<int64_t>>
verifyShard(Operation *op, RankedTensorType type, Attribute value) {
  StringRef what = MoEDialect::kShardAttrName;
  auto dims = dyn_cast<ArrayAttr>(value);
  if (!dims)
    return op->emitError() << "'" << what
                           << "' must be an array of axis-name arrays, got "
                           << value;
  if (int64_t(dims.size()) != type.getRank())
    return op->emitError() << "'" << what << "' has " << dims.size()
                           << " entries but the tensor " << type << " has "
                           << type.getRank() << " dimensions";
  SmallVector<int64_t> factors;
  llvm::SmallSet<StringRef, 4> seen;
  MeshOp mesh;
  for (auto [d, entry] : llvm::enumerate(dims)) {
    auto axes = dyn_cast<ArrayAttr>(entry);
    if (!axes || !llvm::all_of(axes, llvm::IsaPred<StringAttr>))
      return op->emitError()
             << "'" << what << "' entry " << d
             << " must be an array of axis names, got " << entry;
    int64_t factor = 1;
    for (Attribute a : axes) {
      StringRef axis = cast<StringAttr>(a).getValue();
      if (!mesh) {
        FailureOr<MeshOp> m = moduleMesh(op, what);
        if (failed(m))
          return failure();
        mesh = *m;
      }
      if (mesh.getAxisIndex(axis) < 0)
        return op->emitError()
               << "'" << what << "' names axis '" << axis
               << "', which is not an axis of @" << mesh.getSymName();
      if (!seen.insert(axis).second)
        return op->emitError()
               << "'" << what << "' uses axis '" << axis << "' twice";
      factor *= mesh.getAxisSize(axis);
    }
    factors.push_back(factor);
  }
  return factors;
}

/// Sizes come from the user's IR: a shape whose bytes overflow int64 would
/// wrap around in every size computed from it (the manifest, the arena), so
/// it is an error here, where the tensor types of a model graph enter.
LogicalResult verifyByteSize(Operation *op, ArrayRef<int64_t> shape,
                             Type elementType, const Twine &what) {
  if (!elementType.isIntOrFloat() || ShapedType::isDynamicShape(shape))
    return success();
  int64_t bytes;
  int64_t elementBytes = (elementType.getIntOrFloatBitWidth() + 7) / 8;
  if (moert::checkedByteSize(shape, elementBytes, bytes))
    return success();
  std::string dims;
  llvm::raw_string_ostream os(dims);
  for (int64_t d : shape)
    os << d << "x";
  os << elementType;
  return op->emitError() << what << " (" << dims
                         << ") has more bytes than fit in 64 bits";
}

/// `moe.global_shape`: the tensor's shape before sharding, i.e. each local
/// dimension times the sizes of the axes `moe.shard` splits it over.
LogicalResult verifyGlobalShape(Operation *op, RankedTensorType type,
                                Attribute value, DictionaryAttr siblings) {
  StringRef what = MoEDialect::kGlobalShapeAttrName;
  auto global = dyn_cast<DenseI64ArrayAttr>(value);
  if (!global)
    return op->emitError() << "'" << what
                           << "' must be an array<i64: ...>, got " << value;
  if (int64_t(global.size()) != type.getRank())
    return op->emitError() << "'" << what << "' has rank " << global.size()
                           << " but the tensor " << type << " has rank "
                           << type.getRank();
  SmallVector<int64_t> factors(type.getRank(), 1);
  if (Attribute shard = siblings.get(MoEDialect::kShardAttrName)) {
    // A bad moe.shard is reported when it is verified itself.
    FailureOr<SmallVector<int64_t>> f = verifyShard(op, type, shard);
    if (failed(f))
      return failure();
    factors = *f;
  }
  for (auto [d, g] : llvm::enumerate(global.asArrayRef())) {
    int64_t local = type.getDimSize(d);
    if (ShapedType::isDynamic(local))
      continue;
    int64_t product;
    if (!moert::checkedMul(local, factors[d], product) || g != product)
      return op->emitError()
             << "'" << what << "' dimension " << d << " is " << g
             << " but the local size " << local << " split " << factors[d]
             << " ways gives " << local * factors[d];
  }
  return verifyByteSize(op, global.asArrayRef(), type.getElementType(),
                        "'" + what.str() + "'");
}

LogicalResult verifyValueAttribute(Operation *op, Place place, unsigned index,
                                   NamedAttribute attr) {
  StringRef name = attr.getName().getValue();
  if (failed(verifyPlace(op, name, place)))
    return failure();
  FailureOr<RankedTensorType> type = annotatedTensor(op, place, index, name);
  if (failed(type))
    return failure();
  if (failed(verifyByteSize(
          op, type->getShape(), type->getElementType(),
          Twine(place == Place::Argument ? "argument " : "result ") +
              Twine(index))))
    return failure();
  DictionaryAttr siblings = attrDict(op, place, index);
  using D = MoEDialect;
  if (name == D::kInputAttrName || name == D::kWeightAttrName ||
      name == D::kOutputAttrName || name == D::kSavedAttrName ||
      name == D::kGradAttrName || name == D::kStateAttrName ||
      name == D::kHparamsAttrName) {
    if (failed(verifyName(op, attr)))
      return failure();
    // An argument has one role (docs/module-format.md): report the pair
    // once, from the first of the two in this order.
    static constexpr StringLiteral roles[] = {
        D::kInputAttrName, D::kWeightAttrName, D::kSavedAttrName,
        D::kGradAttrName,  D::kStateAttrName,  D::kHparamsAttrName};
    if (place == Place::Argument) {
      const StringLiteral *self = llvm::find(roles, name);
      for (const StringLiteral *other = self + 1; other != std::end(roles);
           ++other)
        if (siblings.get(*other))
          return op->emitError() << "argument " << index << " has both '"
                                 << name << "' and '" << *other << "'";
    }
    if (name == D::kHparamsAttrName &&
        (type->getRank() != 1 || type->getDimSize(0) != 8 ||
         !type->getElementType().isF32()))
      return op->emitError() << "'" << name
                             << "' needs the f32 [8] hyperparameter tensor, "
                                "got "
                             << *type;
    return success();
  }
  if (name == D::kWeightTransposeAttrName) {
    if (!isa<UnitAttr>(attr.getValue()))
      return op->emitError()
             << "'" << name << "' is a unit attribute, got " << attr.getValue();
    if (!siblings.get(D::kWeightAttrName))
      return op->emitError() << "'" << name << "' needs '" << D::kWeightAttrName
                             << "' on argument " << index;
    if (type->getRank() < 2)
      return op->emitError() << "'" << name
                             << "' needs a weight of matrices (rank >= 2), "
                                "got "
                             << *type;
    return success();
  }
  if (name == D::kShardAttrName)
    return verifyShard(op, *type, attr.getValue());
  return verifyGlobalShape(op, *type, attr.getValue(), siblings);
}

} // namespace

LogicalResult MoEDialect::verifyRegionArgAttribute(Operation *op, unsigned,
                                                   unsigned argIndex,
                                                   NamedAttribute attr) {
  return verifyValueAttribute(op, Place::Argument, argIndex, attr);
}

LogicalResult MoEDialect::verifyRegionResultAttribute(Operation *op, unsigned,
                                                      unsigned resultIndex,
                                                      NamedAttribute attr) {
  return verifyValueAttribute(op, Place::Result, resultIndex, attr);
}

LogicalResult MoEDialect::verifyOperationAttribute(Operation *op,
                                                   NamedAttribute attr) {
  StringRef name = attr.getName().getValue();
  if (failed(verifyPlace(op, name, Place::Operation)))
    return failure();
  if (name == kArenaBytesAttrName) {
    if (!isa<FunctionOpInterface>(op))
      return op->emitError()
             << "'" << name << "' belongs on a lowered entry function";
    auto bytes = dyn_cast<IntegerAttr>(attr.getValue());
    if (!bytes || !bytes.getType().isInteger(64) || bytes.getInt() < 0)
      return op->emitError()
             << "'" << name << "' must be a non-negative i64, got "
             << attr.getValue();
    return success();
  }
  if (name == kRecomputeAttrName) {
    if (!isa<UnitAttr>(attr.getValue()))
      return op->emitError()
             << "'" << name << "' is a unit attribute, got " << attr.getValue();
    return success();
  }
  if (name == kHoldWeightsAttrName) {
    if (!isa<ExpertFFNOp, ExpertFFNTrainOp>(op))
      return op->emitError() << "'" << name
                             << "' belongs on moe.expert_ffn or "
                                "moe.expert_ffn_train";
    auto s = dyn_cast<StringAttr>(attr.getValue());
    if (!s || (s.getValue() != "open" && s.getValue() != "close"))
      return op->emitError()
             << "'" << name << "' must be \"open\" or \"close\", got "
             << attr.getValue();
    return success();
  }
  if (name == kCheckpointAttrName) {
    if (!isa<ModuleOp>(op))
      return op->emitError() << "'" << name << "' belongs on the module";
    if (!isa<DictionaryAttr>(attr.getValue()))
      return op->emitError() << "'" << name << "' must be a dictionary, got "
                             << attr.getValue();
    return success();
  }
  // moe.manifest
  if (!isa<ModuleOp>(op))
    return op->emitError() << "'" << name << "' belongs on the module";
  if (!isa<StringAttr>(attr.getValue()))
    return op->emitError() << "'" << name << "' must be a string, got "
                           << attr.getValue();
  return success();
}
