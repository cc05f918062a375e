//===- moe-plan.cpp - Choose the parallel layout of a MoE model -----------===//
//
//   moe-plan MODEL.mlir --cluster FILE.json [--devices N] [--train]
//            [--json FILE] [--simulate TRACE.json] [--time] [--progress]
//
// Enumerates the layouts (dp x ep x tp meshes, DTD, expert-tp, ZeRO-1, the
// moe-overlap degree), compiles the model for each with the compile pipeline,
// simulates one step of the per-rank program under the cost model of the
// cluster file, sizes each rank's memory from the manifest, rejects what does
// not compile or fit, and prints the layouts ranked by predicted step time
// with the moe-compile command line of each (docs/planner.md).
//
//===----------------------------------------------------------------------===//
#include "Planner.h"

#include "moe/Conversion/Passes.h"
#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Dialect/MoE/Transforms/Passes.h"
#include "moe/Pipelines/Pipelines.h"
#include "moe/Tools/OptionNames.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Transforms/Passes.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <map>

using namespace mlir;
using namespace moeplan;
namespace cl = llvm::cl;
namespace cost = mlir::moe::cost;

namespace {

cl::OptionCategory category("moe-plan options");
cl::opt<std::string> inputFile(cl::Positional, cl::desc("<model.mlir>"),
                               cl::Required, cl::cat(category));
cl::opt<std::string>
    clusterFile("cluster",
                cl::desc("Cluster file (JSON; default: the built-in node)"),
                cl::value_desc("FILE.json"), cl::cat(category));
cl::opt<int64_t> devices("devices",
                         cl::desc("Ranks of every layout (default: all "
                                  "devices of the cluster)"),
                         cl::init(0), cl::cat(category));
cl::opt<int64_t> tokens("tokens",
                        cl::desc("Global batch in tokens: checked against "
                                 "the model's input rows"),
                        cl::init(0), cl::cat(category));
cl::opt<bool> train("train",
                    cl::desc("Plan a training step (forward_train, "
                             "backward, step_adamw)"),
                    cl::cat(category));
cl::opt<std::string> meshOpt("mesh",
                             cl::desc("Only this mesh (e.g. ep=4,tp=2)"),
                             cl::cat(category));
cl::opt<int64_t> maxTp("max-tp",
                       cl::desc("Largest tp tried (default: devices per "
                                "node)"),
                       cl::init(0), cl::cat(category));
cl::opt<std::string> dtdOpt("dtd", cl::desc("DTD: on, off or both (default)"),
                            cl::init("both"), cl::cat(category));
cl::opt<std::string> expertTpOpt("expert-tp",
                                 cl::desc("Expert tensor parallelism: on, "
                                          "off or both (default)"),
                                 cl::init("both"), cl::cat(category));
cl::opt<std::string> zero1Opt("zero1",
                              cl::desc("With --train, ZeRO-1: on, off or "
                                       "both (default)"),
                              cl::init("both"), cl::cat(category));
cl::list<int64_t> degreesOpt("overlap-degrees",
                             cl::desc("moe-overlap degrees to try (default "
                                      "1,2,4,8; with ep > 1)"),
                             cl::CommaSeparated, cl::cat(category));
cl::opt<int> top("top", cl::desc("Plans printed (default 10; 0: all)"),
                 cl::init(10), cl::cat(category));
cl::opt<bool> showRejected("show-rejected",
                           cl::desc("List every rejected candidate"),
                           cl::cat(category));
cl::opt<std::string> jsonFile("json",
                              cl::desc("Write every plan as JSON ('-': "
                                       "stdout, instead of the table)"),
                              cl::value_desc("FILE"), cl::cat(category));
cl::opt<std::string> simulateFile(
    "simulate",
    cl::desc("Write the predicted time line of one step of the first plan "
             "as a Chrome trace (the format of moe-run --trace)"),
    cl::value_desc("TRACE.json"), cl::cat(category));
cl::opt<int64_t> traceRanks("trace-ranks",
                            cl::desc("Ranks in the --simulate trace "
                                     "(default: all, at most 64)"),
                            cl::init(0), cl::cat(category));
cl::opt<bool> progress("progress",
                       cl::desc("Print each candidate as it is priced"),
                       cl::cat(category));
cl::opt<bool> timing("time", cl::desc("Print where the planning time went"),
                     cl::cat(category));

llvm::Expected<Choice> parseChoice(llvm::StringRef flag, llvm::StringRef v) {
  if (v == "on")
    return Choice::On;
  if (v == "off")
    return Choice::Off;
  if (v == "both")
    return Choice::Both;
  return llvm::createStringError("--%s must be on, off or both (got '%s')",
                                 flag.str().c_str(), v.str().c_str());
}

std::string onOff(bool b) { return b ? "on" : "off"; }

double ms(double s) { return s * 1e3; }
double mb(double b) { return b / 1e6; }

llvm::json::Object planJSON(const Evaluation &e, int64_t index,
                            const std::string &model,
                            const std::string &cluster) {
  const Candidate &c = e.candidate;
  llvm::json::Object o{{"mesh", c.mesh()},
                       {"dp", c.dp},
                       {"ep", c.ep},
                       {"tp", c.tp},
                       {"dtd", c.dtd},
                       {"expert_tp", c.expertTp},
                       {"zero1", c.zero1},
                       {"overlap_degree", c.degree},
                       {"checkpoint", c.checkpoint},
                       {"hierarchical_a2a", c.hierarchicalA2A},
                       {"command", commandLine(c, train, model, cluster)},
                       {"compile_s", e.compileSeconds}};
  if (!e.feasible) {
    o["rejected"] = e.rejected;
    return o;
  }
  o["rank"] = index;
  o["step_s"] = e.sim.seconds;
  o["compute_s"] = e.sim.computeSeconds;
  o["exposed_comm_s"] = e.sim.exposedCommSeconds;
  o["recompute_s"] = e.sim.recomputeSeconds;
  o["comm_s"] = e.sim.commSeconds;
  o["bytes_intra_node"] = e.sim.intraNodeBytes;
  o["bytes_inter_node"] = e.sim.interNodeBytes;
  llvm::json::Object byColl;
  for (const auto &[name, b] : e.sim.bytesByCollective)
    byColl[name] = b;
  o["bytes_by_collective"] = std::move(byColl);
  const Memory &m = e.memory;
  o["memory_bytes"] = llvm::json::Object{{"weights", m.weights},
                                         {"grads", m.grads},
                                         {"optimizer_state", m.optimizerState},
                                         {"activations", m.activations},
                                         {"total", m.total()}};
  return o;
}

void printTable(const std::vector<Evaluation> &evals, int64_t feasible,
                const std::string &model, const std::string &cluster) {
  llvm::raw_ostream &os = llvm::outs();
  os << llvm::format("%3s  %-20s %-4s %-4s %-4s %3s %10s %10s %10s %10s "
                     "%10s %10s %10s\n",
                     "#", "mesh", "dtd", "etp", "z1", "deg", "step ms",
                     "compute", "exposed", "recompute", "intra MB", "inter MB",
                     "memory");
  int64_t shown = top <= 0 ? feasible : std::min<int64_t>(top, feasible);
  for (int64_t i = 0; i < shown; ++i) {
    const Evaluation &e = evals[i];
    const Candidate &c = e.candidate;
    os << llvm::format(
        "%3lld  %-20s %-4s %-4s %-4s %3lld %10.3f %10.3f "
        "%10.3f %10.3f %10.2f %10.2f %10s\n",
        static_cast<long long>(i + 1), c.mesh().c_str(), onOff(c.dtd).c_str(),
        onOff(c.expertTp).c_str(), train ? onOff(c.zero1).c_str() : "-",
        static_cast<long long>(c.degree), ms(e.sim.seconds),
        ms(e.sim.computeSeconds), ms(e.sim.exposedCommSeconds),
        ms(e.sim.recomputeSeconds), mb(e.sim.intraNodeBytes),
        mb(e.sim.interNodeBytes), humanBytes(e.memory.total()).c_str());
    os << "     " << commandLine(c, train, model, cluster) << "\n";
  }
  int64_t rejected = static_cast<int64_t>(evals.size()) - feasible;
  if (rejected == 0)
    return;
  os << "\n" << rejected << " candidate(s) rejected";
  if (showRejected) {
    os << ":\n";
    for (size_t i = feasible; i < evals.size(); ++i)
      os << "  " << evals[i].candidate.mesh()
         << " dtd=" << onOff(evals[i].candidate.dtd)
         << " expert-tp=" << onOff(evals[i].candidate.expertTp)
         << " degree=" << evals[i].candidate.degree << ": " << evals[i].rejected
         << "\n";
    return;
  }
  // The distinct reasons, most frequent first.
  std::map<std::string, int64_t> reasons;
  for (size_t i = feasible; i < evals.size(); ++i)
    ++reasons[evals[i].rejected];
  std::vector<std::pair<int64_t, std::string>> byCount;
  for (auto &[r, n] : reasons)
    byCount.push_back({n, r});
  llvm::sort(byCount, [](auto &a, auto &b) { return a.first > b.first; });
  os << " (--show-rejected lists them), for example:\n";
  for (size_t i = 0; i < std::min<size_t>(byCount.size(), 5); ++i)
    os << "  " << byCount[i].first << " x " << byCount[i].second << "\n";
}

int fail(const llvm::Twine &msg) {
  llvm::errs() << "moe-plan: error: " << msg << "\n";
  return 1;
}

/// Rows of the input "hidden_states" of @forward (the global batch), -1 if
/// there is none.
int64_t modelTokens(ModuleOp module) {
  auto fn = module.lookupSymbol<func::FuncOp>("forward");
  if (!fn)
    return -1;
  for (auto [i, t] : llvm::enumerate(fn.getArgumentTypes()))
    if (auto in =
            fn.getArgAttrOfType<StringAttr>(i, moe::MoEDialect::kInputAttrName);
        in && in.getValue() == "hidden_states")
      if (auto rt = dyn_cast<RankedTensorType>(t); rt && rt.getRank() == 2)
        return rt.getDimSize(0);
  return -1;
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  moe::registerMoEPasses();
  moe::registerMoEConversionPasses();
  moe::registerMoECompilePipelines();
  cl::HideUnrelatedOptions(category);
  if (!moe::checkOptionNames(argc, argv, "moe-plan"))
    return 1;
  cl::ParseCommandLineOptions(
      argc, argv,
      "moe-plan: rank the parallel layouts of a MoE model on a cluster by "
      "the step time the cost model predicts for their compiled programs\n");
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();

  llvm::Expected<cost::ClusterSpec> cluster =
      cost::loadClusterFile(clusterFile);
  if (!cluster)
    return fail(llvm::toString(cluster.takeError()));
  cost::CostModel costModel(*cluster);
  int64_t available = cluster->nodes * cluster->devicesPerNode;
  Space space;
  space.devices = devices > 0 ? devices : available;
  if (devices < 0)
    return fail("--devices must be positive");
  if (space.devices > available)
    return fail(llvm::formatv("--devices {0}: the cluster file describes "
                              "only {1} devices ({2} nodes x {3})",
                              space.devices, available, cluster->nodes,
                              cluster->devicesPerNode)
                    .str());
  space.maxTp = maxTp > 0 ? maxTp : cluster->devicesPerNode;
  space.mesh = meshOpt;
  space.train = train;
  if (!meshOpt.empty()) {
    llvm::Expected<moe::MeshSpec> spec = moe::parseMeshSpec(meshOpt);
    if (!spec)
      return fail("--mesh: " + llvm::toString(spec.takeError()));
    if (spec->getNumRanks() != space.devices && devices > 0)
      return fail(llvm::formatv("--mesh {0} has {1} ranks, --devices says "
                                "{2}",
                                meshOpt, spec->getNumRanks(), space.devices)
                      .str());
    space.devices = spec->getNumRanks();
    if (space.devices > available)
      return fail(llvm::formatv("--mesh {0}: {1} ranks, the cluster file "
                                "describes only {2} devices",
                                meshOpt, space.devices, available)
                      .str());
  }
  for (auto [flag, value, out] :
       {std::tuple{"dtd", &dtdOpt, &space.dtd},
        std::tuple{"expert-tp", &expertTpOpt, &space.expertTp},
        std::tuple{"zero1", &zero1Opt, &space.zero1}}) {
    llvm::Expected<Choice> c = parseChoice(flag, *value);
    if (!c)
      return fail(llvm::toString(c.takeError()));
    *out = *c;
  }
  if (!degreesOpt.empty()) {
    space.degrees.assign(degreesOpt.begin(), degreesOpt.end());
    for (int64_t d : space.degrees)
      if (d < 1)
        return fail("--overlap-degrees: degrees must be positive");
  }

  DialectRegistry registry;
  registry.insert<moe::MoEDialect, func::FuncDialect, arith::ArithDialect>();
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diag(sourceMgr, &context);
  std::string err;
  auto file = openInputFile(inputFile, &err);
  if (!file)
    return fail(err);
  sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
  OwningOpRef<ModuleOp> model = parseSourceFile<ModuleOp>(sourceMgr, &context);
  if (!model)
    return fail("could not parse " + inputFile);
  int64_t modelT = modelTokens(*model);
  if (tokens > 0 && modelT != tokens)
    return fail(llvm::formatv("--tokens {0}: the model's input has {1} "
                              "tokens (emit it with --tokens {0})",
                              tokens, modelT)
                    .str());
  double parseSeconds =
      std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<Candidate> candidates = enumerate(space);
  if (candidates.empty())
    return fail("no candidate layout (check --mesh, --devices, --max-tp)");
  std::vector<Evaluation> evals;
  double compileSeconds = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (std::optional<std::string> why = prunedBy(candidates[i], evals)) {
      Evaluation pruned;
      pruned.candidate = candidates[i];
      pruned.rejected = *why;
      evals.push_back(std::move(pruned));
    } else {
      evals.push_back(evaluate(*model, candidates[i], train, clusterFile,
                               costModel, /*keepEvents=*/false));
    }
    const Evaluation &e = evals.back();
    compileSeconds += e.compileSeconds;
    if (progress)
      llvm::errs() << llvm::format("[%zu/%zu] ", i + 1, candidates.size())
                   << e.candidate.mesh() << " dtd=" << onOff(e.candidate.dtd)
                   << " expert-tp=" << onOff(e.candidate.expertTp)
                   << " zero1=" << onOff(e.candidate.zero1)
                   << " degree=" << e.candidate.degree << ": "
                   << (e.feasible
                           ? llvm::formatv("{0:F3} ms", ms(e.sim.seconds)).str()
                           : "rejected")
                   << llvm::format(" (%.2f s)\n", e.compileSeconds);
  }
  rank(evals);
  int64_t feasible =
      llvm::count_if(evals, [](const Evaluation &e) { return e.feasible; });

