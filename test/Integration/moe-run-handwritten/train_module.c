/*===- train_module.c - A hand-written training module for moe-run --train -===*\
 *
 * The entry points of a module compiled with --train (docs/module-format.md,
 * "Training entry points") for a model small enough to differentiate by hand:
 *
 *   u[t]   = x[t] * scale[e(t)]             (e(t) = t / (T / E): token groups)
 *   y      = u . W^T                        (moert_router; the file holds W^T)
 *   loss   = mean((y - target)^2) + aux,    aux = 0.01 * sum(scale^2) / (E*D)
 *   load[e] = #tokens t with x[t, e] + bias[e] > 0   (for the bias update)
 *
 *   forward_train(x, target, W, scale, bias)
 *       -> (loss, mse_loss, aux_loss, saved.0 = x, saved.1 = dy, load.bias)
 *   backward(saved.0, saved.1, W, scale) -> (grad.hidden_states, grad.W,
 *                                            grad.scale)
 *   step_adamw / step_sgd: docs/spec.md 7.3 and 7.4, in double, state rounded
 *       to f32 before the weight update reads it; updated in place.
 *
 * Built once per mesh with the local sizes as macros: LT = local tokens,
 * LE = local experts, MASK = axis mask of the data-parallel axis (0: one
 * rank). Tokens and experts are split over dp alike, so the scale gradient
 * is local and W's is all-reduced. NAN_GRAD=n puts a NaN into the scale
 * gradient of global expert 1 at the n-th backward call (a test of the
 * driver's finite check).
\*===----------------------------------------------------------------------===*/
#include "moert/moert.h"

#include <math.h>
#include <string.h>

#ifndef LT
#define LT 8
#endif
#ifndef LE
#define LE 2
#endif
#ifndef MASK
#define MASK 0
#endif
#define T 8 /* global tokens */
#define E 2 /* global experts */
#define D 16
#define AUX 0.01

const int32_t moe_abi_version = MOERT_ABI_VERSION;

static int localExpert(int t) { return t / (LT / LE); }

/* u = x * scale[e(t)] */
static void scaleRows(const float *x, const float *scale, float *u) {
  for (int t = 0; t < LT; ++t)
    for (int d = 0; d < D; ++d)
      u[t * D + d] = x[t * D + d] * scale[localExpert(t) * D + d];
}

void moe_entry_forward_train(moert_ctx *ctx, void **args, void **results) {
  const float *x = args[0], *target = args[1], *w = args[2], *scale = args[3];
  const float *bias = args[4];
  float *loss = results[0], *mse = results[1], *aux = results[2];
  float *savedX = results[3], *dy = results[4], *load = results[5];
  static float u[LT * D], y[LT * D], part[3 + E], total[3 + E];
  scaleRows(x, scale, u);
  moert_router(ctx, u, w, y, LT, D, D, MOERT_F32);
  double sq = 0, ss = 0;
  for (int i = 0; i < LT * D; ++i) {
    double diff = (double)y[i] - target[i];
    sq += diff * diff;
    dy[i] = (float)(2.0 * diff / (T * D));
  }
  for (int i = 0; i < LE * D; ++i)
    ss += (double)scale[i] * scale[i];
  part[0] = (float)sq;
  part[1] = (float)ss;
  part[2] = 0;
  for (int e = 0; e < E; ++e) {
    int n = 0;
    for (int t = 0; t < LT; ++t)
      n += x[t * D + e] + bias[e] > 0;
    part[3 + e] = (float)n;
  }
  moert_all_reduce(ctx, MASK, part, total, 3 + E, MOERT_F32);
  mse[0] = (float)((double)total[0] / (T * D));
  aux[0] = (float)(AUX * total[1] / (E * D));
  loss[0] = mse[0] + aux[0];
  memcpy(savedX, x, sizeof(float) * LT * D);
  memcpy(load, total + 3, sizeof(float) * E);
}

#ifdef NAN_GRAD
static int backwardCalls;
#endif

