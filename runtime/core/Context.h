//===- Context.h - The state behind a moert_ctx handle ----------*- C++ -*-===//
//
// Shared by the compute entry points (Context.cpp), the collective entry
// points (Collectives.cpp) and the world helpers. Not part of the C ABI.
// The context layer (core/) sits above the communicators (comm/) and below
// the backends (cpu/, cuda/); see docs/runtime.md.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CORE_CONTEXT_H
#define MOERT_CORE_CONTEXT_H

#include "base/Status.h"
#include "comm/Communicator.h"
#include "core/Backend.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// Time and call counts per phase, bytes per collective and axis set.
struct Stats {
  struct Phase {
    int64_t calls = 0;
    double seconds = 0;
  };
  struct Collective {
    int64_t calls = 0;
    int64_t bytesSent = 0;
    /// Messages this rank sent to peers: n - 1 a call for an all-to-all
    /// (one to each peer of the group), all-gather and reduce-scatter (ring
    /// steps), 2(n - 1) for an all-reduce.
    int64_t messages = 0;
  };
  std::map<std::string, Phase> phases;
  /// Keyed by (op, axis names joined with ",") e.g. ("all_to_all", "ep").
  std::map<std::pair<std::string, std::string>, Collective> collectives;
  /// Collectives started with *_start and waited on, and how many of them
  /// were already complete when moert_wait came (hidden behind compute).
  int64_t asyncStarted = 0;
  int64_t asyncDoneBeforeWait = 0;
  /// Chrome trace events ("X" events), only when tracing is on.
  std::vector<std::string> traceEvents;
  /// One record per moert_assign call while expert load recording is on:
  /// assignments routed to each expert and kept after capacity.
  struct ExpertLoad {
    std::vector<int64_t> routed, kept;
  };
  std::vector<ExpertLoad> expertLoad;
};

} // namespace moert

struct moert_ctx {
  moert_ctx_options options{};
  std::vector<int64_t> meshShape;
  std::vector<std::string> meshAxes;
  std::vector<int64_t> coords; // this rank on each mesh axis

  std::unique_ptr<moert::Backend> backend;
  std::unique_ptr<moert::Communicator> world;
  /// Sub-communicator for every non-empty axis mask, made at creation.
  std::map<int64_t, std::unique_ptr<moert::Communicator>> groups;

  /// First failure (sticky); kernels are no-ops while it is set.
  moert::Status sticky;

  moert::Stats stats;
  double traceOrigin = 0;
  /// moert_ctx_record_expert_load.
  bool recordExpertLoad = false;

  /// CPU threads of the backend and ranks of the world on this node.
  int32_t threads = 0;
  int32_t localRanks = 1;
  /// options.net, owned (network emulation; docs/runtime.md).
  std::string netSpec;

  /// Arena for the entry point's intermediates (moert_arena).
  void *arena = nullptr;
  int64_t arenaBytes = 0;
  /// Staging memory for packing collectives (device memory of the backend,
  /// or host memory when the communicator wants host buffers).
  void *staging = nullptr;
  int64_t stagingBytes = 0;

  std::string statsText; // owned storage for moert_ctx_stats_json
  std::string traceText; // owned storage for moert_ctx_trace_json
};

namespace moert {

/// Records `s` as the sticky error of `ctx` if none is set yet. Returns true
/// when `s` was an error.
bool fail(moert_ctx *ctx, const Status &s);

/// Names of the axes in `axisMask`, joined with "," (e.g. "dp,ep").
std::string axisNames(const moert_ctx *ctx, int64_t axisMask);

/// Adds one call of `phase` that took `seconds`, and a trace event when
/// tracing is on.
void recordPhase(moert_ctx *ctx, const char *phase, double start,
                 double seconds);
/// Trace tracks (Chrome trace "tid") of a rank: kernels and the waits of
/// the host on tid 0, transfers of collectives on tid 1.
constexpr int kComputeTrack = 0;
constexpr int kCommTrack = 1;
/// A trace event (when tracing is on) on `track`.
void recordTraceEvent(moert_ctx *ctx, const char *name, double start,
                      double seconds, int track);
void recordCollective(moert_ctx *ctx, const char *op, int64_t axisMask,
                      int64_t bytesSent);

} // namespace moert

#endif // MOERT_CORE_CONTEXT_H
