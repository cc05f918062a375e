//===- moe-run.cpp - Run a compiled MoE module on one rank or many --------===//
//
// moe-run OUT_DIR --weights W.safetensors --inputs X.safetensors
//         --output Y.safetensors [options]
// moe-run OUT_DIR --train --steps N --weights W --inputs X --targets T [...]
//
// Reads OUT_DIR/manifest.json (docs/module-format.md), loads the module
// library, creates a runtime context on this rank (MPI when started by
// mpirun with more than one rank, NCCL with --device cuda), loads only this
// rank's slice of every weight and input, runs the entry point, gathers the
// results to rank 0 and writes them atomically, and reports timings and
// collective byte counts. With --train it runs training steps instead
// (Train.h).
//
// The driver: the other parts are Options (command line), Session (module,
// context, agreement of the ranks), World (ranks and the failure discipline
// under mpirun), ShardedLoader (slices per rank), Report (statistics, trace,
// --check) and Train / Checkpoint (the training loop, its files). moe-run
// uses only the C ABI (moert/moert.h) and the support library
// (runtime/support over the header-only runtime/base); docs/runtime.md.
//
//===----------------------------------------------------------------------===//
#include "Calibrate.h"
#include "ExpertLoad.h"
#include "Options.h"
#include "Report.h"
#include "Routing.h"
#include "Session.h"
#include "ShardedLoader.h"
#include "Train.h"
#include "World.h"

#include "moert/moert.h"
#include "support/Format.h"
#include "support/Manifest.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

using namespace moert;
using namespace moe_run;

namespace {

//===----------------------------------------------------------------------===//
// The driver
//===----------------------------------------------------------------------===//

/// One entry point run --repeat times (the inference mode).
class Driver {
public:
  explicit Driver(Session &s) : s_(s), opt_(s.opt), ctx_(s.ctx) {}
  ~Driver();
  int run();

private:
  bool loadAll();
  Status loadArgs();
  Status loadArg(const TensorSpec &spec, void *&buffer);
  Status openFiles();
  void runEntry();
  void poisonResults();
  Status gatherResults(std::vector<std::vector<char>> &globals);
  int finish();