  std::string modelArg = inputFile;
  if (feasible > 0 && jsonFile != "-")
    printTable(evals, feasible, modelArg, clusterFile);
  if (!jsonFile.empty()) {
    llvm::json::Array plans, rejected;
    for (size_t i = 0; i < evals.size(); ++i)
      (evals[i].feasible ? plans : rejected)
          .push_back(planJSON(evals[i], static_cast<int64_t>(i) + 1, modelArg,
                              clusterFile));
    llvm::json::Object root{{"model", modelArg},
                            {"cluster", cluster->name},
                            {"cluster_file", clusterFile},
                            {"devices", space.devices},
                            {"tokens", modelT},
                            {"train", static_cast<bool>(train)},
                            {"plans", std::move(plans)},
                            {"rejected", std::move(rejected)}};
    std::string e2;
    auto out = openOutputFile(jsonFile, &e2);
    if (!out)
      return fail(e2);
    out->os() << llvm::formatv("{0:2}", llvm::json::Value(std::move(root)))
              << "\n";
    out->keep();
  }
  if (feasible == 0) {
    std::map<std::string, int64_t> reasons;
    for (const Evaluation &e : evals)
      ++reasons[e.rejected];
    std::string why;
    for (auto &[r, n] : reasons)
      why += llvm::formatv("\n  {0} x {1}", n, r).str();
    return fail(llvm::formatv("no layout of {0} devices fits this model on "
                              "this cluster:{1}",
                              space.devices, why)
                    .str());
  }
  double simulateSeconds = 0;
  if (!simulateFile.empty()) {
    auto ts = Clock::now();
    Evaluation best = evaluate(*model, evals.front().candidate, train,
                               clusterFile, costModel, /*keepEvents=*/true);
    int64_t ranks =
        traceRanks > 0 ? traceRanks : std::min<int64_t>(space.devices, 64);
    std::string e2;
    auto out = openOutputFile(simulateFile, &e2);
    if (!out)
      return fail(e2);
    out->os() << cost::renderChromeTrace(best.sim, ranks);
    out->keep();
    simulateSeconds = std::chrono::duration<double>(Clock::now() - ts).count();
    llvm::errs() << "moe-plan: predicted time line of plan 1 ("
                 << best.candidate.mesh() << ") on " << ranks
                 << " rank(s) written to " << simulateFile << "\n";
  }
  if (timing) {
    double total = std::chrono::duration<double>(Clock::now() - t0).count();
    llvm::errs() << llvm::format(
        "moe-plan: %zu candidates (%lld feasible) in %.2f s: parse %.2f s, "
        "compile + simulate %.2f s (%.3f s each)",
        evals.size(), static_cast<long long>(feasible), total, parseSeconds,
        compileSeconds, compileSeconds / static_cast<double>(evals.size()));
    if (!simulateFile.empty())
      llvm::errs() << llvm::format(", trace %.2f s", simulateSeconds);
    llvm::errs() << "\n";
  }
  return 0;
}
