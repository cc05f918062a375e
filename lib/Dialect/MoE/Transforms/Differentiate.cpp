//===- Differentiate.cpp - Training entries (moe-differentiate) -----------===//
//
// Reverse-mode differentiation of the decomposed forward program, op by op
// (docs/spec.md 7.2), and the optimizer step entries (7.3, 7.4).
//
// forward_train is the forward plus the loss; every forward value that an
// adjoint reads is returned from it as `saved.N` and received by backward
// under the same name. backward walks the forward's ops in reverse and
// emits, per op, the gradient op of the same name; gradients that reach a
// value along several paths are summed with moe.add in the order they
// arrive. It runs on the per-rank program (after moe-shard): collectives get
// their adjoints and weight gradients their bucketed all-reduces
// (docs/design.md, "Training").
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::moe {
#define GEN_PASS_DEF_MOEDIFFERENTIATE
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

using D = MoEDialect;

RankedTensorType tensorOf(Value v) {
  return cast<RankedTensorType>(v.getType());
}

StringAttr argName(func::FuncOp f, unsigned i, StringRef attr) {
  return f.getArgAttrOfType<StringAttr>(i, attr);
}

/// A selection bias of the forward and what its update needs.
struct BiasInfo {
  unsigned arg;   // argument index in @forward
  StringRef name; // its moe.weight name
  Value load;     // forward_train: the expert counts [E]
  int64_t tokens, k;
};

class Differentiator {
public:
  Differentiator(ModuleOp module, func::FuncOp forward, bool zero1)
      : module(module), forward(forward), ctx(module.getContext()),
        zero1(zero1) {}

  LogicalResult run();

private:
  LogicalResult checkForward();
  LogicalResult buildForwardTrain();
  LogicalResult buildBackward();
  LogicalResult adjoint(Operation *op);
  void buildStep(bool adamw);

  /// The backward's value for forward_train value `v`: a weight argument,
  /// or a saved activation (made an argument on first use).
  Value primal(Value v);
  /// The gradient accumulated for `v` so far (null if none).
  Value grad(Value v) { return grads.lookup(v); }
  void addGrad(Value v, Value g);
  /// The mesh axes weight argument `i` of @forward is split over.
  SmallVector<StringRef> shardAxes(unsigned i);
  /// `moe.all_reduce` of `v` over `axes` (built with `b`).
  Value allReduce(OpBuilder &b, Location loc, Value v,
                  ArrayRef<StringRef> axes);
  /// Sums every weight gradient over the axes of spec 7.1, bucketed.
  void synchronizeGradients();
  /// Attributes of a tensor named like @forward argument `i` (its shard
  /// spec and global shape), under `attr` = `name`.
  DictionaryAttr like(unsigned i, StringRef attr, const Twine &name);
  /// The same for the gradient and optimizer state of weight `i`: with
  /// ZeRO-1 they are also split over dp (dimension 0).
  DictionaryAttr likeGrad(unsigned i, StringRef attr, const Twine &name);
  /// Collective `OpTy` over dp along dimension 0 (ZeRO-1).
  template <typename OpTy> Value overDp(OpBuilder &b, Type type, Value v);

  ModuleOp module;
  func::FuncOp forward, train, backward;
  MLIRContext *ctx;
  bool zero1;                           // optimizer state sharded over dp
  llvm::DenseSet<unsigned> zeroWeights; // @forward weights stepped sharded
  std::unique_ptr<OpBuilder> bb;        // builds the backward body

  MeshOp mesh;                      // of a sharded program
  SmallVector<StringRef> tokenAxes; // dp, ep of size > 1: tokens differ
  /// Values summed by a collective over tp (partial sums of a tp-split op):
  /// the gradients of that op's tp-replicated operands are partial too.
  llvm::DenseMap<Value, SmallVector<StringRef>> partialAxes;
  unsigned inputArg = 0; // hidden_states in @forward
  /// The token mask (moe.input "token_mask") in @forward, if any: an input,
  /// not a weight; the backward gets it as a saved value.
  std::optional<unsigned> maskArg;
  bool isWeightArg(unsigned i) const { return i != inputArg && i != maskArg; }
  Value output, aux, zloss; // forward_train's results of the forward
  Value seed, one;          // forward_train: dy, and 1.0 for the losses
  SmallVector<Operation *> forwardOps; // of forward_train, program order
  llvm::MapVector<Value, BlockArgument> saved; // forward_train -> backward
  llvm::DenseMap<Value, Value> grads;          // forward_train -> backward
  llvm::DenseMap<unsigned, BlockArgument> weightArgs; // train arg -> backward
  SmallVector<BiasInfo> biases;
  /// Weights with a gradient: @forward argument index and the gradient.
  SmallVector<std::pair<unsigned, Value>> weightGrads;
};

LogicalResult Differentiator::checkForward() {
  if (!forward.getBody().hasOneBlock())
    return forward.emitOpError("moe-differentiate needs a single-block "
                               "@forward");
  bool haveInput = false;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    auto t = dyn_cast<RankedTensorType>(forward.getArgumentTypes()[i]);
    if (StringAttr in = argName(forward, i, D::kInputAttrName);
        in && in.getValue() == "token_mask" && t &&
        t.getElementType().isInteger(32)) {
      maskArg = i;
      continue;
    }
    if (!t || !t.getElementType().isF32())
      return forward.emitOpError()
             << "moe-differentiate: training supports f32 models only, "
                "argument "
             << i << " is " << forward.getArgumentTypes()[i];
    if (argName(forward, i, D::kInputAttrName)) {
      if (haveInput)
        return forward.emitOpError("moe-differentiate: @forward has more than "
                                   "one moe.input argument");
      haveInput = true;
      inputArg = i;
    } else if (!argName(forward, i, D::kWeightAttrName)) {
      return forward.emitOpError()
             << "moe-differentiate: argument " << i
             << " of @forward is neither moe.input nor moe.weight";
    }
  }
  if (!haveInput || inputArg != 0)
    return forward.emitOpError("moe-differentiate: argument 0 of @forward "
                               "must be its moe.input (hidden_states)");
  for (MeshOp m : module.getOps<MeshOp>()) {
    if (mesh)
      return m.emitOpError("moe-differentiate needs one moe.mesh in the "
                           "module");
    mesh = m;
  }
  if (mesh)
    for (StringRef axis : {kAxisDP, kAxisEP})
      if (mesh.getAxisSize(axis) > 1)
        tokenAxes.push_back(axis);
  for (Operation &op : forward.getBody().front()) {
    if (isa<func::ReturnOp>(op))
      continue;
    if (isa<WaitOp>(op) || (isa<CollectiveOpInterface>(op) &&
                            cast<CollectiveOpInterface>(op).isStart()))
      return op.emitOpError()
             << "has no adjoint yet: moe-differentiate takes the synchronous "
                "collectives (canonicalize a start followed by its wait)";
    if (isa<CollectiveOpInterface>(op) && !mesh)
      return op.emitOpError("names a mesh but the module has no moe.mesh");
    if (isa<LayerOp>(op))
      return op.emitOpError("must be decomposed before moe-differentiate "
                            "(run moe-decompose)");
    if (!isa<MoEDialect>(op.getDialect()))
      return op.emitOpError("is not supported by moe-differentiate");
  }
  for (auto [i, t] : llvm::enumerate(forward.getResultTypes())) {
    auto rt = dyn_cast<RankedTensorType>(t);
    if (!rt || !rt.getElementType().isF32())
      return forward.emitOpError()
             << "moe-differentiate: training supports f32 models only, "
                "result "
             << i << " is " << t;
  }
  return success();
}

