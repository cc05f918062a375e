//===- Options.cpp - Command line of moe-run ------------------------------===//
#include "Options.h"

#include "Calibrate.h"
#include "moert/moert.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>

using namespace moert;

namespace moe_run {

namespace {

const char *const kUsage =
    "usage: moe-run OUT_DIR --weights W.safetensors --inputs X.safetensors\n"
    "               --output Y.safetensors [options]\n"
    "       moe-run OUT_DIR --train --steps N --weights W.safetensors\n"
    "               --inputs X.safetensors --targets T.safetensors [options]\n"
    "\n"
    "Runs the compiled module in OUT_DIR (written by moe-compile) on this\n"
    "rank; under `mpirun -np N` on N ranks (N = product of the module's "
    "mesh).\n"
    "Every rank reads only its slice of each weight and input; rank 0 writes\n"
    "the gathered outputs.\n"
    "\n"
    "options:\n"
    "  --weights PATH      the weights (Hugging Face names): a safetensors "
    "file, or a\n"
    "                      checkpoint folder (model.safetensors.index.json "
    "and shards;\n"
    "                      F8_E4M3 with block scales is dequantized)\n"
    "  --inputs FILE       safetensors file with the inputs\n"
    "  --output FILE       safetensors file to write (atomically, on rank 0)\n"
    "  --entry NAME        entry point to run (default: forward)\n"
    "  --device cpu|cuda   device (default: the manifest's target, else cpu)\n"
    "  --check REF         compare every output with the same-named tensor "
    "of REF\n"
    "  --rtol R            relative tolerance of --check (default: 1e-4)\n"
    "  --atol A            absolute tolerance of --check (default: 1e-5)\n"
    "  --stats FILE        write per-rank statistics as JSON (rank 0)\n"
    "  --trace FILE        write a Chrome trace of all ranks (rank 0)\n"
    "  --repeat N          timed runs (default: 1)\n"
    "  --warmup N          untimed runs before them (default: 0)\n"
    "  --threads N         CPU threads per rank (default: OMP_NUM_THREADS,\n"
    "                      else the node's cores / the ranks on the node)\n"
    "  --net SPEC          emulate a slower link per mesh axis: every\n"
    "                      collective over the axis completes no earlier than\n"
    "                      alpha + bytes/bw after it starts (link time only),\n"
    "                      e.g. ep:alpha=50us,bw=1GB/s;tp:bw=100GB/s\n"
    "  --timeout SECONDS   a collective not done after this fails (default: "
    "300)\n"
    "  --dump-routing FILE write each layer's chosen experts and gate\n"
    "                      weights (routing.<layer>.experts / .weights,\n"
    "                      global token order; compiled with --routing;\n"
    "                      with --train: the first step's)\n"
    "  --replay-routing FILE  force the experts routing.<layer>.experts of\n"
    "                      FILE (entry forward_replay; forward_train_replay\n"
    "                      with --train); gate weights from the scores\n"
    "  --quiet             print no tables\n"
    "  --help              print this help\n"
    "\n"
    "training (a module compiled with moe-compile --train; docs/spec.md 7):\n"
    "  --train             run N training steps (forward_train, backward,\n"
    "                      step_<optimizer>) instead of one entry point\n"
    "  --steps N           number of steps (required, >= 0; 0 loads and saves\n"
    "                      the weights and state, e.g. on another mesh)\n"
    "  --targets FILE      tensor 'hidden_states' of the output's shape "
    "(required)\n"
    "  --optimizer NAME    adamw or sgd (default: adamw)\n"
    "  --lr X              learning rate, finite and > 0 (default: 1e-3)\n"
    "  --betas B1,B2       adamw, each in [0, 1) (default: 0.9,0.999)\n"
    "  --eps E             adamw, >= 0 (default: 1e-8)\n"
    "  --momentum M        sgd, >= 0 (default: 0)\n"
    "  --weight-decay W    >= 0; decoupled for adamw (default: 0.01), added\n"
    "                      to the gradient for sgd (default: 0)\n"
    "  --bias-update-rate R  selection-bias update speed, >= 0 (default:\n"
    "                      0.001; models with a selection bias only)\n"
    "  --clip-grad-norm X  scale the gradients by X / (norm + 1e-6) when that\n"
    "                      is < 1, before the optimizer step (norm: the\n"
    "                      global L2 norm of every weight's gradient)\n"
    "  --optimizer-state FILE  resume from this state (default: zeros, "
    "step 0)\n"
    "  --save-weights FILE     write the weights after the last step (F32)\n"
    "  --save-optimizer-state FILE  write NAME.exp_avg / NAME.exp_avg_sq\n"
    "                      (adamw) or NAME.momentum_buffer (sgd) and\n"
    "                      optimizer.step\n"
    "  --json              print the losses as one JSON object at the end\n"
    "                      (no step lines, no tables)\n"
    "  --grads FILE        write the first step's gradients: 'hidden_states'\n"
    "                      (dX) and every weight under its name (F32)\n"
    "  Hyperparameters are rounded to f32. Nothing is written unless every\n"
    "  step succeeds; a NaN or Inf in the loss or a gradient stops the run.\n"
    "\n"
    "calibration (docs/user-guide.md, \"Cluster files\"):\n"
    "  moe-run --calibrate FILE.json [--mesh AXIS=N,...] [--device D]\n"
    "                      measure the GEMM and copy rates and each mesh\n"
    "                      axis's all-to-all (alpha, bandwidth) and write the\n"
    "                      cluster file of moe-compile --cluster (under\n"
    "                      mpirun -np N; --mesh default: ep=N)\n"
    "\n"
    "Exit status: 0 on success, 1 on an error or a --check mismatch, 2 on a\n"
    "usage error.\n";

Status parseNumber(const std::string &flag, const std::string &text, double lo,
                   double &out) {
  char *end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || errno || !std::isfinite(v) || v < lo)
    return supportError(MOERT_ERR_INVALID,
                        "%s expects a number >= %g, got '%s'", flag.c_str(), lo,
                        text.c_str());
  out = v;
  return Status::ok();
}

Status parseCount(const std::string &flag, const std::string &text, int64_t lo,
                  int64_t &out) {
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end || errno || v < lo)
    return supportError(MOERT_ERR_INVALID,
                        "%s expects an integer >= %lld, got '%s'", flag.c_str(),
                        static_cast<long long>(lo), text.c_str());
  out = v;
  return Status::ok();
}

