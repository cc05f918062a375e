//===- World.h - Ranks, error reports and exits of moe-run ------*- C++ -*-===//
//
// Failure discipline under mpirun: problems every rank sees alike (options,
// manifest, library) are reported by every rank, which then exits; problems
// one rank may see alone (a slice of a truncated file) are agreed on with an
// allgather before any collective (Driver::agree); a failure during the run
// (when the other ranks may be waiting in a collective) is reported and
// followed by moert_world_abort (fatal), so no rank is left waiting.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_WORLD_H
#define MOE_RUN_WORLD_H

#include "support/Format.h"

typedef struct moert_ctx moert_ctx;

namespace moe_run {

struct World {
  bool mpi = false; // MPI initialized by us
  int rank = 0, size = 1;
};

/// This process's rank and the number of ranks (1 and 0 without a launcher).
const World &world();

/// Starts MPI (NCCL bootstrap with `cuda`) when run by an MPI launcher with
/// more than one rank, and records rank and size.
moert::Status initWorld(int *argc, char ***argv, bool cuda);

/// One line on stderr, prefixed with the rank when there are several.
__attribute__((format(printf, 1, 2))) void report(const char *fmt, ...);

/// Ends this rank after an error the other ranks may not share: with MPI,
/// moert_world_abort brings every rank down (the message is already printed).
[[noreturn]] void abortAll();

/// report("error: ...") and abortAll().
[[noreturn]] void fatal(const moert::Status &s);

/// The same for an error that every rank meets at the same point of a run
/// (MOERT_ERR_RECV_BOUND: every rank checks every rank's receive counts):
/// every rank reports it, a barrier waits for all reports, then the job
/// ends, so that the abort of one rank cannot cut off another's report.
[[noreturn]] void fatalOnEveryRank(moert_ctx *ctx, const moert::Status &s);

} // namespace moe_run

#endif // MOE_RUN_WORLD_H
