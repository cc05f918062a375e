//===- PipelineFuzzer.cpp - libFuzzer target: moe IR through moe-compile --===//
//
// The input is `moe` IR text, optionally preceded by one line
//
//   // options: mesh=ep=2,tp=2 dtd
//
// with the options of moe-compile-pipeline (the same as moe-opt's
// --moe-compile-pipeline="..."; none: one device). It goes the way
// moe-compile takes a model: parse (which verifies), the compile pipeline,
// the manifest description, the printed module, the lowering to the LLVM
// dialect and the translation to LLVM IR. Diagnostics are expected and
// swallowed; a crash, a sanitizer report or a failed check is a finding.
//
// One check goes beyond moe-compile: the manifest.json the compiler would
// write for a module it compiled must be accepted by moe-run's parser
// (runtime/support/Manifest), so that the two agree on what a valid module
// is. (moe-attach-manifest asks that parser too, so the check guards the
// steps after it: completeManifest and renderManifest.) Findings so far: a
// hand-written training entry without the rest of the training set, and an
// entry name that is not a C identifier (regress-* in the corpus).
//
//===----------------------------------------------------------------------===//
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Pipelines/Manifest.h"
#include "moe/Pipelines/Pipelines.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"

#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

#include "support/Manifest.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace mlir;

namespace {

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "pipeline fuzzer: %s\n", what.c_str());
  std::abort();
}

const DialectRegistry &registry() {
  static DialectRegistry *r = [] {
    auto *reg = new DialectRegistry();
    reg->insert<moe::MoEDialect, func::FuncDialect, arith::ArithDialect,
                LLVM::LLVMDialect>();
    registerBuiltinDialectTranslation(*reg);
    registerLLVMDialectTranslation(*reg);
    return reg;
  }();
  return *r;
}

/// Options from a leading "// options: ..." line; false when they do not
/// parse or moe-compile would refuse them.
bool readOptions(StringRef &text, moe::CompilePipelineOptions &options) {
  constexpr StringLiteral kPrefix = "// options:";
  if (!text.starts_with(kPrefix))
    return true;
  auto [line, rest] = text.split('\n');
  text = rest;
  std::string ignored;
  llvm::raw_string_ostream errs(ignored);
  if (failed(options.parseFromString(line.drop_front(kPrefix.size()).trim(),
                                     errs)))
    return false;
  if (llvm::Error e = moe::verifyCompilePipelineOptions(options)) {
    llvm::consumeError(std::move(e));
    return false;
  }
  return true;
}

} // namespace

/// AddressSanitizer's defaults for this target. The MLIRContext's bump
/// allocators are shared by two builds of LLVM's inline allocator code: ours,
/// instrumented, which poisons the unused rest of every new slab, and
/// Debian's uninstrumented libMLIR.so, which allocates from the same slabs
/// without unpoisoning them. Its writes into that memory are reported as
/// use-after-poison, a false positive of the mixed build (the first one came
/// from the FileLineColRange of a parsed location after our dialect had
/// started a slab). Manual poisoning is therefore off; ASan still checks
/// every heap, stack and global access of the instrumented code.
extern "C" const char *__asan_default_options() {
  return "allow_user_poisoning=0";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  StringRef text(reinterpret_cast<const char *>(data), size);
  moe::CompilePipelineOptions options;
  if (!readOptions(text, options))
    return 0;

  MLIRContext context(registry(), MLIRContext::Threading::DISABLED);
  context.loadAllAvailableDialects();
  ScopedDiagnosticHandler silence(&context,
                                  [](Diagnostic &) { return success(); });
  llvm::SourceMgr sourceMgr;
  sourceMgr.AddNewSourceBuffer(
      llvm::MemoryBuffer::getMemBufferCopy(text, "input.mlir"), llvm::SMLoc());
  OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(sourceMgr, &context);
  if (!module)
    return 0;

  PassManager pm(&context);
  moe::buildCompilePipeline(pm, options);
  if (failed(pm.run(*module)))
    return 0;

  llvm::Expected<llvm::json::Object> description =
      moe::completeManifest(*module);
  if (!description) {
    llvm::consumeError(description.takeError());
    return 0;
  }
  moe::ManifestFiles files;
  files.libraryBytes = text;
  files.source = "input.mlir";
  std::string manifestText =
      moe::renderManifest(std::move(*description), files);
  moert::Manifest manifest;
  moert::Status s =
      moert::parseManifest(manifestText, "manifest.json", manifest);
  if (!s.isOk())
    fail("moe-run refuses the manifest of a module the compiler compiled: " +
         s.message() + "\n" + manifestText);

  std::string ir;
  llvm::raw_string_ostream irStream(ir);
  module->print(irStream);

  PassManager lower(&context);
  moe::buildLowerToLLVMPipeline(lower);
  if (failed(lower.run(*module)))
    return 0;
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(*module, llvmContext, "moe_module");
  (void)llvmModule;
  return 0;
}