/// The raw values of the training options, checked together at the end.
struct RawTrain {
  std::map<std::string, std::string> given; // flag -> text
};

const char *const kTrainFlags[] = {"--steps",
                                   "--targets",
                                   "--optimizer",
                                   "--lr",
                                   "--betas",
                                   "--eps",
                                   "--momentum",
                                   "--weight-decay",
                                   "--bias-update-rate",
                                   "--clip-grad-norm",
                                   "--optimizer-state",
                                   "--save-weights",
                                   "--save-optimizer-state",
                                   "--grads"};

Status setOption(Options &o, RawTrain &raw, const std::string &flag,
                 const std::string &v) {
  for (const char *f : kTrainFlags)
    if (flag == f) {
      if (v.empty())
        return supportError(MOERT_ERR_INVALID, "%s expects a value",
                            flag.c_str());
      raw.given[flag] = v;
      return Status::ok();
    }
  if (flag == "--calibrate" || flag == "--mesh") { // Calibrate.h
    if (v.empty())
      return supportError(MOERT_ERR_INVALID, "%s expects a value",
                          flag.c_str());
    (flag == "--calibrate" ? o.calibrate : o.mesh) = v;
    return Status::ok();
  }
  std::map<std::string, std::string *> strings = {
      {"--weights", &o.weights},
      {"--inputs", &o.inputs},
      {"--output", &o.output},
      {"--entry", &o.entry},
      {"--device", &o.device},
      {"--check", &o.check},
      {"--stats", &o.stats},
      {"--trace", &o.trace},
      {"--net", &o.net},
      {"--dump-routing", &o.dumpRouting},
      {"--replay-routing", &o.replayRouting}};
  if (flag == "--entry" || flag == "--output" || flag == "--check" ||
      flag == "--repeat" || flag == "--warmup")
    raw.given[flag] = v; // refused with --train
  auto it = strings.find(flag);
  if (it != strings.end()) {
    if (v.empty())
      return supportError(MOERT_ERR_INVALID, "%s expects a value",
                          flag.c_str());
    *it->second = v;
    return Status::ok();
  }
  if (flag == "--rtol")
    return parseNumber(flag, v, 0, o.rtol);
  if (flag == "--atol")
    return parseNumber(flag, v, 0, o.atol);
  if (flag == "--timeout")
    return parseNumber(flag, v, 1e-3, o.timeout);
  if (flag == "--repeat")
    return parseCount(flag, v, 1, o.repeat);
  if (flag == "--warmup")
    return parseCount(flag, v, 0, o.warmup);
  if (flag == "--threads")
    return parseCount(flag, v, 0, o.threads);
  return supportError(MOERT_ERR_INVALID, "unknown option '%s'", flag.c_str());
}

