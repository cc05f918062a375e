//===- World.cpp - Ranks, error reports and exits of moe-run --------------===//
//
// The world is the C ABI's (moert_world_*): its size before a context exists
// comes from the launcher, and an error that only this rank saw ends every
// rank (moert_world_abort).
//
//===----------------------------------------------------------------------===//
#include "World.h"

#include "moert/moert.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace moert;

namespace moe_run {

namespace {

World gWorld;

} // namespace

const World &world() { return gWorld; }

void report(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  if (gWorld.size > 1)
    std::fprintf(stderr, "moe-run: rank %d: %s\n", gWorld.rank, msg.c_str());
  else
    std::fprintf(stderr, "moe-run: %s\n", msg.c_str());
  std::fflush(stderr);
}

void abortAll() {
  moert_world_abort(1);
  std::_Exit(1); // not reached: moert_world_abort does not return
}

void fatal(const Status &s) {
  report("error: %s", s.message().c_str());
  abortAll();
}

void fatalOnEveryRank(moert_ctx *ctx, const Status &s) {
  report("error: %s", s.message().c_str());
  if (gWorld.size > 1)
    (void)moert_world_barrier(ctx);
  abortAll();
}

Status initWorld(int *argc, char ***argv, bool cuda) {
  if (!moert_world_launched() || moert_world_launcher_size() == 1)
    return Status::ok();
  moert_status st =
      moert_world_init(argc, argv, cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI);
  if (st == MOERT_ERR_UNSUPPORTED)
    return supportError(st, "started by an MPI launcher, but this runtime was "
                            "built without MPI (install libopenmpi-dev and "
                            "rebuild)");
  if (st != MOERT_OK)
    return supportError(st, "MPI initialization failed (status %d)", st);
  gWorld.mpi = true;
  gWorld.rank = moert_world_rank();
  gWorld.size = moert_world_size();
  return Status::ok();
}

} // namespace moe_run
