//===- Routing.h - moe-run --dump-routing / --replay-routing ----*- C++ -*-===//
//
// Routing you can see and replay (docs/user-guide.md, "Routing"). A module
// compiled with moe-compile --routing returns every layer's choice from
// `forward` as `routing.<layer>.experts` (I32 [T, k]) and
// `routing.<layer>.weights` (F32 [T, k]), gathered in global token order;
// its `forward_replay` and `forward_train_replay` take
// `routing.<layer>.experts` as inputs. --dump-routing writes those results
// to their own safetensors file (never to --output, never --check'ed);
// --replay-routing reads those inputs from the given file.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_ROUTING_H
#define MOE_RUN_ROUTING_H

#include "support/Manifest.h"

#include <string>
#include <vector>

namespace moe_run {

/// A routing tensor (`routing.*`) of an entry.
bool isRoutingTensor(const moert::TensorSpec &spec);

/// Checks that `entry` has what --dump-routing (`dump`: routing results) and
/// --replay-routing (`replay`: routing inputs) need; the error says to
/// compile with --routing.
moert::Status checkRoutingEntry(const moert::Entry &entry, bool dump,
                                bool replay);

/// Writes the routing results of `entry` (rank 0's gathered `globals`,
/// indexed like entry.results) to `path`, with metadata naming the format
/// and the layers.
moert::Status writeRouting(const std::string &path, const moert::Entry &entry,
                           const std::vector<std::vector<char>> &globals);

} // namespace moe_run

#endif // MOE_RUN_ROUTING_H
