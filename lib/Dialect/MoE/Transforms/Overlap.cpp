//===- Overlap.cpp - Pipelined expert-parallel exchange (moe-overlap) -----===//
//
// Tutel-style overlap: the exchange around every expert FFN of a per-rank
// program (all-to-all over ep, with DTD's slice and all-gathers over tp) is
// split into `degree` chunks of the slot dimension and software-pipelined,
//
//   start a2a(0)
//   for i: start a2a(i+1); wait a2a(i); [gather]; FFN(i); [reduce];
//          start return(i); wait return(i-1); [gather]
//   wait return(n-1); [gather]; interleave
//
// so that the all-to-all of chunk i+1 and the return of chunk i-1 are in
// flight while the experts compute chunk i. The chunks' FFNs read the same
// weights: the first is marked moe.hold_weights = "open" and the last
// "close", so that the runtime prepares the weights once for all chunks
// (the CPU backend packs each weight matrix for its GEMM once instead of
// once per chunk, which at high degree costs more than the GEMMs), and
// moe.expert_ffn_prepare before the first wait prepares them while the
// first chunks' all-to-alls are in flight.
//
// The chunks are cyclic (moe.chunk: slots i, i+n, i+2n, ...), which
// commutes with every op of the exchange: the slice and gathers over tp cut
// the hidden dimension, the FFN works row by row, and an all-to-all with
// split = 0 concat = 1 of [E, R, D] concatenates the sources' R slots, so
// that cyclic chunk i of its result is the exchange of cyclic chunk i of its
// input when n divides R. Hence every value of the exchange equals the
// moe.interleave of its chunks, which is how values used elsewhere (the
// FFN's input and output that forward_train saves) are rebuilt, and the
// result is bit for bit the one of degree 1: no floating-point sum is split
// (the FFN's GEMMs compute each row from that row alone).
//
// Dropless exchanges (all_to_all_v of [rows, D] packed in segments sized
// by the counts) are chunked by rows instead: chunk i takes the block
// [c*i/n, c*(i+1)/n) of every segment of c rows (moe.chunk_rows), and its
// send and receive counts are computed from the whole exchange's counts
// (moe.chunk_counts) -- the same numbers on the sender and the receiver,
// so both cut every segment the same way. The chunk of a received buffer
// is then the exchange of the chunk of the sent one, the FFN runs on the
// chunk's counts, and moe.join_rows (with the counts that pack that value)
// rebuilds the returned rows in their original order for the one combine,
// and the values forward_train saves. Chunks keep a static worst-case row
// count (ChunkRowsOp::chunkRowsBound).
//
// Contract for passes that rewrite the exchange (e.g. a hierarchical
// all-to-all): the pass matches only the chain above, each op reading the
// previous one's result as operand 0, with all_to_all / all_to_all_v over
// the single axis "ep"; an exchange rewritten into something else is left
// unpipelined (not refused) unless its FFN still reads one all-to-all over
// ep.
//
// With degree=auto, each exchange gets the degree among 1, 2, 4, 8 (that
// divides its slots, for capacity layouts) that the cost model
// (moe/Analysis/CostModel.h: the cluster file's links, the GEMM rate) predicts
// fastest for this schedule.
//
// The backward's exchange (moe-differentiate's adjoint of the forward's,
// around moe.expert_ffn_grad) gets the same schedule with the chunks in
// reverse order. expert_ffn_grad sums the weight gradients over all rows of
// the buffer, and splitting that sum into chunks would change its rounding,
// so each chunk runs moe.expert_ffn_grad_data (dx and the per-row values the
// weight gradients sum: h, du, da), and ONE moe.expert_ffn_grad_weight runs
// on the joined rows after the last chunk, while the last return is in
// flight: the same GEMMs over the same rows as expert_ffn_grad, hence its
// bits. A backward exchange that cannot be chunked (a weight gradient or a
// value of the exchange read before it ends, another chain, a capacity
// buffer with counts) stays at degree 1 with a remark, not an error. The
// pass runs after moe-differentiate, so the backward is built from the
// unchunked forward.
//
//===----------------------------------------------------------------------===//
#include "moe/Analysis/CostModel.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