/// A hyperparameter: any number (nan and inf included), so that the rule it
/// breaks can be named.
Status parseReal(const std::string &flag, const std::string &text,
                 double &out) {
  char *end = nullptr;
  out = std::strtod(text.c_str(), &end);
  if (text.empty() || *end)
    return supportError(MOERT_ERR_INVALID, "%s expects a number, got '%s'",
                        flag.c_str(), text.c_str());
  return Status::ok();
}

/// train-reference's rule: finite and `ok`, else "FLAG: must be a finite
/// number RULE (got V)". Rounds to f32.
Status hyper(const std::string &flag, double v, bool ok, const char *rule,
             float &out) {
  if (!std::isfinite(v) || !ok)
    return supportError(MOERT_ERR_INVALID,
                        "%s: must be a finite number %s (got %g)", flag.c_str(),
                        rule, v);
  out = static_cast<float>(v);
  // The kernels read f32: the rounded value must still follow the rule.
  if (!std::isfinite(out) || (v > 0 && out == 0))
    return supportError(MOERT_ERR_INVALID,
                        "%s: must be a finite number %s (got %g, which is %g "
                        "in f32)",
                        flag.c_str(), rule, v, static_cast<double>(out));
  return Status::ok();
}

Status parseTrain(const RawTrain &raw, TrainOptions &t) {
  auto has = [&](const char *f) { return raw.given.count(f) != 0; };
  auto text = [&](const char *f) { return raw.given.at(f); };
  if (!has("--steps"))
    return supportError(MOERT_ERR_INVALID, "--train needs --steps N");
  if (!has("--targets"))
    return supportError(MOERT_ERR_INVALID,
                        "--train needs --targets T.safetensors");
  MOERT_TRY(parseCount("--steps", text("--steps"), 0, t.steps));
  if (t.steps == 0 && has("--grads"))
    return supportError(MOERT_ERR_INVALID,
                        "--grads: --steps 0 computes no gradient (the "
                        "gradients are those of the first step)");
  t.targets = text("--targets");
  for (auto [flag, field] : {std::pair<const char *, std::string *>{
                                 "--optimizer-state", &t.optimizerState},
                             {"--save-weights", &t.saveWeights},
                             {"--save-optimizer-state", &t.saveOptimizerState},
                             {"--grads", &t.grads}})
    if (has(flag))
      *field = text(flag);
  if (has("--optimizer"))
    t.optimizer = text("--optimizer");
  if (t.optimizer != "adamw" && t.optimizer != "sgd")
    return supportError(MOERT_ERR_INVALID,
                        "--optimizer: '%s' is not adamw or sgd",
                        t.optimizer.c_str());
  double v;
  if (has("--lr")) {
    MOERT_TRY(parseReal("--lr", text("--lr"), v));
    MOERT_TRY(hyper("--lr", v, v > 0, "> 0", t.lr));
  }
  bool sgd = t.optimizer == "sgd";
  if (sgd && (has("--betas") || has("--eps")))
    return supportError(MOERT_ERR_INVALID,
                        "--betas/--eps: apply to adamw only");
  if (!sgd && has("--momentum"))
    return supportError(MOERT_ERR_INVALID,
                        "--momentum: applies to sgd only (adamw has betas)");
  if (sgd)
    t.weightDecay = 0;
  if (has("--betas")) {
    std::string b = text("--betas");
    size_t comma = b.find(',');
    double b1, b2;
    if (comma == std::string::npos ||
        !parseReal("--betas", b.substr(0, comma), b1).isOk() ||
        !parseReal("--betas", b.substr(comma + 1), b2).isOk())
      return supportError(MOERT_ERR_INVALID,
                          "--betas: expected two numbers B1,B2 (got '%s')",
                          b.c_str());
    MOERT_TRY(hyper("--betas", b1, b1 >= 0 && b1 < 1, "in [0, 1)", t.beta1));
    MOERT_TRY(hyper("--betas", b2, b2 >= 0 && b2 < 1, "in [0, 1)", t.beta2));
  }
  struct Rule {
    const char *flag;
    float *field;
  };
  for (Rule r : {Rule{"--eps", &t.eps}, Rule{"--momentum", &t.momentum},
                 Rule{"--weight-decay", &t.weightDecay},
                 Rule{"--bias-update-rate", &t.biasUpdateRate}})
    if (has(r.flag)) {
      MOERT_TRY(parseReal(r.flag, text(r.flag), v));
      MOERT_TRY(hyper(r.flag, v, v >= 0, ">= 0", *r.field));
    }
  t.biasRateGiven = has("--bias-update-rate");
  if (has("--clip-grad-norm")) {
    MOERT_TRY(parseReal("--clip-grad-norm", text("--clip-grad-norm"), v));
    MOERT_TRY(hyper("--clip-grad-norm", v, v > 0, "> 0", t.clipGradNorm));
  }
  if (sgd) {
    t.beta1 = t.beta2 = t.eps = 0;
  } else {
    t.momentum = 0;
  }
  return Status::ok();
}

