//===- Options.cpp - Command line of moe-run ------------------------------===//
#include "Options.h"

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
    "\n"
    "Runs the compiled module in OUT_DIR (written by moe-compile) on this\n"
    "rank; under `mpirun -np N` on N ranks (N = product of the module's "
    "mesh).\n"
    "Every rank reads only its slice of each weight and input; rank 0 writes\n"
    "the gathered outputs.\n"
    "\n"
    "options:\n"
    "  --weights FILE      safetensors file with the weights (Hugging Face "
    "names)\n"
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
    "  --threads N         CPU threads per rank (default: runtime default)\n"
    "  --timeout SECONDS   a collective not done after this fails (default: "
    "300)\n"
    "  --quiet             print no tables\n"
    "  --help              print this help\n"
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

Status setOption(Options &o, const std::string &flag, const std::string &v) {
  std::map<std::string, std::string *> strings = {
      {"--weights", &o.weights}, {"--inputs", &o.inputs},
      {"--output", &o.output},   {"--entry", &o.entry},
      {"--device", &o.device},   {"--check", &o.check},
      {"--stats", &o.stats},     {"--trace", &o.trace}};
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

} // namespace

Status parseArgs(int argc, char **argv, Options &o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
      return Status::ok();
    }
    if (a == "--quiet") {
      o.quiet = true;
    } else if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        MOERT_TRY(setOption(o, a.substr(0, eq), a.substr(eq + 1)));
      } else {
        if (i + 1 >= argc)
          return supportError(MOERT_ERR_INVALID, "%s expects a value",
                              a.c_str());
        MOERT_TRY(setOption(o, a, argv[++i]));
      }
    } else if (o.outDir.empty()) {
      o.outDir = a;
    } else {
      return supportError(MOERT_ERR_INVALID,
                          "unexpected argument '%s' (one OUT_DIR only)",
                          a.c_str());
    }
  }
  if (o.outDir.empty())
    return supportError(MOERT_ERR_INVALID, "missing OUT_DIR");
  if (o.output.empty())
    return supportError(MOERT_ERR_INVALID, "missing --output FILE");
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    return supportError(MOERT_ERR_INVALID,
                        "--device must be cpu or cuda, got '%s'",
                        o.device.c_str());
  return Status::ok();
}

const char *usageText() { return kUsage; }

} // namespace moe_run
