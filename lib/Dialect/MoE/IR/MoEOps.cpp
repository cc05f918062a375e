//===- MoEOps.cpp - Verifiers, folders and patterns of moe ops ------------===//
//
// Structural rules live here; every message names the values it compares so
// that a user can fix the IR (or the config it came from) without guessing.
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/SmallSet.h"

#include <cmath>

using namespace mlir;
using namespace mlir::moe;

//===----------------------------------------------------------------------===//
// Helpers
//===----------------------------------------------------------------------===//

namespace {

RankedTensorType tensorType(Value v) {
  return cast<RankedTensorType>(v.getType());
}

/// Two extents agree when equal or when either is dynamic.
bool sameDim(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

std::string dimStr(int64_t d) {
  return ShapedType::isDynamic(d) ? "?" : std::to_string(d);
}

std::string shapeStr(ArrayRef<int64_t> shape) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(shape))
    s += (i ? ", " : "") + dimStr(d);
  return s + "]";
}

std::string shapeStr(Value v) { return shapeStr(tensorType(v).getShape()); }

/// Checks `v` has the expected shape (dynamic entries match anything);
/// `what` names the operand in the message.
LogicalResult expectShape(Operation *op, RankedTensorType type,
                          ArrayRef<int64_t> expected, StringRef what) {
  ArrayRef<int64_t> shape = type.getShape();
  bool ok = shape.size() == expected.size();
  for (size_t i = 0; ok && i < shape.size(); ++i)
    ok = sameDim(shape[i], expected[i]);
  if (ok)
    return success();
  return op->emitOpError() << what << " has shape " << shapeStr(shape)
                           << ", expected " << shapeStr(expected);
}

LogicalResult expectShape(Operation *op, Value v, ArrayRef<int64_t> expected,
                          StringRef what) {
  return expectShape(op, tensorType(v), expected, what);
}

LogicalResult expectSameElementType(Operation *op, Value a, Value b,
                                    StringRef aName, StringRef bName) {
  Type ea = tensorType(a).getElementType(), eb = tensorType(b).getElementType();
  if (ea == eb)
    return success();
  return op->emitOpError() << aName << " element type " << ea
                           << " differs from " << bName << " element type "
                           << eb;
}

/// Checks that an op which keeps its input's shape and element type does.
LogicalResult expectSameType(Operation *op, Type result, Type input) {
  if (result == input)
    return success();
  return op->emitOpError() << "result type " << result
                           << " differs from input type " << input;
}

/// Checks the FFN weight set of `moe.expert_ffn` / `moe.mlp` / `moe.layer`.
/// `lead` holds the leading dims (`{E}` for experts, `{}` for dense).
LogicalResult verifyFFNWeights(Operation *op, Value gate, Value up, Value down,
                               Activation act, ArrayRef<int64_t> lead,
                               int64_t d, StringRef prefix) {
  std::string p = prefix.str();
  if (isGated(act) && !gate)
    return op->emitOpError() << "activation '" << stringifyActivation(act)
                             << "' needs the " << p << "gate weight";
  if (!isGated(act) && gate)
    return op->emitOpError() << "activation '" << stringifyActivation(act)
                             << "' takes no " << p << "gate weight";
  ArrayRef<int64_t> upShape = tensorType(up).getShape();
  if (upShape.size() != lead.size() + 2)
    return op->emitOpError() << p << "up weight has rank " << upShape.size()
                             << ", expected " << lead.size() + 2;
  int64_t f = upShape[lead.size()];
  SmallVector<int64_t> fd(lead), df(lead);
  fd.append({f, d});
  df.append({d, f});
  if (failed(expectShape(op, up, fd, p + "up weight")) ||
      failed(expectShape(op, down, df, p + "down weight")))
    return failure();
  if (gate && failed(expectShape(op, gate, fd, p + "gate weight")))
    return failure();
  return success();
}

/// The operands shared by `moe.expert_ffn`, `moe.expert_ffn_train` and
/// `moe.expert_ffn_grad`: a packed (2-D) input needs counts, a capacity
/// (3-D) input has the weights' experts, the weight set, and the counts'
/// experts.
LogicalResult verifyExpertFFNOperands(Operation *op, Value input, Value counts,
                                      Value gate, Value up, Value down,
                                      Activation act) {
  auto x = cast<RankedTensorType>(input.getType());
  int64_t e = cast<RankedTensorType>(up.getType()).getDimSize(0),
          d = x.getShape().back();
  if (x.getRank() == 2 && !counts)
    return op->emitOpError() << "packed (2-D) input needs counts";
  if (x.getRank() == 3 && !sameDim(x.getDimSize(0), e))
    return op->emitOpError()
           << "capacity buffer has " << dimStr(x.getDimSize(0))
           << " experts but the weights have " << dimStr(e);
  if (failed(verifyFFNWeights(op, gate, up, down, act, {e}, d, "")))
    return failure();
  if (counts) {
    int64_t ce = cast<RankedTensorType>(counts.getType()).getDimSize(1);
    if (!sameDim(ce, e))
      return op->emitOpError() << "counts have " << dimStr(ce)
                               << " experts but the weights have " << dimStr(e);
  }
  return success();
}

/// The results and the scaling shared by `moe.topk` and `moe.topk_forced`:
/// routed_scaling positive, weights and indices [t, k], scores [t, e].
LogicalResult verifyRoutingResults(Operation *op, APFloat routedScaling,
                                   Value weights, Value indices, Value scores,
                                   int64_t t, int64_t k, int64_t e) {
  if (!(routedScaling.convertToFloat() > 0))
    return op->emitOpError()
           << "routed_scaling (" << routedScaling.convertToFloat()
           << ") must be positive";
  if (failed(expectShape(op, weights, {t, k}, "weights result")) ||
      failed(expectShape(op, indices, {t, k}, "indices result")))
    return failure();
  return expectShape(op, scores, {t, e}, "scores result");
}
} // namespace

//===----------------------------------------------------------------------===//
// MeshOp
//===----------------------------------------------------------------------===//

LogicalResult MeshOp::verify() {
  ArrayRef<int64_t> shape = getShape();
  if (getAxes().size() != shape.size())
    return emitOpError() << "has " << getAxes().size() << " axis names but "
                         << shape.size() << " axis sizes";
  llvm::SmallSet<StringRef, 4> seen;
  for (auto [name, size] : llvm::zip(getAxes(), shape)) {
    StringRef n = cast<StringAttr>(name).getValue();
    if (n.empty())
      return emitOpError() << "has an empty axis name";
    if (!seen.insert(n).second)
      return emitOpError() << "axis '" << n << "' appears twice";
    if (size < 1)
      return emitOpError() << "axis '" << n << "' has size " << size
                           << ", expected at least 1";
  }
  return success();
}

int64_t MeshOp::getAxisIndex(StringRef name) {
  for (auto [i, a] : llvm::enumerate(getAxes()))
    if (cast<StringAttr>(a).getValue() == name)
      return i;
  return -1;
}

int64_t MeshOp::getAxisSize(StringRef name) {
  int64_t i = getAxisIndex(name);
  if (i < 0 || i >= int64_t(getShape().size()))
    return 1;
  return getShape()[i];
}

void MeshOp::build(OpBuilder &b, OperationState &state, StringRef symName,
                   const MeshSpec &spec) {
  SmallVector<StringRef> names;
  SmallVector<int64_t> sizes;
  for (const MeshAxis &a : spec.axes) {
    names.push_back(a.name);
    sizes.push_back(a.size);
  }
  build(b, state, b.getStringAttr(symName), b.getStrArrayAttr(names),
        b.getDenseI64ArrayAttr(sizes));
}

MeshSpec MeshOp::getSpec() {
  MeshSpec spec;
  for (auto [name, size] : llvm::zip(getAxes(), getShape()))
    spec.axes.push_back({cast<StringAttr>(name).getValue().str(), size});
  return spec;
}

int64_t MeshOp::getGroupSize(ArrayAttr axes) {
  int64_t n = 1;
  for (Attribute a : axes) {
    int64_t i = getAxisIndex(cast<StringAttr>(a).getValue());
    if (i < 0 || i >= int64_t(getShape().size())) // unknown, or a bad mesh
      return -1;
    n *= getShape()[i];
  }
  return n;
}

int64_t MeshOp::getNumRanks() {
  int64_t n = 1;
  for (int64_t s : getShape())
    n *= s;
  return n;
}