LogicalResult Differentiator::buildForwardTrain() {
  train = forward.clone();
  train.setSymName("forward_train");
  module.push_back(train);
  Block &body = train.getBody().front();
  for (Operation &op : body.without_terminator())
    forwardOps.push_back(&op);
  auto ret = cast<func::ReturnOp>(body.getTerminator());

  // The forward's results by name.
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    auto name = forward.getResultAttrOfType<StringAttr>(i, D::kOutputAttrName);
    StringRef n = name ? name.getValue() : "";
    if (n == "aux_loss")
      aux = v;
    else if (n == "z_loss")
      zloss = v;
    else if (n == "hidden_states" || (!name && !output))
      output = v;
    else
      return forward.emitOpError()
             << "moe-differentiate: result " << i << " ('" << n
             << "') is none of hidden_states, aux_loss, z_loss";
  }
  if (!output)
    return forward.emitOpError("moe-differentiate: @forward returns no "
                               "hidden_states");

  Location loc = forward.getLoc();
  OpBuilder b(ret);
  RankedTensorType yTy = tensorOf(output);
  Type f32 = b.getF32Type();
  auto scalar1 = RankedTensorType::get({1}, f32);
  BlockArgument targets = body.insertArgument(1u, yTy, loc);
  // The mean is over the global batch (spec 7.1).
  int64_t total = yTy.getNumElements();
  for (auto [i, v] : llvm::enumerate(ret.getOperands()))
    if (v == output)
      if (auto g = forward.getResultAttrOfType<DenseI64ArrayAttr>(
              i, D::kGlobalShapeAttrName))
        total = llvm::product_of(g.asArrayRef());
  // A masked batch: the mean is over the real tokens' rows.
  Value mask, count;
  if (maskArg) {
    mask = body.getArgument(*maskArg + 1); // targets is argument 1
    count = TokenCountOp::create(b, loc, RankedTensorType::get({}, f32), mask);
    count = allReduce(b, loc, count, tokenAxes);
  }
  auto mse = MSELossOp::create(b, loc, scalar1, yTy, output, targets, mask,
                               count, b.getI64IntegerAttr(total));
  seed = mse.getDoutput();
  // Each rank's share, summed over the ranks that hold other tokens.
  Value loss = allReduce(b, loc, mse.getLoss(), tokenAxes);
  SmallVector<std::pair<Value, StringRef>> results{{Value(), "loss"},
                                                   {loss, "mse_loss"}};
  for (auto [l, name] : {std::pair{aux, "aux_loss"}, {zloss, "z_loss"}}) {
    if (!l)
      continue;
    Value l1 = ReshapeOp::create(b, loc, scalar1, l);
    results.push_back({l1, name});
    loss = AddOp::create(b, loc, loss, l1);
  }
  results[0].first = loss;
  if (aux || zloss) {
    // d loss / d aux = 1, exactly: the gate weight of a top-1 softmax over
    // one logit is exp(0) / exp(0).
    auto t11 = RankedTensorType::get({1, 1}, f32);
    Value logit = ReshapeOp::create(b, loc, t11, loss);
    auto topk = TopKOp::create(
        b, loc, t11, RankedTensorType::get({1, 1}, b.getI32Type()), t11, logit,
        Value(), b.getI64IntegerAttr(1),
        ScoreFuncAttr::get(ctx, ScoreFunc::softmax), UnitAttr(),
        b.getF32FloatAttr(1.0f), b.getI64IntegerAttr(1), b.getI64IntegerAttr(1),
        GroupScoreAttr::get(ctx, GroupScore::max));
    one = ReshapeOp::create(b, loc, RankedTensorType::get({}, f32),
                            topk.getWeights());
  }

  // The expert counts of every layer with a selection bias.
  for (Operation *op : forwardOps) {
    auto topk = dyn_cast<TopKOp>(op);
    if (!topk || !topk.getBias())
      continue;
    if (maskArg)
      return topk.emitOpError(
          "moe-differentiate: the selection-bias update of a masked batch "
          "(token_mask) is not supported");
    auto arg = dyn_cast<BlockArgument>(topk.getBias());
    if (!arg || arg.getOwner() != &body)
      return topk.emitOpError("moe-differentiate: the selection bias must be "
                              "a weight argument of @forward");
    Value stats;
    for (Operation *user : topk.getScores().getUsers())
      if (auto load = dyn_cast<ExpertLoadOp>(user);
          load && load.getIndices() == topk.getIndices())
        stats = load.getStats();
    if (stats) {
      // A sharded program sums the statistics of the aux loss already.
      for (Operation *user : stats.getUsers())
        if (auto sum = dyn_cast<AllReduceOp>(user))
          stats = sum.getResult();
    } else {
      OpBuilder ab(topk->getBlock(), std::next(topk->getIterator()));
      int64_t e = tensorOf(topk.getScores()).getDimSize(1);
      stats = ExpertLoadOp::create(ab, topk.getLoc(),
                                   RankedTensorType::get({2, e}, f32),
                                   topk.getScores(), topk.getIndices());
      stats = allReduce(ab, topk.getLoc(), stats, tokenAxes);
    }
    int64_t tokenRanks = 1;
    for (StringRef axis : tokenAxes)
      tokenRanks *= mesh.getAxisSize(axis);
    int64_t e = tensorOf(stats).getDimSize(1);
    Value load =
        LoadCountsOp::create(b, loc, RankedTensorType::get({e}, f32), stats);
    // The argument index in @forward (targets shifts the train's by one).
    unsigned fwdArg = arg.getArgNumber() - (arg.getArgNumber() > 0 ? 1 : 0);
    biases.push_back(
        {fwdArg, argName(forward, fwdArg, D::kWeightAttrName).getValue(), load,
         tensorOf(topk.getLogits()).getDimSize(0) * tokenRanks,
         int64_t(topk.getK())});
  }

  // Result list: the losses now, the saved values after the backward.
  SmallVector<Value> values;
  SmallVector<DictionaryAttr> attrs;
  auto named = [&](StringRef attr, StringRef name) {
    return b.getDictionaryAttr(b.getNamedAttr(attr, b.getStringAttr(name)));
  };
  for (auto [v, name] : results) {
    values.push_back(v);
    attrs.push_back(named(D::kOutputAttrName, name));
  }
  ret->setOperands(values);
  SmallVector<DictionaryAttr> argAttrs;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    argAttrs.push_back(forward.getArgAttrDict(i));
    if (i == 0)
      argAttrs.push_back(like(0, D::kInputAttrName, "targets"));
  }
  train.setType(FunctionType::get(ctx, body.getArgumentTypes(),
                                  ValueRange(values).getTypes()));
  train.setAllArgAttrs(argAttrs);
  train.setAllResultAttrs(attrs);
  return success();
}

