//===- StepSimulator.cpp - Time line of one step of a per-rank program ----===//
#include "moe/Analysis/StepSimulator.h"

#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Operation.h"

#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <cstdio>

using namespace mlir;
using namespace mlir::moe;
using namespace mlir::moe::cost;

namespace {

llvm::Error error(const llvm::Twine &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

/// "all_to_all_v over [ep]" (the runtime's name of a transfer).
std::string transferName(CollectiveOpInterface op) {
  llvm::StringRef name = op->getName().stripDialect();
  name.consume_back("_start");
  llvm::SmallVector<std::string> axes;
  for (Attribute a : op.getAxes())
    axes.push_back(cast<StringAttr>(a).getValue().str());
  return (name + " over [" + llvm::join(axes, ",") + "]").str();
}

/// The share of a gradient op's time that recomputes its forward: the first
/// layer of an FFN ((m-1) of the (m-1) + 2m weight-matrix passes the cost
/// model prices; m = 3 gated, 2 otherwise); an op marked moe.recompute
/// entirely; 0 for every other op.
double recomputeShare(Operation *op) {
  if (op->hasAttr(kRecomputeAttrName))
    return 1.0;
  auto share = [](bool gated) {
    double m = gated ? 3 : 2;
    return (m - 1) / ((m - 1) + 2 * m);
  };
  if (auto g = dyn_cast<ExpertFFNGradOp>(op))
    return share(static_cast<bool>(g.getGate()));
  if (auto g = dyn_cast<MLPGradOp>(op))
    return share(static_cast<bool>(g.getGate()));
  // moe-overlap's split of expert_ffn_grad: the recomputation is (m-1) of
  // the data part's (m-1) + m passes, unless the forward saved it.
  if (auto g = dyn_cast<ExpertFFNGradDataOp>(op)) {
    double m = g.getGate() ? 3 : 2;
    return g.getSavedU() ? 0.0 : (m - 1) / ((m - 1) + m);
  }
  return 0.0;
}

/// Dim 0 of a counts tensor (its segments); 1 when there is none.
int64_t segments(Value counts) {
  auto t = counts ? dyn_cast<RankedTensorType>(counts.getType()) : nullptr;
  if (!t || t.getRank() != 2 || t.isDynamicDim(0) || t.getDimSize(0) < 1)
    return 1;
  return t.getDimSize(0);
}

/// The segments of a packed (2-D) expert buffer's counts; 1 otherwise.
int64_t packedSegments(Operation *op) {
  auto packed = [](Value input, Value counts) -> int64_t {
    auto t = dyn_cast<RankedTensorType>(input.getType());
    return t && t.getRank() == 2 ? segments(counts) : 1;
  };
  if (auto f = dyn_cast<ExpertFFNOp>(op))
    return packed(f.getInput(), f.getCounts());
  if (auto g = dyn_cast<ExpertFFNGradOp>(op))
    return packed(g.getInput(), g.getCounts());
  if (auto g = dyn_cast<ExpertFFNGradDataOp>(op))
    return packed(g.getInput(), g.getCounts());
  if (auto g = dyn_cast<ExpertFFNGradWeightOp>(op))
    return packed(g.getInput(), g.getCounts());
  return 1;
}

struct Simulator {
  const CostModel &model;
  const SimulateOptions &options;
  StepSimulation &sim;
  Simulator(const CostModel &model, const SimulateOptions &options,
            StepSimulation &sim)
      : model(model), options(options), sim(sim) {}
  double computeFree = 0, linkFree = 0;
  llvm::DenseMap<Value, double> ready;

  void event(std::string name, Resource r, double start, double seconds,
             StringRef entry, bool recompute = false) {
    sim.events.push_back(
        {std::move(name), r, start, seconds, entry.str(), recompute});
  }

  double operandsReady(Operation *op) {
    double t = 0;
    for (Value v : op->getOperands())
      t = std::max(t, ready.lookup(v));
    return t;
  }

  /// Time and bytes sent of a collective (balanced for all_to_all_v).
  FailureOr<Cost> price(CollectiveOpInterface op, double &bytes) {
    MeshOp mesh = op.getMeshOp();
    int64_t b = op.getBytesSentPerRank();
    std::optional<CollectiveKind> kind =
        symbolizeCollectiveKind(op->getName().getStringRef());
    if (!mesh || b < 0 || !kind)
      return failure();
    llvm::SmallVector<std::string> axes;
    for (Attribute a : op.getAxes())
      axes.push_back(cast<StringAttr>(a).getValue().str());
    bytes = static_cast<double>(b);
    if (options.balancedDropless) {
      Value counts;
      if (auto v = dyn_cast<AllToAllVOp>(op.getOperation()))
        counts = v.getSendCounts();
      else if (auto v = dyn_cast<AllToAllVStartOp>(op.getOperation()))
        counts = v.getSendCounts();
      if (counts) {
        int64_t p = model.getGroupLinks(mesh.getSpec(), axes).groupSize;
        bytes = bytes / static_cast<double>(segments(counts)) *
                static_cast<double>(p - 1) / static_cast<double>(p);
      }
    }
    return model.collective(*kind, mesh.getSpec(), axes, bytes);
  }

  void countBytes(CollectiveOpInterface op, const std::string &name,
                  double bytes) {
    MeshOp mesh = op.getMeshOp();
    if (!mesh || bytes <= 0)
      return;
    llvm::SmallVector<std::string> axes;
    for (Attribute a : op.getAxes())
      axes.push_back(cast<StringAttr>(a).getValue().str());
    GroupLinks g = model.getGroupLinks(mesh.getSpec(), axes);
    if (g.groupSize <= 1)
      return;
    sim.bytesByCollective[name] += bytes;
    bool a2a = symbolizeCollectiveKind(op->getName().getStringRef()) ==
               CollectiveKind::AllToAll;
    if (a2a) {
      double near = bytes * static_cast<double>(g.sameNodePeers) /
                    static_cast<double>(g.groupSize - 1);
      sim.intraNodeBytes += near;
      sim.interNodeBytes += bytes - near;
    } else if (g.otherNodePeers > 0) {
      sim.interNodeBytes += bytes;
    } else {
      sim.intraNodeBytes += bytes;
    }
  }

  llvm::Error run(func::FuncOp fn) {
    StringRef entry = fn.getSymName();
    if (fn.getBody().empty())
      return llvm::Error::success();
    for (Operation &o : fn.getBody().front()) {
      Operation *op = &o;
      if (!isa<MoEDialect>(op->getDialect()) || isa<MeshOp>(op))
        continue; // constants, the return: no time
      double readyAt = operandsReady(op);
      if (auto w = dyn_cast<WaitOp>(op)) {
        double start = std::max(computeFree, readyAt);
        if (start > computeFree)
          event("wait", Resource::Compute, computeFree, start - computeFree,
                entry);
        computeFree = start;
        for (Value r : op->getResults())
          ready[r] = start;
        continue;
      }
      auto coll = dyn_cast<CollectiveOpInterface>(op);
      if (coll && !isa<SliceOp>(op)) {
        double bytes = 0;
        FailureOr<Cost> c = price(coll, bytes);
        if (failed(c))
          return error(op->getName().getStringRef() + " in @" + entry +
                       ": cannot be priced (a dynamic shape or no mesh)");
        std::string name = transferName(coll);
        countBytes(coll, name, bytes);
        double issue = std::max(computeFree, readyAt);
        double start = std::max(issue, linkFree);
        double end = start + c->seconds();
        linkFree = end;
        event(name, Resource::Link, start, c->seconds(), entry);
        bool async = op->getNumResults() == 1 &&
                     isa<FutureType>(op->getResult(0).getType());
        if (!async) {
          // The host is blocked from the issue to the end of the transfer.
          event(op->getName().stripDialect().str(), Resource::Compute, issue,
                end - issue, entry);
          computeFree = end;
        }
        for (Value r : op->getResults())
          ready[r] = end;
        continue;
      }
      FailureOr<Cost> c = model.op(op);
      if (failed(c))
        return error(op->getName().getStringRef() + " in @" + entry +
                     ": cannot be priced (a dynamic shape)");
      if (options.balancedDropless)
        c->proportional /= static_cast<double>(packedSegments(op));
      double start = std::max(computeFree, readyAt);
      double seconds = c->seconds();
      double share = recomputeShare(op);
      event(op->getName().stripDialect().str(), Resource::Compute, start,
            seconds, entry, share == 1.0);
      sim.recomputeSeconds += share * seconds;
      sim.computeSeconds += (1 - share) * seconds;
      computeFree = start + seconds;
      for (Value r : op->getResults())
        ready[r] = computeFree;
    }
    // The entry returns when both resources are idle.
    computeFree = linkFree = std::max(computeFree, linkFree);
    return llvm::Error::success();
  }
};

} // namespace

llvm::Expected<StepSimulation>
mlir::moe::cost::simulateStep(const CostModel &model,
                              llvm::ArrayRef<func::FuncOp> functions,
                              const SimulateOptions &options) {
  StepSimulation sim;
  Simulator s(model, options, sim);
  for (func::FuncOp fn : functions)
    if (llvm::Error e = s.run(fn))
      return std::move(e);
  for (const SimEvent &e : sim.events) {
    sim.seconds = std::max(sim.seconds, e.start + e.seconds);
    if (e.resource == Resource::Link)
      sim.commSeconds += e.seconds;
  }
  sim.exposedCommSeconds =
      std::max(0.0, sim.seconds - sim.computeSeconds - sim.recomputeSeconds);
  return sim;
}

std::string mlir::moe::cost::renderChromeTrace(const StepSimulation &sim,
                                               int64_t ranks,
                                               int64_t pidOffset) {
  std::string out = "[\n";
  bool first = true;
  auto add = [&](const std::string &line) {
    out += (first ? "" : ",\n") + line;
    first = false;
  };
  for (int64_t r = 0; r < ranks; ++r) {
    int64_t pid = r + pidOffset;
    add(llvm::formatv("{{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": "
                      "{0}, \"args\": {{\"name\": \"rank {1} (predicted)\"}}",
                      pid, r));
    add(llvm::formatv("{{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": "
                      "{0}, \"tid\": 0, \"args\": {{\"name\": \"compute\"}}",
                      pid));
    add(llvm::formatv("{{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": "
                      "{0}, \"tid\": 1, \"args\": {{\"name\": "
                      "\"communication\"}}",
                      pid));
    for (const SimEvent &e : sim.events) {
      char buf[160];
      std::snprintf(buf, sizeof buf,
                    "\"ph\": \"X\", \"ts\": %.3f, \"dur\": %.3f, \"pid\": "
                    "%lld, \"tid\": %d",
                    e.start * 1e6, e.seconds * 1e6, static_cast<long long>(pid),
                    static_cast<int>(e.resource));
      add("{\"name\": \"" + e.name + "\", " + buf +
          ", \"args\": {\"entry\": \"" + e.entry + "\"" +
          (e.recompute ? ", \"recompute\": true" : "") + "}}");
    }
  }
  return out + "\n]\n";
}