FailureOr<MeshOp> mlir::moe::getOrCreateModuleMesh(
    ModuleOp module, const std::optional<MeshSpec> &spec, StringRef who) {
  SmallVector<MeshOp> meshes(module.getOps<MeshOp>());
  if (meshes.size() > 1)
    return meshes[1].emitError() << who << ": the module has " << meshes.size()
                                 << " moe.mesh ops; expected at most one";
  if (meshes.empty()) {
    if (!spec)
      return module.emitError()
             << who
             << " needs a mesh: a moe.mesh op in the module or the mesh "
                "option, e.g. mesh=dp=1,ep=2,tp=2";
    OpBuilder b(module.getBodyRegion());
    b.setInsertionPointToStart(module.getBody());
    return MeshOp::create(b, module.getLoc(), "mesh", *spec);
  }
  MeshOp mesh = meshes.front();
  for (Attribute a : mesh.getAxes())
    if (!llvm::is_contained(getKnownMeshAxes(), cast<StringAttr>(a).getValue()))
      return mesh.emitError()
             << who << ": axis '" << cast<StringAttr>(a).getValue()
             << "' is not one it can shard over (axes are "
             << getKnownMeshAxesString() << ")";
  for (StringRef axis : getKnownMeshAxes())
    if (mesh.getAxisIndex(axis) < 0)
      return mesh.emitError()
             << who << ": the mesh has no axis '" << axis
             << "'; give every axis of " << getKnownMeshAxesString()
             << " (size 1 for an unused one)";
  if (spec)
    for (StringRef axis : getKnownMeshAxes())
      if (spec->getSize(axis) != mesh.getAxisSize(axis))
        return mesh.emitError()
               << who << ": the mesh option (" << spec->str()
               << ") disagrees with @" << mesh.getSymName() << " ("
               << mesh.getSpec().str() << ") on axis '" << axis << "'";
  return mesh;
}

//===----------------------------------------------------------------------===//
// Model graph and routing
//===----------------------------------------------------------------------===//

LogicalResult RMSNormOp::verify() {
  if (!(getEps().convertToFloat() > 0))
    return emitOpError() << "eps (" << getEps().convertToFloat()
                         << ") must be positive";
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(expectShape(*this, getWeight(), {d}, "weight")) ||
      failed(expectSameElementType(*this, getInput(), getWeight(), "input",
                                   "weight")))
    return failure();
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

LogicalResult LayerNormOp::verify() {
  if (!(getEps().convertToFloat() > 0))
    return emitOpError() << "eps (" << getEps().convertToFloat()
                         << ") must be positive";
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(expectShape(*this, getWeight(), {d}, "weight")) ||
      failed(expectSameElementType(*this, getInput(), getWeight(), "input",
                                   "weight")))
    return failure();
  if (Value b = getBias())
    if (failed(expectShape(*this, b, {d}, "bias")) ||
        failed(expectSameElementType(*this, getInput(), b, "input", "bias")))
      return failure();
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

LogicalResult RouterOp::verify() {
  auto x = tensorType(getInput()), w = tensorType(getWeight());
  if (!sameDim(x.getDimSize(1), w.getDimSize(1)))
    return emitOpError() << "router weight has " << dimStr(w.getDimSize(1))
                         << " columns but tokens have D = "
                         << dimStr(x.getDimSize(1));
  if (failed(expectSameElementType(*this, getInput(), getWeight(), "input",
                                   "weight")))
    return failure();
  return expectShape(*this, getLogits(), {x.getDimSize(0), w.getDimSize(0)},
                     "result");
}

LogicalResult TopKOp::verify() {
  auto logits = tensorType(getLogits());
  int64_t t = logits.getDimSize(0), e = logits.getDimSize(1);
  int64_t k = getK(), groups = getNumGroups(), kept = getGroupsKept();
  if (!ShapedType::isDynamic(e) && k > e)
    return emitOpError() << "k (" << k << ") exceeds the number of experts ("
                         << e << ")";
  if (getBias() && failed(expectShape(*this, getBias(), {e}, "bias")))
    return failure();
  if (kept > groups)
    return emitOpError() << "groups_kept (" << kept << ") exceeds num_groups ("
                         << groups << ")";
  if (!ShapedType::isDynamic(e)) {
    if (e % groups != 0)
      return emitOpError() << "num_groups (" << groups
                           << ") does not divide the number of experts (" << e
                           << ")";
    if (k > kept * (e / groups))
      return emitOpError() << "k (" << k << ") exceeds the "
                           << kept * (e / groups) << " experts selectable in "
                           << kept << " kept groups";
    if (groups > 1 && getGroupScore() == GroupScore::top2_sum && e / groups < 2)
      return emitOpError() << "group score 'top2_sum' needs at least 2 "
                              "experts per group, got "
                           << e / groups;
  }
  return verifyRoutingResults(*this, getRoutedScaling(), getWeights(),
                              getIndices(), getScores(), t, k, e);
}

LogicalResult TopKForcedOp::verify() {
  auto logits = tensorType(getLogits());
  auto forced = tensorType(getForced());
  int64_t t = logits.getDimSize(0), e = logits.getDimSize(1);
  int64_t k = forced.getDimSize(1);
  if (!sameDim(forced.getDimSize(0), t))
    return emitOpError() << "forced indices have "
                         << dimStr(forced.getDimSize(0))
                         << " rows but the logits have " << dimStr(t)
                         << " tokens";
  if (!ShapedType::isDynamic(e) && !ShapedType::isDynamic(k) && k > e)
    return emitOpError() << "the forced indices choose " << k
                         << " experts per token, more than the " << e
                         << " experts of the logits";
  return verifyRoutingResults(*this, getRoutedScaling(), getWeights(),
                              getIndices(), getScores(), t, k, e);
}

LogicalResult AssignOp::verify() {
  auto idx = tensorType(getIndices());
  int64_t t = idx.getDimSize(0), groups = getGroups();
  if (isDropless() && groups != 1)
    return emitOpError() << "dropless assignment (capacity 0) has no token "
                            "groups, got groups = "
                         << groups;
  if (!ShapedType::isDynamic(t) && t % groups != 0)
    return emitOpError() << "groups (" << groups
                         << ") does not divide the number of tokens (" << t
                         << ")";
  if (failed(expectShape(*this, getPositions(), idx.getShape(),
                         "positions result")))
    return failure();
  return expectShape(*this, getCounts(), {groups, int64_t(getNumExperts())},
                     "counts result");
}

//===----------------------------------------------------------------------===//
// Dispatch, expert FFN, combine
//===----------------------------------------------------------------------===//

LogicalResult DispatchOp::verify() {
  auto x = tensorType(getInput()), out = tensorType(getOutput());
  if (!sameDim(out.getShape().back(), x.getDimSize(1)))
    return emitOpError() << "buffer rows have " << dimStr(out.getShape().back())
                         << " elements but tokens have D = "
                         << dimStr(x.getDimSize(1));
  if (!sameDim(tensorType(getPositions()).getDimSize(0), x.getDimSize(0)))
    return emitOpError() << "positions are for "
                         << dimStr(tensorType(getPositions()).getDimSize(0))
                         << " tokens but the input has "
                         << dimStr(x.getDimSize(0));
  return expectSameElementType(*this, getInput(), getOutput(), "input",
                               "result");
}

LogicalResult ExpertFFNPrepareOp::verify() {
  auto up = cast<RankedTensorType>(getUp().getType());
  return verifyFFNWeights(*this, getGate(), getUp(), getDown(), getActivation(),
                          {up.getDimSize(0)}, up.getDimSize(2), "");
}