Value Differentiator::primal(Value v) {
  Block &trainBody = train.getBody().front();
  if (auto arg = dyn_cast<BlockArgument>(v);
      arg && arg.getOwner() == &trainBody && arg.getArgNumber() > 1 &&
      isWeightArg(arg.getArgNumber() - 1)) {
    // A weight: train argument n is @forward argument n - 1.
    return weightArgs.at(arg.getArgNumber());
  }
  if (auto it = saved.find(v); it != saved.end())
    return it->second;
  Block &body = backward.getBody().front();
  BlockArgument a =
      body.insertArgument(unsigned(saved.size()), v.getType(), v.getLoc());
  saved.insert({v, a});
  return a;
}

void Differentiator::addGrad(Value v, Value g) {
  if (!g || !isa<FloatType>(tensorOf(v).getElementType()))
    return;
  auto [it, inserted] = grads.try_emplace(v, g);
  if (!inserted)
    it->second = AddOp::create(*bb, g.getLoc(), it->second, g);
}

SmallVector<StringRef> Differentiator::shardAxes(unsigned i) {
  SmallVector<StringRef> axes;
  if (auto dims = forward.getArgAttrOfType<ArrayAttr>(i, D::kShardAttrName))
    for (Attribute dim : dims)
      for (Attribute a : cast<ArrayAttr>(dim))
        axes.push_back(cast<StringAttr>(a).getValue());
  return axes;
}