#include <functional>

namespace mlir::moe {
#define GEN_PASS_DEF_MOEOVERLAP
#include "moe/Dialect/MoE/Transforms/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

/// A collective whose group spans exactly `axis`.
bool overAxis(Operation *op, StringRef axis) {
  auto coll = dyn_cast_or_null<CollectiveOpInterface>(op);
  if (!coll || coll.getAxes().size() != 1)
    return false;
  return cast<StringAttr>(coll.getAxes()[0]).getValue() == axis;
}

/// The only user of `v` that is not a func.return (values the training
/// entries save are returned as well), or null.
Operation *chainUser(Value v) {
  Operation *next = nullptr;
  for (Operation *user : v.getUsers()) {
    if (isa<func::ReturnOp>(user))
      continue;
    if (next && next != user)
      return nullptr;
    next = user;
  }
  return next;
}

/// One expert FFN with its exchange: the ops from the first one that reads
/// the dispatched buffer to the last one before the combine, in order. Each
/// reads the previous one's result as operand 0.
struct Exchange {
  SmallVector<Operation *> ops;
  unsigned forward = 0, back = 0; // indices of the two all-to-alls
  /// moe.expert_ffn, or moe.expert_ffn_grad in the backward's exchange.
  Operation *ffn = nullptr;
  /// The backward: chunk i's data gradient from its received dout (emitted
  /// instead of a clone of ffn), and what runs once after the last chunk's
  /// (the weight gradient), before the last return is waited for. Chunks
  /// go in reverse order (n-1 first).
  std::function<Value(OpBuilder &, int64_t, Value, IRMapping &)> compute;
  std::function<void(OpBuilder &)> afterCompute;
  bool reverse = false;
  /// Dropless: the all-to-alls are all_to_all_v, sending [rows, D] packed
  /// by `sendCounts` and receiving packed by `recvCounts` (null otherwise).
  Value sendCounts, recvCounts;
  bool dropless() const { return bool(sendCounts); }
  /// The counts that pack the rows of x.ops[k]'s result.
  Value countsOf(unsigned k) const {
    return k >= forward && k < back ? recvCounts : sendCounts;
  }
};

/// Matches `[slice tp] -> all_to_all ep -> [all_gather tp] -> ffn ->
/// [reduce_scatter | all_reduce | slice tp] -> all_to_all ep ->
/// [all_gather tp]` around `ffn` (which reads the exchange's buffer as
/// `input`, packed by `counts`, and returns `output`); fails without a
/// diagnostic when `ffn` is not in an exchange, with one when the exchange
/// cannot be pipelined. In the backward (`backward`) an exchange that
/// cannot be pipelined is not an error: a remark says why it stays at
/// degree 1, and no exchange is returned.
FailureOr<std::optional<Exchange>> matchExchange(Operation *ffn, Value input,
                                                 Value output, Value counts,
                                                 bool backward = false) {
  Exchange x;
  x.ffn = ffn;
  SmallVector<Operation *> before;
  Operation *op = input.getDefiningOp();
  if (op && isa<AllGatherOp>(op) && overAxis(op, kAxisTP)) {
    before.push_back(op);
    op = op->getOperand(0).getDefiningOp();
  }
  if (auto v = dyn_cast_or_null<AllToAllVOp>(op); v && overAxis(v, kAxisEP)) {
    x.sendCounts = v.getSendCounts();
    x.recvCounts = v.getRecvCounts();
  } else if (!op || !isa<AllToAllOp>(op) || !overAxis(op, kAxisEP))
    return std::optional<Exchange>(); // Not expert-parallel: nothing to hide.
  before.push_back(op);
  op = op->getOperand(0).getDefiningOp();
  if (op && isa<SliceOp>(op) && overAxis(op, kAxisTP))
    before.push_back(op);
  x.ops.assign(before.rbegin(), before.rend());
  for (auto [i, o] : llvm::enumerate(x.ops))
    if (isa<AllToAllOp, AllToAllVOp>(o))
      x.forward = i;
  x.ops.push_back(ffn);

  auto fail = [&](const Twine &why) -> FailureOr<std::optional<Exchange>> {
    if (backward) {
      ffn->emitRemark() << "moe-overlap: the backward's exchange stays at "
                           "degree 1: "
                        << why;
      return std::optional<Exchange>();
    }
    ffn->emitOpError() << "moe-overlap: " << why;
    return failure();
  };
  op = chainUser(output);
  if (op && isa<ReduceScatterOp, AllReduceOp, SliceOp>(op) &&
      overAxis(op, kAxisTP)) {
    x.ops.push_back(op);
    op = chainUser(op->getResult(0));
  }
  if (!op || !isa<AllToAllOp, AllToAllVOp>(op) || !overAxis(op, kAxisEP))
    return fail("expected the expert output to go back through one "
                "all-to-all over ep");
  x.back = x.ops.size();
  x.ops.push_back(op);
  op = chainUser(op->getResult(0));
  if (op && isa<AllGatherOp>(op) && overAxis(op, kAxisTP))
    x.ops.push_back(op);

  if (x.dropless()) {
    // Rows packed by the counts out, by the received counts back; the FFN
    // reads the received counts.
    auto back = dyn_cast<AllToAllVOp>(x.ops[x.back]);
    if (!back || back.getSendCounts() != x.recvCounts ||
        back.getRecvCounts() != x.sendCounts || counts != x.recvCounts)
      return fail("expected the dropless exchange (all_to_all_v with the "
                  "counts, back with them swapped, the FFN on the received "
                  "counts)");
    for (Value c : {x.sendCounts, x.recvCounts})
      if (!cast<RankedTensorType>(c.getType()).hasStaticShape())
        return fail("expected counts of a static shape");
    for (Operation *o : x.ops)
      if (cast<RankedTensorType>(o->getResult(0).getType()).getRank() != 2 ||
          !cast<RankedTensorType>(o->getResult(0).getType()).hasStaticShape())
        return fail("expected static [rows, D] buffers throughout the "
                    "dropless exchange");
    return std::optional<Exchange>(std::move(x));
  }

  // The exchange of a capacity buffer [E, R, D]: split = 0 concat = 1 out,
  // its inverse back. Every value keeps its slots in dimension 1.
  auto fwd = cast<AllToAllOp>(x.ops[x.forward]);
  auto bwd = cast<AllToAllOp>(x.ops[x.back]);
  if (fwd.getSplitDim() != 0 || fwd.getConcatDim() != 1 ||
      bwd.getSplitDim() != 1 || bwd.getConcatDim() != 0)
    return fail("expected the capacity exchange (all_to_all split = 0 "
                "concat = 1, and back split = 1 concat = 0)");
  for (Operation *o : x.ops)
    if (cast<RankedTensorType>(o->getResult(0).getType()).getRank() != 3)
      return fail("expected [E, slots, D] buffers throughout the exchange");
  return std::optional<Exchange>(std::move(x));
}

RankedTensorType chunkType(Type whole, int64_t degree) {
  auto t = cast<RankedTensorType>(whole);
  SmallVector<int64_t> shape(t.getShape());
  shape[1] /= degree;
  return RankedTensorType::get(shape, t.getElementType());
}

/// The type of a chunk of x.ops[k]'s result: a capacity chunk cuts the
/// slots, a dropless one keeps the worst-case rows of moe.chunk_rows.
RankedTensorType chunkType(const Exchange &x, unsigned k, int64_t degree) {
  Type whole = x.ops[k]->getResult(0).getType();
  if (!x.dropless())
    return chunkType(whole, degree);
  auto t = cast<RankedTensorType>(whole);
  int64_t segments =
      cast<RankedTensorType>(x.countsOf(k).getType()).getNumElements();
  return RankedTensorType::get(
      {ChunkRowsOp::chunkRowsBound(t.getDimSize(0), segments, degree),
       t.getDimSize(1)},
      t.getElementType());
}

/// Each expert's slots on this rank (dimension 1 of the dispatched buffer).
int64_t slotsOf(const Exchange &x) {
  return cast<RankedTensorType>(x.ops.front()->getOperand(0).getType())
      .getDimSize(1);
}

/// degree=auto: the degree among 1, 2, 4, 8 that divides the slots with the
/// least predicted time of the pipelined exchange (the cost model's
/// chooseExchangeDegree, on the schedule this pass emits).
FailureOr<int64_t> chooseDegree(Exchange &x, const cost::CostModel &model) {
  // Dropless chunks need no divisibility: every degree is a candidate.
  ArrayRef<Operation *> ops(x.ops);
  FailureOr<cost::ExchangeStage> stage = model.exchangeStage(
      ops.take_front(x.forward + 1),
      ops.slice(x.forward + 1, x.back - x.forward - 1), ops.drop_front(x.back));
  if (failed(stage))
    return x.ffn->emitOpError(
        "moe-overlap: the cost model cannot price this exchange");
  SmallVector<int64_t> candidates;
  for (int64_t d : cost::kDefaultDegreeCandidates)
    if (x.dropless() || slotsOf(x) % d == 0)
      candidates.push_back(d);
  return cost::chooseExchangeDegree(*stage, candidates).degree;
}

LogicalResult pipeline(Exchange &x, int64_t degree) {
  Operation *last = x.ops.back();
  Value source = x.ops.front()->getOperand(0);
  int64_t slots = x.dropless() ? 0 : slotsOf(x);
  if (!x.dropless() && slots % degree != 0)
    return x.ffn->emitOpError()
           << "moe-overlap: degree " << degree << " does not divide the "
           << slots << " capacity slots of each expert on this rank";
  // A value of the exchange used outside it is rebuilt after the last op:
  // its users must come later.
  for (Operation *o : x.ops)
    for (Operation *user : o->getResult(0).getUsers())
      if (!llvm::is_contained(x.ops, user) && user->isBeforeInBlock(last))
        return x.ffn->emitOpError() << "moe-overlap: " << user->getName()
                                    << " uses the exchange before it ends";

  OpBuilder b(last);
  Location loc = x.ffn->getLoc();
  unsigned n = x.ops.size();
  // value[i][k]: chunk i's result of x.ops[k].
  SmallVector<SmallVector<Value>> value(degree, SmallVector<Value>(n));
  SmallVector<Value> started(degree), returning(degree);
  // Dropless: chunk i's send and receive counts (moe.chunk_counts), which
  // the chunk's clones read instead of the whole exchange's.
  SmallVector<Value> sendCounts(degree), recvCounts(degree);
  auto countsMap = [&](int64_t i) {
    IRMapping map;
    if (x.dropless()) {
      map.map(x.sendCounts, sendCounts[i]);
      map.map(x.recvCounts, recvCounts[i]);
    }
    return map;
  };

  auto emitRange = [&](int64_t i, unsigned from, unsigned to, Value in) {
    for (unsigned k = from; k < to; ++k) {
      Operation *o = x.ops[k];
      if (o == x.ffn && x.compute) {
        IRMapping map = countsMap(i);
        in = value[i][k] = x.compute(b, i, in, map);
        continue;
      }
      IRMapping map = countsMap(i);
      map.map(o->getOperand(0), in);
      Operation *c = b.clone(*o, map);
      c->getResult(0).setType(chunkType(x, k, degree));
      if (o == x.ffn && (i == 0 || i == degree - 1))
        c->setAttr(MoEDialect::kHoldWeightsAttrName,
                   b.getStringAttr(i == 0 ? "open" : "close"));
      in = value[i][k] = c->getResult(0);
    }
    return in;
  };
  auto startA2A = [&](int64_t i, unsigned k, Value in) -> Value {
    auto ty = FutureType::get(b.getContext(), chunkType(x, k, degree));
    if (auto v = dyn_cast<AllToAllVOp>(x.ops[k])) {
      IRMapping map = countsMap(i);
      return AllToAllVStartOp::create(
          b, v.getLoc(), ty, in, map.lookup(v.getSendCounts()),
          map.lookup(v.getRecvCounts()), v.getMeshAttr(), v.getAxesAttr());
    }
    auto a2a = cast<AllToAllOp>(x.ops[k]);
    return AllToAllStartOp::create(b, a2a.getLoc(), ty, in, a2a.getMeshAttr(),
                                   a2a.getAxesAttr(), a2a.getSplitDimAttr(),
                                   a2a.getConcatDimAttr());
  };
  auto wait = [&](int64_t i, unsigned k, Value future) {
    return value[i][k] = WaitOp::create(b, loc, future).getResult();
  };
  // Chunk i up to its forward all-to-all, started.
  auto issue = [&](int64_t i) {
    Value c;
    if (x.dropless()) {
      sendCounts[i] = ChunkCountsOp::create(b, loc, x.sendCounts.getType(),
                                            x.sendCounts, i, degree);
      recvCounts[i] = ChunkCountsOp::create(b, loc, x.recvCounts.getType(),
                                            x.recvCounts, i, degree);
      auto t = cast<RankedTensorType>(source.getType());
      int64_t segments =
          cast<RankedTensorType>(x.sendCounts.getType()).getNumElements();
      auto ty = RankedTensorType::get(
          {ChunkRowsOp::chunkRowsBound(t.getDimSize(0), segments, degree),
           t.getDimSize(1)},
          t.getElementType());
      c = ChunkRowsOp::create(b, loc, ty, source, x.sendCounts, i, degree);
    } else {
      c = ChunkOp::create(b, loc, chunkType(source.getType(), degree), source,
                          1, i, degree);
    }
    started[i] = startA2A(i, x.forward, emitRange(i, 0, x.forward, c));
  };
  // The ops after the return all-to-all of chunk i, once it has arrived.
  auto finish = [&](int64_t i) {
    emitRange(i, x.back + 1, n, wait(i, x.back, returning[i]));
  };

  // The j-th chunk of the schedule (the backward's go in reverse order).
  auto id = [&](int64_t j) { return x.reverse ? degree - 1 - j : j; };
  issue(id(0));
  for (int64_t j = 0; j < degree; ++j) {
    int64_t i = id(j);
    if (j + 1 < degree)
      issue(id(j + 1));
    // The weights held for the chunks are prepared while the first chunks'
    // all-to-alls are in flight, not in the first chunk's FFN.
    if (auto ffn = dyn_cast<ExpertFFNOp>(x.ffn); ffn && j == 0)
      ExpertFFNPrepareOp::create(b, loc, ffn.getGate(), ffn.getUp(),
                                 ffn.getDown(), ffn.getActivationAttr());
    Value in = wait(i, x.forward, started[i]);
    returning[i] = startA2A(i, x.back, emitRange(i, x.forward + 1, x.back, in));
    if (j > 0)
      finish(id(j - 1));
  }
  if (x.afterCompute)
    x.afterCompute(b);
  finish(id(degree - 1));

  // Every value of the exchange is the interleave of its chunks.
  for (unsigned k = 0; k < n; ++k) {
    Value whole = x.ops[k]->getResult(0);
    if (whole.use_empty() || llvm::all_of(whole.getUsers(), [&](Operation *u) {
          return llvm::is_contained(x.ops, u);
        }))
      continue;
    SmallVector<Value> chunks;
    for (int64_t i = 0; i < degree; ++i)
      chunks.push_back(value[i][k]);
    Value joined = x.dropless()
                       ? Value(JoinRowsOp::create(b, loc, whole.getType(),
                                                  chunks, x.countsOf(k)))
                       : Value(InterleaveOp::create(b, loc, whole.getType(),
                                                    chunks, int64_t(1)));
    whole.replaceUsesWithIf(joined, [&](OpOperand &use) {
      return !llvm::is_contained(x.ops, use.getOwner());
    });
  }
  for (Operation *o : llvm::reverse(x.ops))
    o->erase();
  return success();
}

/// Why the backward exchange `x` around `g` stays at degree 1, or "" when
/// it can be pipelined.
std::string backwardBlocker(const Exchange &x, ExpertFFNGradOp g) {
  if (!x.dropless() && g.getCounts())
    return "its capacity buffer has counts (a chunk of the slots has no "
           "counts of its own)";
  Operation *last = x.ops.back();
  for (Operation *o : x.ops)
    for (Operation *user : o->getResult(0).getUsers())
      if (!llvm::is_contained(x.ops, user) &&
          (user->getBlock() != last->getBlock() || user->isBeforeInBlock(last)))
        return (Twine("'") + user->getName().getStringRef() +
                "' uses the exchange before it ends")
            .str();
  for (Value r : {g.getDgate(), g.getDup(), g.getDdown()}) {
    if (!r)
      continue;
    for (Operation *user : r.getUsers())
      if (user->getBlock() != last->getBlock() || user->isBeforeInBlock(last))
        return (Twine("'") + user->getName().getStringRef() +
                "' reads a weight gradient before the exchange ends (the "
                "weight gradient is computed after the last chunk)")
            .str();
  }
  return "";
}

/// The backward's exchange around `g` in `degree` chunks: the pipeline of
/// the forward (the all-to-all of chunk i+1 and the return of chunk i-1 in
/// flight while chunk i computes), chunks in reverse order, each computing
/// moe.expert_ffn_grad_data on its rows; the per-row values and the
/// received gradient are joined (moe.interleave / moe.join_rows) for one
/// moe.expert_ffn_grad_weight over all rows, emitted before the last return
/// is waited for. Bit for bit expert_ffn_grad: every row is computed from
/// that row alone, the weight gradients sum the same values in the same
/// GEMMs.
LogicalResult pipelineBackward(Exchange &x, ExpertFFNGradOp g, int64_t degree) {
  bool dropless = x.dropless();
  Location loc = g.getLoc();
  Type f32 = Float32Type::get(g.getContext());
  int64_t f = cast<RankedTensorType>(g.getUp().getType()).getDimSize(1);
  // A buffer type with F columns (f32): the per-row values.
  auto withF = [&](Type t) {
    SmallVector<int64_t> shape(cast<RankedTensorType>(t).getShape());
    shape.back() = f;
    return RankedTensorType::get(shape, f32);
  };
  Value counts = g.getCounts(), savedU = g.getSavedU(), savedA = g.getSavedA();
  SmallVector<Value> dout(degree), hidden(degree), dpreUp(degree),
      dpreGate(degree);
  // Capacity: the saved [E*R, F] activations viewed as [E, R, F] once, so
  // that moe.chunk cuts their slots.
  Value savedUView, savedAView;
  // Chunk i of a whole buffer packed like the FFN's input.
  auto chunkOf = [&](OpBuilder &b, Value whole, int64_t i, Type ty) -> Value {
    if (dropless)
      return ChunkRowsOp::create(b, loc, ty, whole, counts, i, degree);
    return ChunkOp::create(b, loc, ty, whole, 1, i, degree);
  };
  auto savedChunk = [&](OpBuilder &b, Value saved, Value &view, int64_t i,
                        Type ty) -> Value {
    if (!saved)
      return Value();
    if (dropless)
      return chunkOf(b, saved, i, ty);
    if (!view)
      view = ReshapeOp::create(b, loc, withF(g.getInput().getType()), saved);
    return chunkOf(b, view, i, ty);
  };
  x.reverse = true;
  x.compute = [&](OpBuilder &b, int64_t i, Value in, IRMapping &map) {
    Type ty = in.getType(), rowsF = withF(ty);
    // One statement each: the order of the ops in the IR is fixed.
    Value input = chunkOf(b, g.getInput(), i, ty);
    Value u = savedChunk(b, savedU, savedUView, i, rowsF);
    Value a = savedChunk(b, savedA, savedAView, i, rowsF);
    auto data = ExpertFFNGradDataOp::create(
        b, loc, ty, rowsF, rowsF, g.getGate() ? rowsF : Type(), input,
        counts ? map.lookupOrDefault(counts) : Value(), g.getGate(), g.getUp(),
        g.getDown(), in, u, a, g.getActivationAttr());
    dout[i] = in;
    hidden[i] = data.getHidden();
    dpreUp[i] = data.getDpreUp();
    dpreGate[i] = data.getDpreGate();
    return data.getDinput();
  };
  x.afterCompute = [&](OpBuilder &b) {
    auto join = [&](ArrayRef<Value> chunks, Type whole) -> Value {
      if (dropless)
        return JoinRowsOp::create(b, loc, whole, chunks, counts);
      return InterleaveOp::create(b, loc, whole, chunks, int64_t(1));
    };
    Type rowsF = withF(g.getInput().getType());
    Value dy = join(dout, g.getDout().getType());
    Value h = join(hidden, rowsF);
    Value du = join(dpreUp, rowsF);
    Value da = g.getGate() ? join(dpreGate, rowsF) : Value();
    auto weight = ExpertFFNGradWeightOp::create(
        b, loc, g.getGate() ? g.getDgate().getType() : Type(),
        g.getDup().getType(), g.getDdown().getType(), g.getInput(), counts, dy,
        h, du, da);
    if (g.getGate())
      g.getDgate().replaceAllUsesWith(weight.getDgate());
    g.getDup().replaceAllUsesWith(weight.getDup());
    g.getDdown().replaceAllUsesWith(weight.getDdown());
  };
  return pipeline(x, degree);
}

struct MoEOverlapPass : moe::impl::MoEOverlapBase<MoEOverlapPass> {
  using MoEOverlapBase::MoEOverlapBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    FailureOr<int64_t> n = parseDegree(module);
    if (failed(n))
      return signalPassFailure();
    if (*n == 1)
      return;
    std::optional<cost::CostModel> model;
    if (*n == 0) { // auto
      llvm::Expected<cost::ClusterSpec> spec = cost::loadClusterFile(cluster);
      if (!spec) {
        module.emitError() << "moe-overlap: "
                           << llvm::toString(spec.takeError());
        return signalPassFailure();
      }
      model.emplace(std::move(*spec));
    }
    SmallVector<ExpertFFNOp> ffns;
    module.walk([&](ExpertFFNOp op) { ffns.push_back(op); });
    for (ExpertFFNOp ffn : ffns) {
      // The backward's recomputation (moe-checkpoint) is left as it is.
      if (ffn->hasAttr(MoEDialect::kRecomputeAttrName))
        continue;
      FailureOr<std::optional<Exchange>> x =
          matchExchange(ffn, ffn.getInput(), ffn.getOutput(), ffn.getCounts());
      if (failed(x))
        return signalPassFailure();
      if (!*x)
        continue;
      FailureOr<int64_t> degree = *n;
      if (model)
        degree = chooseDegree(**x, *model);
      if (failed(degree) || (*degree > 1 && failed(pipeline(**x, *degree))))
        return signalPassFailure();
    }
    // The backward's exchanges (moe-differentiate's adjoints of the
    // forward's): the data gradient chunked, the weight gradient once.
    SmallVector<ExpertFFNGradOp> grads;
    module.walk([&](ExpertFFNGradOp op) { grads.push_back(op); });
    for (ExpertFFNGradOp g : grads) {
      FailureOr<std::optional<Exchange>> x =
          matchExchange(g, g.getDout(), g.getDinput(), g.getCounts(),
                        /*backward=*/true);
      if (failed(x))
        return signalPassFailure();
      if (!*x)
        continue;
      FailureOr<int64_t> degree = *n;
      if (model)
        degree = chooseDegree(**x, *model);
      if (failed(degree))
        return signalPassFailure();
      if (*degree == 1)
        continue;
      std::string blocker = backwardBlocker(**x, g);
      if (!blocker.empty()) {
        g.emitRemark() << "moe-overlap: the backward's exchange stays at "
                          "degree 1: "
                       << blocker;
        continue;
      }
      if (failed(pipelineBackward(**x, g, *degree)))
        return signalPassFailure();
    }
  }

  FailureOr<int64_t> parseDegree(ModuleOp module) {
    StringRef text = StringRef(degree).trim();
    if (text == "auto")
      return 0;
    int64_t value;
    if (text.getAsInteger(10, value) || value < 1)
      return module.emitError() << "moe-overlap: degree '" << degree
                                << "' is not a positive number or 'auto'";
    return value;
  }
};

} // namespace
