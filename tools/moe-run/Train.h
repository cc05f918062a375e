//===- Train.h - moe-run --train: the training loop -------------*- C++ -*-===//
//
// N training steps over the entry points of a module compiled with --train
// (docs/module-format.md "Training entry points", docs/spec.md 7): per step
// forward_train, a check that the loss is finite, backward, a check that
// every gradient is finite (all ranks agree on it), the hyperparameters
// (optimizer.hparams), step_<optimizer> updating weights and state in place.
// Tensors flow between the entries by name. Weights, inputs, targets and the
// optimizer state load sharded; at the end the weights and the state are
// gathered to rank 0 and written (Checkpoint.h), only if every step
// succeeded.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_TRAIN_H
#define MOE_RUN_TRAIN_H

#include "Options.h"
#include "Session.h"

#include <string>
#include <vector>

namespace moe_run {

/// The entry points a training run calls: forward_train, backward and
/// step_<optimizer>.
std::vector<std::string> trainingEntries(const Options &o);

/// Runs the training of `session` (started with trainingEntries); returns
/// this rank's exit status.
int runTraining(Session &session);

} // namespace moe_run

#endif // MOE_RUN_TRAIN_H
