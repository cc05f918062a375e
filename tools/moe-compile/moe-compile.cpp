//===- moe-compile.cpp - MoE model graph to a runnable module directory ---===//
//
//   moe-compile MODEL.mlir -o OUT_DIR [--mesh dp=1,ep=2,tp=2] [--dtd] [--train]
//
// A thin driver around the library: runs moe-compile-pipeline (the same
// pipeline `moe-opt --moe-compile-pipeline` runs) and moe-lower-to-llvm,
// emits the object in process through an llvm::TargetMachine, links a shared
// library with the system C compiler driver and writes manifest.json
// (docs/module-format.md) from the module's moe.manifest description. The
// directory appears whole or not at all.
//
//===----------------------------------------------------------------------===//
#include "moe/Conversion/Passes.h"
#include "moe/Conversion/RuntimeAbi.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"
#include "moe/Pipelines/Manifest.h"
#include "moe/Pipelines/Pipelines.h"
#include "moe/Tools/OptionNames.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassInstrumentation.h"
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
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Program.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/TargetSelect.h"
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
cl::opt<bool> train("train",
                    cl::desc("Also compile the training entries "
                             "forward_train, backward, step_adamw and "
                             "step_sgd (f32 models)"),
                    cl::cat(category));
cl::opt<bool> zero1("zero1",
                    cl::desc("With --train: shard the optimizer state over dp "
                             "(ZeRO-1)"),
                    cl::cat(category));
cl::opt<bool> routing("routing",
                      cl::desc("Routing you can see and replay: forward also "
                               "returns routing.<layer>.experts/.weights, "
                               "forward_replay (and forward_train_replay) "
                               "take routing.<layer>.experts "
                               "(moe-run --dump-routing / --replay-routing)"),
                      cl::cat(category));
cl::opt<std::string> checkpointPolicy(
    "checkpoint",
    cl::desc("With --train: what forward_train keeps for the backward: none "
             "(everything it reads), full (layer inputs: the backward "
             "replays each layer, all-to-alls included), cac (also every "
             "collective's result: only local work is recomputed), auto "
             "(fit --checkpoint-budget at the least recompute cost)"),
    cl::value_desc("none|full|cac|auto"), cl::init("none"), cl::cat(category));
cl::opt<std::string> checkpointBudget(
    "checkpoint-budget",
    cl::desc("With --checkpoint auto: bytes per rank that forward_train may "
             "keep for the backward"),
    cl::value_desc("BYTES"), cl::cat(category));
cl::opt<std::string> overlapDegree(
    "overlap-degree",
    cl::desc("Pipeline every expert-parallel exchange with the expert FFN "
             "in this many chunks (moe-overlap; 1: off)"),
    cl::value_desc("n"), cl::init("1"), cl::cat(category));
cl::opt<int64_t> maxRecvTokens(
    "max-recv-tokens",
    cl::desc("Rows (token copies) a rank's dropless receive buffer holds "
             "(default: the provable worst case); a run whose routing "
             "would send a rank more stops on every rank with a named "
             "error"),
    cl::value_desc("N"), cl::init(0), cl::cat(category));
cl::opt<std::string> hierarchicalA2A(
    "hierarchical-a2a", cl::ValueOptional,
    cl::desc("2D hierarchical all-to-all over nodes of --ranks-per-node "
             "ranks: on (the flag alone), auto (where the cost model, "
             "--cluster, says it pays) or mesh (split ep into ep_node and "
             "ep_local only: flat exchanges, a baseline)"),
    cl::value_desc("on|auto|mesh"), cl::cat(category));
cl::opt<int64_t>
    ranksPerNode("ranks-per-node",
                 cl::desc("Ranks on one node for --hierarchical-a2a (with "
                          "auto, default: the cluster's devices per node)"),
                 cl::value_desc("R"), cl::init(0), cl::cat(category));
cl::opt<std::string>
    clusterFile("cluster",
                cl::desc("Cluster file (JSON) for the cost model: links, "
                         "GEMM and memory rates (moe-run --calibrate writes "
                         "one; default: built-in)"),
                cl::value_desc("FILE.json"), cl::cat(category));
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

