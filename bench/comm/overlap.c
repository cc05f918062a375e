/* overlap.c - does a started all-to-all move while the rank computes?
 *
 * Under mpirun -np N, through the C ABI only: a context with the mesh
 * ep=N (and --net-like emulation from argv[2], "" for none), an all-to-all
 * of MB megabytes per rank over ep, and a host compute loop calibrated to
 * take about as long as the all-to-all alone. Times (median of REPS, rank
 * 0): the all-to-all alone (start + wait), the compute alone, and start +
 * compute + wait; hidden = (comm + compute - overlapped) / comm.
 * Run it with and without MOERT_MPI_PROGRESS=0 (bench/comm/run.sh). */
#include "moert/moert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static volatile double sink;
static void compute(long iters) {
  double acc = 1.0;
  for (long i = 0; i < iters; ++i)
    acc = sqrt(acc * 1.0000001 + 1.0);
  sink = acc;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, n, sizeof *v, cmp);
  return v[n / 2];
}

int main(int argc, char **argv) {
  double mb = argc > 1 ? atof(argv[1]) : 16;
  const char *net = argc > 2 && argv[2][0] ? argv[2] : NULL;
  int reps = argc > 3 ? atoi(argv[3]) : 7;
  if (moert_world_init(&argc, &argv, MOERT_COMM_MPI) != MOERT_OK)
    return 1;
  int64_t n = moert_world_size();
  const char *axes[1] = {"ep"};
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.comm = MOERT_COMM_MPI;
  o.mesh_rank = 1;
  o.mesh_shape = &n;
  o.mesh_axes = axes;
  o.net = net;
  moert_ctx *ctx;
  if (moert_ctx_create(&o, &ctx) != MOERT_OK) {
    fprintf(stderr, "overlap: %s\n", moert_last_error());
    return 1;
  }
  int rank = moert_ctx_rank(ctx);
  int64_t floats = (int64_t)(mb * 1e6 / 4) / n * n;
  float *in = malloc(floats * 4), *out = malloc(floats * 4);
  for (int64_t i = 0; i < floats; ++i)
    in[i] = (float)(rank * 7 + i % 1000);
  double comm[64], comp[64], both[64];
  if (reps > 64)
    reps = 64;
  /* Calibrate: compute iterations that take the all-to-all's time. */
  void *h = moert_all_to_all_start(ctx, 1, in, out, 4, floats, 1, 1, 1, 0, 0);
  moert_wait(ctx, h);
  double t;
  for (int r = 0; r < 3; ++r) {
    moert_world_barrier(ctx);
    t = now();
    h = moert_all_to_all_start(ctx, 1, in, out, 4, floats, 1, 1, 1, 0, 0);
    moert_wait(ctx, h);
    comm[r] = now() - t;
  }
  double tComm = median(comm, 3);
  double perIter = 1e30; /* the fastest of 5: robust to preemption */
  for (int r = 0; r < 5; ++r) {
    t = now();
    compute(200000);
    double x = (now() - t) / 2e5;
    perIter = x < perIter ? x : perIter;
  }
  long iters = (long)(tComm / perIter);
  moert_world_broadcast(ctx, &iters, sizeof iters); /* same work everywhere */
  for (int r = 0; r < reps; ++r) {
    moert_world_barrier(ctx);
    t = now();
    h = moert_all_to_all_start(ctx, 1, in, out, 4, floats, 1, 1, 1, 0, 0);
    moert_wait(ctx, h);
    comm[r] = now() - t;
    moert_world_barrier(ctx);
    t = now();
    compute(iters);
    comp[r] = now() - t;
    moert_world_barrier(ctx);
    t = now();
    h = moert_all_to_all_start(ctx, 1, in, out, 4, floats, 1, 1, 1, 0, 0);
    compute(iters);
    moert_wait(ctx, h);
    both[r] = now() - t;
  }
  if (moert_ctx_status(ctx) != MOERT_OK) {
    fprintf(stderr, "overlap: %s\n", moert_ctx_error(ctx));
    return 1;
  }
  double c = median(comm, reps), k = median(comp, reps),
         b = median(both, reps);
  const char *p = getenv("MOERT_MPI_PROGRESS");
  if (rank == 0)
    printf("ranks %lld, %.1f MB per rank, net %s, progress thread %s: "
           "all-to-all %.2f ms, compute %.2f ms, both %.2f ms, hidden %.0f%%\n",
           (long long)n, mb, net ? net : "none",
           p && strcmp(p, "0") == 0 ? "off" : "on", c * 1e3, k * 1e3, b * 1e3,
           100 * (c + k - b) / c);
  moert_ctx_destroy(ctx);
  free(in);
  free(out);
  moert_world_finalize();
  return 0;
}
