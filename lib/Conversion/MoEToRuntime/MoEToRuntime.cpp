//===- MoEToRuntime.cpp - moe ops to moert calls (moe-to-runtime) ---------===//
//
// Every public function over moe ops becomes an entry point
//
//   void moe_entry_<name>(moert_ctx *ctx, void **args, void **results);
//
// Tensors become pointers: arguments and results point into the caller's
// buffers, every other value into one scratch arena whose layout is planned
// here from value lifetimes (first fit over live ranges in program order).
// Each moe op becomes one call of the runtime's C ABI, with shapes, enums and
// scalars as constants. The host never touches tensor memory, so the same
// code drives CPU and CUDA contexts.
//
// Every call is built from the kernel's argument struct (RuntimeAbi.h,
// generated from runtime/include/moert/moert_kernels.def) with each argument
// named, and the module exports the ABI version it is built for
// (moe_abi_version), which the loader checks.
//
// Why not upstream one-shot-bufferize: the buffers live in the memory of a
// device chosen when the module runs, and only the runtime may allocate or
// address them; memref descriptors would add nothing but host-side copies
// of shapes that are already compile-time constants.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Conversion/RuntimeAbi.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "base/CheckedMath.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/TypeSwitch.h"

// Every kernel call names all of its arguments, in ABI order: a parameter
// added to moert_kernels.def and not passed here fails the build, as does
// one moved (designated initializers must follow declaration order).
#pragma GCC diagnostic error "-Wmissing-field-initializers"

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETORUNTIME
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

constexpr int64_t kArenaAlign = 256;

RankedTensorType tensorOf(Value v) {
  if (auto f = dyn_cast<FutureType>(v.getType()))
    return f.getValueType();
  return cast<RankedTensorType>(v.getType());
}

/// Bytes of `t`; checkSizes has made sure that every tensor of the function
/// has a byte size that fits in int64.
int64_t byteSize(RankedTensorType t) {
  return t.getNumElements() * int64_t((t.getElementTypeBitWidth() + 7) / 8);
}

/// Every tensor the entry point sizes (arguments, results of its ops) has a
/// static shape whose byte size, rounded up to the arena alignment, fits in
/// int64: an overflow would plan an arena far smaller than the buffers.
LogicalResult checkSizes(func::FuncOp func) {
  auto check = [&](Value v, Location loc) -> LogicalResult {
    if (!isa<RankedTensorType, FutureType>(v.getType()))
      return success();
    RankedTensorType t = tensorOf(v);
    int64_t bytes;
    if (t.hasStaticShape() && t.getElementType().isIntOrFloat() &&
        moert::checkedByteSize(
            t.getShape(),
            int64_t((t.getElementType().getIntOrFloatBitWidth() + 7) / 8),
            bytes) &&
        moert::checkedAlignUp(bytes, kArenaAlign, bytes))
      return success();
    return emitError(loc) << "moe-to-runtime: " << t
                          << " has more bytes than fit in 64 bits";
  };
  Block &body = func.getBody().front();
  for (BlockArgument a : body.getArguments())
    if (failed(check(a, func.getLoc())))
      return failure();
  for (Operation &op : body)
    for (Value r : op.getResults())
      if (failed(check(r, op.getLoc())))
        return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// Buffer planning
//===----------------------------------------------------------------------===//

/// Where every tensor value of one function lives.
struct BufferPlan {
  /// Arena offset of values that live in the arena.
  llvm::DenseMap<Value, int64_t> arenaOffset;
  /// Result slot of values written straight into a result buffer.
  llvm::DenseMap<Value, unsigned> resultSlot;
  int64_t arenaBytes = 0;
  /// Set when the arena's size does not fit in int64.
  bool overflow = false;
};

/// The value whose buffer `v` uses: a wait's result is its future's buffer.
Value bufferRoot(Value v) {
  if (auto wait = v.getDefiningOp<WaitOp>())
    return wait.getFuture();
  return v;
}

BufferPlan planBuffers(func::FuncOp func) {
  BufferPlan plan;
  Block &body = func.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());

  // A returned value computed here is written directly into its result
  // buffer, unless it is returned twice (then all but one are copies).
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    Value root = bufferRoot(v);
    if (!isa<BlockArgument>(root) && !plan.resultSlot.count(root))
      plan.resultSlot[root] = i;
  }

  // Last use of every buffer, in op order. A started collective keeps its
  // inputs alive until its wait.
  llvm::DenseMap<Value, int64_t> lastUse;
  int64_t i = 0;
  for (Operation &op : body) {
    auto use = [&](Value v) {
      Value root = bufferRoot(v);
      lastUse[root] = std::max(lastUse.lookup(root), i);
    };
    for (Value v : op.getOperands())
      use(v);
    if (auto wait = dyn_cast<WaitOp>(op))
      if (Operation *start = wait.getFuture().getDefiningOp())
        for (Value v : start->getOperands())
          use(v);
    for (Value r : op.getResults())
      lastUse.try_emplace(r, i);
    ++i;
  }

  struct Live {
    int64_t offset, size;
    Value value;
  };
  SmallVector<Live> live;
  int64_t now = 0; // position of `op`, as numbered above
  for (Operation &op : body) {
    // Drop buffers whose last use is before this op.
    llvm::erase_if(live, [&](const Live &l) { return lastUse[l.value] < now; });
    for (Value r : op.getResults()) {
      if (isa<WaitOp>(op) || plan.resultSlot.count(r) ||
          !isa<RankedTensorType, FutureType>(r.getType()))
        continue;
      int64_t size = std::max<int64_t>(byteSize(tensorOf(r)), 1);
      size = (size + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
      llvm::sort(live, [](const Live &a, const Live &b) {
        return a.offset < b.offset;
      });
      int64_t offset = 0, end;
      for (const Live &l : live) {
        if (l.offset - offset >= size)
          break;
        offset = std::max(offset, l.offset + l.size);
      }
      if (!moert::checkedAdd(offset, size, end)) {
        plan.overflow = true;
        return plan;
      }
      live.push_back({offset, size, r});
      plan.arenaOffset[r] = offset;
      plan.arenaBytes = std::max(plan.arenaBytes, end);
    }
    ++now;
  }
  return plan;
}

//===----------------------------------------------------------------------===//
// Code generation
//===----------------------------------------------------------------------===//

