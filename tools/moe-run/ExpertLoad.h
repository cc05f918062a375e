//===- ExpertLoad.h - Tokens per expert, per MoE layer ----------*- C++ -*-===//
//
// The runtime records, for every moert_assign call (one per MoE layer, in
// graph order), the assignments this rank's tokens route to each expert and
// those kept after capacity (moert_ctx_record_expert_load). moe-run sums the
// records over the ranks that hold the first copy of their tokens (tensor-
// parallel ranks route the same tokens: counted once) and reports, per layer,
// tokens per expert, max / mean (the overload factor), dropped assignments
// and the experts that received nothing (docs/distributed.md, "Expert load").
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_EXPERTLOAD_H
#define MOE_RUN_EXPERTLOAD_H

#include "moert/moert.h"
#include "support/Json.h"
#include "support/Manifest.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moe_run {

/// One MoE layer: assignments routed to each expert (before capacity) and
/// kept (after it).
struct LayerLoad {
  std::vector<int64_t> routed, kept;
};
using ExpertLoad = std::vector<LayerLoad>;

/// The records of one statistics object (moert_ctx_stats_json), in order.
ExpertLoad parseExpertLoad(const char *statsJson);

/// The global load of every layer from each rank's `load`; `counts`: this
/// rank's tokens are counted (it holds the first copy of its slice of the
/// input). Collective: every rank calls it and gets the sum.
moert::Status sumExpertLoad(moert_ctx *ctx, bool counts, ExpertLoad &load);

/// The size of the mesh's ep axis (1 without one).
int64_t epSize(const moert::Mesh &mesh);

/// Per layer: {"layer", "tokens": [E], "kept": [E], "assignments",
/// "dropped", "max", "mean", "overload", "empty": [experts]}, and with
/// `ep` > 1 dividing E "ep_ranks": the assignments of each ep rank's
/// experts (E/ep consecutive experts per rank, the sharding rule).
moert::json::Value expertLoadJson(const ExpertLoad &load, int64_t ep);

class Session;
/// True when this rank's tokens count in the global load: it holds the first
/// copy of its slice of `entry`'s input (isFirstReplica; on tp > 1 only tp
/// coordinate 0).
bool tokensCounted(const Session &s, const moert::Entry &entry);

/// `object` (one statistics object as JSON text) with member `key` set.
std::string withMember(const std::string &object, const std::string &key,
                       moert::json::Value value);

/// Prints the table of `load` under "expert load" + `title`.
void printExpertLoad(const ExpertLoad &load, const std::string &title,
                     int64_t ep);

} // namespace moe_run

#endif // MOE_RUN_EXPERTLOAD_H
