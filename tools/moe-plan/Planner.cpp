//===- Planner.cpp - Candidate layouts, their compile and their price -----===//
#include "Planner.h"

#include "moe/Dialect/MoE/IR/MoE.h"
#include "moe/Pipelines/Manifest.h"
#include "moe/Pipelines/Pipelines.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassInstrumentation.h"
#include "mlir/Pass/PassManager.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <algorithm>
#include <chrono>

using namespace mlir;
using namespace moeplan;
namespace cost = mlir::moe::cost;

std::string Candidate::mesh() const {
  return llvm::formatv("dp={0},ep={1},tp={2}", dp, ep, tp).str();
}

static std::vector<bool> values(Choice c, bool allowed) {
  if (!allowed || c == Choice::Off)
    return {false};
  if (c == Choice::On)
    return {true};
  return {false, true};
}

/// ZeRO-1 on first, so that its memory rejection prunes "off" (prunedBy).
static std::vector<bool> zero1Values(Choice c, bool allowed) {
  std::vector<bool> v = values(c, allowed);
  std::reverse(v.begin(), v.end());
  return v;
}

static bool parseFixedMesh(const std::string &mesh, Candidate &c) {
  llvm::Expected<moe::MeshSpec> spec = moe::parseMeshSpec(mesh);
  if (!spec) {
    llvm::consumeError(spec.takeError());
    return false;
  }
  for (const moe::MeshAxis &a : spec->axes)
    (a.name == "dp" ? c.dp : a.name == "ep" ? c.ep : c.tp) = a.size;
  return true;
}

std::vector<Candidate> moeplan::enumerate(const Space &space) {
  std::vector<Candidate> meshes;
  if (!space.mesh.empty()) {
    Candidate c;
    if (parseFixedMesh(space.mesh, c))
      meshes.push_back(c);
  } else {
    for (int64_t tp = 1; tp <= std::min(space.maxTp, space.devices); ++tp) {
      if (space.devices % tp)
        continue;
      for (int64_t ep = 1; ep <= space.devices / tp; ++ep) {
        if ((space.devices / tp) % ep)
          continue;
        Candidate c;
        c.tp = tp;
        c.ep = ep;
        c.dp = space.devices / (tp * ep);
        meshes.push_back(c);
      }
    }
  }
  std::vector<Candidate> out;
  for (const Candidate &m : meshes)
    for (bool dtd : values(space.dtd, m.tp > 1 && m.ep > 1))
      for (bool etp : values(space.expertTp, m.tp > 1))
        for (bool z : zero1Values(space.zero1, space.train && m.dp > 1))
          for (int64_t d : space.degrees) {
            if (d > 1 && m.ep == 1)
              continue;
            for (const std::string &ckpt : space.checkpoint)
              for (bool hier : space.hierarchicalA2A) {
                Candidate c = m;
                c.dtd = dtd;
                c.expertTp = etp;
                c.zero1 = z;
                c.degree = d;
                c.checkpoint = ckpt;
                c.hierarchicalA2A = hier;
                out.push_back(c);
              }
          }
  return out;
}

void moeplan::applyCandidate(const Candidate &c, bool train,
                             const std::string &cluster,
                             moe::CompilePipelineOptions &options) {
  options.mesh = c.mesh();
  options.dtd = c.dtd;
  options.expertTp = c.expertTp;
  options.train = train;
  options.zero1 = c.zero1;
  options.overlapDegree = std::to_string(c.degree);
  options.cluster = cluster;
  options.checkpoint = train ? c.checkpoint : std::string("none");
  // Hook: options.hierarchicalA2A = c.hierarchicalA2A, options.ranksPerNode =
  // c.ranksPerNode (branch hier).
}

std::string moeplan::commandLine(const Candidate &c, bool train,
                                 const std::string &model,
                                 const std::string &cluster) {
  std::string s = "moe-compile " + model + " -o out --mesh " + c.mesh();
  if (c.dtd)
    s += " --dtd";
  if (c.expertTp)
    s += " --expert-tp";
  if (train)
    s += " --train";
  if (c.zero1)
    s += " --zero1";
  if (train && c.checkpoint != "none")
    s += " --checkpoint " + c.checkpoint;
  if (c.degree != 1)
    s += " --overlap-degree " + std::to_string(c.degree);
  if (!cluster.empty())
    s += " --cluster " + cluster;
  return s;
}

