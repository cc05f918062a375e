//===- Checkpoint.cpp - Activation checkpointing (moe-checkpoint) ---------===//
//
// Decides, for every value that @backward reads from @forward_train (the
// `saved.N` pairs that moe-differentiate wrote), whether forward_train keeps
// it or the backward recomputes it, and rewrites both entries accordingly
// (docs/design.md, "Activation checkpointing").
//
// A plan is the set of forward values that are kept ("leaves"): the backward
// needs the values it reads; a needed value that is not a leaf is recomputed
// by cloning its defining op, whose operands are needed in turn (weights are
// arguments of both entries and cost nothing). The policies differ only in
// which values are leaves:
//   none  every value (nothing is recomputed), and the expert FFNs' hidden
//         activations are kept too (moe.expert_ffn_train);
//   full  the values always kept (below);
//   cac   those and the results of every collective, so that no collective
//         is recomputed;
//   auto  those and a subset chosen greedily to fit a byte budget at the
//         least recompute cost of the cost model.
// Always kept: the non-weight arguments of forward_train (hidden_states),
// the residual stream (layer inputs: the results of moe.add chained from
// hidden_states), the results of moe.topk (the routing is never re-derived:
// the top-k indices and gate weights are kept) and of moe.mse_loss (the
// seed).
//
// Recomputed ops are cloned into the backward in forward program order just
// before the first op that reads the value they rebuild, and marked
// moe.recompute. They run the same kernels on the same operands as in
// forward_train, so the backward computes bitwise what it computes under
// `none`.
//
//===----------------------------------------------------------------------===//
#include "moe/Analysis/CostModel.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOECHECKPOINT
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

llvm::Expected<CheckpointPolicy> mlir::moe::parseCheckpointPolicy(StringRef s) {
  std::optional<CheckpointPolicy> p =
      llvm::StringSwitch<std::optional<CheckpointPolicy>>(s.trim())
          .Case("none", CheckpointPolicy::None)
          .Case("full", CheckpointPolicy::Full)
          .Case("cac", CheckpointPolicy::Cac)
          .Case("auto", CheckpointPolicy::Auto)
          .Default(std::nullopt);
  if (!p)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   "unknown checkpoint policy '" + s.str() +
                                       "' (none, full, cac or auto)");
  return *p;
}

llvm::Expected<std::optional<int64_t>>
mlir::moe::parseCheckpointBudget(StringRef s) {
  s = s.trim();
  if (s.empty())
    return std::nullopt;
  int64_t bytes;
  if (s.getAsInteger(10, bytes) || bytes < 0)
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        "checkpoint budget '" + s.str() +
            "' is not a non-negative number of bytes");
  return bytes;
}

StringRef mlir::moe::stringifyCheckpointPolicy(CheckpointPolicy p) {
  switch (p) {
  case CheckpointPolicy::None:
    return "none";
  case CheckpointPolicy::Full:
    return "full";
  case CheckpointPolicy::Cac:
    return "cac";
  case CheckpointPolicy::Auto:
    return "auto";
  }
  llvm_unreachable("unknown checkpoint policy");
}

namespace {

using D = MoEDialect;

int64_t bytesOf(Type t) {
  auto rt = dyn_cast<RankedTensorType>(t);
  if (!rt || !rt.hasStaticShape())
    return 0;
  return rt.getNumElements() *
         static_cast<int64_t>((rt.getElementTypeBitWidth() + 7) / 8);
}

/// An expert FFN of forward_train whose hidden activations can be kept for
/// its gradient op in the backward.
struct FFNPair {
  ExpertFFNOp ffn;
  ExpertFFNGradOp grad;
  int64_t bytes;  // saved_u (+ saved_a)
  double seconds; // the first layer's GEMMs that keeping them spares
};

/// The kept values (forward_train values), recomputed ops and kept FFN
/// activations of one plan, with its saved bytes and recompute cost.
struct Plan {
  llvm::SetVector<Value> kept;
  llvm::SetVector<Operation *> recompute;
  llvm::DenseSet<unsigned> ffnKept; // indices into Checkpointer::ffns
  int64_t bytes = 0;
  double seconds = 0;
  bool communicates = false; // recomputes a collective
};

class Checkpointer {
public:
  Checkpointer(ModuleOp module, func::FuncOp train, func::FuncOp backward,
               const cost::CostModel &model)
      : module(module), train(train), backward(backward), model(model) {}

