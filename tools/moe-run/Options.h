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

struct Options {
  std::string outDir, weights, inputs, output, entry = "forward", device;
  std::string check, stats, trace;
  double rtol = 1e-4, atol = 1e-5, timeout = 300;
  int64_t repeat = 1, warmup = 0, threads = 0;
  bool quiet = false, help = false;
};

/// The text of --help.
const char *usageText();

/// Parses argv into `o`. `--help` sets o.help and stops parsing. The device
/// is left empty when --device is absent (main() defaults it from the
/// manifest).
moert::Status parseArgs(int argc, char **argv, Options &o);

} // namespace moe_run

#endif // MOE_RUN_OPTIONS_H
