//===- MoEToRuntime.cpp - moe ops to moert calls (moe-to-runtime) ---------===//
//
// Every public function over moe ops becomes an entry point
//
//   void moe_entry_<name>(moert_ctx *ctx, void **args, void **results);
//
// Tensors become pointers: arguments and results point into the caller's
// buffers, every other value into one scratch arena whose layout is planned
// here from value lifetimes (first fit over live ranges in program order).
// Each moe op becomes one call of the runtime's C ABI (moert.h), with shapes,
// enums and scalars as constants. The host never touches tensor memory, so
// the same code drives CPU and CUDA contexts.
//
// Why not upstream one-shot-bufferize: the buffers live in the memory of a
// device chosen when the module runs, and only the runtime may allocate or
// address them; memref descriptors would add nothing but host-side copies
// of shapes that are already compile-time constants.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::moe {
#define GEN_PASS_DEF_CONVERTMOETORUNTIME
#include "moe/Conversion/Passes.h.inc"
} // namespace mlir::moe

using namespace mlir;
using namespace mlir::moe;

namespace {

constexpr int64_t kArenaAlign = 256;

/// dtype codes of moert.h.
int32_t dtypeCode(Type t) {
  if (t.isF32())
    return 0;
  if (t.isF16())
    return 1;
  if (t.isBF16())
    return 2;
  if (t.isInteger(32))
    return 3;
  if (t.isInteger(64))
    return 4;
  return -1;
}

RankedTensorType tensorOf(Value v) {
  if (auto f = dyn_cast<FutureType>(v.getType()))
    return f.getValueType();
  return cast<RankedTensorType>(v.getType());
}

int64_t byteSize(RankedTensorType t) {
  return t.getNumElements() * int64_t((t.getElementTypeBitWidth() + 7) / 8);
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
      int64_t offset = 0;
      for (const Live &l : live) {
        if (l.offset - offset >= size)
          break;
        offset = std::max(offset, l.offset + l.size);
      }
      live.push_back({offset, size, r});
      plan.arenaOffset[r] = offset;
      plan.arenaBytes = std::max(plan.arenaBytes, offset + size);
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
      : module(module), b(entry.getBody()), loc(entry.getLoc()),
        ptrTy(LLVM::LLVMPointerType::get(module.getContext())) {
    b.setInsertionPointToStart(&entry.getBody().front());
    ctx = entry.getArgument(0);
  }

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

  /// Calls `moert_<name>(ctx, args...)`, declaring it on first use.
  Value call(StringRef name, ArrayRef<Value> args, bool returnsPtr = false) {
    SmallVector<Value> operands{ctx};
    operands.append(args.begin(), args.end());
    std::string sym = ("moert_" + name).str();
    auto fn = module.lookupSymbol<func::FuncOp>(sym);
    if (!fn) {
      OpBuilder mb(module.getBodyRegion());
      mb.setInsertionPointToStart(module.getBody());
      SmallVector<Type> argTypes;
      for (Value v : operands)
        argTypes.push_back(v.getType());
      auto type = mb.getFunctionType(argTypes, returnsPtr ? TypeRange{ptrTy}
                                                          : TypeRange{});
      fn = func::FuncOp::create(mb, loc, sym, type);
      fn.setPrivate();
    }
    auto c = func::CallOp::create(b, loc, fn, operands);
    return returnsPtr ? c.getResult(0) : Value();
  }

  OpBuilder &builder() { return b; }
  Value context() { return ctx; }
  Type pointerType() { return ptrTy; }

private:
  ModuleOp module;
  OpBuilder b;
  Location loc;
  Type ptrTy;
  Value ctx;
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
  int64_t axisMask(Operation *op, FlatSymbolRefAttr meshRef, ArrayAttr axes);

  Value ptr(Value v) { return ptrs.lookup(bufferRoot(v)); }
  Value dtype(Value v) {
    return em->i32(dtypeCode(tensorOf(v).getElementType()));
  }
  Value dim(Value v, int64_t i) { return em->i64(tensorOf(v).getDimSize(i)); }
  Value optPtr(Value v) { return v ? ptr(v) : em->null(); }

  ModuleOp module;
  func::FuncOp func;
  std::unique_ptr<EntryEmitter> em;
  llvm::DenseMap<Value, Value> ptrs;
  /// Handle returned by the start call of each future.
  llvm::DenseMap<Value, Value> handles;
};

LogicalResult FunctionLowering::checkSupported() {
  if (!func.getBody().hasOneBlock())
    return func.emitOpError("moe-to-runtime needs a single-block function");
  for (Type t : llvm::concat<const Type>(func.getArgumentTypes(),
                                         func.getResultTypes())) {
    auto rt = dyn_cast<RankedTensorType>(t);
    if (!rt || !rt.hasStaticShape() || dtypeCode(rt.getElementType()) < 0)
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
    for (Value v : op.getResults())
      if (!tensorOf(v).hasStaticShape())
        return op.emitOpError("moe-to-runtime needs static shapes");
  }
  return success();
}

int64_t FunctionLowering::axisMask(Operation *op, FlatSymbolRefAttr meshRef,
                                   ArrayAttr axes) {
  auto mesh = SymbolTable::lookupNearestSymbolFrom<MeshOp>(op, meshRef);
  int64_t mask = 0;
  for (Attribute a : axes)
    mask |= int64_t(1) << mesh.getAxisIndex(cast<StringAttr>(a).getValue());
  return mask;
}

LogicalResult FunctionLowering::run() {
  if (failed(checkSupported()))
    return failure();
  BufferPlan plan = planBuffers(func);

  // The entry point replaces the function; the tensor function stays until
  // the body is emitted (its values are the keys of the plan).
  OpBuilder mb(func);
  MLIRContext *mctx = module.getContext();
  Type ptrTy = LLVM::LLVMPointerType::get(mctx);
  auto entry = func::FuncOp::create(
      mb, func.getLoc(), ("moe_entry_" + func.getSymName()).str(),
      mb.getFunctionType({ptrTy, ptrTy, ptrTy}, {}));
  entry->setAttr("moe.arena_bytes", mb.getI64IntegerAttr(plan.arenaBytes));
  Block *block = entry.addEntryBlock();
  em = std::make_unique<EntryEmitter>(module, entry);
  Value argTable = block->getArgument(1), resultTable = block->getArgument(2);

  Block &body = func.getBody().front();
  for (BlockArgument a : body.getArguments())
    ptrs[a] = em->loadPtr(argTable, a.getArgNumber());
  // Pointers are made in op order so that the output is deterministic.
  Value base;
  if (plan.arenaBytes > 0)
    base = em->call("arena", {em->i64(plan.arenaBytes)}, true);
  for (Operation &op : body) {
    for (Value v : op.getResults()) {
      if (auto it = plan.arenaOffset.find(v); it != plan.arenaOffset.end())
        ptrs[v] = em->offsetPtr(base, it->second);
      else if (auto slot = plan.resultSlot.find(v);
               slot != plan.resultSlot.end())
        ptrs[v] = em->loadPtr(resultTable, slot->second);
    }
  }

  for (Operation &op : body) {
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      // Results not written in place (arguments, values returned twice).
      for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
        Value root = bufferRoot(v);
        auto slot = plan.resultSlot.find(root);
        if (slot != plan.resultSlot.end() && slot->second == i)
          continue;
        em->call("copy", {ptr(v), em->loadPtr(resultTable, i),
                          em->i64(byteSize(tensorOf(v)))});
      }
      func::ReturnOp::create(em->builder(), op.getLoc());
      continue;
    }
    if (failed(lowerOp(op)))
      return failure();
  }
  func.erase();
  return success();
}