LogicalResult ExpertFFNOp::verify() {
  auto x = tensorType(getInput());
  if (failed(verifyExpertFFNOperands(*this, getInput(), getCounts(), getGate(),
                                     getUp(), getDown(), getActivation())))
    return failure();
  if (Value counts = getCounts()) {
    auto c = tensorType(counts);
    int64_t s = c.getDimSize(0), r = x.getRank() == 3 ? x.getDimSize(1) : 0;
    if (x.getRank() == 3 && !ShapedType::isDynamic(s) &&
        !ShapedType::isDynamic(r) && r % s != 0)
      return emitOpError() << "capacity rows per expert (" << r
                           << ") are not divisible by the " << s
                           << " count segments";
  }
  for (auto [w, name] :
       {std::pair{getUp(), "up weight"}, std::pair{getDown(), "down weight"}})
    if (failed(expectSameElementType(*this, getInput(), w, "input", name)))
      return failure();
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

LogicalResult CombineOp::verify() {
  auto y = tensorType(getInput()), pos = tensorType(getPositions());
  int64_t t = pos.getDimSize(0), k = pos.getDimSize(1), d = y.getShape().back();
  if (failed(expectShape(*this, getWeights(), {t, k}, "weights")) ||
      failed(expectShape(*this, getOutput(), {t, d}, "result")) ||
      failed(expectSameElementType(*this, getInput(), getOutput(), "input",
                                   "result")))
    return failure();
  if (Value p = getPassthrough())
    if (failed(expectShape(*this, p, {t, d}, "passthrough")))
      return failure();
  return success();
}

LogicalResult MLPOp::verify() {
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(verifyFFNWeights(*this, getGate(), getUp(), getDown(),
                              getActivation(), {}, d, "")))
    return failure();
  if (Value g = getSigmoidGate())
    if (failed(expectShape(*this, g, {1, d}, "sigmoid gate")))
      return failure();
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

LogicalResult ExpertLoadOp::verify() {
  auto s = tensorType(getScores());
  if (!sameDim(tensorType(getIndices()).getDimSize(0), s.getDimSize(0)))
    return emitOpError() << "indices are for "
                         << dimStr(tensorType(getIndices()).getDimSize(0))
                         << " tokens but scores for "
                         << dimStr(s.getDimSize(0));
  return expectShape(*this, getStats(), {2, s.getDimSize(1)}, "result");
}

LogicalResult LoadBalanceLossOp::verify() {
  if (tensorType(getStats()).getDimSize(0) != 2)
    return emitOpError() << "stats have shape " << shapeStr(getStats())
                         << ", expected [2, E] (counts and score sums)";
  return success();
}

/// A token mask and the real-token count come together, the mask with one
/// entry per row of `rowsOf`.
static LogicalResult verifyTokenMask(Operation *op, Value mask, Value count,
                                     Value rowsOf, StringRef rowsName) {
  if (bool(mask) != bool(count))
    return op->emitOpError() << (mask ? "has a token mask but no count"
                                      : "has a count but no token mask");
  if (!mask)
    return success();
  int64_t m = tensorType(mask).getDimSize(0);
  int64_t t = tensorType(rowsOf).getDimSize(0);
  if (!sameDim(m, t))
    return op->emitOpError()
           << "token mask has " << dimStr(m) << " entries but " << rowsName
           << " have " << dimStr(t) << " rows";
  return success();
}

LogicalResult ZLossOp::verify() {
  int64_t t = tensorType(getLogits()).getDimSize(0);
  if (!ShapedType::isDynamic(t) && int64_t(getTokens()) < t)
    return emitOpError() << "tokens (" << getTokens() << ") is less than the "
                         << t << " tokens of the logits";
  return verifyTokenMask(*this, getMask(), getCount(), getLogits(), "logits");
}

LogicalResult MaskRowsOp::verify() {
  int64_t m = tensorType(getMask()).getDimSize(0);
  int64_t t = tensorType(getInput()).getDimSize(0);
  if (!sameDim(m, t))
    return emitOpError() << "token mask has " << dimStr(m)
                         << " entries but the input has " << dimStr(t)
                         << " rows";
  return success();
}

//===----------------------------------------------------------------------===//
// LayerOp
//===----------------------------------------------------------------------===//

int64_t LayerOp::computeCapacity() {
  if (getCapacity() > 0)
    return getCapacity();
  float cf = getCapacityFactor().convertToFloat();
  if (cf <= 0)
    return 0;
  int64_t t = tensorType(getInput()).getDimSize(0) / getTokenGroups();
  double c = std::ceil(double(cf) * double(t) * double(getTopK()) /
                       double(getNumExperts()));
  return std::max<int64_t>(std::max<int64_t>(int64_t(c), 1), getMinCapacity());
}

LogicalResult LayerOp::verify() {
  auto x = tensorType(getInput());
  int64_t t = x.getDimSize(0), d = x.getDimSize(1);
  int64_t e = getNumExperts(), k = getTopK();
  if (k > e)
    return emitOpError() << "top_k (" << k
                         << ") exceeds the number of experts (" << e << ")";
  if (failed(expectShape(*this, getRouterWeight(), {e, d}, "router weight")))
    return failure();
  if (getBias() && failed(expectShape(*this, getBias(), {e}, "bias")))
    return failure();
  if (tensorType(getUp()).getDimSize(0) != e)
    return emitOpError() << "expert weights hold "
                         << dimStr(tensorType(getUp()).getDimSize(0))
                         << " experts but num_experts is " << e;
  if (failed(verifyFFNWeights(*this, getGate(), getUp(), getDown(),
                              getActivation(), {e}, d, "expert ")))
    return failure();

  int64_t groups = getNumGroups(), kept = getGroupsKept();
  if (e % groups != 0)
    return emitOpError() << "num_groups (" << groups
                         << ") does not divide the number of experts (" << e
                         << ")";
  if (kept > groups)
    return emitOpError() << "groups_kept (" << kept << ") exceeds num_groups ("
                         << groups << ")";
  if (k > kept * (e / groups))
    return emitOpError() << "top_k (" << k << ") exceeds the "
                         << kept * (e / groups) << " experts selectable in "
                         << kept << " kept groups";
  if (groups > 1 && getGroupScore() == GroupScore::top2_sum && e / groups < 2)
    return emitOpError() << "group score 'top2_sum' needs at least 2 experts "
                            "per group, got "
                         << e / groups;
  if (!(getRoutedScaling().convertToFloat() > 0))
    return emitOpError() << "routed_scaling ("
                         << getRoutedScaling().convertToFloat()
                         << ") must be positive";

  float cf = getCapacityFactor().convertToFloat();
  if (!(cf >= 0)) // also NaN, which would read as neither dropless nor capped
    return emitOpError() << "capacity_factor (" << cf
                         << ") must be >= 0 (0 = dropless)";
  int64_t tg = getTokenGroups();
  if (!ShapedType::isDynamic(t) && t % tg != 0)
    return emitOpError() << "token_groups (" << tg
                         << ") does not divide the number of tokens (" << t
                         << ")";
  if (isDropless() && tg != 1)
    return emitOpError() << "token_groups (" << tg
                         << ") needs a capacity: dropless routing has no "
                            "token groups";
  if (getDropPolicy() == DropPolicy::passthrough && isDropless())
    return emitOpError() << "drop_policy 'passthrough' needs a capacity";

  // Shared experts: count, intermediate size and weights agree.
  int64_t ns = getNumSharedExperts(), fs = getSharedIntermediate();
  bool hasShared = getSharedUp() || getSharedDown() || getSharedGate();
  if (ns > 0 && !(getSharedUp() && getSharedDown()))
    return emitOpError() << "num_shared_experts is " << ns
                         << " but shared up/down weights are missing";
  if (ns == 0 && hasShared)
    return emitOpError()
           << "shared expert weights given but num_shared_experts is 0";
  if (ns > 0) {
    if (failed(verifyFFNWeights(*this, getSharedGate(), getSharedUp(),
                                getSharedDown(), getActivation(), {}, d,
                                "shared ")))
      return failure();
    int64_t fsw = tensorType(getSharedUp()).getDimSize(0);
    if (fs != fsw)
      return emitOpError() << "shared_intermediate (" << fs
                           << ") differs from the shared weights' "
                           << dimStr(fsw) << " rows";
  }
  if (getSharedGated() != bool(getSharedSigmoidGate()))
    return emitOpError() << (getSharedGated()
                                 ? "shared_gated needs a shared_sigmoid_gate "
                                   "weight"
                                 : "shared_sigmoid_gate given without "
                                   "shared_gated");
  if (getSharedGated() && ns == 0)
    return emitOpError() << "shared_gated without shared experts";
  if (Value g = getSharedSigmoidGate())
    if (failed(expectShape(*this, g, {1, d}, "shared sigmoid gate")))
      return failure();

  if (Value m = getTokenMask())
    if (!sameDim(tensorType(m).getDimSize(0), t))
      return emitOpError() << "token_mask has "
                           << dimStr(tensorType(m).getDimSize(0))
                           << " entries but the input has " << dimStr(t)
                           << " tokens";

  size_t losses = size_t(hasAuxLoss()) + size_t(hasZLoss());
  if (getLosses().size() != losses)
    return emitOpError() << "has " << getLosses().size() << " loss results but "
                         << losses << " loss coefficients are non-zero";
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

//===----------------------------------------------------------------------===//
// Collectives
//===----------------------------------------------------------------------===//

//===--- CollectiveOpInterface
//---------------------------------------------===//

#include "moe/Dialect/MoE/IR/MoEInterfaces.cpp.inc"

MeshOp CollectiveOpInterface::getMeshOp() {
  return SymbolTable::lookupNearestSymbolFrom<MeshOp>(*this,
                                                      getMeshAttr().getAttr());
}

int64_t mlir::moe::detail::getCollectiveGroupSize(Operation *op) {
  auto coll = cast<CollectiveOpInterface>(op);
  MeshOp mesh = coll.getMeshOp();
  return mesh ? mesh.getGroupSize(coll.getAxes()) : -1;
}

bool mlir::moe::detail::isCollectiveStart(Operation *op) {
  return isa<FutureType>(op->getResult(0).getType());
}

namespace {

/// The symbol-use check shared by every collective: the mesh exists and the
/// axes are distinct axes of it.
LogicalResult verifyMeshAxes(CollectiveOpInterface op,
                             SymbolTableCollection &symbolTable) {
  FlatSymbolRefAttr ref = op.getMeshAttr();
  auto mesh = symbolTable.lookupNearestSymbolFrom<MeshOp>(op, ref.getAttr());
  if (!mesh)
    return op->emitOpError()
           << "refers to " << ref << ", which is not a moe.mesh";
  if (op.getAxes().empty())
    return op->emitOpError() << "names no mesh axes";
  llvm::SmallSet<StringRef, 4> seen;
  for (Attribute a : op.getAxes()) {
    StringRef name = cast<StringAttr>(a).getValue();
    if (mesh.getAxisIndex(name) < 0)
      return op->emitOpError()
             << "axis '" << name << "' is not an axis of " << ref;
    if (!seen.insert(name).second)
      return op->emitOpError() << "axis '" << name << "' appears twice";
  }
  return success();
}

/// Group size for static checks, or 0 when the mesh cannot be resolved yet
/// (checked by verifySymbolUses).
int64_t staticGroupSize(CollectiveOpInterface op) {
  int64_t n = op.getGroupSize();
  return n < 0 ? 0 : n;
}

RankedTensorType resultTensor(Value result) {
  if (auto f = dyn_cast<FutureType>(result.getType()))
    return f.getValueType();
  return cast<RankedTensorType>(result.getType());
}

LogicalResult verifyAllToAll(CollectiveOpInterface op, int64_t split,
                             int64_t concat) {
  auto in = tensorType(op.getInput());
  RankedTensorType out = resultTensor(op.getResult());
  int64_t rank = in.getRank();
  if (split < 0 || split >= rank || concat < 0 || concat >= rank)
    return op->emitOpError()
           << "split (" << split << ") and concat (" << concat
           << ") must be dimensions of the rank-" << rank << " input";
  if (in.getElementType() != out.getElementType())
    return op->emitOpError()
           << "result element type " << out.getElementType()
           << " differs from input element type " << in.getElementType();
  int64_t n = staticGroupSize(op);
  if (n == 0)
    return success();
  int64_t s = in.getDimSize(split);
  if (!ShapedType::isDynamic(s) && s % n != 0)
    return op->emitOpError()
           << "split dimension " << split << " (" << s
           << ") is not divisible by the group size (" << n << ")";
  SmallVector<int64_t> expected(in.getShape());
  if (!ShapedType::isDynamic(s))
    expected[split] = s / n;
  if (!ShapedType::isDynamic(expected[concat]))
    expected[concat] *= n;
  return expectShape(op, out, expected, "result");
}

LogicalResult verifyAllToAllV(CollectiveOpInterface op, Value sendCounts,
                              Value recvCounts) {
  auto in = tensorType(op.getInput());
  RankedTensorType out = resultTensor(op.getResult());
  if (out.getRank() != 2 || !sameDim(out.getDimSize(1), in.getDimSize(1)))
    return op->emitOpError()
           << "result has shape " << shapeStr(out.getShape())
           << ", expected [rows, " << dimStr(in.getDimSize(1)) << "]";
  if (in.getElementType() != out.getElementType())
    return op->emitOpError()
           << "result element type " << out.getElementType()
           << " differs from input element type " << in.getElementType();
  int64_t n = staticGroupSize(op);
  if (n == 0)
    return success();
  for (auto [v, name] : {std::pair{sendCounts, "send_counts"},
                         std::pair{recvCounts, "recv_counts"}}) {
    auto c = tensorType(v);
    if (c.hasStaticShape() && c.getNumElements() % n != 0)
      return op->emitOpError()
             << name << " has " << c.getNumElements()
             << " elements, which do not split evenly over the group of " << n
             << " ranks";
  }
  return success();
}

/// all_gather multiplies `dim` by the group size; reduce_scatter and slice
/// divide it.
LogicalResult verifyDimCollective(CollectiveOpInterface op, int64_t dim,
                                  bool gather) {
  auto in = tensorType(op.getInput());
  RankedTensorType out = resultTensor(op.getResult());
  if (dim < 0 || dim >= in.getRank())
    return op->emitOpError()
           << "dim (" << dim << ") is not a dimension of the rank-"
           << in.getRank() << " input";
  if (in.getElementType() != out.getElementType())
    return op->emitOpError()
           << "result element type " << out.getElementType()
           << " differs from input element type " << in.getElementType();
  int64_t n = staticGroupSize(op);
  if (n == 0)
    return success();
  SmallVector<int64_t> expected(in.getShape());
  int64_t s = expected[dim];
  if (!ShapedType::isDynamic(s)) {
    if (!gather && s % n != 0)
      return op->emitOpError()
             << "dimension " << dim << " (" << s
             << ") is not divisible by the group size (" << n << ")";
    expected[dim] = gather ? s * n : s / n;
  }
  return expectShape(op, out, expected, "result");
}

LogicalResult verifyAllReduce(CollectiveOpInterface op) {
  return expectSameType(op, resultTensor(op.getResult()),
                        tensorType(op.getInput()));
}

/// `count(n, bytes)` for a group of `n` ranks and an input of `bytes`; -1
/// when either is unknown.
int64_t bytesSent(CollectiveOpInterface op,
                  llvm::function_ref<int64_t(int64_t, int64_t)> count) {
  auto in = tensorType(op.getInput());
  int64_t n = op.getGroupSize();
  if (n < 1 || !in.hasStaticShape())
    return -1;
  int64_t elementBytes = (in.getElementTypeBitWidth() + 7) / 8;
  return count(n, in.getNumElements() * elementBytes);
}

/// The result type of an op that undoes `op`: its input tensor type, in a
/// future for a start form.
Type inverseType(CollectiveOpInterface op) {
  auto in = tensorType(op.getInput());
  return op.isStart() ? Type(FutureType::get(op->getContext(), in)) : Type(in);
}

} // namespace

#define MOE_VERIFY_MESH_USE(OP)                                                \
  LogicalResult OP::verifySymbolUses(SymbolTableCollection &symbolTable) {     \
    return verifyMeshAxes(*this, symbolTable);                                 \
  }
MOE_VERIFY_MESH_USE(AllToAllOp)
MOE_VERIFY_MESH_USE(AllToAllStartOp)
MOE_VERIFY_MESH_USE(AllToAllVOp)
MOE_VERIFY_MESH_USE(AllToAllVStartOp)
MOE_VERIFY_MESH_USE(AllGatherOp)
MOE_VERIFY_MESH_USE(AllGatherStartOp)
MOE_VERIFY_MESH_USE(ReduceScatterOp)
MOE_VERIFY_MESH_USE(ReduceScatterStartOp)
MOE_VERIFY_MESH_USE(AllReduceOp)
MOE_VERIFY_MESH_USE(AllReduceStartOp)
MOE_VERIFY_MESH_USE(SliceOp)
#undef MOE_VERIFY_MESH_USE

//===--- all_to_all -------------------------------------------------------===//

namespace {
/// Each rank keeps 1/n of its input and sends the rest.
int64_t allToAllBytes(int64_t n, int64_t bytes) {
  return (n - 1) * (bytes / n);
}

template <typename OpTy>
Value inverseAllToAll(OpTy op, OpBuilder &b, Location loc, Value input) {
  return OpTy::create(b, loc, inverseType(op), input, op.getMeshAttr(),
                      op.getAxes(), op.getConcatDimAttr(),
                      op.getSplitDimAttr());
}
} // namespace

LogicalResult AllToAllOp::verify() {
  return verifyAllToAll(*this, getSplitDim(), getConcatDim());
}
LogicalResult AllToAllStartOp::verify() {
  return verifyAllToAll(*this, getSplitDim(), getConcatDim());
}
int64_t AllToAllOp::getBytesSentPerRank() {
  return bytesSent(*this, allToAllBytes);
}
int64_t AllToAllStartOp::getBytesSentPerRank() {
  return bytesSent(*this, allToAllBytes);
}
Value AllToAllOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllToAll(*this, b, loc, input);
}
Value AllToAllStartOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllToAll(*this, b, loc, input);
}

