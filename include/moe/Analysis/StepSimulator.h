//===- StepSimulator.h - Time line of one step of a per-rank program -*- C++
//-*-===//
//
// The simulator of the planner (docs/planner.md): the per-rank program that
// the compile pipeline produces (tensor level, after sharding, DTD,
// differentiation and moe-overlap), replayed on the two resources of the cost
// model's list scheduler (CostModel.h): the compute resource runs the ops in
// program order, the link runs the collectives in the order they are
// started. The runtime is host driven, so
//
//   - a collective starts when its operands exist and the compute before it
//     in program order has ended (the host issues it after that work);
//   - a blocking collective stalls the compute until it ends;
//   - a `*_start` collective does not: the compute goes on, and the
//     `moe.wait` of its future stalls the compute until it ends.
//
// Every op is priced by CostModel::op. The gradient of an expert FFN or a
// dense FFN recomputes its first layer (CostModel: recompute + dgrad +
// wgrad); that share of its time is reported as recompute. Hook for
// checkpointing policies: an op carrying the unit attribute `moe.recompute`
// counts whole as recompute.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_ANALYSIS_STEPSIMULATOR_H
#define MOE_ANALYSIS_STEPSIMULATOR_H

#include "moe/Analysis/CostModel.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallVector.h"

#include <map>
#include <string>

namespace mlir {
namespace func {
class FuncOp;
} // namespace func

namespace moe {
namespace cost {

/// The attribute that marks an op as recomputation (checkpointing's hook).
inline constexpr llvm::StringLiteral kRecomputeAttrName = "moe.recompute";

/// One interval of the time line.
struct SimEvent {
  /// On the compute track: the op's name without `moe.` (the runtime's
  /// phase names); on the link: `all_to_all_v over [ep]` (the runtime's
  /// transfer names).
  std::string name;
  Resource resource = Resource::Compute;
  double start = 0, seconds = 0;
  /// The function (entry point) it belongs to.
  std::string entry;
  bool recompute = false;
};

/// The predicted time line of one step: the functions simulated one after
/// the other (a training step: forward_train, backward, step_adamw).
struct StepSimulation {
  llvm::SmallVector<SimEvent> events;
  /// End of the last event.
  double seconds = 0;
  /// Busy time of the compute resource, without and with recompute.
  double computeSeconds = 0;
  double recomputeSeconds = 0;
  /// Busy time of the link.
  double commSeconds = 0;
  /// seconds - computeSeconds - recomputeSeconds: the communication the
  /// schedule does not hide (blocking collectives, waits).
  double exposedCommSeconds = 0;
  /// Bytes one rank sends per step over links inside its node and between
  /// nodes (the cost model's placement), and per collective kind and axes
  /// ("all_to_all_v over [ep]").
  double intraNodeBytes = 0, interNodeBytes = 0;
  std::map<std::string, double> bytesByCollective;
};

/// How the simulator prices data-dependent work.
struct SimulateOptions {
  /// Dropless layers: the packed receive buffer of the expert FFN is sized
  /// for the worst case (every token of every source to this rank), and
  /// CostModel::op prices that bound. With this option the simulator
  /// assumes balanced routing instead: an expert FFN (or its gradient) on a
  /// packed buffer with `counts[S, E]` computes rows / S rows, and an
  /// all_to_all_v sends rows / S of its input rows (S = dim 0 of its send
  /// counts), (p-1)/p of them to other ranks.
  bool balancedDropless = true;
};

/// Simulates `functions` one after the other (each starts when the previous
/// one's last event ended). Fails, naming the op, when an op of the moe
/// dialect cannot be priced (a dynamic shape).
llvm::Expected<StepSimulation>
simulateStep(const CostModel &model, llvm::ArrayRef<func::FuncOp> functions,
             const SimulateOptions &options = {});

/// The time line as Chrome trace events in the format of `moe-run --trace`
/// (pid = rank, tid 0 compute, tid 1 communication, microseconds), the same
/// time line for ranks 0 .. ranks-1 (the program is the same on every rank
/// and the cost model prices a group by its worst member). Each rank is
/// named "rank R (predicted)". `pidOffset` is added to every pid, so that a
/// measured trace and a predicted one can share a file.
std::string renderChromeTrace(const StepSimulation &sim, int64_t ranks,
                              int64_t pidOffset = 0);

} // namespace cost
} // namespace moe
} // namespace mlir

#endif // MOE_ANALYSIS_STEPSIMULATOR_H