LogicalResult FunctionLowering::lowerOp(Operation &op) {
  EntryEmitter &e = *em;
  return TypeSwitch<Operation *, LogicalResult>(&op)
      .Case([&](RMSNormOp o) {
        e.call("rmsnorm",
               {ptr(o.getInput()), ptr(o.getWeight()), ptr(o.getOutput()),
                dim(o.getInput(), 0), dim(o.getInput(), 1),
                e.f32(o.getEps().convertToFloat()), dtype(o.getInput())});
        return success();
      })
      .Case([&](AddOp o) {
        e.call("add", {ptr(o.getLhs()), ptr(o.getRhs()), ptr(o.getOutput()),
                       e.i64(tensorOf(o.getLhs()).getNumElements()),
                       dtype(o.getLhs())});
        return success();
      })
      .Case([&](RouterOp o) {
        e.call("router",
               {ptr(o.getInput()), ptr(o.getWeight()), ptr(o.getLogits()),
                dim(o.getInput(), 0), dim(o.getInput(), 1),
                dim(o.getWeight(), 0), dtype(o.getInput())});
        return success();
      })
      .Case([&](TopKOp o) {
        e.call("topk",
               {ptr(o.getLogits()), optPtr(o.getBias()), ptr(o.getWeights()),
                ptr(o.getIndices()), ptr(o.getScores()), dim(o.getLogits(), 0),
                dim(o.getLogits(), 1), e.i64(o.getK()),
                e.i32(int32_t(o.getScore())), e.i32(o.getRenormalize()),
                e.f32(o.getRoutedScaling().convertToFloat()),
                e.i64(o.getNumGroups()), e.i64(o.getGroupsKept()),
                e.i32(int32_t(o.getGroupScore()))});
        return success();
      })
      .Case([&](AssignOp o) {
        e.call("assign", {ptr(o.getIndices()), ptr(o.getPositions()),
                          ptr(o.getCounts()), dim(o.getIndices(), 0),
                          dim(o.getIndices(), 1), e.i64(o.getNumExperts()),
                          e.i64(o.getCapacity()), e.i64(o.getGroups())});
        return success();
      })
      .Case([&](DispatchOp o) {
        RankedTensorType out = tensorOf(o.getOutput());
        e.call("dispatch", {ptr(o.getInput()), ptr(o.getPositions()),
                            ptr(o.getOutput()), dim(o.getInput(), 0),
                            dim(o.getPositions(), 1), dim(o.getInput(), 1),
                            e.i64(out.getNumElements() / out.getShape().back()),
                            dtype(o.getInput())});
        return success();
      })
      .Case([&](ExpertFFNOp o) {
        RankedTensorType x = tensorOf(o.getInput());
        RankedTensorType up = tensorOf(o.getUp());
        int64_t segments =
            o.getCounts() ? tensorOf(o.getCounts()).getDimSize(0) : 1;
        int64_t rowsPerExpert = x.getRank() == 3 ? x.getDimSize(1) : 0;
        e.call("expert_ffn",
               {ptr(o.getInput()), optPtr(o.getCounts()), optPtr(o.getGate()),
                ptr(o.getUp()), ptr(o.getDown()), ptr(o.getOutput()),
                e.i64(up.getDimSize(0)), e.i64(segments), e.i64(rowsPerExpert),
                e.i64(x.getNumElements() / x.getShape().back()),
                e.i64(x.getShape().back()), e.i64(up.getDimSize(1)),
                e.i32(int32_t(o.getActivation())), dtype(o.getInput())});
        return success();
      })
      .Case([&](CombineOp o) {
        e.call("combine",
               {ptr(o.getInput()), ptr(o.getPositions()), ptr(o.getWeights()),
                optPtr(o.getPassthrough()), ptr(o.getOutput()),
                dim(o.getPositions(), 0), dim(o.getPositions(), 1),
                dim(o.getOutput(), 1), dtype(o.getOutput())});
        return success();
      })
      .Case([&](MLPOp o) {
        e.call("mlp", {ptr(o.getInput()), optPtr(o.getGate()), ptr(o.getUp()),
                       ptr(o.getDown()), optPtr(o.getSigmoidGate()),
                       ptr(o.getOutput()), dim(o.getInput(), 0),
                       dim(o.getInput(), 1), dim(o.getUp(), 0),
                       e.i32(int32_t(o.getActivation())), dtype(o.getInput())});
        return success();
      })
      .Case([&](ExpertLoadOp o) {
        e.call("expert_load", {ptr(o.getScores()), ptr(o.getIndices()),
                               ptr(o.getStats()), dim(o.getIndices(), 0),
                               dim(o.getIndices(), 1), dim(o.getScores(), 1)});
        return success();
      })
      .Case([&](LoadBalanceLossOp o) {
        e.call("load_balance_loss",
               {ptr(o.getStats()), ptr(o.getLoss()), dim(o.getStats(), 1),
                e.i64(o.getTokens()), e.i64(o.getK()),
                e.f32(o.getCoeff().convertToFloat())});
        return success();
      })
      .Case([&](ZLossOp o) {
        e.call("z_loss",
               {ptr(o.getLogits()), ptr(o.getLoss()), dim(o.getLogits(), 0),
                dim(o.getLogits(), 1), e.i64(o.getTokens()),
                e.f32(o.getCoeff().convertToFloat())});
        return success();
      })
      .Case([&](WaitOp o) {
        e.call("wait", {handles.lookup(o.getFuture())});
        return success();
      })
      .Case<AllToAllOp, AllToAllVOp, AllGatherOp, ReduceScatterOp, AllReduceOp,
            SliceOp>([&](Operation *o) { return lowerCollective(*o, false); })
      .Case<AllToAllStartOp, AllToAllVStartOp, AllGatherStartOp,
            ReduceScatterStartOp, AllReduceStartOp>(
          [&](Operation *o) { return lowerCollective(*o, true); })
      .Default([](Operation *o) {
        return o->emitOpError("has no runtime lowering");
      });
}