Value Differentiator::allReduce(OpBuilder &b, Location loc, Value v,
                                ArrayRef<StringRef> axes) {
  if (axes.empty())
    return v;
  SmallVector<Attribute> names;
  for (StringRef a : axes)
    names.push_back(b.getStringAttr(a));
  return AllReduceOp::create(b, loc, v.getType(), v,
                             FlatSymbolRefAttr::get(mesh.getSymNameAttr()),
                             b.getArrayAttr(names));
}

DictionaryAttr Differentiator::like(unsigned i, StringRef attr,
                                    const Twine &name) {
  NamedAttrList attrs;
  attrs.append(attr, StringAttr::get(ctx, name));
  for (StringRef keep : {D::kShardAttrName, D::kGlobalShapeAttrName})
    if (Attribute a = forward.getArgAttr(i, keep))
      attrs.append(keep, a);
  return attrs.getDictionary(ctx);
}

DictionaryAttr Differentiator::likeGrad(unsigned i, StringRef attr,
                                        const Twine &name) {
  DictionaryAttr attrs = like(i, attr, name);
  if (!zeroWeights.contains(i))
    return attrs;
  // The chunk of dimension 0 this rank keeps: dp within the axes that
  // already split it (docs/module-format.md, the sharding rule).
  auto type = cast<RankedTensorType>(forward.getArgumentTypes()[i]);
  SmallVector<Attribute> dims;
  if (auto shard = attrs.getAs<ArrayAttr>(D::kShardAttrName))
    dims.assign(shard.begin(), shard.end());
  else
    dims.assign(type.getRank(), ArrayAttr::get(ctx, {}));
  SmallVector<Attribute> dim0(cast<ArrayAttr>(dims[0]).getValue());
  dim0.push_back(StringAttr::get(ctx, kAxisDP));
  dims[0] = ArrayAttr::get(ctx, dim0);
  NamedAttrList list(attrs);
  list.set(D::kShardAttrName, ArrayAttr::get(ctx, dims));
  if (!list.get(D::kGlobalShapeAttrName))
    list.set(D::kGlobalShapeAttrName,
             DenseI64ArrayAttr::get(ctx, type.getShape()));
  return list.getDictionary(ctx);
}

template <typename OpTy>
Value Differentiator::overDp(OpBuilder &b, Type type, Value v) {
  return OpTy::create(b, v.getLoc(), type, v,
                      FlatSymbolRefAttr::get(mesh.getSymNameAttr()),
                      b.getStrArrayAttr({kAxisDP}), b.getI64IntegerAttr(0));
}

