//===- CostModel.cpp - Time of collectives, GEMMs and ops on a cluster ----===//
#include "moe/Analysis/CostModel.h"

#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Operation.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

using namespace mlir;
using namespace mlir::moe;
using namespace mlir::moe::cost;

//===----------------------------------------------------------------------===//
// The cluster and its file
//===----------------------------------------------------------------------===//

ClusterSpec ClusterSpec::getDefault() {
  // One node of a small CPU machine: ranks are MPI processes exchanging
  // through shared memory; the rates are round figures of the order that
  // `moe-run --calibrate` measures on a few cores (docs/user-guide.md).
  ClusterSpec c;
  c.name = "default-cpu-node";
  c.nodes = 1;
  c.devicesPerNode = 8;
  c.device.gemmFlops = 5e10;
  c.device.gemmLatency = 5e-6;
  c.device.copyBandwidth = 5e9;
  c.device.memoryBytes = 16.0 * (1 << 30);
  c.intraNode = {5e-6, 5e9};
  c.interNode = LinkParams{2e-5, 1.25e9};
  return c;
}

static llvm::json::Object linkToJSON(const LinkParams &l) {
  return llvm::json::Object{{"alpha_s", l.alpha},
                            {"bandwidth_bytes_per_s", l.bandwidth}};
}

llvm::json::Value ClusterSpec::toJSON() const {
  llvm::json::Object links{{"intra_node", linkToJSON(intraNode)}};
  if (interNode)
    links["inter_node"] = linkToJSON(*interNode);
  llvm::json::Object axisLinks;
  for (const auto &[axis, link] : axes)
    axisLinks[axis] = linkToJSON(link);
  llvm::json::Object o{
      {"version", 1},
      {"name", name},
      {"nodes", nodes},
      {"devices_per_node", devicesPerNode},
      {"device", llvm::json::Object{{"gemm_flop_per_s", device.gemmFlops},
                                    {"gemm_latency_s", device.gemmLatency},
                                    {"copy_bytes_per_s", device.copyBandwidth},
                                    {"memory_bytes", device.memoryBytes}}},
      {"links", std::move(links)}};
  if (!axes.empty())
    o["axes"] = std::move(axisLinks);
  return o;
}

namespace {

llvm::Error fieldError(const std::string &path, const llvm::Twine &what) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                 (path + ": " + what).str());
}

std::string join(const std::string &path, llvm::StringRef key) {
  return path.empty() ? key.str() : path + "." + key.str();
}

std::string shortNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

/// The object at `path`; every key must be one of `allowed`.
llvm::Expected<const llvm::json::Object *>
getObject(const llvm::json::Value *v, const std::string &path,
          llvm::ArrayRef<llvm::StringRef> allowed) {
  const llvm::json::Object *o = v ? v->getAsObject() : nullptr;
  if (!o)
    return fieldError(path.empty() ? std::string("cluster file") : path,
                      "must be a JSON object");
  if (allowed.empty())
    return o;
  llvm::SmallVector<std::string> keys;
  for (const auto &kv : *o)
    keys.push_back(kv.first.str());
  llvm::sort(keys);
  for (const std::string &k : keys)
    if (!llvm::is_contained(allowed, k))
      return fieldError(join(path, k), "unknown field (expected one of: " +
                                           llvm::join(allowed, ", ") + ")");
  return o;
}

/// A number at `path` with `ok(v)`; `rule` says what `ok` asks.
llvm::Error getNumber(const llvm::json::Object &o, const std::string &path,
                      llvm::StringRef key, bool (*ok)(double),
                      llvm::StringRef rule, double &out) {
  std::string field = join(path, key);
  const llvm::json::Value *v = o.get(key);
  if (!v)
    return fieldError(field, "missing (a number " + rule + ")");
  std::optional<double> d = v->getAsNumber();
  if (!d)
    return fieldError(field, "must be a number " + rule);
  if (!std::isfinite(*d) || !ok(*d))
    return fieldError(field, "must be a number " + rule + " (got " +
                                 shortNumber(*d) + ")");
  out = *d;
  return llvm::Error::success();
}

bool positive(double v) { return v > 0; }
bool nonNegative(double v) { return v >= 0; }

