//===- Report.h - Statistics, traces and --check of moe-run -----*- C++ -*-===//
//
// What rank 0 writes and prints after the runs: the per-rank statistics
// (--stats), the Chrome trace (--trace), the tables of phases and
// collectives, and the comparison of every output with a reference file
// (--check).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_REPORT_H
#define MOE_RUN_REPORT_H

#include "moert/moert.h"
#include "support/Json.h"
#include "support/Manifest.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe_run {

/// This rank's statistics object (moert_ctx_stats_json) with the load, the
/// host-to-device and the run times added, as one line of JSON.
std::string rankStats(moert_ctx *ctx, double loadSeconds, double h2dSeconds,
                      double runSeconds);

/// Writes `text` to `path` through a temporary file and a rename.
moert::Status writeTextFile(const std::string &path, const std::string &text);
/// The --stats file: a JSON array of the ranks' statistics objects.
moert::Status writeStats(const std::string &path,
                         const std::vector<std::string> &stats);
/// The --trace file: one Chrome trace of the events of every rank.
moert::Status writeTrace(const std::string &path,
                         const std::vector<std::string> &traces);

struct Timings {
  double loadSeconds = 0, h2dSeconds = 0, runSeconds = 0;
  int64_t runs = 1;
};

/// Prints the load time, the phases of rank 0 and, with several ranks, the
/// collectives of all ranks (`stats`: one statistics object per rank).
void printTables(const std::vector<std::string> &stats, const Timings &t);

/// The table of the phases of one statistics object (`title` follows "rank
/// 0" in its heading, e.g. ", entry backward").
void printPhaseTable(const moert::json::Value &rank0, const std::string &title,
                     int64_t runs, double runSeconds);
/// The tables of the collectives of every rank's statistics object.
void printCollectiveTable(const std::vector<moert::json::Value> &ranks,
                          const std::string &title);

/// The statistics of one entry point of a training step, summed over the
/// steps: phases and collectives by name (the runtime's counters are reset
/// after every entry call, so that --stats separates the entries).
struct EntryStats {
  std::string name;
  int64_t runs = 0;
  double seconds = 0;
  std::map<std::string, std::pair<int64_t, double>> phases;
  std::map<std::pair<std::string, std::string>, std::pair<int64_t, int64_t>>
      collectives;
  /// Messages per (op, axes), as the runtime counts them.
  std::map<std::pair<std::string, std::string>, int64_t> messages;

  /// Adds a statistics object (moert_ctx_stats_json) of one call.
  void absorb(const char *statsJson);
  /// {"name", "runs", "seconds", "phases": [...], "collectives": [...]}.
  moert::json::Value toJson() const;
};

/// Prints the load time and, per entry, the phases of rank 0 and (with
/// several ranks) the collectives of all ranks; `stats` holds one object per
/// rank with the member "entries" (EntryStats::toJson of each entry).
void printTrainingTables(const std::vector<std::string> &stats,
                         double loadSeconds, double h2dSeconds);

/// Compares every result of `entry` (`globals`, by result index) with the
/// same-named tensor of the safetensors file `refPath`; prints one line per
/// tensor and returns true when all are within atol + rtol * |ref|.
bool checkOutputs(const std::string &refPath, const moert::Entry &entry,
                  const std::vector<std::vector<char>> &globals, double rtol,
                  double atol);

} // namespace moe_run

#endif // MOE_RUN_REPORT_H
