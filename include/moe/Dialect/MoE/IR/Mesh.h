//===- Mesh.h - Mesh axes and the mesh spec parser --------------*- C++ -*-===//
//
// The one definition of the mesh axes the compiler knows and the one parser
// of a mesh spec such as `dp=1,ep=2,tp=2`. Tools and pass options parse a
// spec here; passes then read the `moe.mesh` op, never a string.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_DIALECT_MOE_IR_MESH_H
#define MOE_DIALECT_MOE_IR_MESH_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

#include <cstdint>
#include <string>

namespace mlir::moe {

/// Data parallel: tokens are split, experts replicated.
inline constexpr llvm::StringLiteral kAxisDP = "dp";
/// Expert parallel: tokens and experts are split.
inline constexpr llvm::StringLiteral kAxisEP = "ep";
/// Tensor parallel: tokens are replicated, FFN widths split.
inline constexpr llvm::StringLiteral kAxisTP = "tp";

/// The axes a mesh spec may name, in canonical (row-major) order: rank `r`
/// is `r` unravelled over these sizes, the last axis fastest.
inline constexpr llvm::StringLiteral kKnownMeshAxes[] = {kAxisDP, kAxisEP,
                                                         kAxisTP};

/// The known axes as a list, e.g. to loop over or to search.
inline llvm::ArrayRef<llvm::StringLiteral> getKnownMeshAxes() {
  return kKnownMeshAxes;
}

/// "dp, ep, tp": the known axes for messages.
std::string getKnownMeshAxesString();

/// One named mesh axis and its number of ranks.
struct MeshAxis {
  std::string name;
  int64_t size = 1;

  bool operator==(const MeshAxis &other) const {
    return name == other.name && size == other.size;
  }
};

/// A device mesh: an ordered list of named axes (not a fixed set, so that
/// later passes can add axes, e.g. split `ep` into intra- and inter-node).
struct MeshSpec {
  llvm::SmallVector<MeshAxis, 4> axes;

  /// Size of the axis called `name`; 1 when the mesh has no such axis (an
  /// axis left out has one rank).
  int64_t getSize(llvm::StringRef name) const;
  bool hasAxis(llvm::StringRef name) const;
  /// Product of the axis sizes.
  int64_t getNumRanks() const;
  /// `dp=1,ep=2,tp=2`, in axis order (parses back to an equal spec).
  std::string str() const;

  bool operator==(const MeshSpec &other) const { return axes == other.axes; }
  bool operator!=(const MeshSpec &other) const { return !(*this == other); }
};

/// Parses `axis=size[,axis=size...]` (spaces around parts are ignored). The
/// result holds every known axis in canonical order; known axes left out
/// have size 1. Errors name the bad part: an entry that is not axis=size, a
/// size that is not a positive integer or is too large, an unknown axis, an
/// axis given twice, an empty spec or entry, or more ranks than an MPI rank
/// can count (2^31 - 1).
llvm::Expected<MeshSpec> parseMeshSpec(llvm::StringRef spec);

} // namespace mlir::moe

#endif // MOE_DIALECT_MOE_IR_MESH_H
