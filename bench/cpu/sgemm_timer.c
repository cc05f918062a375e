/* sgemm_timer: an LD_PRELOAD shim that times every cblas_sgemm call.
 *
 * bench/cpu/run.sh builds it (gcc -O2 -shared -fPIC ... -ldl) and runs moe-run
 * once more under it, to split the module's expert_ffn phase into time spent
 * inside OpenBLAS and time spent around it (activation pass, row gathers,
 * thread hand-offs). Each call's M, N, K and wall seconds go to the file named
 * by $SGEMM_TIMER_OUT at exit, one call per line: "M N K seconds".
 * The shim forwards to the next cblas_sgemm (OpenBLAS) unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cblas.h>

typedef void (*sgemm_fn)(const enum CBLAS_ORDER, const enum CBLAS_TRANSPOSE,
                         const enum CBLAS_TRANSPOSE, const blasint,
                         const blasint, const blasint, const float,
                         const float *, const blasint, const float *,
                         const blasint, const float, float *, const blasint);

enum { kMaxCalls = 1 << 16 };
static struct {
  int m, n, k;
  double s;
} calls[kMaxCalls];
static int num_calls;
static sgemm_fn next_sgemm;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cblas_sgemm(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta,
                 const enum CBLAS_TRANSPOSE tb, const blasint m,
                 const blasint n, const blasint k, const float alpha,
                 const float *a, const blasint lda, const float *b,
                 const blasint ldb, const float beta, float *c,
                 const blasint ldc) {
  if (!next_sgemm) {
    next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    if (!next_sgemm) {
      fprintf(stderr, "sgemm_timer: no cblas_sgemm after the shim\n");
      abort();
    }
  }
  double t0 = now();
  next_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  double t = now() - t0;
  if (num_calls < kMaxCalls) {
    calls[num_calls].m = (int)m;
    calls[num_calls].n = (int)n;
    calls[num_calls].k = (int)k;
    calls[num_calls].s = t;
    ++num_calls;
  }
}

__attribute__((destructor)) static void dump(void) {
  const char *path = getenv("SGEMM_TIMER_OUT");
  if (!path || !*path || num_calls == 0)
    return;
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "sgemm_timer: cannot write %s\n", path);
    return;
  }
  for (int i = 0; i < num_calls; ++i)
    fprintf(f, "%d %d %d %.9g\n", calls[i].m, calls[i].n, calls[i].k,
            calls[i].s);
  fclose(f);
}