/// The combinations of options: inference needs --output, training refuses
/// the options of a single entry run, and the training options need --train.
Status checkMode(Options &o, const RawTrain &raw) {
  if (!o.train) {
    if (o.t.json)
      return supportError(MOERT_ERR_INVALID, "--json needs --train");
    for (const char *f : kTrainFlags)
      if (raw.given.count(f))
        return supportError(MOERT_ERR_INVALID, "%s needs --train", f);
    if (o.output.empty())
      return supportError(MOERT_ERR_INVALID, "missing --output FILE");
    if (!o.replayRouting.empty()) {
      if (raw.given.count("--entry"))
        return supportError(MOERT_ERR_INVALID,
                            "--replay-routing runs the entry forward_replay: "
                            "it does not take --entry");
      o.entry = "forward_replay";
    }
    return Status::ok();
  }
  for (const char *f :
       {"--entry", "--output", "--check", "--repeat", "--warmup"})
    if (raw.given.count(f))
      return supportError(MOERT_ERR_INVALID,
                          "%s does not apply to --train (it writes "
                          "--save-weights and --save-optimizer-state)",
                          f);
  if (o.weights.empty() || o.inputs.empty())
    return supportError(MOERT_ERR_INVALID,
                        "--train needs --weights W.safetensors and --inputs "
                        "X.safetensors");
  MOERT_TRY(parseTrain(raw, o.t));
  if (!o.dumpRouting.empty() && o.t.steps == 0)
    return supportError(MOERT_ERR_INVALID,
                        "--dump-routing writes the routing of the first step: "
                        "it needs --steps >= 1");
  return Status::ok();
}

} // namespace

Status parseArgs(int argc, char **argv, Options &o) {
  RawTrain raw;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
      return Status::ok();
    }
    if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--train") {
      o.train = true;
    } else if (a == "--json") {
      o.t.json = true;
    } else if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        MOERT_TRY(setOption(o, raw, a.substr(0, eq), a.substr(eq + 1)));
      } else {
        if (i + 1 >= argc)
          return supportError(MOERT_ERR_INVALID, "%s expects a value",
                              a.c_str());
        MOERT_TRY(setOption(o, raw, a, argv[++i]));
      }
    } else if (o.outDir.empty()) {
      o.outDir = a;
    } else {
      return supportError(MOERT_ERR_INVALID,
                          "unexpected argument '%s' (one OUT_DIR only)",
                          a.c_str());
    }
  }
  if (!o.calibrate.empty() || !o.mesh.empty())
    return checkCalibrateOptions(o);
  if (o.outDir.empty())
    return supportError(MOERT_ERR_INVALID, "missing OUT_DIR");
  MOERT_TRY(checkMode(o, raw));
  if (!o.net.empty() && moert_net_check(o.net.c_str()) != MOERT_OK)
    return supportError(MOERT_ERR_INVALID, "%s", moert_last_error());
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    return supportError(MOERT_ERR_INVALID,
                        "--device must be cpu or cuda, got '%s'",
                        o.device.c_str());
  return Status::ok();
}

const char *usageText() { return kUsage; }

} // namespace moe_run