llvm::Error getCount(const llvm::json::Object &o, const std::string &path,
                     llvm::StringRef key, int64_t &out) {
  std::string field = join(path, key);
  const llvm::json::Value *v = o.get(key);
  if (!v)
    return fieldError(field, "missing (an integer >= 1)");
  std::optional<int64_t> i = v->getAsInteger();
  if (!i || *i < 1)
    return fieldError(field, "must be an integer >= 1");
  out = *i;
  return llvm::Error::success();
}

llvm::Error getLink(const llvm::json::Value *v, const std::string &path,
                    LinkParams &out) {
  auto o = getObject(v, path, {"alpha_s", "bandwidth_bytes_per_s"});
  if (!o)
    return o.takeError();
  if (llvm::Error e =
          getNumber(**o, path, "alpha_s", nonNegative, ">= 0", out.alpha))
    return e;
  return getNumber(**o, path, "bandwidth_bytes_per_s", positive, "> 0",
                   out.bandwidth);
}

} // namespace

llvm::Expected<ClusterSpec>
mlir::moe::cost::parseClusterSpec(llvm::StringRef text) {
  llvm::Expected<llvm::json::Value> parsed = llvm::json::parse(text);
  if (!parsed)
    return fieldError("cluster file",
                      "not valid JSON: " + llvm::toString(parsed.takeError()));
  auto root = getObject(&*parsed, "",
                        {"axes", "device", "devices_per_node", "links", "name",
                         "nodes", "version"});
  if (!root)
    return root.takeError();
  const llvm::json::Object &r = **root;
  ClusterSpec c;
  const llvm::json::Value *version = r.get("version");
  if (!version)
    return fieldError("version", "missing (1)");
  if (version->getAsInteger() != std::optional<int64_t>(1))
    return fieldError("version", "must be 1 (the format this compiler reads)");
  if (const llvm::json::Value *name = r.get("name")) {
    std::optional<llvm::StringRef> s = name->getAsString();
    if (!s)
      return fieldError("name", "must be a string");
    c.name = s->str();
  }
  if (llvm::Error e = getCount(r, "", "nodes", c.nodes))
    return std::move(e);
  if (llvm::Error e = getCount(r, "", "devices_per_node", c.devicesPerNode))
    return std::move(e);
  auto device = getObject(r.get("device"), "device",
                          {"copy_bytes_per_s", "gemm_flop_per_s",
                           "gemm_latency_s", "memory_bytes"});
  if (!device)
    return device.takeError();
  const llvm::json::Object &d = **device;
  if (llvm::Error e = getNumber(d, "device", "gemm_flop_per_s", positive, "> 0",
                                c.device.gemmFlops))
    return std::move(e);
  if (llvm::Error e = getNumber(d, "device", "gemm_latency_s", nonNegative,
                                ">= 0", c.device.gemmLatency))
    return std::move(e);
  if (llvm::Error e = getNumber(d, "device", "copy_bytes_per_s", positive,
                                "> 0", c.device.copyBandwidth))
    return std::move(e);
  if (llvm::Error e = getNumber(d, "device", "memory_bytes", positive, "> 0",
                                c.device.memoryBytes))
    return std::move(e);
  auto links = getObject(r.get("links"), "links", {"inter_node", "intra_node"});
  if (!links)
    return links.takeError();
  if (!(*links)->get("intra_node"))
    return fieldError("links.intra_node", "missing (an object with alpha_s "
                                          "and bandwidth_bytes_per_s)");
  if (llvm::Error e =
          getLink((*links)->get("intra_node"), "links.intra_node", c.intraNode))
    return std::move(e);
  if (const llvm::json::Value *inter = (*links)->get("inter_node")) {
    c.interNode = LinkParams();
    if (llvm::Error e = getLink(inter, "links.inter_node", *c.interNode))
      return std::move(e);
  } else if (c.nodes > 1) {
    return fieldError("links.inter_node", "missing (required when nodes > 1)");
  }
  if (const llvm::json::Value *axes = r.get("axes")) {
    auto o = getObject(axes, "axes", {});
    if (!o)
      return o.takeError();
    for (const auto &[key, value] : **o) {
      std::string path = "axes." + key.str();
      if (key.str().empty())
        return fieldError("axes", "an axis name is empty");
      LinkParams l;
      if (llvm::Error e = getLink(&value, path, l))
        return std::move(e);
      c.axes[key.str()] = l;
    }
  }
  return c;
}

