/*===- module.c - A hand-written "compiled module" for testing moe-run ----===*\
 *
 * Implements the entry ABI of docs/module-format.md with moert_* calls only:
 *
 *   y   = rmsnorm(x, norm) + bias[expert of the token]    (x: [T, D])
 *   out = y . proj^T                                       (moert_router)
 *   all = all_gather(out) over the token axis              (replicated)
 *
 * Built once per mesh with the local sizes as macros: LT = local tokens,
 * LE = local experts, MASK = axis mask of the token axis (0: no mesh).
 * Like every compiled module it exports the runtime ABI version it was built
 * for; ABI_VERSION=n claims another one and NO_ABI_VERSION leaves it out
 * (moe-run must refuse both).
\*===----------------------------------------------------------------------===*/
#include "moert/moert.h"

#ifndef LT
#define LT 8
#endif
#ifndef LE
#define LE 2
#endif
#ifndef MASK
#define MASK 0
#endif
#define D 16

#ifndef ABI_VERSION
#define ABI_VERSION MOERT_ABI_VERSION
#endif
#ifndef NO_ABI_VERSION
const int32_t moe_abi_version = ABI_VERSION;
#endif

void moe_entry_forward(moert_ctx *ctx, void **args, void **results) {
  const float *x = (const float *)args[0];
  const float *norm = (const float *)args[1];
  const float *bias = (const float *)args[2];
  const float *proj = (const float *)args[3];
  float *out = (float *)results[0];
  float *all = (float *)results[1];
  float *y = (float *)moert_arena(ctx, LT * D * sizeof(float));
  if (!y)
    return;
  moert_rmsnorm(ctx, x, norm, y, LT, D, 1e-6f, MOERT_F32);
  for (int t = 0; t < LT; ++t)
    moert_add(ctx, y + t * D, bias + (t / (LT / LE)) * D, y + t * D, D,
              MOERT_F32);
  moert_router(ctx, y, proj, out, LT, D, D, MOERT_F32);
  moert_all_gather(ctx, MASK, out, all, sizeof(float), LT, D, 1, 1, 0);
}

#ifdef VARIANT
/* A second build with other bytes: tests moe-run's same-module check. */
const int moe_test_variant = VARIANT;
#endif