LogicalResult Differentiator::adjoint(Operation *op) {
  OpBuilder &b = *bb;
  Location loc = op->getLoc();
  auto anyGrad =
      llvm::any_of(op->getResults(), [&](Value r) { return bool(grad(r)); });
  if (!anyGrad)
    return success(); // nothing of the loss depends on it
  // An op whose result a collective sums over tp (a tp-split MLP or expert
  // FFN) computes its share of the sum: the gradients it gives the operands
  // that every tp rank holds whole (the tokens, a replicated sigmoid gate)
  // are shares too, and are summed over tp here. Its split weights' slices
  // get their own gradients.
  ArrayRef<StringRef> partial;
  if (auto it = partialAxes.find(op->getResult(0)); it != partialAxes.end())
    partial = it->second;
  Block &trainBody = train.getBody().front();
  auto addGradOf = [&](Value v, Value g) {
    if (!partial.empty() && g) {
      bool split = false;
      if (auto arg = dyn_cast<BlockArgument>(v);
          arg && arg.getOwner() == &trainBody && arg.getArgNumber() > 1)
        for (StringRef axis : shardAxes(arg.getArgNumber() - 1))
          split |= llvm::is_contained(partial, axis);
      if (!split)
        g = allReduce(b, loc, g, partial);
    }
    addGrad(v, g);
  };
  auto axesOf = [](CollectiveOpInterface c) {
    SmallVector<StringRef> axes;
    for (Attribute a : c.getAxes())
      axes.push_back(cast<StringAttr>(a).getValue());
    return axes;
  };
  auto onlyTp = [](ArrayRef<StringRef> axes) {
    return llvm::all_of(axes, [](StringRef a) { return a == kAxisTP; });
  };
  return TypeSwitch<Operation *, LogicalResult>(op)
      // Collectives. The gradient of a value that every rank of a group
      // holds whole (replicated) is held whole on every rank: the adjoint
      // of a sum to a replicated value is the identity, of a gather a
      // slice, of a slice a gather, of a reduce-scatter a gather;
      // all-to-alls are permutations and go back by their inverse.
      .Case([&](AllReduceOp o) {
        if (onlyTp(axesOf(o)))
          partialAxes[o.getInput()] = axesOf(o);
        addGrad(o.getInput(), grad(o.getResult()));
        return success();
      })
      .Case([&](ReduceScatterOp o) {
        if (onlyTp(axesOf(o)))
          partialAxes[o.getInput()] = axesOf(o);
        addGrad(o.getInput(),
                AllGatherOp::create(b, loc, o.getInput().getType(),
                                    grad(o.getResult()), o.getMeshAttr(),
                                    o.getAxes(), o.getDimAttr()));
        return success();
      })
      .Case([&](AllGatherOp o) -> LogicalResult {
        Value g = grad(o.getResult());
        // A sum over the same axes just before (the tp partial sums of an
        // expert-tp FFN under DTD) and this slice are one reduce-scatter,
        // as in the forward: half the bytes of the all-reduce.
        if (auto sum = g.getDefiningOp<AllReduceOp>();
            sum && sum.getAxes() == o.getAxes() &&
            sum.getMeshAttr() == o.getMeshAttr() && g.use_empty()) {
          Value rs = ReduceScatterOp::create(b, loc, o.getInput().getType(),
                                             sum.getInput(), o.getMeshAttr(),
                                             o.getAxes(), o.getDimAttr());
          grads.erase(o.getResult());
          sum.erase();
          addGradOf(o.getInput(), rs);
          return success();
        }
        addGradOf(o.getInput(), SliceOp::create(b, loc, o.getInput().getType(),
                                                g, o.getMeshAttr(), o.getAxes(),
                                                o.getDimAttr()));
        return success();
      })
      .Case([&](SliceOp o) {
        addGradOf(o.getInput(),
                  AllGatherOp::create(b, loc, o.getInput().getType(),
                                      grad(o.getResult()), o.getMeshAttr(),
                                      o.getAxes(), o.getDimAttr()));
        return success();
      })
      .Case([&](AllToAllOp o) {
        addGradOf(o.getInput(), o.buildInverse(b, loc, grad(o.getResult())));
        return success();
      })
      .Case([&](AllToAllVOp o) {
        addGradOf(o.getInput(),
                  AllToAllVOp::create(
                      b, loc, o.getInput().getType(), grad(o.getResult()),
                      primal(o.getRecvCounts()), primal(o.getSendCounts()),
                      o.getMeshAttr(), o.getAxes()));
        return success();
      })
      .Case([&](AddOp o) {
        addGrad(o.getLhs(), grad(o.getOutput()));
        addGrad(o.getRhs(), grad(o.getOutput()));
        return success();
      })
      .Case([&](RMSNormOp o) {
        auto g = RMSNormGradOp::create(
            b, loc, o.getInput().getType(), o.getWeight().getType(),
            primal(o.getInput()), primal(o.getWeight()), grad(o.getOutput()),
            o.getEpsAttr());
        addGradOf(o.getInput(), g.getDinput());
        addGradOf(o.getWeight(), g.getDweight());
        return success();
      })
      .Case([&](LayerNormOp o) {
        Value bias = o.getBias();
        auto g = LayerNormGradOp::create(
            b, loc, o.getInput().getType(), o.getWeight().getType(),
            bias ? bias.getType() : Type(), primal(o.getInput()),
            primal(o.getWeight()), grad(o.getOutput()), o.getEpsAttr());
        addGradOf(o.getInput(), g.getDinput());
        addGradOf(o.getWeight(), g.getDweight());
        if (bias)
          addGradOf(bias, g.getDbias());
        return success();
      })
      .Case([&](MLPOp o) {
        auto typeOr = [](Value v) { return v ? v.getType() : Type(); };
        auto primalOr = [&](Value v) { return v ? primal(v) : Value(); };
        auto g = MLPGradOp::create(
            b, loc, o.getInput().getType(), typeOr(o.getGate()),
            o.getUp().getType(), o.getDown().getType(),
            typeOr(o.getSigmoidGate()), primal(o.getInput()),
            primalOr(o.getGate()), primal(o.getUp()), primal(o.getDown()),
            primalOr(o.getSigmoidGate()), grad(o.getOutput()),
            o.getActivationAttr());
        addGradOf(o.getInput(), g.getDinput());
        if (o.getGate())
          addGradOf(o.getGate(), g.getDgate());
        addGradOf(o.getUp(), g.getDup());
        addGradOf(o.getDown(), g.getDdown());
        if (o.getSigmoidGate())
          addGradOf(o.getSigmoidGate(), g.getDsigmoidGate());
        return success();
      })
      .Case([&](CombineOp o) {
        Value p = o.getPassthrough();
        auto g = CombineGradOp::create(
            b, loc, o.getInput().getType(), o.getWeights().getType(),
            p ? p.getType() : Type(), primal(o.getInput()),
            primal(o.getPositions()), primal(o.getWeights()),
            p ? primal(p) : Value(), grad(o.getOutput()));
        addGradOf(o.getInput(), g.getDinput());
        addGradOf(o.getWeights(), g.getDweights());
        if (p)
          addGradOf(p, g.getDpassthrough());
        return success();
      })
      .Case([&](ExpertFFNOp o) {
        Value gate = o.getGate(), counts = o.getCounts();
        auto g = ExpertFFNGradOp::create(
            b, loc, o.getInput().getType(), gate ? gate.getType() : Type(),
            o.getUp().getType(), o.getDown().getType(), primal(o.getInput()),
            counts ? primal(counts) : Value(), gate ? primal(gate) : Value(),
            primal(o.getUp()), primal(o.getDown()), grad(o.getOutput()),
            /*saved_u=*/Value(), /*saved_a=*/Value(), o.getActivationAttr());
        addGradOf(o.getInput(), g.getDinput());
        if (gate)
          addGradOf(gate, g.getDgate());
        addGradOf(o.getUp(), g.getDup());
        addGradOf(o.getDown(), g.getDdown());
        return success();
      })
      .Case([&](DispatchOp o) {
        Value dx = DispatchGradOp::create(b, loc, o.getInput().getType(),
                                          grad(o.getOutput()),
                                          primal(o.getPositions()));
        addGradOf(o.getInput(), dx);
        return success();
      })
      .Case([&](TopKOp o) -> LogicalResult {
        Value dw = grad(o.getWeights()), ds = grad(o.getScores());
        if (!dw)
          return o.emitOpError("moe-differentiate: gradient reaches the "
                               "scores but not the gate weights of this "
                               "moe.topk (no moe.combine uses them)");
        Value dl = TopKGradOp::create(
            b, loc, o.getLogits().getType(), primal(o.getLogits()),
            primal(o.getIndices()), dw, ds, o.getScoreAttr(),
            o.getRenormalizeAttr(), o.getRoutedScalingAttr());
        addGradOf(o.getLogits(), dl);
        return success();
      })
      .Case([&](RouterOp o) {
        auto g = RouterGradOp::create(
            b, loc, o.getInput().getType(), o.getWeight().getType(),
            primal(o.getInput()), primal(o.getWeight()), grad(o.getLogits()));
        addGradOf(o.getInput(), g.getDinput());
        addGradOf(o.getWeight(), g.getDweight());
        return success();
      })
      .Case([&](ExpertLoadOp o) {
        Value ds = ExpertLoadGradOp::create(b, loc, o.getScores().getType(),
                                            grad(o.getStats()));
        addGradOf(o.getScores(), ds);
        return success();
      })
      .Case([&](MaskRowsOp o) {
        // Floats only (addGrad drops the rest): the same rows masked.
        if (isa<FloatType>(tensorOf(o.getInput()).getElementType()))
          addGradOf(o.getInput(),
                    MaskRowsOp::create(b, loc, o.getInput().getType(),
                                       grad(o.getOutput()),
                                       primal(o.getMask())));
        return success();
      })
      .Case([&](LoadBalanceLossOp o) {
        Value count = o.getCount() ? primal(o.getCount()) : Value();
        Value dst = LoadBalanceLossGradOp::create(
            b, loc, o.getStats().getType(), primal(o.getStats()),
            grad(o.getLoss()), count, o.getTokensAttr(), o.getKAttr(),
            o.getCoeffAttr());
        addGradOf(o.getStats(), dst);
        return success();
      })
      .Case([&](ZLossOp o) {
        Value mask = o.getMask() ? primal(o.getMask()) : Value();
        Value count = o.getCount() ? primal(o.getCount()) : Value();
        Value dl =
            ZLossGradOp::create(b, loc, o.getLogits().getType(),
                                primal(o.getLogits()), grad(o.getLoss()), mask,
                                count, o.getTokensAttr(), o.getCoeffAttr());
        addGradOf(o.getLogits(), dl);
        return success();
      })
      .Default([](Operation *o) {
        return o->emitOpError("has no adjoint in moe-differentiate");
      });
}

