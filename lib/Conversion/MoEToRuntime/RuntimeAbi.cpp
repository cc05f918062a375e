//===- RuntimeAbi.cpp - The moert kernel ABI as MLIR calls ----------------===//
//
// Types, call emission and constant mappings of include/moe/Conversion/
// RuntimeAbi.h. Everything about a kernel's signature comes from
// moert_kernels.def through the generated argument structs.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/RuntimeAbi.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "llvm/Support/ErrorHandling.h"

using namespace mlir;
using namespace mlir::moe;

Type abi::mlirType(MLIRContext *context, CType t) {
  switch (t) {
  case CType::Void:
    return Type();
  case CType::Ptr:
    return LLVM::LLVMPointerType::get(context);
  case CType::I64:
    return IntegerType::get(context, 64);
  case CType::I32:
    return IntegerType::get(context, 32);
  case CType::F32:
    return Float32Type::get(context);
  }
  llvm_unreachable("unknown abi::CType");
}

FunctionType abi::functionType(MLIRContext *context, CType result,
                               ArrayRef<Arg> args) {
  SmallVector<Type> params{mlirType(context, CType::Ptr)}; // moert_ctx *
  for (const Arg &a : args)
    params.push_back(mlirType(context, a.type));
  SmallVector<Type, 1> results;
  if (result != CType::Void)
    results.push_back(mlirType(context, result));
  return FunctionType::get(context, params, results);
}

FailureOr<Value> abi::KernelCallBuilder::emit(Location loc, StringRef symbol,
                                              CType result,
                                              ArrayRef<Arg> args) {
  MLIRContext *mctx = module.getContext();
  FunctionType type = functionType(mctx, result, args);
  SmallVector<Value> operands{context};
  for (auto [i, a] : llvm::enumerate(args)) {
    Type want = type.getInput(i + 1);
    if (!a.value) {
      emitError(loc) << "internal error in moe-to-runtime: no value for "
                        "parameter '"
                     << a.cType << " " << a.name << "' of " << symbol;
      return failure();
    }
    if (a.value.getType() != want) {
      emitError(loc) << "internal error in moe-to-runtime: parameter '"
                     << a.cType << " " << a.name << "' of " << symbol
                     << " is passed as " << want << ", got a value of type "
                     << a.value.getType();
      return failure();
    }
    operands.push_back(a.value);
  }
  if (!context || context.getType() != type.getInput(0)) {
    emitError(loc) << "internal error in moe-to-runtime: the context argument "
                      "of "
                   << symbol << " must be " << type.getInput(0);
    return failure();
  }

  Operation *existing = module.lookupSymbol(symbol);
  auto fn = dyn_cast_or_null<func::FuncOp>(existing);
  if (existing && (!fn || fn.getFunctionType() != type)) {
    InFlightDiagnostic d = existing->emitError() << "'" << symbol << "' ";
    if (fn)
      d << "is declared with type " << fn.getFunctionType();
    else
      d << "is not a function";
    d << ", but the runtime ABI (moert_kernels.def) gives it the type " << type;
    return failure();
  }
  if (!fn) {
    OpBuilder mb(module.getBodyRegion());
    mb.setInsertionPointToStart(module.getBody());
    fn = func::FuncOp::create(mb, loc, symbol, type);
    fn.setPrivate();
  }
  auto c = func::CallOp::create(builder, loc, fn, operands);
  return result == CType::Void ? Value() : c.getResult(0);
}

moert_score_fn abi::toMoert(ScoreFunc f) {
  switch (f) {
  case ScoreFunc::softmax:
    return MOERT_SCORE_SOFTMAX;
  case ScoreFunc::sigmoid:
    return MOERT_SCORE_SIGMOID;
  }
  llvm_unreachable("unknown moe::ScoreFunc");
}

moert_group_score abi::toMoert(GroupScore g) {
  switch (g) {
  case GroupScore::max:
    return MOERT_GROUP_SCORE_MAX;
  case GroupScore::top2_sum:
    return MOERT_GROUP_SCORE_TOP2_SUM;
  }
  llvm_unreachable("unknown moe::GroupScore");
}

moert_activation abi::toMoert(Activation a) {
  switch (a) {
  case Activation::relu:
    return MOERT_ACT_RELU;
  case Activation::gelu:
    return MOERT_ACT_GELU;
  case Activation::swiglu:
    return MOERT_ACT_SWIGLU;
  case Activation::geglu:
    return MOERT_ACT_GEGLU;
  }
  llvm_unreachable("unknown moe::Activation");
}

std::optional<moert_dtype> abi::toMoertDtype(Type t) {
  if (t.isF32())
    return MOERT_F32;
  if (t.isF16())
    return MOERT_F16;
  if (t.isBF16())
    return MOERT_BF16;
  if (t.isSignlessInteger(32))
    return MOERT_I32;
  if (t.isSignlessInteger(64))
    return MOERT_I64;
  return std::nullopt;
}

LogicalResult abi::addAbiVersion(ModuleOp module) {
  if (Operation *existing = module.lookupSymbol(kAbiVersionSymbol))
    return existing->emitError()
           << "'" << kAbiVersionSymbol
           << "' is reserved: moe-to-runtime defines it as the runtime ABI "
              "version the module is built for";
  OpBuilder b = OpBuilder::atBlockBegin(module.getBody());
  // external + constant: module.so exports `const int32_t moe_abi_version`,
  // which the loader checks before running anything (docs/module-format.md).
  LLVM::GlobalOp::create(b, module.getLoc(), b.getI32Type(),
                         /*isConstant=*/true, LLVM::Linkage::External,
                         kAbiVersionSymbol,
                         b.getI32IntegerAttr(MOERT_ABI_VERSION));
  return success();
}

LogicalResult abi::addManifestDescription(ModuleOp module, StringRef json) {
  if (Operation *existing = module.lookupSymbol(kManifestSymbol))
    return existing->emitError()
           << "'" << kManifestSymbol
           << "' is reserved: moe-compile defines it as the module's "
              "description of its entry points";
  OpBuilder b = OpBuilder::atBlockBegin(module.getBody());
  std::string text = json.str();
  text.push_back('\0');
  auto type = LLVM::LLVMArrayType::get(b.getI8Type(), text.size());
  LLVM::GlobalOp::create(b, module.getLoc(), type, /*isConstant=*/true,
                         LLVM::Linkage::External, kManifestSymbol,
                         b.getStringAttr(text));
  return success();
}