/// Emits the body of one entry point.
class EntryEmitter {
public:
  EntryEmitter(ModuleOp module, func::FuncOp entry)
      : b(entry.getBody()), loc(entry.getLoc()),
        ptrTy(LLVM::LLVMPointerType::get(module.getContext())),
        calls(module, b, entry.getArgument(0)) {
    b.setInsertionPointToStart(&entry.getBody().front());
  }

  /// Location of what is emitted next (the op being lowered).
  void setLoc(Location l) { loc = l; }

  Value i64(int64_t v) {
    return arith::ConstantOp::create(b, loc, b.getI64IntegerAttr(v));
  }
  Value i32(int64_t v) {
    return arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(v));
  }
  Value f32(float v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value null() { return LLVM::ZeroOp::create(b, loc, ptrTy); }

  /// `base + offset` bytes.
  Value offsetPtr(Value base, int64_t offset) {
    if (offset == 0)
      return base;
    // Offsets may pass 2^31: index with an i64 value, not a constant field.
    return LLVM::GEPOp::create(b, loc, ptrTy, b.getI8Type(), base,
                               ArrayRef<LLVM::GEPArg>{i64(offset)});
  }
  /// `table[i]` of a `void **`.
  Value loadPtr(Value table, int64_t i) {
    Value addr = LLVM::GEPOp::create(b, loc, ptrTy, ptrTy, table,
                                     ArrayRef<LLVM::GEPArg>{int32_t(i)});
    return LLVM::LoadOp::create(b, loc, ptrTy, addr);
  }

  /// Calls the kernel whose argument struct is `k` (abi::moert_add{...}).
  template <typename K> LogicalResult call(const K &k) {
    return calls.call(loc, k);
  }
  /// Same for a kernel that returns a pointer.
  template <typename K> FailureOr<Value> callValue(const K &k) {
    return calls.callValue(loc, k);
  }

  OpBuilder &builder() { return b; }

private:
  OpBuilder b;
  Location loc;
  Type ptrTy;
  abi::KernelCallBuilder calls;
};

/// Shape arguments of a collective: rank <= 4, padded with trailing 1s.
FailureOr<SmallVector<int64_t, 4>> dims4(Operation *op, RankedTensorType t) {
  if (t.getRank() > 4) {
    op->emitOpError() << "moe-to-runtime supports collectives on tensors of "
                         "rank <= 4, got rank "
                      << t.getRank();
    return failure();
  }
  SmallVector<int64_t, 4> d(t.getShape());
  d.resize(4, 1);
  return d;
}

/// A cyclic chunk of dimension `dim` of `whole` (moe.chunk) as a strided
/// copy: `height` rows of `width` bytes, one in every `n` of the whole.
struct ChunkGeometry {
  int64_t width, height;
};
ChunkGeometry chunkGeometry(RankedTensorType whole, int64_t dim, int64_t n) {
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < whole.getRank(); ++d)
    inner *= whole.getDimSize(d);
  int64_t elemBytes = (whole.getElementTypeBitWidth() + 7) / 8;
  return {inner * elemBytes, whole.getNumElements() / inner / n};
}

/// The bytes of one row of a 2-D tensor.
int64_t rowBytes(RankedTensorType t) {
  return t.getDimSize(1) * int64_t((t.getElementTypeBitWidth() + 7) / 8);
}

/// Lowers one function into its entry point.
class FunctionLowering {
public:
  FunctionLowering(ModuleOp module, func::FuncOp func)
      : module(module), func(func) {}

  LogicalResult run();

private:
  LogicalResult checkSupported();
  LogicalResult lowerOp(Operation &op);
  LogicalResult lowerCollective(Operation &op, bool start);
  int64_t axisMask(CollectiveOpInterface op);

  Value ptr(Value v) { return ptrs.lookup(bufferRoot(v)); }
  /// The runtime dtype of `v`'s elements (checkSupported made sure it has
  /// one).
  Value dtype(Value v) {
    return em->i32(*abi::toMoertDtype(tensorOf(v).getElementType()));
  }
  Value dim(Value v, int64_t i) { return em->i64(tensorOf(v).getDimSize(i)); }
  Value optPtr(Value v) { return v ? ptr(v) : em->null(); }

  /// The layout arguments shared by moert_expert_ffn, _train and _grad:
  /// `input` is [rows, D] (packed) or [E, R, D] (capacity), `up` [E, F, D],
  /// `counts` (optional) [segments, E].
  struct FfnLayoutArgs {
    Value E, segments, rowsPerExpert, totalRows, D, F;
  };
  FfnLayoutArgs ffnLayout(Value input, Value up, Value counts) {
    RankedTensorType x = tensorOf(input), u = tensorOf(up);
    return {em->i64(u.getDimSize(0)),
            em->i64(counts ? tensorOf(counts).getDimSize(0) : 1),
            em->i64(x.getRank() == 3 ? x.getDimSize(1) : 0),
            em->i64(x.getNumElements() / x.getShape().back()),
            em->i64(x.getShape().back()),
            em->i64(u.getDimSize(1))};
  }

  ModuleOp module;
  func::FuncOp func;
  std::unique_ptr<EntryEmitter> em;
  llvm::DenseMap<Value, Value> ptrs;
  /// Handle returned by the start call of each future.
  llvm::DenseMap<Value, Value> handles;
};

bool hasRuntimeDtype(RankedTensorType t) {
  return abi::toMoertDtype(t.getElementType()).has_value();
}

LogicalResult FunctionLowering::checkSupported() {
  if (!func.getBody().hasOneBlock())
    return func.emitOpError("moe-to-runtime needs a single-block function");
  for (Type t : llvm::concat<const Type>(func.getArgumentTypes(),
                                         func.getResultTypes())) {
    auto rt = dyn_cast<RankedTensorType>(t);
    if (!rt || !rt.hasStaticShape() || !hasRuntimeDtype(rt))
      return func.emitOpError()
             << "moe-to-runtime needs statically shaped f32/f16/bf16/i32/i64 "
                "tensor arguments and results, got "
             << t;
  }
  for (Operation &op : func.getBody().front()) {
    if (isa<LayerOp>(op))
      return op.emitOpError("must be decomposed before moe-to-runtime (run "
                            "moe-decompose)");
    if (!isa<MoEDialect>(op.getDialect()) && !isa<func::ReturnOp>(op))
      return op.emitOpError("is not supported by moe-to-runtime: entry "
                            "functions may hold only moe ops");
    for (Value v : op.getResults()) {
      RankedTensorType t = tensorOf(v);
      if (!t.hasStaticShape())
        return op.emitOpError("moe-to-runtime needs static shapes");
      if (!hasRuntimeDtype(t))
        return op.emitOpError() << "moe-to-runtime supports f32/f16/bf16/"
                                   "i32/i64 tensors, got "
                                << t;
    }
  }
  return success();
}