/// Makes every top-level pass of a pipeline a stage of the timer (one line
/// per pass with --time) and remembers the pass that failed.
class PassStages : public PassInstrumentation {
public:
  PassStages(StageTimer &timer, std::string &failedPass)
      : timer(timer), failedPass(failedPass) {}
  void runBeforePass(Pass *, Operation *) override { ++depth; }
  void runAfterPass(Pass *pass, Operation *) override {
    if (--depth == 0)
      timer.done(name(pass));
  }
  void runAfterPassFailed(Pass *pass, Operation *) override {
    if (--depth == 0 && failedPass.empty())
      failedPass = name(pass).str();
  }

private:
  static StringRef name(Pass *pass) {
    return pass->getArgument().empty() ? pass->getName() : pass->getArgument();
  }
  StageTimer &timer;
  std::string &failedPass;
  int depth = 0;
};

llvm::Error makeError(const Twine &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

//===----------------------------------------------------------------------===//
// Pipeline
//===----------------------------------------------------------------------===//

/// Runs the pipeline that `build` adds on `module`, a stage per pass;
/// `what` names the pipeline in the error.
llvm::Error runPipeline(ModuleOp module, StageTimer &timer, StringRef what,
                        function_ref<void(OpPassManager &)> build) {
  PassManager pm(module.getContext());
  if (failed(applyPassManagerCLOptions(pm)))
    return makeError("invalid pass manager options (see above)");
  build(pm);
  std::string failedPass;
  pm.addInstrumentation(std::make_unique<PassStages>(timer, failedPass));
  if (failed(pm.run(module)))
    return makeError(what + " failed" +
                     (failedPass.empty() ? "" : " in " + failedPass) +
                     " (see the diagnostics above)");
  return llvm::Error::success();
}

/// The options of moe-compile-pipeline from the command line.
llvm::Error pipelineOptions(moe::CompilePipelineOptions &options) {
  if (!meshSpec.empty()) {
    // The dialect's parser, so that the messages are moe-shard's.
    if (llvm::Expected<moe::MeshSpec> spec = moe::parseMeshSpec(meshSpec);
        !spec)
      return makeError("--mesh: " + llvm::toString(spec.takeError()));
  } else if (dtd || expertTP) {
    return makeError("--dtd and --expert-tp need --mesh with tp > 1");
  }
  options.mesh = meshSpec;
  options.dtd = dtd;
  options.expertTp = expertTP;
  options.train = train;
  options.zero1 = zero1;
  options.routing = routing;
  options.overlapDegree = overlapDegree;
  options.cluster = clusterFile;
  if (hierarchicalA2A.getNumOccurrences())
    options.hierarchicalA2A =
        hierarchicalA2A.empty() ? std::string("on") : hierarchicalA2A;
  else if (ranksPerNode.getNumOccurrences())
    return makeError("--ranks-per-node is used by --hierarchical-a2a");
  options.ranksPerNode = ranksPerNode;
  options.maxRecvTokens = maxRecvTokens;
  options.checkpoint = checkpointPolicy;
  options.checkpointBudget = checkpointBudget;
  return moe::verifyCompilePipelineOptions(options);
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

/// --train: f32 master weights and state, so an f32 model (spec.md 7.3).
llvm::Error checkTrainable(ModuleOp module) {
  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!forward)
    return makeError("--train needs a function @forward to differentiate");
  for (auto [i, t] : llvm::enumerate(forward.getArgumentTypes())) {
    auto elem = cast<ShapedType>(t).getElementType();
    auto input = forward.getArgAttrOfType<StringAttr>(
        i, moe::MoEDialect::kInputAttrName);
    // The token mask (i32) is an input, not a weight (spec.md 3.11).
    if (elem.isF32() ||
        (elem.isInteger(32) && input && input.getValue() == "token_mask"))
      continue;
    auto name = forward.getArgAttrOfType<StringAttr>(
        i, moe::MoEDialect::kWeightAttrName);
    if (!name)
      name = forward.getArgAttrOfType<StringAttr>(
          i, moe::MoEDialect::kInputAttrName);
    std::string what;
    llvm::raw_string_ostream os(what);
    os << elem;
    return makeError("--train supports f32 models only (f32 master weights "
                     "and optimizer state), but argument " +
                     Twine(i) + (name ? " '" + name.getValue() + "'" : "") +
                     " of @forward is " + what +
                     "; emit the model with --dtype f32");
  }
  return llvm::Error::success();
}

llvm::Error compile(MLIRContext &context,
                    const moe::CompilePipelineOptions &options,
                    StringRef staging, StageTimer &timer) {
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
  if (options.train)
    if (llvm::Error e = checkTrainable(*module))
      return e;

  // 1. The per-rank program of runtime calls, described in moe.manifest.
  if (llvm::Error e = runPipeline(
          *module, timer, "moe-compile-pipeline",
          [&](OpPassManager &pm) { moe::buildCompilePipeline(pm, options); }))
    return e;
  llvm::Expected<llvm::json::Object> description =
      moe::completeManifest(*module);
  if (!description)
    return description.takeError();
  if (const llvm::json::Object *c = description->getObject("checkpoint"))
    llvm::outs() << llvm::formatv(
        "moe-compile: checkpoint {0}: saved {1} bytes per rank held from "
        "forward_train to backward, peak {2} bytes (arena forward_train {3}, "
        "backward {4}); recompute {5} ops, {6} collectives\n",
        c->getString("policy").value_or(""),
        c->getInteger("saved_bytes").value_or(0),
        c->getInteger("peak_bytes").value_or(0),
        c->getInteger("forward_train_arena_bytes").value_or(0),
        c->getInteger("backward_arena_bytes").value_or(0),
        c->getInteger("recompute_ops").value_or(0),
        c->getInteger("recompute_collectives").value_or(0));
  std::string ir;
  llvm::raw_string_ostream irStream(ir);
  module->print(irStream);
  irStream << "\n";
  if (keepIR)
    llvm::outs() << ir;
  if (llvm::Error e = writeFile(staging + "/module.mlir", ir))
    return e;
  timer.done("print IR");

  // 2. LLVM dialect, LLVM IR, object, shared library, which carries its own
  // description (moe-run checks manifest.json against it).
  std::string embedded;
  llvm::raw_string_ostream embeddedStream(embedded);
  embeddedStream << llvm::json::Value(llvm::json::Object(*description));
  if (failed(moe::abi::addManifestDescription(*module, embedded)))
    return makeError("cannot embed the manifest in the module");
  if (llvm::Error e = runPipeline(*module, timer, "moe-lower-to-llvm",
                                  moe::buildLowerToLLVMPipeline))
    return e;
  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(*module, llvmContext, "moe_module");
  if (!llvmModule)
    return makeError("translation to LLVM IR failed");
  timer.done("LLVM IR");
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
  moe::ManifestFiles files;
  files.libraryBytes = (*lib)->getBuffer();
  files.target = target;
  files.source = inputFile;
  return writeFile(staging + "/manifest.json",
                   moe::renderManifest(std::move(*description), files));
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
  // Passes are looked up by name for --mlir-print-ir-after=<pass> & co.
  // (registered before the pass-manager options that name them)
  registerCanonicalizerPass();
  registerCSEPass();
  moe::registerMoEPasses();
  moe::registerMoEConversionPasses();
  moe::registerMoECompilePipelines();
  registerAsmPrinterCLOptions();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  // libLLVM registers hundreds of backend options; --help shows ours (the
  // MLIR pass-manager options such as --mlir-print-ir-after-all still work).
  cl::HideUnrelatedOptions(category);
  if (!moe::checkOptionNames(argc, argv, "moe-compile"))
    return 1;
  cl::ParseCommandLineOptions(
      argc, argv,
      "moe-compile: compile a MoE model graph (moe dialect) into a module "
      "directory that moe-run executes\n\n"
      "  moe-compile model.mlir -o out/ [--mesh dp=1,ep=2,tp=2 [--dtd]] "
      "[--train]\n\n"
      "OUT_DIR receives manifest.json, module.so and module.mlir "
      "(docs/module-format.md).\n");
  if (target != "cpu" && target != "cuda") {
    llvm::errs() << "moe-compile: --target must be cpu or cuda, got '" << target
                 << "'\n";
    return 1;
  }
  moe::CompilePipelineOptions options;
  if (llvm::Error e = pipelineOptions(options)) {
    llvm::errs() << "moe-compile: error: " << llvm::toString(std::move(e))
                 << "\n";
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
  llvm::Error e = compile(context, options, staging, timer);
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