  Session &s_;
  const Options &opt_;
  moert_ctx *ctx_;
  const Entry *entry_ = nullptr;
  EntryFn fn_ = nullptr;
  std::unique_ptr<ShardedLoader> loader_;
  std::unique_ptr<SafetensorsFile> replay_; // --replay-routing
  std::vector<void *> args_, results_;
  double loadSeconds_ = 0, runSeconds_ = 0;
  /// Part of loadSeconds_ spent copying to the device (0-ish on CPU).
  double h2dSeconds_ = 0;
};

Driver::~Driver() {
  for (void *p : args_)
    moert_free(ctx_, p);
  for (void *p : results_)
    moert_free(ctx_, p);
}

Status Driver::openFiles() {
  bool needWeights = false, needInputs = false;
  for (const TensorSpec &a : entry_->args)
    (a.role == "weight" ? needWeights : needInputs) = true;
  if (needWeights && opt_.weights.empty())
    return supportError(MOERT_ERR_INVALID,
                        "entry '%s' takes weights: pass "
                        "--weights FILE",
                        entry_->name.c_str());
  if (needInputs && opt_.inputs.empty())
    return supportError(MOERT_ERR_INVALID,
                        "entry '%s' takes inputs: pass "
                        "--inputs FILE",
                        entry_->name.c_str());
  for (const std::string *out : {&opt_.output, &opt_.dumpRouting})
    for (const std::string *in :
         {&opt_.weights, &opt_.inputs, &opt_.check, &opt_.replayRouting})
      if (!out->empty() && sameFile(*in, *out))
        return supportError(MOERT_ERR_INVALID, "%s is the same file as %s",
                            out->c_str(), in->c_str());
  if (!opt_.dumpRouting.empty() && (opt_.dumpRouting == opt_.output ||
                                    sameFile(opt_.dumpRouting, opt_.output)))
    return supportError(MOERT_ERR_INVALID,
                        "--dump-routing and --output must be different files");
  if (!opt_.replayRouting.empty())
    MOERT_TRY(SafetensorsFile::open(opt_.replayRouting, replay_));
  loader_ = std::make_unique<ShardedLoader>(s_.manifest.mesh, s_.coords);
  MOERT_TRY(loader_->open(opt_.weights, opt_.inputs));
  if (world().rank != 0)
    return Status::ok();
  if (!opt_.check.empty()) {
    std::unique_ptr<SafetensorsFile> ref;
    MOERT_TRY(SafetensorsFile::open(opt_.check, ref));
  }
  if (!opt_.dumpRouting.empty())
    MOERT_TRY(probeWritable(opt_.dumpRouting));
  return probeWritable(opt_.output);
}

Status Driver::loadArg(const TensorSpec &spec, void *&buffer) {
  int64_t bytes = spec.localBytes();
  std::vector<char> host;
  MOERT_TRY(hostBuffer(spec, host));
  if (replay_ && spec.role == "input" && isRoutingTensor(spec))
    MOERT_TRY(loader_->readFrom(*replay_, spec, host.data()));
  else
    MOERT_TRY(loader_->read(spec, host.data()));
  MOERT_TRY(deviceBuffer(ctx_, spec, buffer));
  // Each weight goes to the device once; the copy is timed apart from the
  // file reads so that H2D cost is visible on GPUs.
  double start = now();
  if (moert_copy_to_device(ctx_, buffer, host.data(), bytes) != MOERT_OK ||
      moert_synchronize(ctx_) != MOERT_OK)
    return ctxError(ctx_, "copying arguments to the device");
  h2dSeconds_ += now() - start;
  return Status::ok();
}

Status Driver::loadArgs() {
  MOERT_TRY(openFiles());
  args_.assign(entry_->args.size(), nullptr);
  for (const TensorSpec &spec : entry_->args)
    MOERT_TRY(loadArg(spec, args_[spec.index]));
  results_.assign(entry_->results.size(), nullptr);
  for (const TensorSpec &spec : entry_->results)
    MOERT_TRY(deviceBuffer(ctx_, spec, results_[spec.index]));
  return Status::ok();
}

bool Driver::loadAll() {
  double start = now();
  Status s = loadArgs();
  if (!s.isOk())
    report("error: %s", s.message().c_str());
  loadSeconds_ = now() - start;
  if (loader_)
    loader_->close();
  return s_.agree(s.isOk(), "loading weights and inputs");
}

/// Warmup and timed runs; a failure here is this rank's alone as far as it
/// knows, and others may wait in a collective: report and abort.
void Driver::runEntry() {
  for (int64_t i = 0; i < opt_.warmup + opt_.repeat; ++i) {
    if (i == opt_.warmup) {
      moert_ctx_reset_stats(ctx_);
      runSeconds_ = 0;
    }
    poisonResults();
    // The expert load of the last run (ExpertLoad.h).
    moert_ctx_record_expert_load(ctx_, i + 1 == opt_.warmup + opt_.repeat);
    double start = now();
    fn_(ctx_, args_.data(), results_.data());
    moert_synchronize(ctx_);
    runSeconds_ += now() - start;
    if (moert_status st = moert_ctx_status(ctx_); st != MOERT_OK) {
      Status s = ctxError(
          ctx_, format("running entry '%s'", entry_->name.c_str()).c_str());
      if (st == MOERT_ERR_RECV_BOUND)
        fatalOnEveryRank(ctx_, s);
      fatal(s);
    }
  }
}

/// Fills every result buffer with NaN bytes before a run, so that an output
/// the module fails to write can never pass --check with stale data.
void Driver::poisonResults() {
  for (const TensorSpec &spec : entry_->results) {
    std::vector<unsigned char> nan(static_cast<size_t>(spec.localBytes()),
                                   0xFF);
    if (moert_copy_to_device(ctx_, results_[spec.index], nan.data(),
                             spec.localBytes()) != MOERT_OK)
      fatal(ctxError(ctx_, "poisoning the result buffers"));
  }
}

Status Driver::gatherResults(std::vector<std::vector<char>> &globals) {
  for (const TensorSpec &spec : entry_->results) {
    std::vector<char> global;
    MOERT_TRY(s_.gatherTensor(spec, results_[spec.index], global));
    globals.push_back(std::move(global));
  }
  return Status::ok();
}

/// Gathers, writes and reports; returns the exit status of this rank.
int Driver::finish() {
  std::vector<std::vector<char>> globals;
  Status s = gatherResults(globals);
  std::vector<std::string> stats, traces;
  ExpertLoad load = parseExpertLoad(moert_ctx_stats_json(ctx_));
  if (s.isOk())
    s = sumExpertLoad(ctx_, tokensCounted(s_, *entry_), load);
  if (s.isOk())
    s = s_.gatherStrings(
        rankStats(ctx_, loadSeconds_, h2dSeconds_, runSeconds_), stats);
  if (s.isOk() && !opt_.trace.empty())
    s = s_.gatherStrings(moert_ctx_trace_json(ctx_), traces);
  if (!s.isOk())
    fatal(s);
  if (world().rank != 0)
    return 0;
  // The model's outputs; the routing tensors go to --dump-routing only.
  Entry outputs = *entry_;
  outputs.results.erase(std::remove_if(outputs.results.begin(),
                                       outputs.results.end(), isRoutingTensor),
                        outputs.results.end());
  std::vector<TensorData> tensors;
  for (const TensorSpec &spec : outputs.results)
    tensors.push_back(
        {spec.name, spec.dtype, spec.shape, globals[spec.index].data()});
  s = writeSafetensors(opt_.output, tensors);
  if (s.isOk() && !opt_.dumpRouting.empty())
    s = writeRouting(opt_.dumpRouting, *entry_, globals);
  if (!load.empty())
    stats[0] = withMember(stats[0], "expert_load",
                          expertLoadJson(load, epSize(s_.manifest.mesh)));
  if (s.isOk() && !opt_.stats.empty())
    s = writeStats(opt_.stats, stats);
  if (s.isOk() && !opt_.trace.empty())
    s = writeTrace(opt_.trace, traces);
  if (!s.isOk()) {
    report("error: %s", s.message().c_str());
    return 1;
  }
  if (!opt_.quiet) {
    printTables(stats, {loadSeconds_, h2dSeconds_, runSeconds_, opt_.repeat});
    printExpertLoad(load, "", epSize(s_.manifest.mesh));
  }
  return opt_.check.empty() || checkOutputs(opt_.check, outputs, globals,
                                            opt_.rtol, opt_.atol)
             ? 0
             : 1;
}

int Driver::run() {
  entry_ = &s_.entry(opt_.entry);
  fn_ = s_.function(opt_.entry);
  if (Status s = checkRoutingEntry(*entry_, !opt_.dumpRouting.empty(),
                                   !opt_.replayRouting.empty());
      !s.isOk())
    fatal(s);
  if (!loadAll())
    return 1;
  runEntry();
  return finish();
}

} // namespace