/// Bit i of the runtime's axis mask selects mesh axis i (moert.h).
int64_t FunctionLowering::axisMask(CollectiveOpInterface op) {
  MeshOp mesh = op.getMeshOp();
  int64_t mask = 0;
  for (Attribute a : op.getAxes())
    mask |= int64_t(1) << mesh.getAxisIndex(cast<StringAttr>(a).getValue());
  return mask;
}

LogicalResult FunctionLowering::run() {
  if (failed(checkSupported()) || failed(checkSizes(func)))
    return failure();
  BufferPlan plan = planBuffers(func);
  if (plan.overflow)
    return func.emitError()
           << "moe-to-runtime: the arena of @" << func.getSymName()
           << " needs more bytes than fit in 64 bits";

  // The entry point replaces the function; the tensor function stays until
  // the body is emitted (its values are the keys of the plan).
  OpBuilder mb(func);
  MLIRContext *mctx = module.getContext();
  Type ptrTy = LLVM::LLVMPointerType::get(mctx);
  auto entry = func::FuncOp::create(
      mb, func.getLoc(), ("moe_entry_" + func.getSymName()).str(),
      mb.getFunctionType({ptrTy, ptrTy, ptrTy}, {}));
  entry->setAttr(MoEDialect::kArenaBytesAttrName,
                 mb.getI64IntegerAttr(plan.arenaBytes));
  Block *block = entry.addEntryBlock();
  em = std::make_unique<EntryEmitter>(module, entry);
  Value argTable = block->getArgument(1), resultTable = block->getArgument(2);

  Block &body = func.getBody().front();
  for (BlockArgument a : body.getArguments())
    ptrs[a] = em->loadPtr(argTable, a.getArgNumber());
  // Pointers are made in op order so that the output is deterministic.
  Value base;
  if (plan.arenaBytes > 0) {
    FailureOr<Value> arena =
        em->callValue(abi::moert_arena{.bytes = em->i64(plan.arenaBytes)});
    if (failed(arena))
      return failure();
    base = *arena;
  }
  for (Operation &op : body) {
    for (Value v : op.getResults()) {
      if (auto it = plan.arenaOffset.find(v); it != plan.arenaOffset.end())
        ptrs[v] = em->offsetPtr(base, it->second);
      else if (auto slot = plan.resultSlot.find(v);
               slot != plan.resultSlot.end())
        ptrs[v] = em->loadPtr(resultTable, slot->second);
    }
  }

  // Collectives that moe-checkpoint recomputes in the backward are counted
  // apart (moert_stats_phase 1 around them).
  bool recomputePhase = false;
  auto setPhase = [&](bool recompute) -> LogicalResult {
    if (recompute == recomputePhase)
      return success();
    recomputePhase = recompute;
    return em->call(abi::moert_stats_phase{.phase = em->i32(recompute)});
  };
  // moe.hold_weights = "open" ... "close" (moe-overlap's chunks of one
  // FFN): moert_hold_weights around them, closed at the return at the
  // latest, so that nothing stays held past the entry.
  bool holding = false;
  auto hold = [&](bool on) -> LogicalResult {
    if (on == holding)
      return success();
    holding = on;
    return em->call(abi::moert_hold_weights{.hold = em->i32(on)});
  };
  auto holdMark = [](Operation &op) {
    auto mark = op.getAttrOfType<StringAttr>(MoEDialect::kHoldWeightsAttrName);
    return mark ? mark.getValue() : StringRef();
  };
  for (Operation &op : body) {
    em->setLoc(op.getLoc());
    if (isa<CollectiveOpInterface>(op) &&
        failed(setPhase(op.hasAttr(MoEDialect::kRecomputeAttrName))))
      return failure();
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      if (failed(setPhase(false)) || failed(hold(false)))
        return failure();
      // Results not written in place (arguments, values returned twice).
      for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
        Value root = bufferRoot(v);
        auto slot = plan.resultSlot.find(root);
        if (slot != plan.resultSlot.end() && slot->second == i)
          continue;
        if (failed(em->call(
                abi::moert_copy{.src = ptr(v),
                                .dst = em->loadPtr(resultTable, i),
                                .bytes = em->i64(byteSize(tensorOf(v)))})))
          return failure();
      }
      func::ReturnOp::create(em->builder(), op.getLoc());
      continue;
    }
    if (holdMark(op) == "open" && failed(hold(true)))
      return failure();
    if (auto prep = dyn_cast<ExpertFFNPrepareOp>(op)) {
      // moert_expert_ffn_prepare holds the weights itself.
      holding = true;
      auto up = cast<RankedTensorType>(prep.getUp().getType());
      if (failed(em->call(abi::moert_expert_ffn_prepare{
              .gate = optPtr(prep.getGate()),
              .up = ptr(prep.getUp()),
              .down = ptr(prep.getDown()),
              .E = em->i64(up.getDimSize(0)),
              .D = em->i64(up.getDimSize(2)),
              .F = em->i64(up.getDimSize(1)),
              .activation = em->i32(abi::toMoert(prep.getActivation())),
              .dtype = dtype(prep.getUp())})))
        return failure();
      continue;
    }
    if (failed(lowerOp(op)))
      return failure();
    if (holdMark(op) == "close" && failed(hold(false)))
      return failure();
  }
  func.erase();
  return success();
}