llvm::Expected<ClusterSpec>
mlir::moe::cost::loadClusterFile(llvm::StringRef path) {
  if (path.empty())
    return ClusterSpec::getDefault();
  llvm::ErrorOr<std::unique_ptr<llvm::MemoryBuffer>> buffer =
      llvm::MemoryBuffer::getFile(path, /*IsText=*/true);
  if (!buffer)
    return llvm::createStringError(
        buffer.getError(), "cluster file %s: cannot read it: %s",
        path.str().c_str(), buffer.getError().message().c_str());
  llvm::Expected<ClusterSpec> spec = parseClusterSpec((*buffer)->getBuffer());
  if (!spec)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "cluster file %s: %s", path.str().c_str(),
                                   llvm::toString(spec.takeError()).c_str());
  return spec;
}

//===----------------------------------------------------------------------===//
// Collectives, GEMMs, copies
//===----------------------------------------------------------------------===//

llvm::StringRef mlir::moe::cost::stringifyCollectiveKind(CollectiveKind kind) {
  switch (kind) {
  case CollectiveKind::AllToAll:
    return "all_to_all";
  case CollectiveKind::AllGather:
    return "all_gather";
  case CollectiveKind::ReduceScatter:
    return "reduce_scatter";
  case CollectiveKind::AllReduce:
    return "all_reduce";
  case CollectiveKind::Slice:
    return "slice";
  }
  llvm_unreachable("unknown collective kind");
}

std::optional<CollectiveKind>
mlir::moe::cost::symbolizeCollectiveKind(llvm::StringRef name) {
  name.consume_front("moe.");
  name.consume_back("_start");
  name.consume_back("_v");
  for (CollectiveKind k : {CollectiveKind::AllToAll, CollectiveKind::AllGather,
                           CollectiveKind::ReduceScatter,
                           CollectiveKind::AllReduce, CollectiveKind::Slice})
    if (name == stringifyCollectiveKind(k))
      return k;
  return std::nullopt;
}

static LinkParams slowest(const LinkParams &a, const LinkParams &b) {
  return {std::max(a.alpha, b.alpha), std::min(a.bandwidth, b.bandwidth)};
}

GroupLinks CostModel::getGroupLinks(const MeshSpec &mesh,
                                    llvm::ArrayRef<std::string> axes) const {
  GroupLinks g;
  // Mesh axes in the group, with their sizes and row-major strides.
  int64_t world = 1;
  llvm::SmallVector<int64_t> strides(mesh.axes.size());
  for (int64_t i = static_cast<int64_t>(mesh.axes.size()) - 1; i >= 0; --i) {
    strides[i] = world;
    world *= mesh.axes[i].size;
  }
  llvm::SmallVector<int64_t> inGroup; // indices into mesh.axes
  for (size_t i = 0; i < mesh.axes.size(); ++i)
    if (llvm::is_contained(axes, mesh.axes[i].name) && mesh.axes[i].size > 1)
      inGroup.push_back(static_cast<int64_t>(i));
  for (int64_t i : inGroup)
    g.groupSize *= mesh.axes[i].size;
  g.near = cluster_.intraNode;
  g.far = cluster_.getInterNode();
  if (g.groupSize <= 1)
    return g;

  // Every axis of the group described by name: that link, for every peer.
  bool allNamed = llvm::all_of(inGroup, [&](int64_t i) {
    return cluster_.axes.count(mesh.axes[i].name) != 0;
  });
  if (allNamed) {
    LinkParams l = cluster_.axes.at(mesh.axes[inGroup.front()].name);
    for (int64_t i : inGroup)
      l = slowest(l, cluster_.axes.at(mesh.axes[i].name));
    g.near = g.far = l;
    g.sameNodePeers = g.groupSize - 1;
    return g;
  }

  // Placement: rank r on node r / devicesPerNode. Visit every group (its
  // first rank has coordinate 0 on the group's axes), list its ranks in
  // increasing order (nodes then come in runs) and keep the smallest run.
  int64_t fewest = g.groupSize;
  int64_t perNode = std::max<int64_t>(cluster_.devicesPerNode, 1);
  llvm::SmallVector<int64_t> members;
  for (int64_t r = 0; r < world && fewest > 1; ++r) {
    bool first = llvm::all_of(inGroup, [&](int64_t i) {
      return (r / strides[i]) % mesh.axes[i].size == 0;
    });
    if (!first)
      continue;
    members.assign(1, r);
    for (int64_t i : llvm::reverse(inGroup)) {
      size_t n = members.size();
      for (int64_t c = 1; c < mesh.axes[i].size; ++c)
        for (size_t j = 0; j < n; ++j)
          members.push_back(members[j] + c * strides[i]);
    }
    llvm::sort(members);
    size_t runStart = 0;
    for (size_t j = 1; j <= members.size(); ++j)
      if (j == members.size() ||
          members[j] / perNode != members[runStart] / perNode) {
        fewest = std::min<int64_t>(fewest, static_cast<int64_t>(j - runStart));
        runStart = j;
      }
  }
  g.sameNodePeers = fewest - 1;
  g.otherNodePeers = g.groupSize - fewest;
  return g;
}