namespace {

/// Simulates the entries of one step at the last pass before the manifest
/// is attached (the per-rank program at tensor level, after sharding, DTD,
/// differentiation and overlap).
class SimulateBeforeManifest : public PassInstrumentation {
public:
  SimulateBeforeManifest(const cost::CostModel &model, bool train,
                         llvm::Expected<cost::StepSimulation> &out,
                         std::string &tooLarge)
      : model(model), train(train), out(out), tooLarge(tooLarge) {}
  void runBeforePass(Pass *pass, Operation *op) override {
    if (pass->getArgument() != "moe-attach-manifest")
      return;
    auto module = cast<ModuleOp>(op);
    llvm::SmallVector<func::FuncOp> fns;
    static const StringRef trainEntries[] = {"forward_train", "backward",
                                             "step_adamw"};
    static const StringRef inferenceEntries[] = {"forward"};
    for (StringRef name : train ? llvm::ArrayRef<StringRef>(trainEntries)
                                : llvm::ArrayRef<StringRef>(inferenceEntries))
      if (auto fn = module.lookupSymbol<func::FuncOp>(name))
        fns.push_back(fn);
    llvm::consumeError(out.takeError());
    out = cost::simulateStep(model, fns);

    // The tensors that live through the whole run (training: the step's
    // weights, gradients and optimizer state; inference: the weights): when
    // they alone do not fit, stop here; lowering and the buffer plan (the
    // expensive part of the pipeline) would not change the answer.
    double persistent = 0;
    if (auto fn =
            module.lookupSymbol<func::FuncOp>(train ? "step_adamw" : "forward"))
      for (auto [i, t] : llvm::enumerate(fn.getArgumentTypes()))
        if (train || fn.getArgAttr(i, moe::MoEDialect::kWeightAttrName))
          if (auto rt = dyn_cast<RankedTensorType>(t);
              rt && rt.hasStaticShape())
            persistent += static_cast<double>(rt.getNumElements()) *
                          ((rt.getElementTypeBitWidth() + 7) / 8);
    double capacity = model.getCluster().device.memoryBytes;
    if (persistent > capacity) {
      tooLarge = llvm::formatv("needs more than {0} per rank ({1} alone), the "
                               "device has {2}",
                               humanBytes(persistent),
                               train ? "weights, gradients and optimizer state"
                                     : "weights",
                               humanBytes(capacity))
                     .str();
      module.getBody()->clear();
    }
  }

private:
  const cost::CostModel &model;
  bool train;
  llvm::Expected<cost::StepSimulation> &out;
  std::string &tooLarge;
};

double dtypeBytes(llvm::StringRef dtype) {
  if (dtype == "f16" || dtype == "bf16")
    return 2;
  if (dtype == "i64" || dtype == "f64")
    return 8;
  return 4;
}

double argBytes(const llvm::json::Value &v) {
  const llvm::json::Object *o = v.getAsObject();
  if (!o)
    return 0;
  double n = dtypeBytes(o->getString("dtype").value_or("f32"));
  if (const llvm::json::Array *shape = o->getArray("local_shape"))
    for (const llvm::json::Value &d : *shape)
      n *= static_cast<double>(d.getAsInteger().value_or(0));
  return n;
}

/// Memory of a rank from the manifest description: persistent tensors
/// (weights; with training gradients and optimizer state) plus the
/// largest working set of an entry (its inputs, saved activations, results
/// other than weight gradients, and arena).
Memory memoryOf(const llvm::json::Object &manifest, bool train) {
  Memory m;
  const llvm::json::Array *entries = manifest.getArray("entries");
  if (!entries)
    return m;
  double peakWork = 0;
  for (const llvm::json::Value &ev : *entries) {
    const llvm::json::Object *e = ev.getAsObject();
    if (!e)
      continue;
    llvm::StringRef name = e->getString("name").value_or("");
    if (train ? name == "forward" || name == "step_sgd" : name != "forward")
      continue;
    double work = static_cast<double>(e->getInteger("arena_bytes").value_or(0));
    bool step = name.starts_with("step_");
    if (const llvm::json::Array *args = e->getArray("args"))
      for (const llvm::json::Value &a : *args) {
        llvm::StringRef role =
            a.getAsObject() ? a.getAsObject()->getString("role").value_or("")
                            : "";
        double b = argBytes(a);
        if (role == "weight") {
          if (step || !train) // training: the step entry holds them all
            m.weights += b;
        } else if (role == "grad")
          m.grads += b;
        else if (role == "state")
          m.optimizerState += b;
        else
          work += b; // inputs, targets, saved activations, hyperparameters
      }
    if (!step)
      if (const llvm::json::Array *results = e->getArray("results"))
        for (const llvm::json::Value &r : *results) {
          // Weight gradients are counted once, above (the step's "grad"
          // arguments); the input's gradient is working memory.
          llvm::StringRef rn =
              r.getAsObject() ? r.getAsObject()->getString("name").value_or("")
                              : "";
          if (rn.starts_with("grad.") && rn != "grad.hidden_states")
            continue;
          work += argBytes(r);
        }
    peakWork = std::max(peakWork, work);
  }
  // The saved activations are forward_train's results and backward's
  // arguments: in the working set of each.
  m.activations = peakWork;
  return m;
}

} // namespace