LogicalResult FunctionLowering::lowerOp(Operation &op) {
  EntryEmitter &e = *em;
  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](RMSNormOp o) {
        return e.call(
            abi::moert_rmsnorm{.x = ptr(o.getInput()),
                               .w = ptr(o.getWeight()),
                               .y = ptr(o.getOutput()),
                               .T = dim(o.getInput(), 0),
                               .D = dim(o.getInput(), 1),
                               .eps = e.f32(o.getEps().convertToFloat()),
                               .dtype = dtype(o.getInput())});
      })
      .Case([&](LayerNormOp o) {
        return e.call(
            abi::moert_layernorm{.x = ptr(o.getInput()),
                                 .w = ptr(o.getWeight()),
                                 .b = optPtr(o.getBias()),
                                 .y = ptr(o.getOutput()),
                                 .T = dim(o.getInput(), 0),
                                 .D = dim(o.getInput(), 1),
                                 .eps = e.f32(o.getEps().convertToFloat()),
                                 .dtype = dtype(o.getInput())});
      })
      .Case([&](AddOp o) {
        return e.call(
            abi::moert_add{.a = ptr(o.getLhs()),
                           .b = ptr(o.getRhs()),
                           .y = ptr(o.getOutput()),
                           .n = e.i64(tensorOf(o.getLhs()).getNumElements()),
                           .dtype = dtype(o.getLhs())});
      })
      .Case([&](RouterOp o) {
        return e.call(abi::moert_router{.x = ptr(o.getInput()),
                                        .w = ptr(o.getWeight()),
                                        .logits = ptr(o.getLogits()),
                                        .T = dim(o.getInput(), 0),
                                        .D = dim(o.getInput(), 1),
                                        .E = dim(o.getWeight(), 0),
                                        .dtype = dtype(o.getInput())});
      })
      .Case([&](TopKOp o) {
        return e.call(abi::moert_topk{
            .logits = ptr(o.getLogits()),
            .bias = optPtr(o.getBias()),
            .weights = ptr(o.getWeights()),
            .indices = ptr(o.getIndices()),
            .scores = ptr(o.getScores()),
            .T = dim(o.getLogits(), 0),
            .E = dim(o.getLogits(), 1),
            .k = e.i64(o.getK()),
            .score_fn = e.i32(abi::toMoert(o.getScore())),
            .renormalize = e.i32(o.getRenormalize()),
            .scaling = e.f32(o.getRoutedScaling().convertToFloat()),
            .num_groups = e.i64(o.getNumGroups()),
            .groups_kept = e.i64(o.getGroupsKept()),
            .group_score = e.i32(abi::toMoert(o.getGroupScore()))});
      })
      .Case([&](TopKForcedOp o) {
        return e.call(abi::moert_topk_forced{
            .logits = ptr(o.getLogits()),
            .forced = ptr(o.getForced()),
            .weights = ptr(o.getWeights()),
            .indices = ptr(o.getIndices()),
            .scores = ptr(o.getScores()),
            .T = dim(o.getLogits(), 0),
            .E = dim(o.getLogits(), 1),
            .k = dim(o.getForced(), 1),
            .score_fn = e.i32(abi::toMoert(o.getScore())),
            .renormalize = e.i32(o.getRenormalize()),
            .scaling = e.f32(o.getRoutedScaling().convertToFloat())});
      })
      .Case([&](AssignOp o) {
        return e.call(abi::moert_assign{.indices = ptr(o.getIndices()),
                                        .positions = ptr(o.getPositions()),
                                        .counts = ptr(o.getCounts()),
                                        .T = dim(o.getIndices(), 0),
                                        .k = dim(o.getIndices(), 1),
                                        .E = e.i64(o.getNumExperts()),
                                        .capacity = e.i64(o.getCapacity()),
                                        .groups = e.i64(o.getGroups())});
      })
      .Case([&](DispatchOp o) {
        RankedTensorType out = tensorOf(o.getOutput());
        return e.call(abi::moert_dispatch{
            .x = ptr(o.getInput()),
            .positions = ptr(o.getPositions()),
            .out = ptr(o.getOutput()),
            .T = dim(o.getInput(), 0),
            .k = dim(o.getPositions(), 1),
            .D = dim(o.getInput(), 1),
            .out_rows = e.i64(out.getNumElements() / out.getShape().back()),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertFFNOp o) {
        FfnLayoutArgs l = ffnLayout(o.getInput(), o.getUp(), o.getCounts());
        return e.call(abi::moert_expert_ffn{
            .x = ptr(o.getInput()),
            .counts = optPtr(o.getCounts()),
            .gate = optPtr(o.getGate()),
            .up = ptr(o.getUp()),
            .down = ptr(o.getDown()),
            .y = ptr(o.getOutput()),
            .E = l.E,
            .segments = l.segments,
            .rows_per_expert = l.rowsPerExpert,
            .total_rows = l.totalRows,
            .D = l.D,
            .F = l.F,
            .activation = e.i32(abi::toMoert(o.getActivation())),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertFFNTrainOp o) {
        FfnLayoutArgs l = ffnLayout(o.getInput(), o.getUp(), o.getCounts());
        return e.call(abi::moert_expert_ffn_train{
            .x = ptr(o.getInput()),
            .counts = optPtr(o.getCounts()),
            .gate = optPtr(o.getGate()),
            .up = ptr(o.getUp()),
            .down = ptr(o.getDown()),
            .y = ptr(o.getOutput()),
            .save_a = optPtr(o.getSavedA()),
            .save_u = ptr(o.getSavedU()),
            .E = l.E,
            .segments = l.segments,
            .rows_per_expert = l.rowsPerExpert,
            .total_rows = l.totalRows,
            .D = l.D,
            .F = l.F,
            .activation = e.i32(abi::toMoert(o.getActivation())),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](CombineOp o) {
        return e.call(
            abi::moert_combine{.y = ptr(o.getInput()),
                               .positions = ptr(o.getPositions()),
                               .weights = ptr(o.getWeights()),
                               .passthrough = optPtr(o.getPassthrough()),
                               .out = ptr(o.getOutput()),
                               .T = dim(o.getPositions(), 0),
                               .k = dim(o.getPositions(), 1),
                               .D = dim(o.getOutput(), 1),
                               .dtype = dtype(o.getOutput())});
      })
      .Case([&](MLPOp o) {
        return e.call(
            abi::moert_mlp{.x = ptr(o.getInput()),
                           .gate = optPtr(o.getGate()),
                           .up = ptr(o.getUp()),
                           .down = ptr(o.getDown()),
                           .sigmoid_gate = optPtr(o.getSigmoidGate()),
                           .y = ptr(o.getOutput()),
                           .T = dim(o.getInput(), 0),
                           .D = dim(o.getInput(), 1),
                           .F = dim(o.getUp(), 0),
                           .activation = e.i32(abi::toMoert(o.getActivation())),
                           .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertLoadOp o) {
        return e.call(abi::moert_expert_load{.scores = ptr(o.getScores()),
                                             .indices = ptr(o.getIndices()),
                                             .stats = ptr(o.getStats()),
                                             .T = dim(o.getIndices(), 0),
                                             .k = dim(o.getIndices(), 1),
                                             .E = dim(o.getScores(), 1)});
      })
      .Case([&](LoadBalanceLossOp o) {
        return e.call(abi::moert_load_balance_loss{
            .stats = ptr(o.getStats()),
            .count = optPtr(o.getCount()),
            .out = ptr(o.getLoss()),
            .E = dim(o.getStats(), 1),
            .tokens = e.i64(o.getTokens()),
            .k = e.i64(o.getK()),
            .coeff = e.f32(o.getCoeff().convertToFloat())});
      })
      .Case([&](ZLossOp o) {
        return e.call(
            abi::moert_z_loss{.logits = ptr(o.getLogits()),
                              .mask = optPtr(o.getMask()),
                              .count = optPtr(o.getCount()),
                              .out = ptr(o.getLoss()),
                              .T = dim(o.getLogits(), 0),
                              .E = dim(o.getLogits(), 1),
                              .total_tokens = e.i64(o.getTokens()),
                              .coeff = e.f32(o.getCoeff().convertToFloat())});
      })
      // Token mask: i32 indices get -1 (every byte 0xff), the rest 0.
      .Case([&](MaskRowsOp o) {
        auto ty = tensorOf(o.getInput());
        int64_t rows = ty.getDimSize(0);
        return e.call(abi::moert_mask_rows{
            .x = ptr(o.getInput()),
            .mask = ptr(o.getMask()),
            .y = ptr(o.getOutput()),
            .T = e.i64(rows),
            .row_bytes = e.i64(rows ? byteSize(ty) / rows : 0),
            .fill = e.i32(ty.getElementType().isInteger(32) ? 255 : 0)});
      })
      .Case([&](TokenCountOp o) {
        return e.call(abi::moert_token_count{.mask = ptr(o.getMask()),
                                             .count = ptr(o.getCount()),
                                             .T = dim(o.getMask(), 0)});
      })
      // Training (moe-differentiate): one kernel per gradient op.
      .Case([&](RMSNormGradOp o) {
        return e.call(
            abi::moert_rmsnorm_grad{.x = ptr(o.getInput()),
                                    .w = ptr(o.getWeight()),
                                    .dy = ptr(o.getDout()),
                                    .dx = ptr(o.getDinput()),
                                    .dw = ptr(o.getDweight()),
                                    .T = dim(o.getInput(), 0),
                                    .D = dim(o.getInput(), 1),
                                    .eps = e.f32(o.getEps().convertToFloat()),
                                    .dtype = dtype(o.getInput())});
      })
      .Case([&](LayerNormGradOp o) {
        return e.call(
            abi::moert_layernorm_grad{.x = ptr(o.getInput()),
                                      .w = ptr(o.getWeight()),
                                      .dy = ptr(o.getDout()),
                                      .dx = ptr(o.getDinput()),
                                      .dw = ptr(o.getDweight()),
                                      .db = optPtr(o.getDbias()),
                                      .T = dim(o.getInput(), 0),
                                      .D = dim(o.getInput(), 1),
                                      .eps = e.f32(o.getEps().convertToFloat()),
                                      .dtype = dtype(o.getInput())});
      })
      .Case([&](RouterGradOp o) {
        return e.call(abi::moert_router_grad{.x = ptr(o.getInput()),
                                             .w = ptr(o.getWeight()),
                                             .dlogits = ptr(o.getDlogits()),
                                             .dx = ptr(o.getDinput()),
                                             .dw = ptr(o.getDweight()),
                                             .T = dim(o.getInput(), 0),
                                             .D = dim(o.getInput(), 1),
                                             .E = dim(o.getWeight(), 0),
                                             .dtype = dtype(o.getInput())});
      })
      .Case([&](TopKGradOp o) {
        return e.call(abi::moert_topk_grad{
            .logits = ptr(o.getLogits()),
            .indices = ptr(o.getIndices()),
            .dweights = ptr(o.getDweights()),
            .dscores = optPtr(o.getDscores()),
            .dlogits = ptr(o.getDlogits()),
            .T = dim(o.getLogits(), 0),
            .E = dim(o.getLogits(), 1),
            .k = dim(o.getIndices(), 1),
            .score_fn = e.i32(abi::toMoert(o.getScore())),
            .renormalize = e.i32(o.getRenormalize()),
            .scaling = e.f32(o.getRoutedScaling().convertToFloat())});
      })
      .Case([&](DispatchGradOp o) {
        RankedTensorType buf = tensorOf(o.getDout());
        return e.call(abi::moert_dispatch_grad{
            .dout = ptr(o.getDout()),
            .positions = ptr(o.getPositions()),
            .dx = ptr(o.getDinput()),
            .T = dim(o.getDinput(), 0),
            .k = dim(o.getPositions(), 1),
            .D = dim(o.getDinput(), 1),
            .out_rows = e.i64(buf.getNumElements() / buf.getShape().back()),
            .dtype = dtype(o.getDout())});
      })
      .Case([&](CombineGradOp o) {
        RankedTensorType buf = tensorOf(o.getInput());
        return e.call(abi::moert_combine_grad{
            .y = ptr(o.getInput()),
            .positions = ptr(o.getPositions()),
            .weights = ptr(o.getWeights()),
            .passthrough = optPtr(o.getPassthrough()),
            .dout = ptr(o.getDout()),
            .dy = ptr(o.getDinput()),
            .dweights = ptr(o.getDweights()),
            .dpassthrough = optPtr(o.getDpassthrough()),
            .T = dim(o.getPositions(), 0),
            .k = dim(o.getPositions(), 1),
            .D = dim(o.getDout(), 1),
            .y_rows = e.i64(buf.getNumElements() / buf.getShape().back()),
            .dtype = dtype(o.getDout())});
      })
      .Case([&](ExpertFFNGradOp o) {
        FfnLayoutArgs l = ffnLayout(o.getInput(), o.getUp(), o.getCounts());
        return e.call(abi::moert_expert_ffn_grad{
            .x = ptr(o.getInput()),
            .counts = optPtr(o.getCounts()),
            .gate = optPtr(o.getGate()),
            .up = ptr(o.getUp()),
            .down = ptr(o.getDown()),
            .dy = ptr(o.getDout()),
            .saved_a = optPtr(o.getSavedA()),
            .saved_u = optPtr(o.getSavedU()),
            .dx = ptr(o.getDinput()),
            .dgate = optPtr(o.getDgate()),
            .dup = ptr(o.getDup()),
            .ddown = ptr(o.getDdown()),
            .E = l.E,
            .segments = l.segments,
            .rows_per_expert = l.rowsPerExpert,
            .total_rows = l.totalRows,
            .D = l.D,
            .F = l.F,
            .activation = e.i32(abi::toMoert(o.getActivation())),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertFFNGradDataOp o) {
        FfnLayoutArgs l = ffnLayout(o.getInput(), o.getUp(), o.getCounts());
        return e.call(abi::moert_expert_ffn_grad_data{
            .x = ptr(o.getInput()),
            .counts = optPtr(o.getCounts()),
            .gate = optPtr(o.getGate()),
            .up = ptr(o.getUp()),
            .down = ptr(o.getDown()),
            .dy = ptr(o.getDout()),
            .saved_a = optPtr(o.getSavedA()),
            .saved_u = optPtr(o.getSavedU()),
            .dx = ptr(o.getDinput()),
            .hidden = ptr(o.getHidden()),
            .dpre_gate = optPtr(o.getDpreGate()),
            .dpre_up = ptr(o.getDpreUp()),
            .E = l.E,
            .segments = l.segments,
            .rows_per_expert = l.rowsPerExpert,
            .total_rows = l.totalRows,
            .D = l.D,
            .F = l.F,
            .activation = e.i32(abi::toMoert(o.getActivation())),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertFFNGradWeightOp o) {
        RankedTensorType x = tensorOf(o.getInput());
        Value counts = o.getCounts();
        return e.call(abi::moert_expert_ffn_grad_weight{
            .x = ptr(o.getInput()),
            .counts = optPtr(counts),
            .dy = ptr(o.getDout()),
            .hidden = ptr(o.getHidden()),
            .dpre_gate = optPtr(o.getDpreGate()),
            .dpre_up = ptr(o.getDpreUp()),
            .dgate = optPtr(o.getDgate()),
            .dup = ptr(o.getDup()),
            .ddown = ptr(o.getDdown()),
            .E = dim(o.getDup(), 0),
            .segments = em->i64(counts ? tensorOf(counts).getDimSize(0) : 1),
            .rows_per_expert = em->i64(x.getRank() == 3 ? x.getDimSize(1) : 0),
            .total_rows = em->i64(x.getNumElements() / x.getShape().back()),
            .D = em->i64(x.getShape().back()),
            .F = dim(o.getDup(), 1),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](MLPGradOp o) {
        return e.call(abi::moert_mlp_grad{
            .x = ptr(o.getInput()),
            .gate = optPtr(o.getGate()),
            .up = ptr(o.getUp()),
            .down = ptr(o.getDown()),
            .sigmoid_gate = optPtr(o.getSigmoidGate()),
            .dy = ptr(o.getDout()),
            .dx = ptr(o.getDinput()),
            .dgate = optPtr(o.getDgate()),
            .dup = ptr(o.getDup()),
            .ddown = ptr(o.getDdown()),
            .dsigmoid_gate = optPtr(o.getDsigmoidGate()),
            .T = dim(o.getInput(), 0),
            .D = dim(o.getInput(), 1),
            .F = dim(o.getUp(), 0),
            .activation = e.i32(abi::toMoert(o.getActivation())),
            .dtype = dtype(o.getInput())});
      })
      .Case([&](ExpertLoadGradOp o) {
        return e.call(
            abi::moert_expert_load_grad{.dstats = ptr(o.getDstats()),
                                        .dscores = ptr(o.getDscores()),
                                        .T = dim(o.getDscores(), 0),
                                        .E = dim(o.getDscores(), 1)});
      })
      .Case([&](LoadBalanceLossGradOp o) {
        return e.call(abi::moert_load_balance_loss_grad{
            .stats = ptr(o.getStats()),
            .dloss = ptr(o.getDloss()),
            .count = optPtr(o.getCount()),
            .dstats = ptr(o.getDstats()),
            .E = dim(o.getStats(), 1),
            .tokens = e.i64(o.getTokens()),
            .k = e.i64(o.getK()),
            .coeff = e.f32(o.getCoeff().convertToFloat())});
      })
      .Case([&](ZLossGradOp o) {
        return e.call(abi::moert_z_loss_grad{
            .logits = ptr(o.getLogits()),
            .dloss = ptr(o.getDloss()),
            .mask = optPtr(o.getMask()),
            .count = optPtr(o.getCount()),
            .dlogits = ptr(o.getDlogits()),
            .T = dim(o.getLogits(), 0),
            .E = dim(o.getLogits(), 1),
            .total_tokens = e.i64(o.getTokens()),
            .coeff = e.f32(o.getCoeff().convertToFloat())});
      })
      .Case([&](MSELossOp o) {
        return e.call(abi::moert_mse_loss{
            .y = ptr(o.getOutput()),
            .target = ptr(o.getTarget()),
            .mask = optPtr(o.getMask()),
            .count = optPtr(o.getCount()),
            .loss = ptr(o.getLoss()),
            .dy = ptr(o.getDoutput()),
            .rows = dim(o.getOutput(), 0),
            .n = e.i64(tensorOf(o.getOutput()).getNumElements()),
            .total_n = e.i64(o.getTotal()),
            .dtype = dtype(o.getOutput())});
      })
      .Case([&](AdamWOp o) {
        return e.call(abi::moert_adamw{
            .w = ptr(o.getWeight()),
            .g = ptr(o.getGrad()),
            .m = ptr(o.getExpAvg()),
            .v = ptr(o.getExpAvgSq()),
            .hparams = ptr(o.getHparams()),
            .w_out = ptr(o.getNewWeight()),
            .m_out = ptr(o.getNewExpAvg()),
            .v_out = ptr(o.getNewExpAvgSq()),
            .n = e.i64(tensorOf(o.getWeight()).getNumElements())});
      })
      .Case([&](SGDOp o) {
        return e.call(abi::moert_sgd{
            .w = ptr(o.getWeight()),
            .g = ptr(o.getGrad()),
            .buf = ptr(o.getMomentumBuffer()),
            .hparams = ptr(o.getHparams()),
            .w_out = ptr(o.getNewWeight()),
            .buf_out = ptr(o.getNewMomentumBuffer()),
            .n = e.i64(tensorOf(o.getWeight()).getNumElements())});
      })
      .Case([&](BiasUpdateOp o) {
        return e.call(abi::moert_bias_update{.bias = ptr(o.getBias()),
                                             .load = ptr(o.getLoad()),
                                             .hparams = ptr(o.getHparams()),
                                             .bias_out = ptr(o.getNewBias()),
                                             .E = dim(o.getBias(), 0),
                                             .tokens = e.i64(o.getTokens()),
                                             .k = e.i64(o.getK())});
      })
      .Case([&](ReshapeOp o) {
        return e.call(
            abi::moert_copy{.src = ptr(o.getInput()),
                            .dst = ptr(o.getOutput()),
                            .bytes = e.i64(byteSize(tensorOf(o.getOutput())))});
      })
      .Case([&](LoadCountsOp o) {
        // Row 0 of the row-major [2, E] statistics is their first E floats.
        return e.call(
            abi::moert_copy{.src = ptr(o.getStats()),
                            .dst = ptr(o.getLoad()),
                            .bytes = e.i64(byteSize(tensorOf(o.getLoad())))});
      })
      .Case([&](PackOp o) -> LogicalResult {
        int64_t offset = 0;
        for (Value in : o.getInputs()) {
          int64_t bytes = byteSize(tensorOf(in));
          if (failed(e.call(abi::moert_copy{
                  .src = ptr(in),
                  .dst = e.offsetPtr(ptr(o.getOutput()), offset),
                  .bytes = e.i64(bytes)})))
            return failure();
          offset += bytes;
        }
        return success();
      })
      .Case([&](UnpackOp o) -> LogicalResult {
        int64_t offset = 0;
        for (Value out : o.getOutputs()) {
          int64_t bytes = byteSize(tensorOf(out));
          if (failed(e.call(
                  abi::moert_copy{.src = e.offsetPtr(ptr(o.getInput()), offset),
                                  .dst = ptr(out),
                                  .bytes = e.i64(bytes)})))
            return failure();
          offset += bytes;
        }
        return success();
      })
      .Case([&](ChunkOp o) {
        // Viewed as [outer, d / n, n, inner]: chunk i is [:, :, i, :].
        ChunkGeometry g =
            chunkGeometry(tensorOf(o.getInput()), o.getDim(), o.getChunks());
        return e.call(abi::moert_copy_2d{
            .src =
                e.offsetPtr(ptr(o.getInput()), int64_t(o.getIndex()) * g.width),
            .dst = ptr(o.getOutput()),
            .width = e.i64(g.width),
            .height = e.i64(g.height),
            .src_pitch = e.i64(g.width * int64_t(o.getChunks())),
            .dst_pitch = e.i64(g.width)});
      })
      .Case([&](InterleaveOp o) -> LogicalResult {
        int64_t n = o.getInputs().size();
        ChunkGeometry g = chunkGeometry(tensorOf(o.getOutput()), o.getDim(), n);
        for (auto [i, in] : llvm::enumerate(o.getInputs()))
          if (failed(e.call(abi::moert_copy_2d{
                  .src = ptr(in),
                  .dst = e.offsetPtr(ptr(o.getOutput()), int64_t(i) * g.width),
                  .width = e.i64(g.width),
                  .height = e.i64(g.height),
                  .src_pitch = e.i64(g.width),
                  .dst_pitch = e.i64(g.width * n)})))
            return failure();
        return success();
      })
      .Case([&](CheckRecvBoundOp o) {
        RankedTensorType c = tensorOf(o.getCounts());
        int64_t rows = c.getDimSize(0), n = 1;
        while (n * n < rows)
          ++n;
        return e.call(
            abi::moert_check_recv_bound{.counts = ptr(o.getCounts()),
                                        .ranks = e.i64(n),
                                        .per_rank = e.i64(c.getDimSize(1)),
                                        .bound = e.i64(o.getBound())});
      })
      .Case([&](RegroupOp o) {
        RankedTensorType rows = tensorOf(o.getInput());
        RankedTensorType counts = tensorOf(o.getCounts());
        int64_t g = o.getGroups();
        return e.call(abi::moert_regroup{
            .in = ptr(o.getInput()),
            .counts = ptr(o.getCounts()),
            .out = ptr(o.getOutput()),
            .out_counts = ptr(o.getNewCounts()),
            .A = e.i64(counts.getDimSize(0)),
            .G = e.i64(g),
            .K = e.i64(counts.getDimSize(1) / g),
            .row_bytes = e.i64((rows.getElementTypeBitWidth() + 7) / 8 *
                               rows.getDimSize(1)),
            .rows = e.i64(rows.getDimSize(0))});
      })
      .Case([&](ChunkCountsOp o) {
        return e.call(abi::moert_chunk_counts{
            .counts = ptr(o.getCounts()),
            .out = ptr(o.getOutput()),
            .n = e.i64(tensorOf(o.getCounts()).getNumElements()),
            .index = e.i64(o.getIndex()),
            .chunks = e.i64(o.getChunks())});
      })
      .Case([&](ChunkRowsOp o) {
        RankedTensorType in = tensorOf(o.getInput());
        return e.call(abi::moert_chunk_rows{
            .src = ptr(o.getInput()),
            .dst = ptr(o.getOutput()),
            .counts = ptr(o.getCounts()),
            .segments = e.i64(tensorOf(o.getCounts()).getNumElements()),
            .row_bytes = e.i64(rowBytes(in)),
            .src_rows = e.i64(in.getDimSize(0)),
            .dst_rows = dim(o.getOutput(), 0),
            .index = e.i64(o.getIndex()),
            .chunks = e.i64(o.getChunks()),
            .join = e.i32(0)});
      })
      .Case([&](JoinRowsOp o) -> LogicalResult {
        RankedTensorType out = tensorOf(o.getOutput());
        int64_t n = o.getInputs().size();
        for (auto [i, in] : llvm::enumerate(o.getInputs()))
          if (failed(e.call(abi::moert_chunk_rows{
                  .src = ptr(in),
                  .dst = ptr(o.getOutput()),
                  .counts = ptr(o.getCounts()),
                  .segments = e.i64(tensorOf(o.getCounts()).getNumElements()),
                  .row_bytes = e.i64(rowBytes(out)),
                  .src_rows = dim(in, 0),
                  .dst_rows = e.i64(out.getDimSize(0)),
                  .index = e.i64(int64_t(i)),
                  .chunks = e.i64(n),
                  .join = e.i32(1)})))
            return failure();
        return success();
      })
      .Case([&](WaitOp o) {
        return e.call(abi::moert_wait{.handle = handles.lookup(o.getFuture())});
      })
      .Case([&](CollectiveOpInterface c) {
        return lowerCollective(*c.getOperation(), c.isStart());
      })
      .Default([](Operation *o) {
        return o->emitOpError("has no runtime lowering");
      });
}

LogicalResult FunctionLowering::lowerCollective(Operation &op, bool start) {
  EntryEmitter &e = *em;
  auto collective = cast<CollectiveOpInterface>(op);
  auto intAttr = [&](StringRef name) {
    return e.i64(op.getAttrOfType<IntegerAttr>(name).getInt());
  };
  Value in = collective.getInput(), out = collective.getResult();
  RankedTensorType inTy = tensorOf(in), outTy = tensorOf(out);
  int64_t eb = (inTy.getElementTypeBitWidth() + 7) / 8;
  if (!collective.getMeshOp())
    return op.emitOpError("names no moe.mesh of the module");
  Value mask = e.i64(axisMask(collective));

  // A collective and its *_start form take the same parameters: `make`
  // builds the argument struct of either, given an empty one.
  auto lower = [&](auto sync, auto async, auto make) -> LogicalResult {
    if (!start)
      return e.call(make(sync));
    FailureOr<Value> handle = e.callValue(make(async));
    if (failed(handle))
      return failure();
    handles[out] = *handle;
    return success();
  };

  if (isa<AllToAllVOp, AllToAllVStartOp>(op)) {
    Value send = op.getOperand(1), recv = op.getOperand(2);
    return lower(
        abi::moert_all_to_all_v{}, abi::moert_all_to_all_v_start{},
        [&](auto k) {
          return decltype(k){
              .axis_mask = mask,
              .in = ptr(in),
              .send_counts = ptr(send),
              .recv_counts = ptr(recv),
              .out = ptr(out),
              .num_send_counts = e.i64(tensorOf(send).getNumElements()),
              .num_recv_counts = e.i64(tensorOf(recv).getNumElements()),
              .row_bytes = e.i64(inTy.getDimSize(1) * eb),
              .in_rows = e.i64(inTy.getDimSize(0)),
              .out_rows = e.i64(outTy.getDimSize(0))};
        });
  }
  if (isa<AllReduceOp, AllReduceStartOp>(op))
    return lower(abi::moert_all_reduce{}, abi::moert_all_reduce_start{},
                 [&](auto k) {
                   return decltype(k){.axis_mask = mask,
                                      .in = ptr(in),
                                      .out = ptr(out),
                                      .n = e.i64(inTy.getNumElements()),
                                      .dtype = dtype(in)};
                 });

  FailureOr<SmallVector<int64_t, 4>> dims = dims4(&op, inTy);
  if (failed(dims))
    return failure();
  ArrayRef<int64_t> d = *dims;
  if (isa<ReduceScatterOp, ReduceScatterStartOp>(op))
    return lower(abi::moert_reduce_scatter{}, abi::moert_reduce_scatter_start{},
                 [&](auto k) {
                   return decltype(k){.axis_mask = mask,
                                      .in = ptr(in),
                                      .out = ptr(out),
                                      .d0 = e.i64(d[0]),
                                      .d1 = e.i64(d[1]),
                                      .d2 = e.i64(d[2]),
                                      .d3 = e.i64(d[3]),
                                      .dim = intAttr("dim"),
                                      .dtype = dtype(in)};
                 });
  if (isa<AllToAllOp, AllToAllStartOp>(op))
    return lower(abi::moert_all_to_all{}, abi::moert_all_to_all_start{},
                 [&](auto k) {
                   return decltype(k){.axis_mask = mask,
                                      .in = ptr(in),
                                      .out = ptr(out),
                                      .elem_bytes = e.i64(eb),
                                      .d0 = e.i64(d[0]),
                                      .d1 = e.i64(d[1]),
                                      .d2 = e.i64(d[2]),
                                      .d3 = e.i64(d[3]),
                                      .split_dim = intAttr("split_dim"),
                                      .concat_dim = intAttr("concat_dim")};
                 });
  if (isa<AllGatherOp, AllGatherStartOp>(op))
    return lower(abi::moert_all_gather{}, abi::moert_all_gather_start{},
                 [&](auto k) {
                   return decltype(k){.axis_mask = mask,
                                      .in = ptr(in),
                                      .out = ptr(out),
                                      .elem_bytes = e.i64(eb),
                                      .d0 = e.i64(d[0]),
                                      .d1 = e.i64(d[1]),
                                      .d2 = e.i64(d[2]),
                                      .d3 = e.i64(d[3]),
                                      .dim = intAttr("dim")};
                 });
  assert(isa<SliceOp>(op) && !start && "a collective without a lowering");
  return e.call(abi::moert_slice{.axis_mask = mask,
                                 .in = ptr(in),
                                 .out = ptr(out),
                                 .elem_bytes = e.i64(eb),
                                 .d0 = e.i64(d[0]),
                                 .d1 = e.i64(d[1]),
                                 .d2 = e.i64(d[2]),
                                 .d3 = e.i64(d[3]),
                                 .dim = intAttr("dim")});
}

struct ConvertMoEToRuntimePass
    : moe::impl::ConvertMoEToRuntimeBase<ConvertMoEToRuntimePass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<func::FuncOp> funcs;
    for (auto f : module.getOps<func::FuncOp>())
      if (f.isPublic() && !f.isExternal())
        funcs.push_back(f);
    for (func::FuncOp f : funcs)
      if (failed(FunctionLowering(module, f).run()))
        return signalPassFailure();
    if (failed(abi::addAbiVersion(module)))
      return signalPassFailure();
    // The mesh lives on in the manifest; the code only keeps axis masks.
    for (MeshOp mesh : llvm::make_early_inc_range(module.getOps<MeshOp>()))
      mesh.erase();
  }
};

} // namespace
