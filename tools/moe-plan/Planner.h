//===- Planner.h - Candidate layouts, their compile and their price -------===//
//
// moe-plan's model (docs/planner.md): the space of candidate layouts, the
// compile of one candidate by the compile pipeline (the same one moe-compile
// runs), the step simulation of its per-rank program and its memory per
// rank, all priced by the one cost model (include/moe/Analysis).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_PLAN_PLANNER_H
#define MOE_PLAN_PLANNER_H

#include "moe/Analysis/CostModel.h"
#include "moe/Analysis/StepSimulator.h"

#include "mlir/IR/BuiltinOps.h"

#include <optional>
#include <string>
#include <vector>

namespace mlir {
namespace moe {
struct CompilePipelineOptions;
} // namespace moe
} // namespace mlir

namespace moeplan {

enum class Choice { Off, On, Both };

/// The dimensions the planner enumerates.
struct Space {
  /// Ranks of every candidate mesh (dp x ep x tp).
  int64_t devices = 1;
  /// Largest tp tried (default: the cluster's devices per node).
  int64_t maxTp = 8;
  /// A fixed mesh ("ep=4,tp=2"); empty: every dp x ep x tp of `devices`.
  std::string mesh;
  Choice dtd = Choice::Both, expertTp = Choice::Both, zero1 = Choice::Both;
  /// moe-overlap degrees (tried with ep > 1).
  std::vector<int64_t> degrees{1, 2, 4, 8};
  bool train = false;
  // Hooks for the dimensions of other branches (docs/planner.md, "Adding a
  // dimension"): give the values here, map them to the pipeline options in
  // applyCandidate and to the command line in commandLine. On main the
  // pipeline has neither option, so each has its one value.
  /// Checkpointing policies (`--checkpoint none|full|cac|auto`).
  std::vector<std::string> checkpoint{"none"};
  /// Hierarchical all-to-all off/on (`--hierarchical-a2a
  /// --ranks-per-node`, node split from the cluster's devices per node).
  std::vector<bool> hierarchicalA2A{false};
};

/// One layout.
struct Candidate {
  int64_t dp = 1, ep = 1, tp = 1;
  bool dtd = false, expertTp = false, zero1 = false;
  int64_t degree = 1;
  std::string checkpoint = "none";
  bool hierarchicalA2A = false;
  int64_t ranksPerNode = 0;

  int64_t ranks() const { return dp * ep * tp; }
  /// "dp=2,ep=4,tp=1".
  std::string mesh() const;
};

/// The candidates of `space`, mesh by mesh (tp, then ep ascending).
std::vector<Candidate> enumerate(const Space &space);

/// Sets the compile pipeline's options for `c` (the one place where a
/// candidate becomes options).
void applyCandidate(const Candidate &c, bool train, const std::string &cluster,
                    mlir::moe::CompilePipelineOptions &options);

/// The moe-compile command line that compiles `c`.
std::string commandLine(const Candidate &c, bool train,
                        const std::string &model, const std::string &cluster);

/// Memory of one rank, bytes.
struct Memory {
  double weights = 0, grads = 0, optimizerState = 0, activations = 0;
  double total() const {
    return weights + grads + optimizerState + activations;
  }
};

/// A candidate with its price, or the reason it was rejected.
struct Evaluation {
  Candidate candidate;
  bool feasible = false;
  std::string rejected;
  mlir::moe::cost::StepSimulation sim;
  Memory memory;
  double compileSeconds = 0;
};

/// "1.50 GiB", "96.00 KiB", "12 B".
std::string humanBytes(double bytes);

/// Compiles a copy of `model` for `c` with the compile pipeline, simulates
/// one step of its per-rank program (inference: forward; training:
/// forward_train, backward, step_adamw) and sizes its memory from the
/// manifest; rejects it (the pipeline's first error, or the memory it needs
/// against the device's) otherwise. `keepEvents`: keep the time line.
Evaluation evaluate(mlir::ModuleOp model, const Candidate &c, bool train,
                    const std::string &clusterPath,
                    const mlir::moe::cost::CostModel &costModel,
                    bool keepEvents);

/// The reason `c` is rejected without compiling it, from the candidates
/// already evaluated: the plain layout of its mesh did not compile, or the
/// same layout with ZeRO-1 did not fit in memory.
std::optional<std::string> prunedBy(const Candidate &c,
                                    const std::vector<Evaluation> &done);

/// Orders feasible evaluations by predicted step time (fewer bytes sent on
/// a tie), rejected ones after them.
void rank(std::vector<Evaluation> &evaluations);

} // namespace moeplan

#endif // MOE_PLAN_PLANNER_H