void Differentiator::synchronizeGradients() {
  // Spec 7.1: a weight replicated over ranks that hold other tokens gets the
  // sum of their gradients, over exactly those of dp, ep it is not split
  // over (router, norms, shared and dense weights over dp x ep, experts over
  // dp). Gradients with the same axes are packed into buckets of at most
  // kBucketElements, each summed by one all-reduce.
  constexpr int64_t kBucketElements = int64_t(1) << 24; // 64 MiB of f32
  if (tokenAxes.empty())
    return;
  Block &trainBody = train.getBody().front();
  Location loc = forward.getLoc();
  // (axes, weights) in order of first appearance.
  SmallVector<std::pair<SmallVector<StringRef>, SmallVector<Value>>> groups;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (!isWeightArg(i) || !grad(trainBody.getArgument(i + 1)))
      continue;
    SmallVector<StringRef> split = shardAxes(i), axes;
    for (StringRef a : tokenAxes)
      if (!llvm::is_contained(split, a))
        axes.push_back(a);
    // ZeRO-1: the sum over dp becomes a reduce-scatter of dimension 0 (below),
    // so that each dp rank steps its chunk.
    auto type = cast<RankedTensorType>(forward.getArgumentTypes()[i]);
    if (zero1 && llvm::is_contained(axes, kAxisDP) &&
        type.getDimSize(0) % mesh.getAxisSize(kAxisDP) == 0) {
      zeroWeights.insert(i);
      llvm::erase(axes, kAxisDP);
    }
    if (axes.empty())
      continue;
    auto it = llvm::find_if(groups, [&](auto &g) { return g.first == axes; });
    if (it == groups.end())
      it = groups.insert(groups.end(), {axes, {}});
    it->second.push_back(trainBody.getArgument(i + 1));
  }
  for (auto &[axes, weights] : groups) {
    for (size_t first = 0; first < weights.size();) {
      size_t last = first;
      int64_t elements = 0;
      while (last < weights.size() &&
             (last == first ||
              elements + tensorOf(weights[last]).getNumElements() <=
                  kBucketElements))
        elements += tensorOf(weights[last++]).getNumElements();
      if (last - first == 1) {
        grads[weights[first]] =
            allReduce(*bb, loc, grads[weights[first]], axes);
      } else {
        SmallVector<Value> pieces;
        SmallVector<Type> types;
        for (size_t j = first; j < last; ++j) {
          pieces.push_back(grads[weights[j]]);
          types.push_back(weights[j].getType());
        }
        Value bucket = PackOp::create(
            *bb, loc, RankedTensorType::get({elements}, bb->getF32Type()),
            pieces);
        bucket = allReduce(*bb, loc, bucket, axes);
        auto unpack = UnpackOp::create(*bb, loc, types, bucket);
        for (size_t j = first; j < last; ++j)
          grads[weights[j]] = unpack.getResult(j - first);
      }
      first = last;
    }
  }
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (!zeroWeights.contains(i))
      continue;
    Value w = trainBody.getArgument(i + 1);
    SmallVector<int64_t> shape(tensorOf(w).getShape());
    shape[0] /= mesh.getAxisSize(kAxisDP);
    grads[w] = overDp<ReduceScatterOp>(
        *bb, RankedTensorType::get(shape, tensorOf(w).getElementType()),
        grads[w]);
  }
}

