//===- World.cpp - Ranks, error reports and exits of moe-run --------------===//
//
// moe-run talks to MPI directly for two things the C ABI has no call for:
// the world size before a context exists, and MPI_Abort after an error that
// only this rank saw.
//
//===----------------------------------------------------------------------===//
#include "World.h"

#include "moert/moert.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <string>

#ifdef MOE_HAVE_MPI
// The C API only: keep OpenMPI's C++ bindings (and their library) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

using namespace moert;

namespace moe_run {

namespace {

World gWorld;

/// Size of the job from the launcher's environment, 0 if unknown.
int launcherSize() {
  for (const char *var :
       {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"})
    if (const char *v = std::getenv(var))
      return std::atoi(v);
  return 0;
}

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
  std::fflush(stdout);
  std::fflush(stderr);
#ifdef MOE_HAVE_MPI
  if (gWorld.mpi && gWorld.size > 1)
    MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  std::_Exit(1);
}

void fatal(const Status &s) {
  report("error: %s", s.message().c_str());
  abortAll();
}

Status initWorld(int *argc, char ***argv, bool cuda) {
  if (!moert_world_launched() || launcherSize() == 1)
    return Status::ok();
  moert_status st =
      moert_world_init(argc, argv, cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI);
  if (st == MOERT_ERR_UNSUPPORTED)
    return supportError(st, "started by an MPI launcher, but this runtime was "
                            "built without MPI (install libopenmpi-dev and "
                            "rebuild)");
  if (st != MOERT_OK)
    return supportError(st, "MPI initialization failed (status %d)", st);
#ifdef MOE_HAVE_MPI
  gWorld.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &gWorld.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &gWorld.size);
#endif
  return Status::ok();
}

} // namespace moe_run