int main(int argc, char **argv) {
  Options opt;
  Status s = parseArgs(argc, argv, opt);
  if (opt.help) {
    std::fputs(usageText(), stdout);
    return 0;
  }
  if (!s.isOk()) {
    std::fprintf(stderr,
                 "moe-run: error: %s\n(run moe-run --help for "
                 "usage)\n",
                 s.message().c_str());
    return 2;
  }
  if (!opt.calibrate.empty()) {
    s = initWorld(&argc, &argv, opt.device == "cuda");
    if (!s.isOk())
      fatal(s);
    int rc = runCalibration(opt);
    moert_world_finalize();
    return rc;
  }
  Manifest manifest; // the default device is the manifest's target
  Status loaded = loadManifest(joinPath(opt.outDir, "manifest.json"), manifest);
  if (opt.device.empty())
    opt.device = loaded.isOk() && manifest.target == "cuda" ? "cuda" : "cpu";
  s = initWorld(&argc, &argv, opt.device == "cuda");
  if (!s.isOk())
    fatal(s);
  int rc;
  try {
    Session session(opt, std::move(manifest), std::move(loaded));
    if (opt.train) {
      rc = session.start(trainingEntries(opt)) ? runTraining(session) : 1;
    } else if (!session.start({opt.entry})) {
      rc = 1;
    } else {
      Driver d(session);
      rc = d.run();
    }
  } catch (const std::bad_alloc &) {
    // Every tensor buffer is allocated through hostBuffer / deviceBuffer,
    // which name the tensor; this catches what is left (a report, a gather).
    fatal(supportError(MOERT_ERR_NOMEM, "out of host memory"));
  }
  moert_world_finalize();
  return rc;
}
