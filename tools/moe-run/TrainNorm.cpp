//===- TrainNorm.cpp - moe-run --train: gradient norm and clipping --------===//
//
// The global L2 norm of the gradients of every weight (docs/spec.md 7.6),
// computed from the sharded gradients: each rank sums the squares of its
// slice of a gradient (in the finite check's pass, Trainer::gradProblem)
// only when it holds the first copy of that slice
// (isFirstReplica: coordinate 0 on every axis the gradient is replicated
// over), so that every element of every parameter is counted exactly once
// on any mesh, ZeRO-1's dp-split gradients included. The ranks' sums are
// all-gathered and added in rank order, so every rank gets the same norm.
// --clip-grad-norm then scales every gradient buffer, replicas included, by
// the same factor before the optimizer step.
//
//===----------------------------------------------------------------------===//
#include "Trainer.h"
#include "World.h"

#include "support/Format.h"

#include <cmath>
#include <set>

using namespace moert;

namespace moe_run {

/// The backward results that are the gradients of weights ("grad.<weight>";
/// not grad.hidden_states).
std::vector<const TensorSpec *> Trainer::weightGrads() const {
  std::set<std::string> names;
  for (const TensorSpec *w : weights_)
    names.insert("grad." + w->name);
  std::vector<const TensorSpec *> out;
  for (const TensorSpec &r : bw_.entry->results)
    if (names.count(r.name))
      out.push_back(&r);
  return out;
}

/// This rank's F32 copy of gradient `r` (on the CPU device the buffer
/// itself).
float *Trainer::gradData(const TensorSpec &r, std::vector<float> &host) {
  if (r.dtype != MOERT_F32)
    fatal(supportError(MOERT_ERR_INVALID,
                       "gradient '%s' is not f32: --train needs an f32 module",
                       r.name.c_str()));
  float *data = static_cast<float *>(bw_.results[r.index]);
  if (s_.opt.device != "cuda")
    return data;
  host.resize(static_cast<size_t>(numElements(r.localShape)));
  if (moert_copy_to_host(ctx_, host.data(), data, r.localBytes()) != MOERT_OK)
    fatal(ctxError(ctx_, format("reading '%s'", r.name.c_str()).c_str()));
  return host.data();
}

double sumOfSquares(const float *data, int64_t n) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j)
      part[j] += static_cast<double>(data[i + j]) * data[i + j];
  double sum = 0;
  for (; i < n; ++i)
    sum += static_cast<double>(data[i]) * data[i];
  for (double v : part)
    sum += v;
  return sum;
}

double Trainer::gradNorm() {
  double mine = localSquares_;
  std::vector<double> all(static_cast<size_t>(world().size));
  if (moert_world_allgather(ctx_, &mine, all.data(), sizeof mine) != MOERT_OK)
    fatal(ctxError(ctx_, "summing the gradient norm over the ranks"));
  double sum = 0;
  for (double v : all)
    sum += v;
  return std::sqrt(sum);
}

void Trainer::scaleGrads(double coef) {
  std::vector<float> host;
  for (const TensorSpec *r : weightGrads()) {
    float *g = gradData(*r, host);
    int64_t n = numElements(r->localShape);
    for (int64_t i = 0; i < n; ++i)
      g[i] = static_cast<float>(static_cast<double>(g[i]) * coef);
    if (g == host.data() &&
        moert_copy_to_device(ctx_, bw_.results[r->index], host.data(),
                             r->localBytes()) != MOERT_OK)
      fatal(ctxError(ctx_, format("writing '%s'", r->name.c_str()).c_str()));
  }
}

} // namespace moe_run
