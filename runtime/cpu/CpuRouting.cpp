//===- CpuRouting.cpp - Router, top-k, assignment and aux losses ----------===//
//
// Selection follows docs/spec.md items 3.1-3.4: scores in f32, the bias only
// changes which experts are picked, group-limited routing masks whole groups,
// and every tie goes to the lower index. Assignment is sequential: it is a
// tiny share of the layer and its order is the specification.
//
//===----------------------------------------------------------------------===//
#include "cpu/CpuBackend.h"
#include "cpu/CpuMath.h"

#include <cblas.h>
#include <omp.h>

#include <cinttypes>
#include <cmath>
#include <limits>

namespace moert {

using namespace cpu;

Status CpuBackend::router(const void *x, const void *w, float *logits,
                          int64_t T, int64_t D, int64_t E, int32_t dtype) {
  MOERT_TRY(requireF32("moert_router", dtype));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, E, D, 1.0f,
              static_cast<const float *>(x), D, static_cast<const float *>(w),
              D, 0.0f, logits, E);
  return Status::ok();
}

namespace {

/// Selection scores are totally ordered: larger first, then lower index.
/// NaN sorts last so that k experts can always be picked.
inline float orderKey(float v) {
  return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v;
}
inline bool before(float a, int64_t ia, float b, int64_t ib) {
  return a > b || (a == b && ia < ib);
}

struct TopkSpec {
  const float *bias;
  int64_t E, k;
  int32_t scoreFn;
  bool renormalize;
  float scaling;
  int64_t groups, kept; // groups <= 1: no group limit
  int32_t groupScore;
};

inline float selection(const float *scores, const TopkSpec &s, int64_t e) {
  return orderKey(scores[e] + (s.bias ? s.bias[e] : 0.0f));
}

/// Score of each group from the selection scores of its experts.
void scoreGroups(const float *scores, const TopkSpec &s, float *groupScore) {
  int64_t per = s.E / s.groups;
  for (int64_t g = 0; g < s.groups; ++g) {
    float best = -std::numeric_limits<float>::infinity(), second = best;
    for (int64_t e = g * per; e < (g + 1) * per; ++e) {
      float v = selection(scores, s, e);
      if (v > best) {
        second = best;
        best = v;
      } else if (v > second) {
        second = v;
      }
    }
    groupScore[g] =
        orderKey(s.groupScore == MOERT_GROUP_SCORE_MAX ? best : best + second);
  }
}

/// keep[g] = 1 when fewer than `kept` groups come before g.
void keepGroups(const float *groupScore, const TopkSpec &s, float *keep) {
  for (int64_t g = 0; g < s.groups; ++g) {
    int64_t better = 0;
    for (int64_t h = 0; h < s.groups; ++h)
      better += before(groupScore[h], h, groupScore[g], g);
    keep[g] = better < s.kept ? 1.0f : 0.0f;
  }
}

/// Picks the k best allowed experts in order. Each pick is the best expert
/// strictly after the previous pick in the total order, so no "taken" flags
/// are needed.
void pickTopk(const float *scores, const float *keep, const TopkSpec &s,
              int32_t *idx) {
  int64_t per = s.groups > 1 ? s.E / s.groups : s.E;
  float prevSel = 0.0f;
  int64_t prev = -1;
  for (int64_t j = 0; j < s.k; ++j) {
    int64_t best = -1;
    float bestSel = 0.0f;
    for (int64_t e = 0; e < s.E; ++e) {
      if (keep && keep[e / per] == 0.0f)
        continue;
      float v = selection(scores, s, e);
      if (prev >= 0 && !before(prevSel, prev, v, e))
        continue;
      if (best < 0 || before(v, e, bestSel, best)) {
        best = e;
        bestSel = v;
      }
    }
    idx[j] = static_cast<int32_t>(best);
    prev = best;
    prevSel = bestSel;
  }
}

void weighRow(const float *scores, const int32_t *idx, const TopkSpec &s,
              float *w) {
  double sum = 0;
  for (int64_t j = 0; j < s.k; ++j) {
    w[j] = scores[idx[j]];
    sum += w[j];
  }
  // A zero sum (every picked score underflowed) keeps the raw weights.
  float norm = s.renormalize && sum > 0 ? static_cast<float>(1.0 / sum) : 1.0f;
  for (int64_t j = 0; j < s.k; ++j)
    w[j] = w[j] * norm * s.scaling;
}

} // namespace