//===--- all_to_all_v -----------------------------------------------------===//

namespace {
/// Upper bound: every input row goes to another rank.
int64_t allToAllVBytes(int64_t n, int64_t bytes) { return n > 1 ? bytes : 0; }

template <typename OpTy>
Value inverseAllToAllV(OpTy op, OpBuilder &b, Location loc, Value input) {
  return OpTy::create(b, loc, inverseType(op), input, op.getRecvCounts(),
                      op.getSendCounts(), op.getMeshAttr(), op.getAxes());
}
} // namespace

LogicalResult AllToAllVOp::verify() {
  return verifyAllToAllV(*this, getSendCounts(), getRecvCounts());
}
LogicalResult AllToAllVStartOp::verify() {
  return verifyAllToAllV(*this, getSendCounts(), getRecvCounts());
}
int64_t AllToAllVOp::getBytesSentPerRank() {
  return bytesSent(*this, allToAllVBytes);
}
int64_t AllToAllVStartOp::getBytesSentPerRank() {
  return bytesSent(*this, allToAllVBytes);
}
Value AllToAllVOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllToAllV(*this, b, loc, input);
}
Value AllToAllVStartOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllToAllV(*this, b, loc, input);
}

//===--- all_gather, reduce_scatter, slice --------------------------------===//

