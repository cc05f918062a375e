//===- Calibrate.h - moe-run --calibrate: measure this machine --*- C++ -*-===//
//
// `moe-run --calibrate FILE.json [--mesh AXES]` (under `mpirun -np N` for N
// ranks) measures what the compiler's cost model needs
// (include/moe/Analysis/CostModel.h): the GEMM rate and call overhead
// through the runtime's expert FFN, the memory copy rate, and for every mesh
// axis of more than one rank (and the whole world) the latency and
// bandwidth of its all-to-all at a few sizes, fitted to alpha-beta. Rank 0
// writes the cluster file that `moe-compile --cluster FILE.json` reads
// (docs/user-guide.md, "Cluster files"). Only the C ABI is used.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_CALIBRATE_H
#define MOE_RUN_CALIBRATE_H

#include "Options.h"

namespace moe_run {

/// Checks the options of --calibrate (no OUT_DIR, no run options; a valid
/// --mesh). Called by parseArgs.
moert::Status checkCalibrateOptions(const Options &o);

/// Runs the calibration on this rank (the world is started); returns the
/// exit status.
int runCalibration(const Options &o);

} // namespace moe_run

#endif // MOE_RUN_CALIBRATE_H