LogicalResult FunctionLowering::lowerCollective(Operation &op, bool start) {
  EntryEmitter &e = *em;
  auto meshRef = op.getAttrOfType<FlatSymbolRefAttr>("mesh");
  auto axes = op.getAttrOfType<ArrayAttr>("axes");
  Value in = op.getOperand(0), out = op.getResult(0);
  RankedTensorType inTy = tensorOf(in), outTy = tensorOf(out);
  int64_t eb = (inTy.getElementTypeBitWidth() + 7) / 8;
  SmallVector<Value> args{e.i64(axisMask(&op, meshRef, axes)), ptr(in)};
  std::string name;

  if (isa<AllToAllVOp, AllToAllVStartOp>(op)) {
    name = "all_to_all_v";
    args.append({ptr(op.getOperand(1)), ptr(op.getOperand(2)), ptr(out),
                 e.i64(tensorOf(op.getOperand(1)).getNumElements()),
                 e.i64(tensorOf(op.getOperand(2)).getNumElements()),
                 e.i64(inTy.getDimSize(1) * eb), e.i64(inTy.getDimSize(0)),
                 e.i64(outTy.getDimSize(0))});
  } else if (isa<AllReduceOp, AllReduceStartOp>(op)) {
    name = "all_reduce";
    args.append({ptr(out), e.i64(inTy.getNumElements()),
                 e.i32(dtypeCode(inTy.getElementType()))});
  } else {
    FailureOr<SmallVector<int64_t, 4>> d = dims4(&op, inTy);
    if (failed(d))
      return failure();
    args.push_back(ptr(out));
    bool reduce = isa<ReduceScatterOp, ReduceScatterStartOp>(op);
    if (!reduce)
      args.push_back(e.i64(eb));
    for (int64_t x : *d)
      args.push_back(e.i64(x));
    if (isa<AllToAllOp, AllToAllStartOp>(op)) {
      name = "all_to_all";
      args.append(
          {e.i64(op.getAttrOfType<IntegerAttr>("split_dim").getInt()),
           e.i64(op.getAttrOfType<IntegerAttr>("concat_dim").getInt())});
    } else {
      name = reduce             ? "reduce_scatter"
             : isa<SliceOp>(op) ? "slice"
                                : "all_gather";
      args.push_back(e.i64(op.getAttrOfType<IntegerAttr>("dim").getInt()));
      if (reduce)
        args.push_back(e.i32(dtypeCode(inTy.getElementType())));
    }
  }
  if (!start) {
    e.call(name, args);
    return success();
  }
  handles[out] = e.call(name + "_start", args, /*returnsPtr=*/true);
  return success();
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
    // The mesh lives on in the manifest; the code only keeps axis masks.
    for (MeshOp mesh : llvm::make_early_inc_range(module.getOps<MeshOp>()))
      mesh.erase();
  }
};

} // namespace