Cost CostModel::collective(CollectiveKind kind, const MeshSpec &mesh,
                           llvm::ArrayRef<std::string> axes,
                           double bytesSent) const {
  if (kind == CollectiveKind::Slice)
    return copy(bytesSent);
  GroupLinks g = getGroupLinks(mesh, axes);
  int64_t p = g.groupSize;
  if (p <= 1)
    return {};
  if (kind == CollectiveKind::AllToAll) {
    double nearShare = static_cast<double>(g.sameNodePeers) / (p - 1);
    double farShare = static_cast<double>(g.otherNodePeers) / (p - 1);
    return {g.sameNodePeers * g.near.alpha + g.otherNodePeers * g.far.alpha,
            bytesSent *
                (nearShare / g.near.bandwidth + farShare / g.far.bandwidth)};
  }
  // Rings: every step waits for the slowest link of the ring.
  int64_t steps = kind == CollectiveKind::AllReduce ? 2 * (p - 1) : p - 1;
  const LinkParams &l = g.otherNodePeers > 0 ? g.far : g.near;
  return {steps * l.alpha, bytesSent / l.bandwidth};
}

/// Bytes of a statically shaped ranked tensor type; -1 otherwise.
static int64_t tensorBytes(Type type) {
  auto t = dyn_cast<RankedTensorType>(type);
  if (!t || !t.hasStaticShape())
    return -1;
  int64_t bits = t.getElementTypeBitWidth();
  return t.getNumElements() * ((bits + 7) / 8);
}

FailureOr<Cost> CostModel::collective(CollectiveOpInterface op) const {
  std::optional<CollectiveKind> kind =
      symbolizeCollectiveKind(op->getName().getStringRef());
  MeshOp mesh = op.getMeshOp();
  if (!kind || !mesh)
    return failure();
  double bytes;
  if (*kind == CollectiveKind::Slice) {
    int64_t b = tensorBytes(op.getResult().getType());
    if (b < 0)
      return failure();
    bytes = static_cast<double>(b);
  } else {
    int64_t b = op.getBytesSentPerRank();
    if (b < 0)
      return failure();
    bytes = static_cast<double>(b);
  }
  llvm::SmallVector<std::string> axes;
  for (Attribute a : op.getAxes())
    axes.push_back(cast<StringAttr>(a).getValue().str());
  return collective(*kind, mesh.getSpec(), axes, bytes);
}

Cost CostModel::gemm(double flops) const {
  return {cluster_.device.gemmLatency, flops / cluster_.device.gemmFlops};
}

Cost CostModel::copy(double bytes) const {
  return {0, bytes / cluster_.device.copyBandwidth};
}

/// Rows of an expert buffer ([rows, D] or [E, R, D]) and D; false when the
/// shape is dynamic.
static bool bufferRows(Value v, int64_t &rows, int64_t &dim) {
  auto t = dyn_cast<RankedTensorType>(v.getType());
  if (!t || !t.hasStaticShape() || t.getRank() < 2)
    return false;
  rows = t.getNumElements() / t.getShape().back();
  dim = t.getShape().back();
  return true;
}

/// 2 * rows * D * F per weight matrix; `matrices` 2 or 3 (gated).
static int64_t ffnFlops(int64_t rows, int64_t d, int64_t f, int64_t matrices) {
  return 2 * rows * d * f * matrices;
}

int64_t mlir::moe::cost::getExpertFFNFlops(Operation *op) {
  Value input, gate, upW;
  if (auto ffn = dyn_cast<ExpertFFNOp>(op))
    input = ffn.getInput(), gate = ffn.getGate(), upW = ffn.getUp();
  else if (auto ffn = dyn_cast<ExpertFFNTrainOp>(op))
    input = ffn.getInput(), gate = ffn.getGate(), upW = ffn.getUp();
  else
    return -1;
  int64_t rows, d;
  auto up = dyn_cast<RankedTensorType>(upW.getType());
  if (!bufferRows(input, rows, d) || !up || !up.hasStaticShape())
    return -1;
  return ffnFlops(rows, d, up.getShape()[1], gate ? 3 : 2);
}