LogicalResult Differentiator::buildBackward() {
  OpBuilder mb(ctx);
  mb.setInsertionPointToEnd(module.getBody());
  Location loc = forward.getLoc();
  backward =
      func::FuncOp::create(mb, loc, "backward", FunctionType::get(ctx, {}, {}));
  Block *body = backward.addEntryBlock();
  bb = std::make_unique<OpBuilder>(ctx);
  bb->setInsertionPointToEnd(body);

  // Weights: every @forward weight, in order (train argument i + 1).
  Block &trainBody = train.getBody().front();
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (!isWeightArg(i))
      continue;
    weightArgs[i + 1] = body->addArgument(forward.getArgumentTypes()[i], loc);
  }

  // Seeds: dy for the output, 1 for each loss.
  grads[output] = primal(seed);
  if (aux)
    grads[aux] = primal(one);
  if (zloss)
    addGrad(zloss, primal(one));
  for (Operation *op : llvm::reverse(forwardOps))
    if (failed(adjoint(op)))
      return failure();
  synchronizeGradients();

  // Results: grad.hidden_states, then grad.<weight> in argument order.
  SmallVector<Value> results;
  SmallVector<DictionaryAttr> resultAttrs;
  auto named = [&](StringRef attr, const Twine &name) {
    return bb->getDictionaryAttr(
        bb->getNamedAttr(attr, bb->getStringAttr(name)));
  };
  Value dx = grad(trainBody.getArgument(0));
  if (!dx)
    return forward.emitOpError("moe-differentiate: the loss does not depend "
                               "on hidden_states");
  results.push_back(dx);
  resultAttrs.push_back(like(0, D::kOutputAttrName, "grad.hidden_states"));
  for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
    if (!isWeightArg(i))
      continue;
    Value g = grad(trainBody.getArgument(i + 1));
    if (!g)
      continue;
    weightGrads.push_back({i, g});
    results.push_back(g);
    resultAttrs.push_back(
        likeGrad(i, D::kOutputAttrName,
                 "grad." + argName(forward, i, D::kWeightAttrName).getValue()));
  }
  func::ReturnOp::create(*bb, loc, results);
  backward.setType(FunctionType::get(ctx, body->getArgumentTypes(),
                                     ValueRange(results).getTypes()));
  SmallVector<DictionaryAttr> argAttrs;
  for (unsigned i = 0; i < saved.size(); ++i)
    argAttrs.push_back(named(D::kSavedAttrName, "saved." + Twine(i)));
  for (unsigned i = 0; i < forward.getNumArguments(); ++i)
    if (isWeightArg(i))
      argAttrs.push_back(forward.getArgAttrDict(i));
  backward.setAllArgAttrs(argAttrs);
  backward.setAllResultAttrs(resultAttrs);

  // forward_train returns the saved values, then the expert counts.
  auto ret = cast<func::ReturnOp>(trainBody.getTerminator());
  SmallVector<Value> values(ret.getOperands());
  SmallVector<DictionaryAttr> trainAttrs;
  for (unsigned i = 0; i < train.getNumResults(); ++i)
    trainAttrs.push_back(train.getResultAttrDict(i));
  for (auto [i, entry] : llvm::enumerate(saved)) {
    values.push_back(entry.first);
    trainAttrs.push_back(named(D::kOutputAttrName, "saved." + Twine(i)));
  }
  for (const BiasInfo &bias : biases) {
    values.push_back(bias.load);
    trainAttrs.push_back(named(D::kOutputAttrName, "load." + bias.name));
  }
  ret->setOperands(values);
  train.setType(FunctionType::get(ctx, trainBody.getArgumentTypes(),
                                  ValueRange(values).getTypes()));
  train.setAllResultAttrs(trainAttrs);
  return success();
}