Status CpuBackend::topk(const float *logits, const float *bias, float *weights,
                        int32_t *indices, float *scores, int64_t T, int64_t E,
                        int64_t k, int32_t scoreFn, int32_t renormalize,
                        float scaling, int64_t numGroups, int64_t groupsKept,
                        int32_t groupScore) {
  TopkSpec s{bias,    E,         k,          scoreFn,   renormalize != 0,
             scaling, numGroups, groupsKept, groupScore};
  bool grouped = numGroups > 1;
  groupScratch_.resize(static_cast<size_t>(threads_ * 2 * numGroups));
  float *scratch = groupScratch_.data();
#pragma omp parallel for num_threads(threads_) if (T * E > 16384)
  for (int64_t t = 0; t < T; ++t) {
    float *row = scores + t * E;
    scoreRow(logits + t * E, row, E, scoreFn);
    float *keep = nullptr;
    if (grouped) {
      float *groupScore = scratch + omp_get_thread_num() * 2 * numGroups;
      keep = groupScore + numGroups;
      scoreGroups(row, s, groupScore);
      keepGroups(groupScore, s, keep);
    }
    pickTopk(row, keep, s, indices + t * k);
    weighRow(row, indices + t * k, s, weights + t * k);
  }
  return Status::ok();
}

namespace {
/// Every index is an expert in [0, E) or -1 (a token the mask left
/// unrouted: no slot, not counted).
Status checkIndices(const char *fn, const int32_t *indices, int64_t T,
                    int64_t k, int64_t E) {
  for (int64_t i = 0; i < T * k; ++i)
    if (indices[i] < -1 || indices[i] >= E)
      return error(MOERT_ERR_INVALID,
                   "%s: indices[%" PRId64 ",%" PRId64 "] = %d is not an "
                   "expert in [0, %" PRId64 ")",
                   fn, i / k, i % k, indices[i], E);
  return Status::ok();
}
} // namespace

Status CpuBackend::assign(const int32_t *indices, int32_t *positions,
                          int32_t *counts, int64_t T, int64_t k, int64_t E,
                          int64_t capacity, int64_t groups) {
  MOERT_TRY(checkIndices("moert_assign", indices, T, k, E));
  if (capacity == 0) {
    // Rows ordered by expert, then token, then choice: count, then give
    // each expert a cursor at its offset and walk assignments in order.
    cursor_.assign(static_cast<size_t>(E), 0);
    for (int64_t i = 0; i < T * k; ++i)
      if (indices[i] >= 0)
        ++cursor_[indices[i]];
    int64_t offset = 0;
    for (int64_t e = 0; e < E; ++e) {
      counts[e] = static_cast<int32_t>(cursor_[e]);
      cursor_[e] = offset;
      offset += counts[e];
    }
    for (int64_t i = 0; i < T * k; ++i)
      positions[i] =
          indices[i] < 0 ? -1 : static_cast<int32_t>(cursor_[indices[i]]++);
    return Status::ok();
  }
  // Capacity: per token group, slot-major (every first choice of the group
  // before any second choice), tokens in order within a slot.
  int64_t perGroup = T / groups;
  for (int64_t g = 0; g < groups; ++g) {
    int32_t *fill = counts + g * E;
    for (int64_t e = 0; e < E; ++e)
      fill[e] = 0;
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t t = g * perGroup; t < (g + 1) * perGroup; ++t) {
        int32_t e = indices[t * k + j];
        int32_t &pos = positions[t * k + j];
        if (e < 0)
          pos = -1; // not routed: takes no slot
        else if (fill[e] < capacity)
          pos = static_cast<int32_t>(e * groups * capacity + g * capacity +
                                     fill[e]++);
        else
          pos = -1;
      }
    }
  }
  return Status::ok();
}

Status CpuBackend::expertLoad(const float *scores, const int32_t *indices,
                              float *stats, int64_t T, int64_t k, int64_t E) {
  MOERT_TRY(checkIndices("moert_expert_load", indices, T, k, E));
  sums_.assign(static_cast<size_t>(2 * E), 0.0);
  for (int64_t i = 0; i < T * k; ++i)
    if (indices[i] >= 0)
      sums_[indices[i]] += 1.0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      sums_[E + e] += scores[t * E + e];
  for (int64_t i = 0; i < 2 * E; ++i)
    stats[i] = static_cast<float>(sums_[i]);
  return Status::ok();
}

Status CpuBackend::loadBalanceLoss(const float *stats, float *out, int64_t E,
                                   int64_t tokens, int64_t k, float coeff) {
  double sum = 0;
  for (int64_t e = 0; e < E; ++e)
    sum += (double(stats[e]) / double(tokens * k)) *
           (double(stats[E + e]) / double(tokens));
  out[0] = static_cast<float>(double(coeff) * double(E) * sum);
  return Status::ok();
}

Status CpuBackend::zLoss(const float *logits, float *out, int64_t T, int64_t E,
                         int64_t totalTokens, float coeff) {
  double sum = 0;
#pragma omp parallel for num_threads(threads_) reduction(+ : sum) \
    if (T * E > 16384)
  for (int64_t t = 0; t < T; ++t) {
    const float *row = logits + t * E;
    float m = row[0];
    for (int64_t e = 1; e < E; ++e)
      m = row[e] > m ? row[e] : m;
    double s = 0;
    for (int64_t e = 0; e < E; ++e)
      s += std::exp(double(row[e]) - double(m));
    double lse = double(m) + std::log(s);
    sum += lse * lse;
  }
  out[0] = static_cast<float>(double(coeff) * sum / double(totalTokens));
  return Status::ok();
}

} // namespace moert