FailureOr<Cost> CostModel::op(Operation *op) const {
  if (auto c = dyn_cast<CollectiveOpInterface>(op))
    return collective(c);
  if (isa<WaitOp>(op))
    return Cost{};
  if (isa<ExpertFFNOp, ExpertFFNTrainOp>(op)) {
    int64_t flops = getExpertFFNFlops(op);
    if (flops < 0)
      return failure();
    return gemm(static_cast<double>(flops));
  }
  // `matrices` GEMMs of an FFN weight matrix over every row of `input`,
  // F from `upLike` ([E, F, D]).
  auto ffnGemms = [&](Value input, Value upLike,
                      int64_t matrices) -> FailureOr<Cost> {
    int64_t rows, d;
    auto up = dyn_cast<RankedTensorType>(upLike.getType());
    if (!bufferRows(input, rows, d) || !up || !up.hasStaticShape())
      return failure();
    return gemm(
        static_cast<double>(ffnFlops(rows, d, up.getShape()[1], matrices)));
  };
  // Recompute the first layer (gate, up) unless moe.expert_ffn_train saved
  // it, then dgrad and wgrad of all.
  if (auto g = dyn_cast<ExpertFFNGradOp>(op)) {
    int64_t m = g.getGate() ? 3 : 2;
    int64_t recompute = g.getSavedU() ? 0 : m - 1;
    return ffnGemms(g.getInput(), g.getUp(), recompute + 2 * m);
  }
  // The two parts of expert_ffn_grad (moe-overlap's backward): the rows
  // (the recomputation unless saved, dh = dy.down and dx: m matrices) and
  // the weight gradients (m).
  if (auto g = dyn_cast<ExpertFFNGradDataOp>(op)) {
    int64_t m = g.getGate() ? 3 : 2;
    int64_t recompute = g.getSavedU() ? 0 : m - 1;
    return ffnGemms(g.getInput(), g.getUp(), recompute + m);
  }
  if (auto g = dyn_cast<ExpertFFNGradWeightOp>(op))
    return ffnGemms(g.getInput(), g.getDup(), g.getDpreGate() ? 3 : 2);
  auto mlpLike = [&](Value input, Value up, bool gated, bool sigmoidGate,
                     int64_t passes) -> FailureOr<Cost> {
    int64_t rows, d;
    auto u = dyn_cast<RankedTensorType>(up.getType());
    if (!bufferRows(input, rows, d) || !u || !u.hasStaticShape())
      return failure();
    int64_t m = gated ? 3 : 2;
    int64_t matrices = passes == 1 ? m : (m - 1) + 2 * m;
    int64_t flops = ffnFlops(rows, d, u.getShape()[0], matrices) +
                    (sigmoidGate ? 2 * rows * d * passes : 0);
    return gemm(static_cast<double>(flops));
  };
  if (auto m = dyn_cast<MLPOp>(op))
    return mlpLike(m.getInput(), m.getUp(), static_cast<bool>(m.getGate()),
                   static_cast<bool>(m.getSigmoidGate()), 1);
  if (auto m = dyn_cast<MLPGradOp>(op))
    return mlpLike(m.getInput(), m.getUp(), static_cast<bool>(m.getGate()),
                   static_cast<bool>(m.getSigmoidGate()), 3);
  if (auto r = dyn_cast<RouterOp>(op)) {
    int64_t rows, d;
    auto w = dyn_cast<RankedTensorType>(r.getWeight().getType());
    if (!bufferRows(r.getInput(), rows, d) || !w || !w.hasStaticShape())
      return failure();
    return gemm(2.0 * rows * d * w.getShape()[0]);
  }
  if (!isa<MoEDialect>(op->getDialect()))
    return failure();
  // Memory-bound: every operand read and every result written once.
  double bytes = 0;
  for (Type t :
       llvm::concat<const Type>(op->getOperandTypes(), op->getResultTypes())) {
    int64_t b = tensorBytes(t);
    if (b < 0)
      return failure();
    bytes += static_cast<double>(b);
  }
  return copy(bytes);
}