void moe_entry_backward(moert_ctx *ctx, void **args, void **results) {
  const float *x = args[0], *dy = args[1], *w = args[2], *scale = args[3];
  float *dx = results[0], *dw = results[1], *ds = results[2];
  static float u[LT * D], du[LT * D], dwLocal[D * D];
  scaleRows(x, scale, u);
  for (int o = 0; o < D; ++o)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int t = 0; t < LT; ++t)
        acc += (double)dy[t * D + o] * u[t * D + d];
      dwLocal[o * D + d] = (float)acc;
    }
  moert_all_reduce(ctx, MASK, dwLocal, dw, D * D, MOERT_F32);
  for (int t = 0; t < LT; ++t)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int o = 0; o < D; ++o)
        acc += (double)dy[t * D + o] * w[o * D + d];
      du[t * D + d] = (float)acc;
    }
  for (int e = 0; e < LE; ++e)
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int t = 0; t < LT; ++t)
        if (localExpert(t) == e)
          acc += (double)du[t * D + d] * x[t * D + d];
      ds[e * D + d] = (float)(acc + 2.0 * AUX * scale[e * D + d] / (E * D));
    }
  for (int t = 0; t < LT; ++t)
    for (int d = 0; d < D; ++d)
      dx[t * D + d] = du[t * D + d] * scale[localExpert(t) * D + d];
#ifdef NAN_GRAD
  /* Global expert 1: local expert 1 of one rank, local expert 0 of rank 1. */
  if (++backwardCalls == NAN_GRAD) {
#if MASK == 0
    ds[1 * D + 3] = NAN;
#else
    if (moert_ctx_coord(ctx, 0) == 1)
      ds[3] = NAN;
#endif
  }
#endif
}

/* hparams: lr, beta1, beta2, eps, weight_decay, momentum, step n, rate. */
static void adamw(float *p, const float *g, float *m, float *v, const float *h,
                  int n) {
  double lr = h[0], b1 = h[1], b2 = h[2], eps = h[3], wd = h[4];
  double step = h[6];
  double stepSize = lr / (1.0 - pow(b1, step));
  double corr2 = sqrt(1.0 - pow(b2, step));
  for (int i = 0; i < n; ++i) {
    double w = (double)p[i] * (1.0 - lr * wd);
    double gi = g[i];
    m[i] = (float)((double)m[i] * b1 + gi * (1.0 - b1));
    v[i] = (float)((double)v[i] * b2 + gi * gi * (1.0 - b2));
    double denom = sqrt((double)v[i]) / corr2 + eps;
    p[i] = (float)(w + (-stepSize) * ((double)m[i] / denom));
  }
}

static void sgd(float *p, const float *g, float *buf, const float *h, int n) {
  double lr = h[0], wd = h[4], mu = h[5];
  for (int i = 0; i < n; ++i) {
    double d = wd != 0 ? g[i] + (double)p[i] * wd : (double)g[i];
    if (mu != 0)
      d = (float)(h[6] > 1 ? (double)buf[i] * mu + d : d);
    buf[i] = (float)d;
    p[i] = (float)((double)p[i] + d * -lr);
  }
}

/* bias[e] = f32(bias[e] + f32(rate) * sign(T*k/E - load[e])), k = 1 */
static void biasUpdate(float *bias, const float *load, const float *h) {
  for (int e = 0; e < E; ++e) {
    double diff = (double)T / E - load[e];
    double sign = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
    bias[e] = (float)((double)bias[e] + (double)h[7] * sign);
  }
}

/* Copies an updated argument to its result when the driver did not pass
 * the same buffer (moe-run does). */
static void output(void *result, const void *arg, int n) {
  if (result != arg)
    memcpy(result, arg, sizeof(float) * n);
}

void moe_entry_step_adamw(moert_ctx *ctx, void **args, void **results) {
  (void)ctx;
  float *w = args[0], *scale = args[1], *bias = args[2];
  const float *h = args[9], *load = args[10];
  adamw(w, args[3], args[5], args[6], h, D * D);
  adamw(scale, args[4], args[7], args[8], h, LE * D);
  biasUpdate(bias, load, h);
  int sizes[7] = {D * D, LE * D, D * D, D * D, LE * D, LE * D, E};
  void *from[7] = {w, scale, args[5], args[6], args[7], args[8], bias};
  for (int i = 0; i < 7; ++i)
    output(results[i], from[i], sizes[i]);
}

void moe_entry_step_sgd(moert_ctx *ctx, void **args, void **results) {
  (void)ctx;
  float *w = args[0], *scale = args[1], *bias = args[2];
  const float *h = args[7], *load = args[8];
  sgd(w, args[3], args[5], h, D * D);
  sgd(scale, args[4], args[6], h, LE * D);
  biasUpdate(bias, load, h);
  int sizes[5] = {D * D, LE * D, D * D, LE * D, E};
  void *from[5] = {w, scale, args[5], args[6], bias};
  for (int i = 0; i < 5; ++i)
    output(results[i], from[i], sizes[i]);
}