namespace {
/// all_gather: a copy of the input to each of the n-1 others.
int64_t allGatherBytes(int64_t n, int64_t bytes) { return (n - 1) * bytes; }
/// reduce_scatter: the n-1 chunks that the others keep.
int64_t reduceScatterBytes(int64_t n, int64_t bytes) {
  return (n - 1) * (bytes / n);
}
/// slice: a local copy.
int64_t sliceBytes(int64_t, int64_t) { return 0; }

template <typename InverseOp, typename OpTy>
Value inverseDimCollective(OpTy op, OpBuilder &b, Location loc, Value input) {
  return InverseOp::create(b, loc, inverseType(op), input, op.getMeshAttr(),
                           op.getAxes(), op.getDimAttr());
}
} // namespace

LogicalResult AllGatherOp::verify() {
  return verifyDimCollective(*this, getDim(), /*gather=*/true);
}
LogicalResult AllGatherStartOp::verify() {
  return verifyDimCollective(*this, getDim(), /*gather=*/true);
}
LogicalResult ReduceScatterOp::verify() {
  return verifyDimCollective(*this, getDim(), /*gather=*/false);
}
LogicalResult ReduceScatterStartOp::verify() {
  return verifyDimCollective(*this, getDim(), /*gather=*/false);
}
LogicalResult SliceOp::verify() {
  return verifyDimCollective(*this, getDim(), /*gather=*/false);
}
int64_t AllGatherOp::getBytesSentPerRank() {
  return bytesSent(*this, allGatherBytes);
}
int64_t AllGatherStartOp::getBytesSentPerRank() {
  return bytesSent(*this, allGatherBytes);
}
int64_t ReduceScatterOp::getBytesSentPerRank() {
  return bytesSent(*this, reduceScatterBytes);
}
int64_t ReduceScatterStartOp::getBytesSentPerRank() {
  return bytesSent(*this, reduceScatterBytes);
}
int64_t SliceOp::getBytesSentPerRank() { return bytesSent(*this, sliceBytes); }
Value AllGatherOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseDimCollective<ReduceScatterOp>(*this, b, loc, input);
}
Value AllGatherStartOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseDimCollective<ReduceScatterStartOp>(*this, b, loc, input);
}
Value ReduceScatterOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseDimCollective<AllGatherOp>(*this, b, loc, input);
}
Value ReduceScatterStartOp::buildInverse(OpBuilder &b, Location loc,
                                         Value input) {
  return inverseDimCollective<AllGatherStartOp>(*this, b, loc, input);
}
Value SliceOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseDimCollective<AllGatherOp>(*this, b, loc, input);
}

//===--- all_reduce -------------------------------------------------------===//

namespace {
/// Ring all-reduce: reduce-scatter then all-gather, (n-1)/n of the input each.
int64_t allReduceBytes(int64_t n, int64_t bytes) {
  return 2 * (n - 1) * bytes / n;
}

template <typename OpTy>
Value inverseAllReduce(OpTy op, OpBuilder &b, Location loc, Value input) {
  return OpTy::create(b, loc, inverseType(op), input, op.getMeshAttr(),
                      op.getAxes());
}
} // namespace

LogicalResult AllReduceOp::verify() { return verifyAllReduce(*this); }
LogicalResult AllReduceStartOp::verify() { return verifyAllReduce(*this); }
int64_t AllReduceOp::getBytesSentPerRank() {
  return bytesSent(*this, allReduceBytes);
}
int64_t AllReduceStartOp::getBytesSentPerRank() {
  return bytesSent(*this, allReduceBytes);
}
Value AllReduceOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllReduce(*this, b, loc, input);
}
Value AllReduceStartOp::buildInverse(OpBuilder &b, Location loc, Value input) {
  return inverseAllReduce(*this, b, loc, input);
}

//===--- Folders: a group of one rank moves nothing -----------------------===//

namespace {
template <typename OpTy> OpFoldResult foldTrivialGroup(OpTy op) {
  if (op.getGroupSize() == 1 && op.getInput().getType() == op.getType())
    return op.getInput();
  return {};
}
} // namespace

OpFoldResult AllToAllOp::fold(FoldAdaptor) { return foldTrivialGroup(*this); }
OpFoldResult AllGatherOp::fold(FoldAdaptor) { return foldTrivialGroup(*this); }
OpFoldResult ReduceScatterOp::fold(FoldAdaptor) {
  return foldTrivialGroup(*this);
}
OpFoldResult AllReduceOp::fold(FoldAdaptor) { return foldTrivialGroup(*this); }
OpFoldResult SliceOp::fold(FoldAdaptor) { return foldTrivialGroup(*this); }

//===--- moe.wait: a start immediately waited is the synchronous form -----===//

namespace {

/// Rebuilds `start` as its synchronous twin `SyncOp` with the same operands
/// and attributes, producing the waited tensor type.
template <typename StartOp, typename SyncOp>
LogicalResult replaceWithSync(WaitOp wait, PatternRewriter &rewriter) {
  auto start = wait.getFuture().template getDefiningOp<StartOp>();
  if (!start)
    return failure();
  auto sync = SyncOp::create(rewriter, start.getLoc(), wait.getType(),
                             start->getOperands(), start->getAttrs());
  rewriter.replaceOp(wait, sync.getResult());
  rewriter.eraseOp(start);
  return success();
}

struct FuseImmediateWait : OpRewritePattern<WaitOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(WaitOp wait,
                                PatternRewriter &rewriter) const override {
    Operation *start = wait.getFuture().getDefiningOp();
    if (!start || start->getNextNode() != wait.getOperation())
      return rewriter.notifyMatchFailure(
          wait, "compute runs between the start and the wait");
    if (!start->hasOneUse())
      return rewriter.notifyMatchFailure(wait, "the future has other uses");
    if (succeeded(
            replaceWithSync<AllToAllStartOp, AllToAllOp>(wait, rewriter)) ||
        succeeded(
            replaceWithSync<AllToAllVStartOp, AllToAllVOp>(wait, rewriter)) ||
        succeeded(
            replaceWithSync<AllGatherStartOp, AllGatherOp>(wait, rewriter)) ||
        succeeded(replaceWithSync<ReduceScatterStartOp, ReduceScatterOp>(
            wait, rewriter)) ||
        succeeded(
            replaceWithSync<AllReduceStartOp, AllReduceOp>(wait, rewriter)))
      return success();
    return rewriter.notifyMatchFailure(wait, "future is not from a start op");
  }
};

} // namespace

void WaitOp::getCanonicalizationPatterns(RewritePatternSet &results,
                                         MLIRContext *context) {
  results.add<FuseImmediateWait>(context);
}

#define GET_OP_CLASSES
#include "moe/Dialect/MoE/IR/MoEOps.cpp.inc"

//===----------------------------------------------------------------------===//
// Gradient, loss and optimizer ops (MoETrainOps.td)
//===----------------------------------------------------------------------===//