void Differentiator::buildStep(bool adamw) {
  OpBuilder b(ctx);
  b.setInsertionPointToEnd(module.getBody());
  Location loc = forward.getLoc();
  auto fn = func::FuncOp::create(b, loc, adamw ? "step_adamw" : "step_sgd",
                                 FunctionType::get(ctx, {}, {}));
  Block *body = fn.addEntryBlock();
  b.setInsertionPointToEnd(body);
  SmallVector<DictionaryAttr> argAttrs, resultAttrs;
  auto named = [&](StringRef attr, const Twine &name) {
    return b.getDictionaryAttr(b.getNamedAttr(attr, b.getStringAttr(name)));
  };
  auto addArg = [&](Type t, DictionaryAttr attrs) {
    argAttrs.push_back(attrs);
    return body->addArgument(t, loc);
  };
  auto name = [&](unsigned i) {
    return argName(forward, i, D::kWeightAttrName).getValue();
  };

  // weights..., grad.<name>..., state..., optimizer.hparams, load.<bias>...
  llvm::DenseMap<unsigned, Value> weights;
  for (unsigned i = 0; i < forward.getNumArguments(); ++i)
    if (isWeightArg(i))
      weights[i] =
          addArg(forward.getArgumentTypes()[i], forward.getArgAttrDict(i));
  SmallVector<Value> g;
  for (auto [i, grad] : weightGrads)
    g.push_back(addArg(grad.getType(),
                       likeGrad(i, D::kGradAttrName, "grad." + name(i))));
  SmallVector<StringRef> stateNames =
      adamw ? SmallVector<StringRef>{"exp_avg", "exp_avg_sq"}
            : SmallVector<StringRef>{"momentum_buffer"};
  SmallVector<SmallVector<Value>> state(stateNames.size());
  for (auto [s, stateName] : llvm::enumerate(stateNames))
    for (auto [i, grad] : weightGrads)
      state[s].push_back(
          addArg(grad.getType(),
                 likeGrad(i, D::kStateAttrName, name(i) + "." + stateName)));
  Value hparams = addArg(RankedTensorType::get({8}, b.getF32Type()),
                         named(D::kHparamsAttrName, "optimizer.hparams"));
  SmallVector<Value> loads;
  for (const BiasInfo &bias : biases)
    loads.push_back(addArg(bias.load.getType(),
                           named(D::kSavedAttrName, "load." + bias.name)));

  // weights'..., state'..., then the updated biases.
  SmallVector<Value> newWeights;
  SmallVector<SmallVector<Value>> newState(stateNames.size());
  for (auto [j, wg] : llvm::enumerate(weightGrads)) {
    Value w = weights[wg.first];
    // ZeRO-1: step this dp rank's chunk, then gather the updated weight.
    bool zero = zeroWeights.contains(wg.first);
    Type t = g[j].getType();
    if (zero)
      w = overDp<SliceOp>(b, t, w);
    Value nw;
    if (adamw) {
      auto op = AdamWOp::create(b, loc, t, t, t, w, g[j], state[0][j],
                                state[1][j], hparams);
      nw = op.getNewWeight();
      newState[0].push_back(op.getNewExpAvg());
      newState[1].push_back(op.getNewExpAvgSq());
    } else {
      auto op = SGDOp::create(b, loc, t, t, w, g[j], state[0][j], hparams);
      nw = op.getNewWeight();
      newState[0].push_back(op.getNewMomentumBuffer());
    }
    if (zero)
      nw = overDp<AllGatherOp>(b, weights[wg.first].getType(), nw);
    newWeights.push_back(nw);
  }
  SmallVector<Value> results;
  for (auto [j, wg] : llvm::enumerate(weightGrads)) {
    results.push_back(newWeights[j]);
    resultAttrs.push_back(like(wg.first, D::kOutputAttrName, name(wg.first)));
  }
  for (auto [s, stateName] : llvm::enumerate(stateNames))
    for (auto [j, wg] : llvm::enumerate(weightGrads)) {
      results.push_back(newState[s][j]);
      resultAttrs.push_back(likeGrad(wg.first, D::kOutputAttrName,
                                     name(wg.first) + "." + stateName));
    }
  // The selection-bias update comes after the optimizer update (7.5).
  for (auto [bias, load] : llvm::zip(biases, loads)) {
    Value nb = BiasUpdateOp::create(
        b, loc, load.getType(), weights[bias.arg], load, hparams,
        b.getI64IntegerAttr(bias.tokens), b.getI64IntegerAttr(bias.k));
    results.push_back(nb);
    resultAttrs.push_back(like(bias.arg, D::kOutputAttrName, bias.name));
  }
  func::ReturnOp::create(b, loc, results);
  fn.setType(FunctionType::get(ctx, body->getArgumentTypes(),
                               ValueRange(results).getTypes()));
  fn.setAllArgAttrs(argAttrs);
  fn.setAllResultAttrs(resultAttrs);
}

LogicalResult Differentiator::run() {
  for (StringRef taken :
       {"forward_train", "backward", "step_adamw", "step_sgd"})
    if (Operation *op = module.lookupSymbol(taken))
      return op->emitOpError() << "moe-differentiate builds @" << taken
                               << ", which the module already defines";
  if (failed(checkForward()) || failed(buildForwardTrain()) ||
      failed(buildBackward()))
    return failure();
  buildStep(/*adamw=*/true);
  buildStep(/*adamw=*/false);
  return success();
}

struct MoEDifferentiatePass
    : moe::impl::MoEDifferentiateBase<MoEDifferentiatePass> {
  using MoEDifferentiateBase::MoEDifferentiateBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward || forward.isExternal()) {
      module.emitError("moe-differentiate: the module has no @forward "
                       "function to differentiate");
      return signalPassFailure();
    }
    if (failed(Differentiator(module, forward, zero1).run()))
      signalPassFailure();
  }
};

} // namespace
