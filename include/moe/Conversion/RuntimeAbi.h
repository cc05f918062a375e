//===- RuntimeAbi.h - The moert kernel ABI as MLIR calls --------*- C++ -*-===//
//
// The lowering's view of the runtime's C ABI, generated from the same list
// that generates moert.h's prototypes
// (runtime/include/moert/moert_kernels.def):
//
//  - one argument struct per kernel, named like the C function, with one
//    mlir::Value field per parameter (after the implicit context) in ABI
//    order. Calls are built with designated initializers,
//
//      calls.call(abi::moert_add{.a = lhs, .b = rhs, .y = out, .n = n,
//                                .dtype = dtype});
//
//    which C++ accepts only in declaration order: a parameter renamed, added,
//    removed or moved in the list (even past one of the same type) breaks
//    the build of the lowering instead of passing wrong numbers at run time.
//    Write every call this way, never with positional initializers;
//  - each callee's MLIR function type derived from the C parameter types
//    (pointers -> !llvm.ptr, int64_t -> i64, int32_t -> i32, float -> f32),
//    and every argument checked against it when the call is emitted;
//  - the ODS enums and element types mapped to the MOERT_* constants by name.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_CONVERSION_RUNTIMEABI_H
#define MOE_CONVERSION_RUNTIMEABI_H

#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/SmallVector.h"

#include "moert/moert.h"

#include <cstdint>
#include <optional>

namespace mlir::moe::abi {

/// The C types of the kernel ABI.
enum class CType { Void, Ptr, I64, I32, F32 };

/// C type -> CType. Only the types below have a mapping, so a parameter of
/// another type in moert_kernels.def fails to compile here.
template <typename T> struct CTypeOf;
template <typename T> struct CTypeOf<T *> {
  static constexpr CType value = CType::Ptr;
};
template <> struct CTypeOf<void> {
  static constexpr CType value = CType::Void;
};
template <> struct CTypeOf<int64_t> {
  static constexpr CType value = CType::I64;
};
template <> struct CTypeOf<int32_t> {
  static constexpr CType value = CType::I32;
};
template <> struct CTypeOf<float> {
  static constexpr CType value = CType::F32;
};

/// The MLIR type a value of C type `t` travels as: !llvm.ptr, i64, i32 or
/// f32 (a null Type for Void).
Type mlirType(MLIRContext *context, CType t);

/// One argument of a kernel call with the parameter it is passed for.
struct Arg {
  Value value;
  CType type;
  const char *cType; // as spelled in moert_kernels.def
  const char *name;
};

// clang-format off
// One argument struct per kernel: abi::moert_rmsnorm{.x = ..., ...}.
#define MOERT_KERNEL(ret, fn)                                                  \
  struct fn {                                                                  \
    static constexpr const char *kSymbol = #fn;                                \
    static constexpr CType kResult = CTypeOf<ret>::value;
#define MOERT_ARG(type, param) Value param;
#define MOERT_END };
#include "moert/moert_kernels.def"

// argsOf(k): the arguments of a call in ABI order, with their parameters.
#define MOERT_KERNEL(ret, fn)                                                  \
  inline llvm::SmallVector<Arg, 16> argsOf(const fn &k) { return {
#define MOERT_ARG(type, param)                                                 \
  Arg{k.param, CTypeOf<type>::value, #type, #param},
#define MOERT_END }; }
#include "moert/moert_kernels.def"
// clang-format on

/// The MLIR function type of kernel K: `(!llvm.ptr, params...) -> result`.
FunctionType functionType(MLIRContext *context, CType result,
                          ArrayRef<Arg> args);
template <typename K> FunctionType functionType(MLIRContext *context) {
  return functionType(context, K::kResult, argsOf(K{}));
}

/// Emits kernel calls at a builder's insertion point, declaring each callee
/// in the module on first use with the type the ABI gives it.
class KernelCallBuilder {
public:
  /// `context` is the moert_ctx pointer every kernel takes first.
  KernelCallBuilder(ModuleOp module, OpBuilder &builder, Value context)
      : module(module), builder(builder), context(context) {}

  /// Calls a kernel that returns nothing.
  template <typename K> LogicalResult call(Location loc, const K &k) {
    static_assert(K::kResult == CType::Void,
                  "this kernel returns a value: use callValue");
    return failure(failed(emit(loc, K::kSymbol, K::kResult, argsOf(k))));
  }
  /// Calls a kernel that returns a pointer (moert_arena, *_start).
  template <typename K> FailureOr<Value> callValue(Location loc, const K &k) {
    static_assert(K::kResult != CType::Void,
                  "this kernel returns nothing: use call");
    return emit(loc, K::kSymbol, K::kResult, argsOf(k));
  }

private:
  /// Checks every argument against its parameter's type (a mismatch or a
  /// missing argument is an internal error of the lowering) and the
  /// module's declaration of `symbol`, if any, against the ABI's type.
  FailureOr<Value> emit(Location loc, StringRef symbol, CType result,
                        ArrayRef<Arg> args);

  ModuleOp module;
  OpBuilder &builder;
  Value context;
};

/// The enums of the moe dialect as the runtime's constants.
moert_score_fn toMoert(ScoreFunc f);
moert_group_score toMoert(GroupScore g);
moert_activation toMoert(Activation a);
/// The runtime's dtype of an element type; nullopt if it has none.
std::optional<moert_dtype> toMoertDtype(Type elementType);

/// Name of the exported `const int32_t` global that records the kernel ABI
/// version (MOERT_ABI_VERSION) a module was built against.
constexpr const char kAbiVersionSymbol[] = MOERT_ABI_VERSION_SYMBOL;

/// Adds `moe_abi_version` (= MOERT_ABI_VERSION) to `module`; fails if the
/// module already defines that symbol.
LogicalResult addAbiVersion(ModuleOp module);

/// Name of the exported `const char[]` global that holds the module's own
/// description of its mesh and entry points (docs/module-format.md).
constexpr const char kManifestSymbol[] = MOERT_MANIFEST_SYMBOL;

/// Adds `moe_manifest` (the NUL-terminated `json`, manifest.json's "mesh"
/// and "entries") to `module`; fails if the module already defines it.
LogicalResult addManifestDescription(ModuleOp module, StringRef json);

} // namespace mlir::moe::abi

#endif // MOE_CONVERSION_RUNTIMEABI_H