namespace {

/// `grad` (the gradient of `what`) has the type of the value it belongs to.
LogicalResult expectGradOf(Operation *op, Value grad, Value of,
                           StringRef gradName, StringRef ofName) {
  if (grad.getType() == of.getType())
    return success();
  return op->emitOpError() << gradName << " type " << grad.getType()
                           << " differs from " << ofName << " type "
                           << of.getType();
}

} // namespace

LogicalResult RMSNormGradOp::verify() {
  if (!(getEps().convertToFloat() > 0))
    return emitOpError() << "eps (" << getEps().convertToFloat()
                         << ") must be positive";
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(expectShape(*this, getWeight(), {d}, "weight")) ||
      failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")))
    return failure();
  return expectGradOf(*this, getDweight(), getWeight(), "dweight", "weight");
}

LogicalResult LayerNormGradOp::verify() {
  if (!(getEps().convertToFloat() > 0))
    return emitOpError() << "eps (" << getEps().convertToFloat()
                         << ") must be positive";
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(expectShape(*this, getWeight(), {d}, "weight")) ||
      failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")) ||
      failed(
          expectGradOf(*this, getDweight(), getWeight(), "dweight", "weight")))
    return failure();
  if (Value db = getDbias())
    return expectGradOf(*this, db, getWeight(), "dbias", "weight");
  return success();
}

