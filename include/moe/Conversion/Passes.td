//===- Passes.td - Conversions out of the moe dialect ------*- tablegen -*-===//
#ifndef MOE_CONVERSION_PASSES_TD
#define MOE_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

def ConvertMoEToRuntime : Pass<"moe-to-runtime", "::mlir::ModuleOp"> {
  let summary = "Plan buffers and lower moe ops to calls of the moert runtime";
  let description = [{
    Turns every public `func.func` over moe ops into an entry point
    `moe_entry_<name>(ctx, args, results)` (docs/module-format.md): tensors
    become pointers into the caller's argument and result buffers or into
    one scratch arena whose layout is planned here from value lifetimes; each
    moe op becomes one call of the runtime's C ABI. The callees' types and
    the order of their arguments come from the runtime's kernel list
    (`runtime/include/moert/moert_kernels.def`), and the module exports the
    ABI version it is built for as the constant `moe_abi_version`.
  }];
  let dependentDialects = ["::mlir::LLVM::LLVMDialect",
                           "::mlir::func::FuncDialect",
                           "::mlir::arith::ArithDialect"];
}

#endif // MOE_CONVERSION_PASSES_TD