FailureOr<Cost> CostModel::ops(llvm::ArrayRef<Operation *> list) const {
  Cost total;
  for (Operation *o : list) {
    FailureOr<Cost> c = op(o);
    if (failed(c))
      return failure();
    total += *c;
  }
  return total;
}

FailureOr<ExchangeStage>
CostModel::exchangeStage(llvm::ArrayRef<Operation *> dispatch,
                         llvm::ArrayRef<Operation *> compute,
                         llvm::ArrayRef<Operation *> combine) const {
  FailureOr<Cost> d = ops(dispatch), f = ops(compute), c = ops(combine);
  if (failed(d) || failed(f) || failed(c))
    return failure();
  // Every call of an expert FFN streams all its weights.
  double weightBytes = 0;
  for (Operation *o : compute)
    if (isa<ExpertFFNOp, ExpertFFNTrainOp>(o))
      for (unsigned i = 1; i < o->getNumOperands(); ++i) // after the input
        if (auto t = dyn_cast<RankedTensorType>(o->getOperand(i).getType());
            t && t.getRank() == 3)
          weightBytes +=
              static_cast<double>(std::max<int64_t>(tensorBytes(t), 0));
  return ExchangeStage{*d, *f, *c, copy(weightBytes).seconds()};
}

//===----------------------------------------------------------------------===//
// Pipelined exchanges and the list scheduler
//===----------------------------------------------------------------------===//

Schedule mlir::moe::cost::scheduleTasks(llvm::ArrayRef<Task> tasks) {
  Schedule s;
  double free[2] = {0, 0};
  for (const Task &t : tasks) {
    double start = free[static_cast<int>(t.resource)];
    for (int64_t d : t.deps) {
      assert(d >= 0 && d < static_cast<int64_t>(s.end.size()) &&
             "a dependency must come earlier in the list");
      start = std::max(start, s.end[d]);
    }
    double end = start + t.seconds;
    s.start.push_back(start);
    s.end.push_back(end);
    free[static_cast<int>(t.resource)] = end;
    s.makespan = std::max(s.makespan, end);
  }
  return s;
}

PipelinePrediction
mlir::moe::cost::predictPipelinedExchange(const ExchangeStage &stage,
                                          int64_t degree) {
  assert(degree >= 1 && "the degree must be positive");
  double dispatch = stage.dispatch.chunk(degree).seconds();
  double compute =
      std::max(stage.compute.chunk(degree).seconds(), stage.computeFloor);
  double combine = stage.combine.chunk(degree).seconds();
  llvm::SmallVector<Task> tasks;
  llvm::SmallVector<int64_t> dispatchTask(degree, -1);
  auto add = [&](Resource r, double s, llvm::SmallVector<int64_t, 2> deps) {
    tasks.push_back({r, s, std::move(deps)});
    return static_cast<int64_t>(tasks.size()) - 1;
  };
  // Link order: D0 D1 C0 D2 C1 D3 ... C(d-1); compute order: F0 F1 ...
  dispatchTask[0] = add(Resource::Link, dispatch, {});
  if (degree > 1)
    dispatchTask[1] = add(Resource::Link, dispatch, {});
  for (int64_t i = 0; i < degree; ++i) {
    int64_t f = add(Resource::Compute, compute, {dispatchTask[i]});
    add(Resource::Link, combine, {f});
    if (i + 2 < degree)
      dispatchTask[i + 2] = add(Resource::Link, dispatch, {});
  }
  Schedule s = scheduleTasks(tasks);
  PipelinePrediction p;
  p.degree = degree;
  p.seconds = s.makespan;
  p.computeSeconds = compute * static_cast<double>(degree);
  p.commSeconds = (dispatch + combine) * static_cast<double>(degree);
  p.exposedCommSeconds = p.seconds - p.computeSeconds;
  return p;
}

PipelinePrediction mlir::moe::cost::chooseExchangeDegree(
    const ExchangeStage &stage, llvm::ArrayRef<int64_t> candidates,
    llvm::SmallVectorImpl<PipelinePrediction> *all) {
  PipelinePrediction best;
  best.seconds = std::numeric_limits<double>::infinity();
  for (int64_t d : candidates) {
    PipelinePrediction p = predictPipelinedExchange(stage, d);
    if (all)
      all->push_back(p);
    bool better = p.seconds < best.seconds * (1 - 1e-9) ||
                  (p.seconds <= best.seconds * (1 + 1e-9) && d < best.degree);
    if (better)
      best = p;
  }
  return best;
}
