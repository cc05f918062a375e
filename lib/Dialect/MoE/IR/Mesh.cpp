//===- Mesh.cpp - The mesh spec parser ------------------------------------===//
//
// python/moe_compiler/configs.py mirrors these rules and messages: change
// both together.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/Mesh.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/MathExtras.h"

#include <limits>

using namespace mlir::moe;

namespace {

llvm::Error meshError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

/// Ranks are MPI ranks, which are `int`s.
constexpr int64_t kMaxRanks = std::numeric_limits<int32_t>::max();

} // namespace

std::string mlir::moe::getKnownMeshAxesString() {
  return llvm::join(getKnownMeshAxes(), ", ");
}

int64_t MeshSpec::getSize(llvm::StringRef name) const {
  for (const MeshAxis &a : axes)
    if (a.name == name)
      return a.size;
  return 1;
}

bool MeshSpec::hasAxis(llvm::StringRef name) const {
  return llvm::any_of(axes, [&](const MeshAxis &a) { return a.name == name; });
}

int64_t MeshSpec::getNumRanks() const {
  int64_t n = 1;
  for (const MeshAxis &a : axes)
    n *= a.size;
  return n;
}

std::string MeshSpec::str() const {
  std::string s;
  for (const MeshAxis &a : axes)
    s += (s.empty() ? "" : ",") + a.name + "=" + std::to_string(a.size);
  return s;
}

llvm::Expected<MeshSpec> mlir::moe::parseMeshSpec(llvm::StringRef spec) {
  if (spec.trim().empty())
    return meshError("empty mesh spec (expected axis=size pairs, e.g. "
                     "dp=1,ep=2,tp=2)");
  llvm::SmallVector<llvm::StringRef> parts;
  spec.split(parts, ',', /*MaxSplit=*/-1, /*KeepEmpty=*/true);
  // Sizes by known axis, and the entry that set each (for duplicates).
  llvm::SmallVector<int64_t> sizes(getKnownMeshAxes().size(), 1);
  llvm::SmallVector<llvm::StringRef> given(getKnownMeshAxes().size());
  for (llvm::StringRef raw : parts) {
    llvm::StringRef part = raw.trim();
    if (part.empty())
      return meshError("empty entry in '" + spec +
                       "' (expected axis=size pairs separated by commas)");
    auto [axisRaw, sizeRaw] = part.split('=');
    llvm::StringRef axis = axisRaw.trim(), size = sizeRaw.trim();
    if (axis.empty() || !part.contains('='))
      return meshError("'" + part + "' is not axis=size (e.g. ep=2)");
    const auto *known = llvm::find(getKnownMeshAxes(), axis);
    if (known == getKnownMeshAxes().end())
      return meshError("unknown axis '" + axis + "' (axes are " +
                       getKnownMeshAxesString() + ")");
    size_t index = known - getKnownMeshAxes().begin();
    if (!given[index].empty())
      return meshError("axis '" + axis + "' is given twice ('" + given[index] +
                       "' and '" + part + "')");
    given[index] = part;
    if (size.empty() || !llvm::all_of(size, llvm::isDigit))
      return meshError("'" + part + "': size '" + size +
                       "' is not a positive integer");
    int64_t n;
    if (size.getAsInteger(10, n))
      return meshError("'" + part + "': size " + size + " is too large");
    if (n < 1)
      return meshError("'" + part + "': size " + size +
                       " is not a positive integer");
    sizes[index] = n;
  }
  MeshSpec result;
  int64_t ranks = 1;
  for (auto [name, size] : llvm::zip(getKnownMeshAxes(), sizes)) {
    if (llvm::MulOverflow(ranks, size, ranks) || ranks > kMaxRanks)
      return meshError("'" + spec + "' has more than " +
                       llvm::Twine(kMaxRanks) + " ranks");
    result.axes.push_back({name.str(), size});
  }
  return result;
}