LogicalResult RouterGradOp::verify() {
  auto x = tensorType(getInput()), w = tensorType(getWeight());
  if (!sameDim(x.getDimSize(1), w.getDimSize(1)))
    return emitOpError() << "router weight has " << dimStr(w.getDimSize(1))
                         << " columns but tokens have D = "
                         << dimStr(x.getDimSize(1));
  if (failed(expectShape(*this, getDlogits(),
                         {x.getDimSize(0), w.getDimSize(0)}, "dlogits")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")))
    return failure();
  return expectGradOf(*this, getDweight(), getWeight(), "dweight", "weight");
}

LogicalResult TopKGradOp::verify() {
  auto logits = tensorType(getLogits());
  auto idx = tensorType(getIndices());
  if (!(getRoutedScaling().convertToFloat() > 0))
    return emitOpError() << "routed_scaling ("
                         << getRoutedScaling().convertToFloat()
                         << ") must be positive";
  if (failed(expectShape(*this, getIndices(),
                         {logits.getDimSize(0), idx.getDimSize(1)},
                         "indices")) ||
      failed(expectShape(*this, getDweights(), idx.getShape(), "dweights")) ||
      failed(
          expectGradOf(*this, getDlogits(), getLogits(), "dlogits", "logits")))
    return failure();
  if (Value ds = getDscores())
    return expectGradOf(*this, ds, getLogits(), "dscores", "logits");
  return success();
}

LogicalResult DispatchGradOp::verify() {
  auto dout = tensorType(getDout()), dx = tensorType(getDinput());
  if (!sameDim(dout.getShape().back(), dx.getDimSize(1)))
    return emitOpError() << "buffer rows have "
                         << dimStr(dout.getShape().back())
                         << " elements but dinput has D = "
                         << dimStr(dx.getDimSize(1));
  if (!sameDim(tensorType(getPositions()).getDimSize(0), dx.getDimSize(0)))
    return emitOpError() << "positions are for "
                         << dimStr(tensorType(getPositions()).getDimSize(0))
                         << " tokens but dinput has "
                         << dimStr(dx.getDimSize(0));
  return expectSameElementType(*this, getDout(), getDinput(), "dout", "dinput");
}

LogicalResult CombineGradOp::verify() {
  auto y = tensorType(getInput()), pos = tensorType(getPositions());
  int64_t t = pos.getDimSize(0), k = pos.getDimSize(1), d = y.getShape().back();
  if (failed(expectShape(*this, getWeights(), {t, k}, "weights")) ||
      failed(expectShape(*this, getDout(), {t, d}, "dout")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")) ||
      failed(expectGradOf(*this, getDweights(), getWeights(), "dweights",
                          "weights")) ||
      failed(
          expectSameElementType(*this, getInput(), getDout(), "input", "dout")))
    return failure();
  Value p = getPassthrough(), dp = getDpassthrough();
  if (bool(p) != bool(dp))
    return emitOpError() << "has " << (p ? "a" : "no")
                         << " passthrough operand but " << (dp ? "a" : "no")
                         << " dpassthrough result";
  if (p && (failed(expectShape(*this, p, {t, d}, "passthrough")) ||
            failed(expectGradOf(*this, dp, p, "dpassthrough", "passthrough"))))
    return failure();
  return success();
}

/// The hidden activations moe.expert_ffn_train saves and moe.expert_ffn_grad
/// reads: `saved_u` [rows, F] (rows of the whole buffer), and `saved_a` of the
/// same shape exactly when the FFN is gated (has a gate weight).
static LogicalResult verifySavedActivations(Operation *op, Value input,
                                            Value up, Value gate, Value savedU,
                                            Value savedA, StringRef what) {
  if (!savedU) {
    if (savedA)
      return op->emitOpError() << "has saved_a but no saved_u";
    return success();
  }
  if (bool(gate) != bool(savedA))
    return op->emitOpError()
           << (gate ? "has a gate weight but no saved_a" : "has saved_a")
           << what
           << (gate ? ""
                    : " but no gate weight (saved_a is a = x . "
                      "gate^T)");
  auto x = tensorType(input);
  int64_t rows = ShapedType::isDynamicShape(x.getShape())
                     ? ShapedType::kDynamic
                     : x.getNumElements() / x.getShape().back();
  int64_t f = tensorType(up).getDimSize(1);
  for (auto [v, name] : {std::pair{savedU, "saved_u"}, {savedA, "saved_a"}}) {
    if (!v)
      continue;
    auto t = tensorType(v);
    if (!sameDim(t.getDimSize(0), rows) || !sameDim(t.getDimSize(1), f))
      return op->emitOpError()
             << name << what << " must be [" << dimStr(rows) << ", "
             << dimStr(f) << "] (rows of the buffer, F), got ["
             << dimStr(t.getDimSize(0)) << ", " << dimStr(t.getDimSize(1))
             << "]";
  }
  return success();
}

LogicalResult ExpertFFNGradOp::verify() {
  if (failed(verifyExpertFFNOperands(*this, getInput(), getCounts(), getGate(),
                                     getUp(), getDown(), getActivation())))
    return failure();
  if (bool(getGate()) != bool(getDgate()))
    return emitOpError() << "has " << (getGate() ? "a" : "no")
                         << " gate weight but " << (getDgate() ? "a" : "no")
                         << " dgate result";
  if (failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")) ||
      failed(expectGradOf(*this, getDup(), getUp(), "dup", "up weight")) ||
      failed(
          expectGradOf(*this, getDdown(), getDown(), "ddown", "down weight")))
    return failure();
  if (failed(verifySavedActivations(*this, getInput(), getUp(), getGate(),
                                    getSavedU(), getSavedA(), "")))
    return failure();
  if (getGate())
    return expectGradOf(*this, getDgate(), getGate(), "dgate", "gate weight");
  return success();
}

LogicalResult ExpertFFNTrainOp::verify() {
  if (failed(verifyExpertFFNOperands(*this, getInput(), getCounts(), getGate(),
                                     getUp(), getDown(), getActivation())))
    return failure();
  if (!tensorType(getInput()).getElementType().isF32())
    return emitOpError() << "saves f32 activations: the input must be f32";
  if (failed(verifySavedActivations(*this, getInput(), getUp(), getGate(),
                                    getSavedU(), getSavedA(), " result")))
    return failure();
  return expectSameType(*this, getOutput().getType(), getInput().getType());
}

/// The shape of an expert buffer with `f` columns: the per-row values of
/// moe.expert_ffn_grad_data ([E, R, F] or [rows, F]).
static SmallVector<int64_t> withColumns(Value buffer, int64_t f) {
  SmallVector<int64_t> shape(tensorType(buffer).getShape());
  shape.back() = f;
  return shape;
}

LogicalResult ExpertFFNGradDataOp::verify() {
  if (failed(verifyExpertFFNOperands(*this, getInput(), getCounts(), getGate(),
                                     getUp(), getDown(), getActivation())))
    return failure();
  if (!tensorType(getInput()).getElementType().isF32())
    return emitOpError() << "returns f32 row values: the input must be f32";
  if (bool(getGate()) != bool(getDpreGate()))
    return emitOpError() << "has " << (getGate() ? "a" : "no")
                         << " gate weight but " << (getDpreGate() ? "a" : "no")
                         << " dpre_gate result";
  if (failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")))
    return failure();
  int64_t f = tensorType(getUp()).getDimSize(1);
  SmallVector<int64_t> rowsF = withColumns(getInput(), f);
  for (auto [v, name] : {std::pair{getHidden(), "hidden"},
                         {getDpreUp(), "dpre_up"},
                         {getDpreGate(), "dpre_gate"}})
    if (v && failed(expectShape(*this, v, rowsF, name)))
      return failure();
  Value savedU = getSavedU(), savedA = getSavedA();
  if (!savedU) {
    if (savedA)
      return emitOpError() << "has saved_a but no saved_u";
    return success();
  }
  if (bool(getGate()) != bool(savedA))
    return emitOpError() << (getGate() ? "has a gate weight but no saved_a"
                                       : "has saved_a but no gate weight");
  auto x = tensorType(getInput());
  int64_t rows = ShapedType::isDynamicShape(x.getShape())
                     ? ShapedType::kDynamic
                     : x.getNumElements() / x.getShape().back();
  for (auto [v, name] : {std::pair{savedU, "saved_u"}, {savedA, "saved_a"}}) {
    if (!v)
      continue;
    // [rows, F] as moe.expert_ffn_train writes it, or the buffer's layout.
    ArrayRef<int64_t> shape = tensorType(v).getShape();
    if (shape.size() == 2 && x.getRank() == 3 &&
        failed(expectShape(*this, v, {rows, f}, name)))
      return failure();
    if ((shape.size() != 2 || x.getRank() != 3) &&
        failed(expectShape(*this, v, rowsF, name)))
      return failure();
  }
  return success();
}

LogicalResult ExpertFFNGradWeightOp::verify() {
  auto x = tensorType(getInput());
  Value counts = getCounts();
  if (x.getRank() == 2 && !counts)
    return emitOpError() << "packed (2-D) input needs counts";
  if (failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")))
    return failure();
  int64_t e =
      x.getRank() == 3 ? x.getDimSize(0) : tensorType(counts).getDimSize(1);
  if (counts && !sameDim(tensorType(counts).getDimSize(1), e))
    return emitOpError() << "counts have "
                         << dimStr(tensorType(counts).getDimSize(1))
                         << " experts but the buffer has " << dimStr(e);
  int64_t d = x.getShape().back();
  int64_t f = tensorType(getHidden()).getShape().back();
  SmallVector<int64_t> rowsF = withColumns(getInput(), f);
  for (auto [v, name] : {std::pair{getHidden(), "hidden"},
                         {getDpreUp(), "dpre_up"},
                         {getDpreGate(), "dpre_gate"}})
    if (v && failed(expectShape(*this, v, rowsF, name)))
      return failure();
  if (bool(getDpreGate()) != bool(getDgate()))
    return emitOpError() << "has " << (getDpreGate() ? "a" : "no")
                         << " dpre_gate operand but "
                         << (getDgate() ? "a" : "no") << " dgate result";
  for (auto [v, name] : {std::pair{getDup(), "dup"}, {getDgate(), "dgate"}})
    if (v && failed(expectShape(*this, v, {e, f, d}, name)))
      return failure();
  if (failed(expectShape(*this, getDdown(), {e, d, f}, "ddown")))
    return failure();
  for (Value v : {getDup(), getDgate(), getDdown()})
    if (v && failed(expectSameElementType(*this, v, getInput(), "gradient",
                                          "input")))
      return failure();
  return success();
}

LogicalResult MLPGradOp::verify() {
  int64_t d = tensorType(getInput()).getDimSize(1);
  if (failed(verifyFFNWeights(*this, getGate(), getUp(), getDown(),
                              getActivation(), {}, d, "")))
    return failure();
  if (bool(getGate()) != bool(getDgate()))
    return emitOpError() << "has " << (getGate() ? "a" : "no")
                         << " gate weight but " << (getDgate() ? "a" : "no")
                         << " dgate result";
  if (bool(getSigmoidGate()) != bool(getDsigmoidGate()))
    return emitOpError() << "has " << (getSigmoidGate() ? "a" : "no")
                         << " sigmoid gate but "
                         << (getDsigmoidGate() ? "a" : "no")
                         << " dsigmoid_gate result";
  if (Value g = getSigmoidGate())
    if (failed(expectShape(*this, g, {1, d}, "sigmoid gate")) ||
        failed(expectGradOf(*this, getDsigmoidGate(), g, "dsigmoid_gate",
                            "sigmoid gate")))
      return failure();
  if (failed(expectGradOf(*this, getDout(), getInput(), "dout", "input")) ||
      failed(expectGradOf(*this, getDinput(), getInput(), "dinput", "input")) ||
      failed(expectGradOf(*this, getDup(), getUp(), "dup", "up weight")) ||
      failed(
          expectGradOf(*this, getDdown(), getDown(), "ddown", "down weight")))
    return failure();
  if (getGate())
    return expectGradOf(*this, getDgate(), getGate(), "dgate", "gate weight");
  return success();
}

LogicalResult ExpertLoadGradOp::verify() {
  auto s = tensorType(getDstats());
  if (s.getDimSize(0) != 2)
    return emitOpError() << "dstats have shape " << shapeStr(getDstats())
                         << ", expected [2, E]";
  if (!sameDim(tensorType(getDscores()).getDimSize(1), s.getDimSize(1)))
    return emitOpError() << "dscores have "
                         << dimStr(tensorType(getDscores()).getDimSize(1))
                         << " experts but dstats have "
                         << dimStr(s.getDimSize(1));
  return success();
}

LogicalResult LoadBalanceLossGradOp::verify() {
  if (tensorType(getStats()).getDimSize(0) != 2)
    return emitOpError() << "stats have shape " << shapeStr(getStats())
                         << ", expected [2, E] (counts and score sums)";
  return expectGradOf(*this, getDstats(), getStats(), "dstats", "stats");
}

LogicalResult ZLossGradOp::verify() {
  if (failed(
          verifyTokenMask(*this, getMask(), getCount(), getLogits(), "logits")))
    return failure();
  return expectGradOf(*this, getDlogits(), getLogits(), "dlogits", "logits");
}

LogicalResult MSELossOp::verify() {
  if (failed(
          expectGradOf(*this, getTarget(), getOutput(), "target", "output")) ||
      failed(expectGradOf(*this, getDoutput(), getOutput(), "doutput",
                          "output")) ||
      failed(expectShape(*this, getLoss(), {1}, "loss")) ||
      failed(
          verifyTokenMask(*this, getMask(), getCount(), getOutput(), "output")))
    return failure();
  auto y = tensorType(getOutput());
  if (y.hasStaticShape() && int64_t(getTotal()) < y.getNumElements())
    return emitOpError() << "total (" << getTotal() << ") is less than the "
                         << y.getNumElements()
                         << " elements of this rank's output";
  return success();
}

namespace {

LogicalResult verifyHparams(Operation *op, Value hparams) {
  return expectShape(op, hparams, {8}, "hparams");
}

} // namespace

LogicalResult AdamWOp::verify() {
  Value w = getWeight();
  for (auto [v, name] :
       {std::pair{getGrad(), "grad"}, std::pair{getExpAvg(), "exp_avg"},
        std::pair{getExpAvgSq(), "exp_avg_sq"},
        std::pair{getNewWeight(), "new_weight"},
        std::pair{getNewExpAvg(), "new_exp_avg"},
        std::pair{getNewExpAvgSq(), "new_exp_avg_sq"}})
    if (failed(expectGradOf(*this, v, w, name, "weight")))
      return failure();
  return verifyHparams(*this, getHparams());
}

LogicalResult SGDOp::verify() {
  Value w = getWeight();
  for (auto [v, name] :
       {std::pair{getGrad(), "grad"},
        std::pair{getMomentumBuffer(), "momentum_buffer"},
        std::pair{getNewWeight(), "new_weight"},
        std::pair{getNewMomentumBuffer(), "new_momentum_buffer"}})
    if (failed(expectGradOf(*this, v, w, name, "weight")))
      return failure();
  return verifyHparams(*this, getHparams());
}

LogicalResult BiasUpdateOp::verify() {
  if (failed(expectGradOf(*this, getLoad(), getBias(), "load", "bias")) ||
      failed(expectGradOf(*this, getNewBias(), getBias(), "new_bias", "bias")))
    return failure();
  return verifyHparams(*this, getHparams());
}

LogicalResult ReshapeOp::verify() {
  auto in = tensorType(getInput()), out = tensorType(getOutput());
  if (failed(expectSameElementType(*this, getInput(), getOutput(), "input",
                                   "result")))
    return failure();
  if (!in.hasStaticShape() || !out.hasStaticShape())
    return emitOpError() << "needs static shapes, got " << in << " -> " << out;
  if (in.getNumElements() != out.getNumElements())
    return emitOpError() << "input " << shapeStr(getInput()) << " has "
                         << in.getNumElements() << " elements but the result "
                         << shapeStr(getOutput()) << " has "
                         << out.getNumElements();
  return success();
}

LogicalResult LoadCountsOp::verify() {
  auto s = tensorType(getStats());
  if (s.getDimSize(0) != 2)
    return emitOpError() << "stats have shape " << shapeStr(getStats())
                         << ", expected [2, E] (counts and score sums)";
  return expectShape(*this, getLoad(), {s.getDimSize(1)}, "result");
}

namespace {

/// The elements of `pieces` fill `buffer` exactly.
LogicalResult verifyPacking(Operation *op, Value buffer, TypeRange pieces) {
  int64_t sum = 0;
  for (auto [i, t] : llvm::enumerate(pieces)) {
    auto rt = cast<RankedTensorType>(t);
    if (!rt.hasStaticShape())
      return op->emitOpError()
             << "needs static shapes, got " << rt << " at position " << i;
    sum += rt.getNumElements();
  }
  auto b = tensorType(buffer);
  if (!b.hasStaticShape() || b.getNumElements() != sum)
    return op->emitOpError()
           << "buffer " << b << " does not hold the " << sum
           << " elements of the " << pieces.size() << " tensors";
  return success();
}

} // namespace

LogicalResult PackOp::verify() {
  return verifyPacking(*this, getOutput(), getInputs().getTypes());
}

LogicalResult UnpackOp::verify() {
  return verifyPacking(*this, getInput(), getOutputs().getTypes());
}

//===----------------------------------------------------------------------===//
// Chunks of a pipelined exchange
//===----------------------------------------------------------------------===//

namespace {

/// The chunked type of `whole`: dimension `dim` divided by `chunks`; fails
/// with a message naming `what` when `dim` is out of range or does not
/// divide.
FailureOr<SmallVector<int64_t>> chunkShape(Operation *op,
                                           RankedTensorType whole, int64_t dim,
                                           int64_t chunks, StringRef what) {
  if (!whole.hasStaticShape()) {
    op->emitOpError() << "needs static shapes, got " << whole;
    return failure();
  }
  if (dim < 0 || dim >= whole.getRank()) {
    op->emitOpError() << "dim " << dim << " is out of range for the " << what
                      << " of rank " << whole.getRank();
    return failure();
  }
  if (chunks < 1 || whole.getDimSize(dim) % chunks != 0) {
    op->emitOpError() << "dimension " << dim << " of the " << what << " ("
                      << whole.getDimSize(dim) << ") does not divide into "
                      << chunks << " chunks";
    return failure();
  }
  SmallVector<int64_t> shape(whole.getShape());
  shape[dim] /= chunks;
  return shape;
}

} // namespace

LogicalResult ChunkOp::verify() {
  int64_t index = getIndex(), chunks = getChunks();
  if (index < 0 || index >= chunks)
    return emitOpError() << "index " << getIndex()
                         << " is not in [0, chunks = " << getChunks() << ")";
  if (failed(expectSameElementType(*this, getInput(), getOutput(), "input",
                                   "result")))
    return failure();
  FailureOr<SmallVector<int64_t>> shape =
      chunkShape(*this, tensorType(getInput()), getDim(), chunks, "input");
  if (failed(shape))
    return failure();
  return expectShape(*this, getOutput(), *shape, "result");
}

namespace {
LogicalResult verifyChunkIndex(Operation *op, int64_t index, int64_t chunks) {
  if (chunks < 1)
    return op->emitOpError() << "chunks (" << chunks << ") must be positive";
  if (index < 0 || index >= chunks)
    return op->emitOpError()
           << "index " << index << " is not in [0, chunks = " << chunks << ")";
  return success();
}

/// A count tensor must have a static shape: its element count is the number
/// of segments that bounds a chunk's rows.
FailureOr<int64_t> segmentsOf(Operation *op, Value counts) {
  auto t = tensorType(counts);
  if (!t.hasStaticShape())
    return op->emitOpError("needs counts of a static shape");
  return t.getNumElements();
}

/// Same columns and element type; `chunk` has `bound` rows.
LogicalResult expectRowChunk(Operation *op, Value whole, Value chunk,
                             int64_t bound, StringRef wholeName,
                             StringRef chunkName) {
  if (failed(expectSameElementType(op, whole, chunk, wholeName, chunkName)))
    return failure();
  auto w = tensorType(whole);
  if (ShapedType::isDynamic(w.getDimSize(0)))
    return op->emitOpError() << "needs a static row count of the " << wholeName;
  return expectShape(op, chunk, {bound, w.getDimSize(1)}, chunkName);
}
} // namespace

int64_t ChunkRowsOp::chunkRowsBound(int64_t rows, int64_t segments,
                                    int64_t chunks) {
  // Each segment of c rows gives a chunk at most ceil(c / chunks) rows.
  return std::min(rows, (rows + segments * (chunks - 1)) / chunks);
}

LogicalResult ChunkCountsOp::verify() {
  if (failed(verifyChunkIndex(*this, getIndex(), getChunks())))
    return failure();
  if (getCounts().getType() != getOutput().getType())
    return emitOpError() << "result type " << getOutput().getType()
                         << " differs from the counts' "
                         << getCounts().getType();
  return success();
}

LogicalResult ChunkRowsOp::verify() {
  if (failed(verifyChunkIndex(*this, getIndex(), getChunks())))
    return failure();
  FailureOr<int64_t> segments = segmentsOf(*this, getCounts());
  if (failed(segments))
    return failure();
  int64_t rows = tensorType(getInput()).getDimSize(0);
  return expectRowChunk(*this, getInput(), getOutput(),
                        chunkRowsBound(rows, *segments, getChunks()), "input",
                        "result");
}

LogicalResult JoinRowsOp::verify() {
  if (getInputs().empty())
    return emitOpError("needs at least one input");
  FailureOr<int64_t> segments = segmentsOf(*this, getCounts());
  if (failed(segments))
    return failure();
  int64_t rows = tensorType(getOutput()).getDimSize(0);
  int64_t n = getInputs().size();
  for (Value in : getInputs())
    if (failed(expectRowChunk(*this, getOutput(), in,
                              ChunkRowsOp::chunkRowsBound(rows, *segments, n),
                              "result", "input")))
      return failure();
  return success();
}

LogicalResult InterleaveOp::verify() {
  if (getInputs().empty())
    return emitOpError("needs at least one input");
  for (Value in : getInputs()) {
    if (in.getType() != getInputs().front().getType())
      return emitOpError() << "inputs differ in type: "
                           << getInputs().front().getType() << " and "
                           << in.getType();
  }
  if (failed(expectSameElementType(*this, getInputs().front(), getOutput(),
                                   "input", "result")))
    return failure();
  FailureOr<SmallVector<int64_t>> shape =
      chunkShape(*this, tensorType(getOutput()), getDim(),
                 int64_t(getInputs().size()), "result");
  if (failed(shape))
    return failure();
  return expectShape(*this, getInputs().front(), *shape, "input");
}

LogicalResult RegroupOp::verify() {
  RankedTensorType in = tensorType(getInput()), out = tensorType(getOutput());
  if (in != out)
    return emitOpError() << "result type " << out
                         << " differs from the input type " << in;
  RankedTensorType c = tensorType(getCounts());
  if (!c.hasStaticShape())
    return success();
  int64_t a = c.getDimSize(0), w = c.getDimSize(1), g = getGroups();
  if (w % g != 0)
    return emitOpError() << "counts have " << w
                         << " entries per row, not divisible by groups = " << g;
  return expectShape(*this, getNewCounts(), {g, a * (w / g)}, "new_counts");
}

LogicalResult CheckRecvBoundOp::verify() {
  int64_t rows = tensorType(getCounts()).getDimSize(0);
  if (ShapedType::isDynamic(rows))
    return success();
  int64_t n = 1;
  while (n * n < rows)
    ++n;
  if (n * n != rows)
    return emitOpError() << "counts have " << rows
                         << " rows, not n x n for a group of n ranks";
  return success();
}
