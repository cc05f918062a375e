//===- moe-compile.cpp - MoE model graph to a runnable module directory ---===//
//
//   moe-compile MODEL.mlir -o OUT_DIR [--mesh dp=1,ep=2,tp=2] [--dtd] ...
//
// Runs the pass pipeline (shard, decompose, lower to runtime calls, LLVM),
// emits the object in process through an llvm::TargetMachine, links a shared
// library with the system C compiler driver and writes manifest.json
// (docs/module-format.md). The directory appears whole or not at all.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"

#include "mlir/Conversion/ArithToLLVM/ArithToLLVM.h"
#include "mlir/Conversion/FuncToLLVM/ConvertFuncToLLVMPass.h"
#include "mlir/Conversion/ReconcileUnrealizedCasts/ReconcileUnrealizedCasts.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"
#include "mlir/Transforms/Passes.h"

#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/Timer.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/Target/TargetOptions.h"
#include "llvm/TargetParser/Host.h"

#include <chrono>

using namespace mlir;
namespace cl = llvm::cl;

namespace {

cl::OptionCategory category("moe-compile options");

cl::opt<std::string> inputFile(cl::Positional, cl::desc("<model.mlir>"),
                               cl::Required, cl::cat(category));
cl::opt<std::string> outputDir("o", cl::desc("Output module directory"),
                               cl::value_desc("dir"), cl::Required,
                               cl::cat(category));
cl::opt<std::string>
    meshSpec("mesh",
             cl::desc("Device mesh, e.g. dp=1,ep=2,tp=2 (axes left out are "
                      "1); shards the graph for that many ranks"),
             cl::value_desc("axis=size,..."), cl::cat(category));
cl::opt<bool> dtd("dtd",
                  cl::desc("Duplicate token dropping: with tp > 1, send only "
                           "1/tp of the dispatched tokens through the "
                           "all-to-all and all-gather them over tp after"),
                  cl::cat(category));
cl::opt<bool> expertTP("expert-tp",
                       cl::desc("Split every expert's FFN over the tp axis "
                                "(column-parallel gate/up, row-parallel down)"),
                       cl::cat(category));
cl::opt<std::string> target("target",
                            cl::desc("Default device recorded in the manifest "
                                     "(moe-run --device overrides)"),
                            cl::value_desc("cpu|cuda"), cl::init("cpu"),
                            cl::cat(category));
cl::opt<std::string> linker("linker",
                            cl::desc("C compiler driver used to link the "
                                     "shared library (default: cc, gcc, "
                                     "clang from PATH)"),
                            cl::value_desc("program"), cl::cat(category));
cl::opt<bool> printTimings("time", cl::desc("Print the time of every stage"),
                           cl::cat(category));
cl::opt<bool> keepIR("print-ir",
                     cl::desc("Print the per-rank IR before LLVM lowering"),
                     cl::cat(category));

/// Wall time of the compile stages, printed with --time.
struct StageTimer {
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now();
  std::vector<std::pair<std::string, double>> stages;
  void done(StringRef name) {
    auto now = Clock::now();
    stages.push_back(
        {name.str(), std::chrono::duration<double>(now - start).count()});
    start = now;
  }
  void print() {
    double total = 0;
    for (auto &[name, s] : stages)
      total += s;
    llvm::errs() << "moe-compile stage times:\n";
    for (auto &[name, s] : stages)
      llvm::errs() << llvm::format("  %-28s %8.1f ms\n", name.c_str(), s * 1e3);
    llvm::errs() << llvm::format("  %-28s %8.1f ms\n", "total", total * 1e3);
  }
};

llvm::Error makeError(const Twine &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

//===----------------------------------------------------------------------===//
// Manifest
//===----------------------------------------------------------------------===//

std::string dtypeName(Type t) {
  if (t.isF32())
    return "f32";
  if (t.isF16())
    return "f16";
  if (t.isBF16())
    return "bf16";
  if (t.isInteger(32))
    return "i32";
  if (t.isInteger(64))
    return "i64";
  return "unsupported";
}

llvm::json::Array shapeJson(ArrayRef<int64_t> shape) {
  llvm::json::Array a;
  for (int64_t d : shape)
    a.push_back(d);
  return a;
}

/// shape, local_shape and shard of one argument or result.
void describeTensor(llvm::json::Object &o, Type type, DictionaryAttr attrs) {
  auto t = cast<RankedTensorType>(type);
  o["dtype"] = dtypeName(t.getElementType());
  o["local_shape"] = shapeJson(t.getShape());
  SmallVector<int64_t> global(t.getShape());
  if (attrs)
    if (auto g = attrs.getAs<DenseI64ArrayAttr>("moe.global_shape"))
      global.assign(g.asArrayRef().begin(), g.asArrayRef().end());
  o["shape"] = shapeJson(global);
  llvm::json::Array shard;
  auto spec = attrs ? attrs.getAs<ArrayAttr>("moe.shard") : ArrayAttr();
  for (int64_t d = 0; d < t.getRank(); ++d) {
    llvm::json::Array axes;
    if (spec && d < int64_t(spec.size()))
      for (Attribute a : cast<ArrayAttr>(spec[d]))
        axes.push_back(cast<StringAttr>(a).getValue().str());
    shard.push_back(std::move(axes));
  }
  o["shard"] = std::move(shard);
}

llvm::Expected<llvm::json::Object> describeEntry(func::FuncOp f) {
  llvm::json::Object entry;
  entry["name"] = f.getSymName().str();
  entry["symbol"] = ("moe_entry_" + f.getSymName()).str();
  llvm::json::Array args, results;
  for (unsigned i = 0; i < f.getNumArguments(); ++i) {
    DictionaryAttr attrs = f.getArgAttrDict(i);
    llvm::json::Object a;
    a["index"] = int64_t(i);
    StringAttr input = attrs ? attrs.getAs<StringAttr>("moe.input") : nullptr;
    StringAttr weight = attrs ? attrs.getAs<StringAttr>("moe.weight") : nullptr;
    if (!input && !weight)
      return makeError("argument " + Twine(i) + " of @" + f.getSymName() +
                       " has neither moe.input nor moe.weight: the runner "
                       "cannot know where its data comes from");
    a["role"] = input ? "input" : "weight";
    a["name"] = (input ? input : weight).getValue().str();
    if (weight)
      a["transpose"] = bool(attrs.get("moe.weight_transpose"));
    describeTensor(a, f.getArgumentTypes()[i], attrs);
    args.push_back(std::move(a));
  }
  for (unsigned i = 0; i < f.getNumResults(); ++i) {
    DictionaryAttr attrs = f.getResultAttrDict(i);
    llvm::json::Object r;
    r["index"] = int64_t(i);
    StringAttr name = attrs ? attrs.getAs<StringAttr>("moe.output") : nullptr;
    r["name"] = name ? name.getValue().str() : ("result" + Twine(i)).str();
    describeTensor(r, f.getResultTypes()[i], attrs);
    results.push_back(std::move(r));
  }
  entry["args"] = std::move(args);
  entry["results"] = std::move(results);
  return entry;
}

llvm::json::Object describeMesh(ModuleOp module) {
  llvm::json::Array axes, shape;
  auto meshes = module.getOps<moe::MeshOp>();
  if (!meshes.empty()) {
    moe::MeshOp mesh = *meshes.begin();
    for (Attribute a : mesh.getAxes())
      axes.push_back(cast<StringAttr>(a).getValue().str());
    for (int64_t s : mesh.getShape())
      shape.push_back(s);
  }
  return llvm::json::Object{{"axes", std::move(axes)},
                            {"shape", std::move(shape)}};
}

std::string fnv1a64(StringRef bytes) {
  uint64_t h = 0xcbf29ce484222325ull; // FNV-1a 64 offset basis
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return llvm::formatv("{0}", llvm::format_hex_no_prefix(h, 16)).str();
}

//===----------------------------------------------------------------------===//
// Pipeline
//===----------------------------------------------------------------------===//

/// Parses `dp=1,ep=2,tp=2` into pass options (moe-shard's syntax).
llvm::Error checkMeshSpec(StringRef spec) {
  SmallVector<StringRef> parts;
  spec.split(parts, ',', -1, false);
  for (StringRef p : parts) {
    auto [axis, size] = p.split('=');
    unsigned n;
    if (axis.trim().empty() || size.trim().getAsInteger(10, n) || n == 0)
      return makeError("--mesh: '" + p +
                       "' is not axis=size with a positive size (example: "
                       "--mesh dp=1,ep=2,tp=2)");
    if (!llvm::is_contained({"dp", "ep", "tp"}, axis.trim()))
      return makeError("--mesh: unknown axis '" + axis.trim() +
                       "' (axes are dp, ep, tp)");
  }
  return llvm::Error::success();
}

LogicalResult runPasses(ModuleOp module, PassManager &pm) {
  if (failed(applyPassManagerCLOptions(pm)))
    return failure();
  return pm.run(module);
}

//===----------------------------------------------------------------------===//
// Object emission and linking
//===----------------------------------------------------------------------===//

llvm::Error emitObject(llvm::Module &llvmModule, StringRef path) {
  std::string triple = llvm::sys::getProcessTriple();
  std::string err;
  const llvm::Target *t =
      llvm::TargetRegistry::lookupTarget(llvm::Triple(triple), err);
  if (!t)
    return makeError("no LLVM target for " + triple + ": " + err);
  llvm::TargetOptions options;
  std::unique_ptr<llvm::TargetMachine> tm(t->createTargetMachine(
      llvm::Triple(triple), "generic", "", options, llvm::Reloc::PIC_));
  llvmModule.setTargetTriple(llvm::Triple(triple));
  llvmModule.setDataLayout(tm->createDataLayout());

  std::error_code ec;
  llvm::ToolOutputFile out(path, ec, llvm::sys::fs::OF_None);
  if (ec)
    return makeError("cannot write " + path + ": " + ec.message());
  llvm::legacy::PassManager pm;
  if (tm->addPassesToEmitFile(pm, out.os(), nullptr,
                              llvm::CodeGenFileType::ObjectFile))
    return makeError("the target cannot emit object files");
  pm.run(llvmModule);
  out.keep();
  return llvm::Error::success();
}

llvm::Error linkShared(StringRef object, StringRef library) {
  std::string driver;
  for (StringRef candidate : linker.empty()
                                 ? SmallVector<StringRef>{"cc", "gcc", "clang"}
                                 : SmallVector<StringRef>{linker}) {
    if (auto p = llvm::sys::findProgramByName(candidate)) {
      driver = *p;
      break;
    }
  }
  if (driver.empty())
    return makeError(
        "no C compiler driver to link with (looked for " +
        (linker.empty() ? std::string("cc, gcc, clang") : std::string(linker)) +
        " on PATH); install gcc or pass --linker");
  SmallString<128> log;
  llvm::sys::fs::createTemporaryFile("moe-compile-link", "log", log);
  std::optional<StringRef> redirects[] = {std::nullopt, StringRef(log),
                                          StringRef(log)};
  SmallVector<StringRef> argv{driver, "-shared", "-o", library, object};
  std::string errMsg;
  int rc = llvm::sys::ExecuteAndWait(driver, argv, std::nullopt, redirects, 0,
                                     0, &errMsg);
  std::string output;
  if (auto buf = llvm::MemoryBuffer::getFile(log))
    output = (*buf)->getBuffer().str();
  llvm::sys::fs::remove(log);
  if (rc != 0)
    return makeError("linking " + library + " with " + driver + " failed" +
                     (errMsg.empty() ? "" : ": " + errMsg) + "\n" + output);
  return llvm::Error::success();
}

llvm::Error writeFile(const Twine &path, StringRef contents) {
  std::error_code ec;
  llvm::raw_fd_ostream os(path.str(), ec);
  if (ec)
    return makeError("cannot write " + path + ": " + ec.message());
  os << contents;
  return llvm::Error::success();
}

/// Moves the finished staging directory to `dir`, replacing an old module.
llvm::Error publish(StringRef staging, StringRef dir) {
  if (llvm::sys::fs::exists(dir)) {
    if (!llvm::sys::fs::is_directory(dir))
      return makeError(dir + " exists and is not a directory");
    if (!llvm::sys::fs::exists(dir + "/manifest.json"))
      return makeError(dir + " exists and is not a module directory (no "
                             "manifest.json): not replacing it");
    if (std::error_code ec = llvm::sys::fs::remove_directories(dir))
      return makeError("cannot replace " + dir + ": " + ec.message());
  }
  if (std::error_code ec = llvm::sys::fs::rename(staging, dir))
    return makeError("cannot move the module to " + dir + ": " + ec.message());
  return llvm::Error::success();
}

//===----------------------------------------------------------------------===//
// Driver
//===----------------------------------------------------------------------===//

llvm::Error compile(MLIRContext &context, StringRef staging,
                    StageTimer &timer) {
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diag(sourceMgr, &context);
  std::string err;
  auto file = openInputFile(inputFile, &err);
  if (!file)
    return makeError(err);
  sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
  OwningOpRef<ModuleOp> module = parseSourceFile<ModuleOp>(sourceMgr, &context);
  if (!module)
    return makeError("could not parse " + inputFile);
  timer.done("parse");

  // 1. Decompose, then distribute: the per-rank graph of primitives.
  PassManager shard(&context);
  shard.addPass(moe::createMoEDecompose());
  shard.addPass(createCanonicalizerPass());
  if (!meshSpec.empty()) {
    if (llvm::Error e = checkMeshSpec(meshSpec))
      return e;
    moe::MoEShardOptions so;
    so.mesh = meshSpec;
    so.expertTp = expertTP;
    shard.addPass(moe::createMoEShard(so));
    if (dtd)
      shard.addPass(moe::createMoEDropDuplicateTokens());
  } else if (dtd || expertTP) {
    return makeError("--dtd and --expert-tp need --mesh with tp > 1");
  }
  shard.addPass(createCanonicalizerPass());
  shard.addPass(createCSEPass());
  if (failed(runPasses(*module, shard)))
    return makeError("the model could not be decomposed and sharded (see the "
                     "diagnostics above)");
  timer.done("decompose + shard");

  // 2. Describe the entry points while the tensor signatures still exist.
  llvm::json::Array entries;
  for (auto f : module->getOps<func::FuncOp>()) {
    if (!f.isPublic() || f.isExternal())
      continue;
    auto entry = describeEntry(f);
    if (!entry)
      return entry.takeError();
    entries.push_back(std::move(*entry));
  }
  if (entries.empty())
    return makeError(inputFile + " has no public function to compile");
  llvm::json::Object mesh = describeMesh(*module);

  // 3. Buffers and runtime calls.
  PassManager lower(&context);
  lower.addPass(moe::createConvertMoEToRuntime());
  lower.addPass(createCanonicalizerPass());
  lower.addPass(createCSEPass());
  if (failed(runPasses(*module, lower)))
    return makeError("lowering to runtime calls failed (see the diagnostics "
                     "above)");
  timer.done("moe-to-runtime");
  for (auto &entry : entries) {
    auto *obj = entry.getAsObject();
    auto f = module->lookupSymbol<func::FuncOp>(*obj->getString("symbol"));
    if (auto a = f->getAttrOfType<IntegerAttr>("moe.arena_bytes"))
      (*obj)["arena_bytes"] = a.getInt();
  }
  std::string ir;
  llvm::raw_string_ostream irStream(ir);
  module->print(irStream);
  if (keepIR)
    llvm::outs() << ir;
  if (llvm::Error e = writeFile(staging + "/module.mlir", ir))
    return e;

  // 4. LLVM dialect, LLVM IR, object, shared library.
  PassManager toLLVM(&context);
  toLLVM.addPass(createArithToLLVMConversionPass());
  toLLVM.addPass(createConvertFuncToLLVMPass());
  toLLVM.addPass(createReconcileUnrealizedCastsPass());
  if (failed(runPasses(*module, toLLVM)))
    return makeError("lowering to the LLVM dialect failed");
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(*module, llvmContext, "moe_module");
  if (!llvmModule)
    return makeError("translation to LLVM IR failed");
  timer.done("LLVM lowering");
  SmallString<128> object(staging);
  llvm::sys::path::append(object, "module.o");
  if (llvm::Error e = emitObject(*llvmModule, object))
    return e;
  timer.done("object emission");
  SmallString<128> library(staging);
  llvm::sys::path::append(library, "module.so");
  if (llvm::Error e = linkShared(object, library))
    return e;
  llvm::sys::fs::remove(object);
  timer.done("link");

  auto lib = llvm::MemoryBuffer::getFile(library);
  if (!lib)
    return makeError("cannot read back " + library);
  llvm::json::Object manifest{{"format", "moe-compiler-module"},
                              {"version", 1},
                              {"module_hash", fnv1a64((*lib)->getBuffer())},
                              {"library", "module.so"},
                              {"target", target.getValue()},
                              {"source", inputFile.getValue()},
                              {"mesh", std::move(mesh)},
                              {"entries", std::move(entries)}};
  std::string text;
  llvm::raw_string_ostream os(text);
  os << llvm::formatv("{0:2}", llvm::json::Value(std::move(manifest))) << "\n";
  return writeFile(staging + "/manifest.json", text);
}

/// A fresh hidden directory `<parent>/.<name>.partial-XXXXXX`.
std::error_code makeStagingDirectory(StringRef parent,
                                     SmallString<128> &staging) {
  SmallString<128> model(parent);
  llvm::sys::path::append(model, "." + llvm::sys::path::filename(outputDir) +
                                     ".partial-%%%%%%");
  std::error_code ec;
  for (int attempt = 0; attempt < 16; ++attempt) {
    llvm::sys::fs::createUniquePath(model, staging, /*MakeAbsolute=*/false);
    ec = llvm::sys::fs::create_directory(staging, /*IgnoreExisting=*/false);
    if (ec != std::errc::file_exists)
      return ec;
  }
  return ec;
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  llvm::InitializeNativeTarget();
  llvm::InitializeNativeTargetAsmPrinter();
  registerAsmPrinterCLOptions();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  // libLLVM registers hundreds of backend options; --help shows ours (the
  // MLIR pass-manager options such as --mlir-timing still work).
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv,
      "moe-compile: compile a MoE model graph (moe dialect) into a module "
      "directory that moe-run executes\n\n"
      "  moe-compile model.mlir -o out/ [--mesh dp=1,ep=2,tp=2 [--dtd]]\n\n"
      "OUT_DIR receives manifest.json, module.so and module.mlir "
      "(docs/module-format.md).\n");
  if (target != "cpu" && target != "cuda") {
    llvm::errs() << "moe-compile: --target must be cpu or cuda, got '" << target
                 << "'\n";
    return 1;
  }

  DialectRegistry registry;
  registry.insert<moe::MoEDialect, func::FuncDialect, arith::ArithDialect,
                  LLVM::LLVMDialect>();
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  MLIRContext context(registry);
  context.loadAllAvailableDialects();

  // Stage next to the destination so that the final rename stays on one
  // file system.
  SmallString<128> parent(outputDir);
  llvm::sys::path::remove_filename(parent);
  if (parent.empty())
    parent = ".";
  if (!llvm::sys::fs::is_directory(parent)) {
    llvm::errs() << "moe-compile: output directory's parent '" << parent
                 << "' does not exist\n";
    return 1;
  }
  SmallString<128> staging;
  if (std::error_code ec = makeStagingDirectory(parent, staging)) {
    llvm::errs() << "moe-compile: cannot create a staging directory in "
                 << parent << ": " << ec.message() << "\n";
    return 1;
  }

  StageTimer timer;
  llvm::Error e = compile(context, staging, timer);
  if (!e)
    e = publish(staging, outputDir);
  if (e) {
    llvm::sys::fs::remove_directories(staging);
    llvm::errs() << "moe-compile: error: " << llvm::toString(std::move(e))
                 << "\n";
    return 1;
  }
  timer.done("write module");
  if (printTimings)
    timer.print();
  return 0;
}