  LogicalResult run(CheckpointPolicy policy, std::optional<int64_t> budget,
                    bool ffnActivations);

private:
  LogicalResult collect(bool ffnActivations);
  bool isWeight(Value v) const { return weightMap.count(v); }
  bool alwaysKept(Value v) const;
  Plan makePlan(llvm::function_ref<bool(Value)> leaf,
                const llvm::DenseSet<unsigned> &ffnKept);
  FailureOr<Plan> chooseAuto(int64_t budget, const Plan &none,
                             const Plan &full);
  void apply(const Plan &plan);
  double opSeconds(Operation *op);

  ModuleOp module;
  func::FuncOp train, backward;
  const cost::CostModel &model;
  /// forward_train value -> the backward argument that receives it.
  llvm::MapVector<Value, BlockArgument> saved;
  /// forward_train weight argument -> backward weight argument.
  llvm::DenseMap<Value, Value> weightMap;
  llvm::DenseSet<Value> residual;
  llvm::DenseMap<Operation *, unsigned> order; // forward_train program order
  SmallVector<FFNPair> ffns;
  llvm::DenseMap<Operation *, double> costs;
};

bool Checkpointer::alwaysKept(Value v) const {
  if (isa<BlockArgument>(v))
    return true; // hidden_states (weights never reach here)
  if (residual.contains(v))
    return true;
  Operation *def = v.getDefiningOp();
  return isa<TopKOp, MSELossOp>(def);
}

LogicalResult Checkpointer::collect(bool ffnActivations) {
  if (!train.getBody().hasOneBlock() || !backward.getBody().hasOneBlock())
    return mlir::emitError(module.getLoc(),
                           "moe-checkpoint: @forward_train and @backward "
                           "must have one block each");
  Block &tb = train.getBody().front(), &bb = backward.getBody().front();
  // Weights by name.
  llvm::StringMap<Value> backwardWeights;
  for (unsigned i = 0; i < backward.getNumArguments(); ++i)
    if (auto n = backward.getArgAttrOfType<StringAttr>(i, D::kWeightAttrName))
      backwardWeights[n.getValue()] = bb.getArgument(i);
  for (unsigned i = 0; i < train.getNumArguments(); ++i)
    if (auto n = train.getArgAttrOfType<StringAttr>(i, D::kWeightAttrName)) {
      auto it = backwardWeights.find(n.getValue());
      if (it == backwardWeights.end())
        return backward.emitOpError()
               << "moe-checkpoint: has no argument for weight '" << n.getValue()
               << "' of @forward_train";
      weightMap[tb.getArgument(i)] = it->second;
    }
  // saved.N: forward_train result <-> backward argument.
  llvm::StringMap<BlockArgument> savedArgs;
  for (unsigned i = 0; i < backward.getNumArguments(); ++i)
    if (auto n = backward.getArgAttrOfType<StringAttr>(i, D::kSavedAttrName))
      savedArgs[n.getValue()] = bb.getArgument(i);
  auto ret = cast<func::ReturnOp>(tb.getTerminator());
  for (unsigned i = 0; i < train.getNumResults(); ++i) {
    auto n = train.getResultAttrOfType<StringAttr>(i, D::kOutputAttrName);
    if (!n || !n.getValue().starts_with("saved."))
      continue;
    auto it = savedArgs.find(n.getValue());
    if (it == savedArgs.end())
      return train.emitOpError() << "moe-checkpoint: result '" << n.getValue()
                                 << "' has no moe.saved argument in @backward";
    Value v = ret.getOperand(i);
    if (saved.count(v))
      return train.emitOpError("moe-checkpoint: a value is saved twice");
    saved.insert({v, it->second});
  }
  // Program order, the residual stream.
  unsigned n = 0;
  for (Operation &op : tb) {
    order[&op] = n++;
    if (auto add = dyn_cast<AddOp>(op)) {
      auto isResidual = [&](Value v) {
        if (residual.contains(v))
          return true;
        auto arg = dyn_cast<BlockArgument>(v);
        if (!arg || isWeight(v))
          return false;
        auto name = train.getArgAttrOfType<StringAttr>(arg.getArgNumber(),
                                                       D::kInputAttrName);
        return name && name.getValue() == "hidden_states";
      };
      if (isResidual(add.getLhs()) || isResidual(add.getRhs()))
        residual.insert(add.getOutput());
    }
  }
  // Expert FFNs and their gradient ops, matched by their up weight.
  if (!ffnActivations)
    return success();
  llvm::DenseMap<Value, SmallVector<ExpertFFNGradOp>> gradsByUp;
  backward.walk([&](ExpertFFNGradOp g) { gradsByUp[g.getUp()].push_back(g); });
  llvm::DenseMap<Value, int> ffnsByUp;
  train.walk([&](ExpertFFNOp f) { ++ffnsByUp[f.getUp()]; });
  train.walk([&](ExpertFFNOp f) {
    auto w = weightMap.find(f.getUp());
    if (w == weightMap.end() || ffnsByUp[f.getUp()] != 1)
      return;
    auto g = gradsByUp.find(w->second);
    if (g == gradsByUp.end() || g->second.size() != 1 ||
        g->second[0].getSavedU())
      return;
    auto x = cast<RankedTensorType>(f.getInput().getType());
    auto up = cast<RankedTensorType>(f.getUp().getType());
    if (!x.hasStaticShape() || !up.hasStaticShape() ||
        !x.getElementType().isF32())
      return;
    int64_t rows = x.getNumElements() / x.getShape().back();
    int64_t matrices = f.getGate() ? 2 : 1;
    int64_t bytes = rows * up.getDimSize(1) * 4 * matrices;
    double flops = 2.0 * rows * x.getShape().back() * up.getDimSize(1) *
                   static_cast<double>(matrices);
    ffns.push_back({f, g->second[0], bytes, model.gemm(flops).seconds()});
  });
  return success();
}

double Checkpointer::opSeconds(Operation *op) {
  auto [it, inserted] = costs.try_emplace(op, 0.0);
  if (inserted) {
    FailureOr<cost::Cost> c = model.op(op);
    it->second = succeeded(c) ? c->seconds() : 0.0;
  }
  return it->second;
}

Plan Checkpointer::makePlan(llvm::function_ref<bool(Value)> leaf,
                            const llvm::DenseSet<unsigned> &ffnKept) {
  Plan plan;
  plan.ffnKept = ffnKept;
  SmallVector<Value> work;
  for (auto &entry : saved)
    work.push_back(entry.first);
  while (!work.empty()) {
    Value v = work.pop_back_val();
    if (isWeight(v) || plan.kept.contains(v))
      continue;
    if (leaf(v)) {
      plan.kept.insert(v);
      continue;
    }
    Operation *def = v.getDefiningOp();
    if (!plan.recompute.insert(def))
      continue;
    for (Value operand : def->getOperands())
      work.push_back(operand);
  }
  for (Value v : plan.kept)
    plan.bytes += bytesOf(v.getType());
  for (Operation *op : plan.recompute) {
    plan.seconds += opSeconds(op);
    plan.communicates |= isa<CollectiveOpInterface>(op);
  }
  for (auto [i, f] : llvm::enumerate(ffns)) {
    if (ffnKept.contains(i))
      plan.bytes += f.bytes;
    else
      plan.seconds += f.seconds;
  }
  return plan;
}

FailureOr<Plan> Checkpointer::chooseAuto(int64_t budget, const Plan &none,
                                         const Plan &full) {
  if (none.bytes <= budget)
    return none;
  // Greedy from `none`: drop the kept value (or FFN activations) with the
  // most bytes freed per second of recompute added; first only among the
  // drops that recompute no collective, then among all.
  llvm::DenseSet<Value> keep(none.kept.begin(), none.kept.end());
  llvm::DenseSet<unsigned> ffnKept = none.ffnKept;
  auto planOf = [&](const llvm::DenseSet<Value> &k,
                    const llvm::DenseSet<unsigned> &f) {
    return makePlan([&](Value v) { return alwaysKept(v) || k.contains(v); }, f);
  };
  Plan current = none;
  for (bool allowCollectives : {false, true}) {
    while (current.bytes > budget) {
      std::optional<Plan> best;
      double bestRatio = -1;
      std::optional<Value> bestValue;
      std::optional<unsigned> bestFFN;
      auto consider = [&](Plan p, std::optional<Value> v,
                          std::optional<unsigned> f) {
        if (p.bytes >= current.bytes || (p.communicates && !allowCollectives))
          return;
        double freed = static_cast<double>(current.bytes - p.bytes);
        double ratio = freed / std::max(p.seconds - current.seconds, 1e-15);
        if (ratio > bestRatio) {
          bestRatio = ratio;
          best = std::move(p);
          bestValue = v;
          bestFFN = f;
        }
      };
      for (Value v : current.kept) {
        if (alwaysKept(v))
          continue;
        keep.erase(v);
        consider(planOf(keep, ffnKept), v, std::nullopt);
        keep.insert(v);
      }
      for (unsigned i : llvm::to_vector(ffnKept)) {
        ffnKept.erase(i);
        consider(planOf(keep, ffnKept), std::nullopt, i);
        ffnKept.insert(i);
      }
      if (!best)
        break;
      if (bestValue)
        keep.erase(*bestValue);
      if (bestFFN)
        ffnKept.erase(*bestFFN);
      current = std::move(*best);
    }
  }
  if (current.bytes > budget)
    return full; // the greedy stalled above the budget; full fits it
  return current;
}

void Checkpointer::apply(const Plan &plan) {
  Block &tb = train.getBody().front(), &bb = backward.getBody().front();
  // Backward arguments of kept values, in order; new ones are inserted after
  // the saved arguments so far.
  llvm::MapVector<Value, BlockArgument> args;
  unsigned numSaved = saved.size();
  for (auto &[v, arg] : saved)
    if (plan.kept.contains(v))
      args.insert({v, arg});
  auto argOf = [&](Value v) -> Value {
    if (auto it = weightMap.find(v); it != weightMap.end())
      return it->second;
    if (auto it = args.find(v); it != args.end())
      return it->second;
    (void)backward.insertArgument(numSaved, v.getType(), DictionaryAttr(),
                                  v.getLoc());
    BlockArgument a = bb.getArgument(numSaved++);
    args.insert({v, a});
    return a;
  };

  // Recompute: each dropped value, in the order the backward first reads
  // it, with the ops it needs that are not cloned yet.
  llvm::DenseMap<Operation *, unsigned> backwardOrder;
  unsigned n = 0;
  for (Operation &op : bb)
    backwardOrder[&op] = n++;
  SmallVector<std::pair<unsigned, Value>> dropped;
  for (auto &[v, arg] : saved) {
    if (plan.kept.contains(v))
      continue;
    unsigned first = ~0u;
    for (Operation *user : arg.getUsers())
      first = std::min(first, backwardOrder.lookup(user));
    dropped.push_back({first, v});
  }
  llvm::sort(dropped, [](auto &a, auto &b) { return a.first < b.first; });
  IRMapping map;
  for (auto [first, v] : dropped) {
    BlockArgument arg = saved.lookup(v);
    if (arg.use_empty())
      continue;
    // The ops v needs that are not cloned yet, in forward order.
    SmallVector<Operation *> need;
    llvm::DenseSet<Operation *> seen;
    SmallVector<Value> work{v};
    while (!work.empty()) {
      Value u = work.pop_back_val();
      Operation *def = u.getDefiningOp();
      if (!def || !plan.recompute.contains(def) || map.contains(u) ||
          !seen.insert(def).second)
        continue;
      need.push_back(def);
      llvm::append_range(work, def->getOperands());
    }
    llvm::sort(need, [&](Operation *a, Operation *b) {
      return order.lookup(a) < order.lookup(b);
    });
    Operation *firstUser = nullptr;
    for (Operation *user : arg.getUsers())
      if (!firstUser ||
          backwardOrder.lookup(user) < backwardOrder.lookup(firstUser))
        firstUser = user;
    OpBuilder b(firstUser);
    for (Operation *op : need) {
      for (Value operand : op->getOperands())
        if (!map.contains(operand) &&
            !(operand.getDefiningOp() &&
              plan.recompute.contains(operand.getDefiningOp())))
          map.map(operand, argOf(operand));
      Operation *clone = b.clone(*op, map);
      clone->setAttr(D::kRecomputeAttrName, b.getUnitAttr());
    }
    arg.replaceAllUsesWith(map.lookup(v));
  }
  // Drop the arguments of values no longer kept.
  for (auto &[v, arg] : llvm::reverse(saved))
    if (!plan.kept.contains(v))
      (void)backward.eraseArgument(arg.getArgNumber());
  numSaved = args.size();

  // Kept FFN activations: moe.expert_ffn_train in forward_train, read by
  // the gradient op (whose output replaces the FFN's among the kept values).
  llvm::DenseMap<Value, Value> renamed;
  for (auto [i, f] : llvm::enumerate(ffns)) {
    if (!plan.ffnKept.contains(i))
      continue;
    ExpertFFNOp ffn = f.ffn;
    OpBuilder b(ffn);
    auto x = cast<RankedTensorType>(ffn.getInput().getType());
    int64_t rows = x.getNumElements() / x.getShape().back();
    auto actType = RankedTensorType::get(
        {rows, cast<RankedTensorType>(ffn.getUp().getType()).getDimSize(1)},
        b.getF32Type());
    auto trainOp = ExpertFFNTrainOp::create(
        b, ffn.getLoc(), ffn.getOutput().getType(), actType,
        ffn.getGate() ? Type(actType) : Type(), ffn.getInput(), ffn.getCounts(),
        ffn.getGate(), ffn.getUp(), ffn.getDown(), ffn.getActivationAttr());
    ffn.getOutput().replaceAllUsesWith(trainOp.getOutput());
    renamed[ffn.getOutput()] = trainOp.getOutput();
    ffn.erase();
    f.grad.getSavedUMutable().assign(argOf(trainOp.getSavedU()));
    if (Value a = trainOp.getSavedA())
      f.grad.getSavedAMutable().assign(argOf(a));
  }

  // forward_train returns the losses, the kept values (saved.N, in the
  // order of the backward's arguments), then the rest (expert counts).
  auto ret = cast<func::ReturnOp>(tb.getTerminator());
  SmallVector<Value> before, after;
  SmallVector<DictionaryAttr> beforeAttrs, afterAttrs;
  bool seenSaved = false;
  for (unsigned i = 0; i < train.getNumResults(); ++i) {
    auto name = train.getResultAttrOfType<StringAttr>(i, D::kOutputAttrName);
    bool isSaved = name && name.getValue().starts_with("saved.");
    seenSaved |= isSaved;
    if (isSaved)
      continue;
    (seenSaved ? after : before).push_back(ret.getOperand(i));
    (seenSaved ? afterAttrs : beforeAttrs)
        .push_back(train.getResultAttrDict(i));
  }
  llvm::DenseMap<BlockArgument, Value> valueOfArg;
  for (auto &[v, a] : args)
    valueOfArg[a] = v;
  SmallVector<Value> values(before);
  SmallVector<DictionaryAttr> attrs(beforeAttrs);
  OpBuilder b(module.getContext());
  for (unsigned i = 0; i < args.size(); ++i) {
    Value v = valueOfArg.lookup(bb.getArgument(i));
    assert(v && "saved argument without a forward value");
    if (Value r = renamed.lookup(v))
      v = r;
    auto name = b.getStringAttr("saved." + Twine(i));
    backward.setArgAttrs(
        i, b.getDictionaryAttr(b.getNamedAttr(D::kSavedAttrName, name)));
    values.push_back(v);
    attrs.push_back(
        b.getDictionaryAttr(b.getNamedAttr(D::kOutputAttrName, name)));
  }
  llvm::append_range(values, after);
  llvm::append_range(attrs, afterAttrs);
  ret->setOperands(values);
  train.setType(FunctionType::get(module.getContext(), tb.getArgumentTypes(),
                                  ValueRange(values).getTypes()));
  train.setAllResultAttrs(attrs);
}

LogicalResult Checkpointer::run(CheckpointPolicy policy,
                                std::optional<int64_t> budget,
                                bool ffnActivations) {
  if (failed(collect(ffnActivations)))
    return failure();
  llvm::DenseSet<unsigned> allFFNs, noFFNs;
  for (unsigned i = 0; i < ffns.size(); ++i)
    allFFNs.insert(i);
  Plan none = makePlan([](Value) { return true; }, allFFNs);
  Plan full = makePlan([&](Value v) { return alwaysKept(v); }, noFFNs);
  Plan plan;
  switch (policy) {
  case CheckpointPolicy::None:
    plan = std::move(none);
    break;
  case CheckpointPolicy::Full:
    plan = std::move(full);
    break;
  case CheckpointPolicy::Cac:
    plan = makePlan(
        [&](Value v) {
          return alwaysKept(v) ||
                 isa_and_nonnull<CollectiveOpInterface>(v.getDefiningOp());
        },
        noFFNs);
    break;
  case CheckpointPolicy::Auto: {
    if (*budget < full.bytes)
      return mlir::emitError(module.getLoc())
             << "moe-checkpoint: budget " << *budget
             << " bytes is below the minimum of " << full.bytes
             << " bytes per rank (policy full: the layer inputs and the "
                "routing)";
    FailureOr<Plan> p = chooseAuto(*budget, none, full);
    if (failed(p))
      return failure();
    plan = std::move(*p);
    break;
  }
  }
  int64_t collectives = llvm::count_if(plan.recompute, [](Operation *op) {
    return isa<CollectiveOpInterface>(op);
  });
  apply(plan);

  OpBuilder b(module.getContext());
  SmallVector<NamedAttribute> info{
      b.getNamedAttr("policy",
                     b.getStringAttr(stringifyCheckpointPolicy(policy))),
      b.getNamedAttr("saved_bytes", b.getI64IntegerAttr(plan.bytes)),
      b.getNamedAttr("recompute_ops",
                     b.getI64IntegerAttr(plan.recompute.size())),
      b.getNamedAttr("recompute_collectives", b.getI64IntegerAttr(collectives)),
      b.getNamedAttr("recompute_seconds", b.getF64FloatAttr(plan.seconds))};
  if (budget)
    info.push_back(
        b.getNamedAttr("budget_bytes", b.getI64IntegerAttr(*budget)));
  module->setAttr(D::kCheckpointAttrName, b.getDictionaryAttr(info));
  return success();
}

struct MoECheckpointPass : moe::impl::MoECheckpointBase<MoECheckpointPass> {
  using MoECheckpointBase::MoECheckpointBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    llvm::Expected<CheckpointPolicy> p = parseCheckpointPolicy(policy);
    if (!p) {
      mlir::emitError(module.getLoc(), "moe-checkpoint: ")
          << llvm::toString(p.takeError());
      return signalPassFailure();
    }
    llvm::Expected<std::optional<int64_t>> b = parseCheckpointBudget(budget);
    if (!b) {
      mlir::emitError(module.getLoc(), "moe-checkpoint: ")
          << llvm::toString(b.takeError());
      return signalPassFailure();
    }
    if (*p == CheckpointPolicy::Auto && !*b) {
      mlir::emitError(module.getLoc(),
                      "moe-checkpoint: policy auto needs a budget (bytes)");
      return signalPassFailure();
    }
    if (*p != CheckpointPolicy::Auto && *b) {
      mlir::emitError(module.getLoc(),
                      "moe-checkpoint: a budget is only for policy auto");
      return signalPassFailure();
    }
    auto train = module.lookupSymbol<func::FuncOp>("forward_train");
    auto backward = module.lookupSymbol<func::FuncOp>("backward");
    if (!train || !backward) {
      mlir::emitError(module.getLoc(),
                      "moe-checkpoint: the module has no @forward_train and "
                      "@backward (run moe-differentiate first)");
      return signalPassFailure();
    }
    llvm::Expected<cost::ClusterSpec> spec = cost::loadClusterFile(cluster);
    if (!spec) {
      mlir::emitError(module.getLoc(), "moe-checkpoint: ")
          << llvm::toString(spec.takeError());
      return signalPassFailure();
    }
    cost::CostModel model(*spec);
    if (failed(Checkpointer(module, train, backward, model)
                   .run(*p, *b, ffnActivations)))
      signalPassFailure();
  }
};

} // namespace