std::string moeplan::humanBytes(double bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return llvm::formatv(u == 0 ? "{0:F0} {1}" : "{0:F2} {1}", bytes, units[u])
      .str();
}

Evaluation moeplan::evaluate(ModuleOp model, const Candidate &c, bool train,
                             const std::string &clusterPath,
                             const cost::CostModel &costModel,
                             bool keepEvents) {
  auto t0 = std::chrono::steady_clock::now();
  Evaluation ev;
  ev.candidate = c;
  OwningOpRef<ModuleOp> module = model.clone();
  MLIRContext *ctx = model.getContext();

  std::string firstError;
  ScopedDiagnosticHandler handler(ctx, [&](Diagnostic &d) {
    if (d.getSeverity() == DiagnosticSeverity::Error && firstError.empty())
      firstError = d.str();
    return success();
  });
  moe::CompilePipelineOptions options;
  applyCandidate(c, train, clusterPath, options);
  llvm::Expected<cost::StepSimulation> sim =
      llvm::createStringError("the pipeline stopped before the simulation");
  PassManager pm(ctx);
  moe::buildCompilePipeline(pm, options);
  std::string tooLarge;
  pm.addInstrumentation(std::make_unique<SimulateBeforeManifest>(
      costModel, train, sim, tooLarge));
  bool ok = succeeded(pm.run(*module));
  ev.compileSeconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  if (!tooLarge.empty()) {
    llvm::consumeError(sim.takeError());
    ev.rejected = tooLarge;
    return ev;
  }
  if (!ok) {
    llvm::consumeError(sim.takeError());
    ev.rejected = firstError.empty() ? "the compile pipeline failed"
                                     : "does not compile: " + firstError;
    return ev;
  }
  if (!sim) {
    ev.rejected = "cannot simulate: " + llvm::toString(sim.takeError());
    return ev;
  }
  ev.sim = std::move(*sim);
  if (!keepEvents)
    ev.sim.events.clear();
  llvm::Expected<llvm::json::Object> manifest = moe::completeManifest(*module);
  if (!manifest) {
    ev.rejected = "no manifest: " + llvm::toString(manifest.takeError());
    return ev;
  }
  ev.memory = memoryOf(*manifest, train);
  double capacity = costModel.getCluster().device.memoryBytes;
  if (ev.memory.total() > capacity) {
    const Memory &m = ev.memory;
    ev.rejected =
        llvm::formatv("needs {0} per rank, the device has {1} "
                      "(weights {2}, gradients {3}, optimizer "
                      "state {4}, activations {5})",
                      humanBytes(m.total()), humanBytes(capacity),
                      humanBytes(m.weights), humanBytes(m.grads),
                      humanBytes(m.optimizerState), humanBytes(m.activations))
            .str();
    return ev;
  }
  ev.feasible = true;
  return ev;
}

std::optional<std::string>
moeplan::prunedBy(const Candidate &c, const std::vector<Evaluation> &done) {
  for (const Evaluation &e : done) {
    const Candidate &d = e.candidate;
    if (e.feasible || d.dp != c.dp || d.ep != c.ep || d.tp != c.tp)
      continue;
    // The plain layout of a mesh does not compile: every option only adds
    // conditions (DTD, expert-tp, ZeRO-1 and overlap divide further).
    bool plain = !d.dtd && !d.expertTp && !d.zero1 && d.degree == 1 &&
                 d.checkpoint == "none" && !d.hierarchicalA2A;
    if (plain && llvm::StringRef(e.rejected).starts_with("does not compile"))
      return e.rejected;
    // With ZeRO-1 it did not fit: without it the optimizer state is larger.
    bool sameButZero1 = d.zero1 && !c.zero1 && d.dtd == c.dtd &&
                        d.expertTp == c.expertTp && d.degree == c.degree &&
                        d.checkpoint == c.checkpoint &&
                        d.hierarchicalA2A == c.hierarchicalA2A;
    if (sameButZero1 && llvm::StringRef(e.rejected).starts_with("needs "))
      return "does not fit even with ZeRO-1: " + e.rejected;
  }
  return std::nullopt;
}

void moeplan::rank(std::vector<Evaluation> &evaluations) {
  auto bytes = [](const Evaluation &e) {
    return e.sim.intraNodeBytes + e.sim.interNodeBytes;
  };
  std::stable_sort(evaluations.begin(), evaluations.end(),
                   [&](const Evaluation &a, const Evaluation &b) {
                     if (a.feasible != b.feasible)
                       return a.feasible;
                     if (!a.feasible)
                       return false;
                     if (a.sim.seconds != b.sim.seconds)
                       return a.sim.seconds < b.sim.seconds;
                     return bytes(a) < bytes(b);
                   });
}
