//===- Options.h - Command line of moe-run ----------------------*- C++ -*-===//
//
// The options of moe-run, their parsing and the help text. Parsing reports
// the first problem as a MOERT_ERR_INVALID Status; main() prints it and exits
// with status 2.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_OPTIONS_H
#define MOE_RUN_OPTIONS_H

#include "support/Format.h"

#include <cstdint>
#include <string>

namespace moe_run {

/// The training options (--train; docs/spec.md 7.3 and docs/user-guide.md
/// "Training"). The hyperparameters hold their defaults once parseArgs has
/// checked them, rounded to f32 as the kernels read them.
struct TrainOptions {
  int64_t steps = 0;
  std::string targets, optimizer = "adamw", optimizerState;
  std::string saveWeights, saveOptimizerState, grads;
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float weightDecay = 0.01f, momentum = 0, biasUpdateRate = 0.001f;
  /// --bias-update-rate was given (an error for a model without a bias).
  bool biasRateGiven = false;
  /// --clip-grad-norm X (f32, > 0); 0 when not given (no clipping).
  float clipGradNorm = 0;
  /// --json: the losses as one JSON object at the end, no lines, no tables.
  bool json = false;
};

struct Options {
  std::string outDir, weights, inputs, output, entry = "forward", device;
  std::string check, stats, trace;
  /// --calibrate FILE.json and its --mesh (Calibrate.h).
  std::string calibrate, mesh;
  /// --dump-routing FILE / --replay-routing FILE (Routing.h).
  std::string dumpRouting, replayRouting;
  /// --net: network emulation spec (moert_ctx_options.net), "" for none.
  std::string net;
  double rtol = 1e-4, atol = 1e-5, timeout = 300;
  int64_t repeat = 1, warmup = 0, threads = 0;
  bool quiet = false, help = false, train = false;
  TrainOptions t;
};

/// The text of --help.
const char *usageText();

/// Parses argv into `o`. `--help` sets o.help and stops parsing. The device
/// is left empty when --device is absent (main() defaults it from the
/// manifest).
moert::Status parseArgs(int argc, char **argv, Options &o);

} // namespace moe_run

#endif // MOE_RUN_OPTIONS_H
