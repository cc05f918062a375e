//===- CpuFfn.cpp - Grouped expert FFN and dense MLP ----------------------===//
//
// Each expert runs three GEMMs (two for ungated activations) over only its
// live rows, with the activation fused into one pass over the GEMM outputs.
// The GEMMs of the forward (x.gate^T, x.up^T, h.down^T, also where the
// backward recomputes them) and the backward's per-row ones (dh = dy.down,
// dx = du.up + da.gate) are RowGemm's (RowGemm.h): a row of their output
// has the same bits whatever the rows around it, so neither the chunks below
// nor moe-overlap's chunks (forward and backward) change the result. The
// backward's weight GEMMs (sums over rows) are OpenBLAS's. Both pack the whole
// weight matrix on every call, so an expert's rows go through as few and as
// large GEMMs as the workspace budget allows, in chunks of equal size. A chunk
// that spans several segments is gathered into contiguous rows first, so that
// many small segments still make one large GEMM.
//
//===----------------------------------------------------------------------===//
#include "cpu/CpuBackend.h"
#include "cpu/CpuMath.h"

#include <cblas.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>

namespace moert {

using namespace cpu;

namespace {

/// c[m,n] = a[m,kk] . b[kk,n] + beta c.
void gemmNN(const float *a, const float *b, float *c, int64_t m, int64_t n,
            int64_t kk, float beta) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, kk, 1.0f, a, kk,
              b, n, beta, c, n);
}

/// c[m,n] = a[kk,m]^T . b[kk,n] + beta c (weight gradients: a sum over the
/// kk rows).
void gemmTN(const float *a, const float *b, float *c, int64_t m, int64_t n,
            int64_t kk, float beta) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, kk, 1.0f, a, m, b,
              n, beta, c, n);
}

/// activateWithGrad (CpuMath.h) over each row of [rows, F]: which elements
/// take the vector path depends on their column only, not on the rows of
/// the chunk (so moe-overlap's chunks of the backward keep every bit).
void activateGrad(int32_t act, float *a, float *u, float *h, int64_t rows,
                  int64_t F, int threads) {
#pragma omp parallel for num_threads(threads)                                  \
    schedule(static) if (rows * F > 65536)
  for (int64_t r = 0; r < rows; ++r)
    activateWithGrad(act, a ? a + r * F : nullptr, u + r * F, h + r * F, F);
}

/// x[i] *= y[i].
void multiplyInto(float *x, const float *y, int64_t n, int threads) {
#pragma omp parallel for simd num_threads(threads) if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    x[i] *= y[i];
}

/// h = act(h) * u (gated) or h = act(h), one pass over the GEMM outputs.
void activateRange(int32_t act, float *h, const float *u, int64_t n) {
  switch (act) {
  case MOERT_ACT_RELU:
    for (int64_t i = 0; i < n; ++i)
      h[i] = relu(h[i]);
    return;
  case MOERT_ACT_GELU:
    return geluTimes(h, nullptr, n);
  case MOERT_ACT_SWIGLU:
    return siluTimes(h, u, n);
  default:
    return geluTimes(h, u, n);
  }
}

/// activateRange over each row of h [rows, F]: which elements take the
/// vector path depends on their column only, not on the rows of the chunk.
void activate(int32_t act, float *h, const float *u, int64_t rows, int64_t F,
              int threads) {
#pragma omp parallel for num_threads(threads)                                  \
    schedule(static) if (rows * F > 65536)
  for (int64_t r = 0; r < rows; ++r)
    activateRange(act, h + r * F, u ? u + r * F : nullptr, F);
}

/// Position in a list of row blocks.
struct Cursor {
  int64_t block = 0;
  int64_t offset = 0;
};

/// Moves `cur` over up to `want` rows, calling fn(row, rows) per contiguous
/// piece; returns the number of rows passed.
template <typename Fn>
int64_t walkRows(const RowBlock *blocks, int64_t numBlocks, Cursor &cur,
                 int64_t want, Fn &&fn) {
  int64_t done = 0;
  while (done < want && cur.block < numBlocks) {
    const RowBlock &b = blocks[cur.block];
    int64_t n = std::min(want - done, b.rows - cur.offset);
    fn(b.row + cur.offset, n);
    done += n;
    cur.offset += n;
    if (cur.offset == b.rows) {
      ++cur.block;
      cur.offset = 0;
    }
  }
  return done;
}

/// The live rows in `blocks`, `chunk` rows at a time, in order. A chunk in
/// one block runs in place, inPlace(first row, rows); any other is gathered
/// (gather(row, n, at, rows) per piece, `at` its first row in the chunk),
/// run by gathered(rows) and scattered back (scatter(row, n, at, rows)).
template <typename InPlace, typename Gather, typename Gathered,
          typename Scatter>
Status forEachRowChunk(const RowBlock *blocks, int64_t numBlocks, int64_t chunk,
                       InPlace &&inPlace, Gather &&gather, Gathered &&gathered,
                       Scatter &&scatter) {
  Cursor cur;
  while (cur.block < numBlocks) {
    Cursor start = cur, probe = cur;
    int64_t pieces = 0, first = 0;
    int64_t rows =
        walkRows(blocks, numBlocks, probe, chunk, [&](int64_t row, int64_t) {
          if (pieces++ == 0)
            first = row;
        });
    if (pieces == 1) {
      MOERT_TRY(inPlace(first, rows));
      cur = probe;
      continue;
    }
    int64_t at = 0;
    walkRows(blocks, numBlocks, cur, chunk, [&](int64_t row, int64_t n) {
      gather(row, n, at, rows);
      at += n;
    });
    MOERT_TRY(gathered(rows));
    at = 0;
    walkRows(blocks, numBlocks, start, chunk, [&](int64_t row, int64_t n) {
      scatter(row, n, at, rows);
      at += n;
    });
  }
  return Status::ok();
}

int64_t liveRows(const RowBlock *blocks, int64_t numBlocks) {
  int64_t live = 0;
  for (int64_t b = 0; b < numBlocks; ++b)
    live += blocks[b].rows;
  return live;
}

/// The inputs of the FFN's backward for some rows, and where they go.
struct GradInputs {
  const float *x, *dy, *savedA, *savedU;
};
struct GradGathered {
  float *x, *dy, *a, *u;
};

/// Rows [row, row + n) of the backward's inputs (x, dy and, when saved, a
/// and u: a only when gated, that is when `to.a` is not null) to rows
/// [at, at + n) of a gathered chunk.
void gatherGradInputs(GradInputs from, GradGathered to, int64_t row, int64_t n,
                      int64_t at, int64_t D, int64_t F) {
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  size_t hiddenRowBytes = static_cast<size_t>(F) * sizeof(float);
  std::memcpy(to.x + at * D, from.x + row * D, n * rowBytes);
  std::memcpy(to.dy + at * D, from.dy + row * D, n * rowBytes);
  if (from.savedU)
    std::memcpy(to.u + at * F, from.savedU + row * F, n * hiddenRowBytes);
  if (from.savedU && to.a)
    std::memcpy(to.a + at * F, from.savedA + row * F, n * hiddenRowBytes);
}

/// The weight gradients of an expert without live rows: exactly zero (gate
/// null when ungated).
void zeroWeightGrads(float *gate, float *up, float *down, int64_t D,
                     int64_t F) {
  size_t bytes = static_cast<size_t>(F * D) * sizeof(float);
  if (gate)
    std::memset(gate, 0, bytes);
  std::memset(up, 0, bytes);
  std::memset(down, 0, bytes);
}

} // namespace

Status CpuBackend::holdWeights(bool hold) {
  if (hold && holding_) // already held: keep what was prepared
    return Status::ok();
  holding_ = hold;
  held_.clear(); // a new hold starts empty, a release frees
  heldBytes_ = 0;
  return Status::ok();
}

Status CpuBackend::prepareExpertFfn(const void *gate, const void *up,
                                    const void *down, int64_t E, int64_t D,
                                    int64_t F) {
  if (ffnGemm_ != FfnGemm::RowIndependent)
    return Status::ok();
  const cpu::PackedB *packed;
  for (int64_t e = 0; e < E; ++e) {
    if (gate)
      MOERT_TRY(heldWeight(static_cast<const float *>(gate) + e * F * D, F, D,
                           packed));
    MOERT_TRY(
        heldWeight(static_cast<const float *>(up) + e * F * D, F, D, packed));
    MOERT_TRY(
        heldWeight(static_cast<const float *>(down) + e * D * F, D, F, packed));
  }
  return Status::ok();
}

Status CpuBackend::heldWeight(const float *b, int64_t n, int64_t kk,
                              const cpu::PackedB *&out) {
  out = nullptr;
  if (!holding_)
    return Status::ok();
  for (const auto &p : held_)
    if (p->source() == b && p->n() == n && p->k() == kk) {
      out = p.get();
      return Status::ok();
    }
  int64_t bytes = n * kk * int64_t(sizeof(float));
  if (heldBytes_ + bytes > kHeldBytes)
    return Status::ok();
  auto p = std::make_unique<cpu::PackedB>();
  MOERT_TRY(cpu::RowGemm::pack(b, n, kk, threads_, "moert_expert_ffn", *p));
  heldBytes_ += p->bytes();
  out = held_.emplace_back(std::move(p)).get();
  return Status::ok();
}

Status CpuBackend::gemmNT(const float *a, const float *b, float *c, int64_t m,
                          int64_t n, int64_t kk) {
  if (ffnGemm_ == FfnGemm::RowIndependent) {
    const cpu::PackedB *packed = nullptr;
    if (inExpertFfn_)
      MOERT_TRY(heldWeight(b, n, kk, packed));
    if (packed)
      return rowGemm_.nt(a, *packed, c, m, threads_, "moert_expert_ffn");
    return rowGemm_.nt(a, b, c, m, n, kk, threads_, "moert_expert_ffn");
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, kk, 1.0f, a, kk, b,
              kk, 0.0f, c, n);
  return Status::ok();
}

Status CpuBackend::gemmNNRows(const float *a, const float *b, float *c,
                              int64_t m, int64_t n, int64_t kk,
                              bool accumulate) {
  if (ffnGemm_ == FfnGemm::RowIndependent)
    return rowGemm_.nn(a, b, c, m, n, kk, threads_, "moert_expert_ffn_grad",
                       accumulate);
  gemmNN(a, b, c, m, n, kk, accumulate ? 1.0f : 0.0f);
  return Status::ok();
}

Status CpuBackend::ffnChunk(const float *x, float *y, int64_t rows,
                            const FfnWeights &w, int64_t D, int64_t F,
                            int32_t activation, float *saveA, float *saveU) {
  float *h = ffnWork_.data();
  float *u = nullptr;
  size_t hiddenBytes = static_cast<size_t>(rows * F) * sizeof(float);
  if (isGatedActivation(activation)) {
    u = h + rows * F;
    if (saveU) { // the GEMMs of ffnGradChunk, then the in-place activation
      MOERT_TRY(gemmNT(x, w.gate, saveA, rows, F, D));
      MOERT_TRY(gemmNT(x, w.up, saveU, rows, F, D));
      std::memcpy(h, saveA, hiddenBytes);
      std::memcpy(u, saveU, hiddenBytes);
    } else {
      MOERT_TRY(gemmNT(x, w.gate, h, rows, F, D));
      MOERT_TRY(gemmNT(x, w.up, u, rows, F, D));
    }
  } else if (saveU) {
    MOERT_TRY(gemmNT(x, w.up, saveU, rows, F, D));
    std::memcpy(h, saveU, hiddenBytes);
  } else {
    MOERT_TRY(gemmNT(x, w.up, h, rows, F, D));
  }
  activate(activation, h, u, rows, F, threads_);
  return gemmNT(h, w.down, y, rows, D, F);
}

int64_t CpuBackend::gradChunkRows(int64_t live, int64_t D, int64_t F,
                                  bool gated) const {
  return chunkRows(live, (gated ? 4 : 3) * F + 4 * D);
}

int64_t CpuBackend::chunkRows(int64_t live, int64_t rowFloats) const {
  int64_t rowBytes = rowFloats * int64_t(sizeof(float));
  int64_t limit = ffnChunkRows_ > 0
                      ? ffnChunkRows_
                      : std::max<int64_t>(64, kFfnWorkspaceBytes / rowBytes);
  // Equal chunks: a small tail chunk would cost a full weight repacking.
  int64_t chunks = (live + limit - 1) / limit;
  return (live + chunks - 1) / chunks;
}

Status CpuBackend::runFfn(const float *x, float *y, const RowBlock *blocks,
                          int64_t numBlocks, const FfnWeights &w, int64_t D,
                          int64_t F, int32_t activation, float *saveA,
                          float *saveU) {
  int64_t live = liveRows(blocks, numBlocks);
  if (live == 0)
    return Status::ok();
  bool gated = isGatedActivation(activation);
  int64_t chunk = saveU ? gradChunkRows(live, D, F, gated)
                        : chunkRows(live, (gated ? 2 : 1) * F + 2 * D);
  int64_t hidden = (gated ? 2 : 1) * chunk * F;
  int64_t saved = saveU ? hidden : 0; // gathered chunks' a and u
  MOERT_TRY(
      ffnWork_.reserve(hidden + 2 * chunk * D + saved, "moert_expert_ffn"));
  float *xg = ffnWork_.data() + hidden;
  float *yg = xg + chunk * D;
  float *ug = yg + chunk * D;
  float *ag = gated ? ug + chunk * F : nullptr;
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  size_t hiddenRowBytes = static_cast<size_t>(F) * sizeof(float);
  return forEachRowChunk(
      blocks, numBlocks, chunk,
      [&](int64_t first, int64_t rows) {
        return ffnChunk(x + first * D, y + first * D, rows, w, D, F, activation,
                        saveA ? saveA + first * F : nullptr,
                        saveU ? saveU + first * F : nullptr);
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t) {
        std::memcpy(xg + at * D, x + row * D, n * rowBytes);
      },
      [&](int64_t rows) {
        return ffnChunk(xg, yg, rows, w, D, F, activation, saveA ? ag : nullptr,
                        saveU ? ug : nullptr);
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t) {
        std::memcpy(y + row * D, yg + at * D, n * rowBytes);
        if (saveU)
          std::memcpy(saveU + row * F, ug + at * F, n * hiddenRowBytes);
        if (saveA)
          std::memcpy(saveA + row * F, ag + at * F, n * hiddenRowBytes);
      });
}

//===--- Backward (docs/spec.md 7.2) --------------------------------------===//

// Per chunk of rows of one expert, with a = x.gate^T, u = x.up^T and
// h = act(a) u (or act(u)) recomputed (or a and u read from what the
// forward saved, computed by the same GEMM calls on the same chunks):
//   dh = dy.down, da = dh act'(a) u, du = dh act(a) (or du = dh act'(u)),
//   dx = du.up + da.gate                                    (ffnGradRows)
//   ddown += dy^T.h, dgate += da^T.x, dup += du^T.x         (ffnGradWeights)
// Eight GEMMs (five ungated) over all the chunk's rows: no per-token work.
// The GEMMs of ffnGradRows are row-independent (RowGemm), so a row of dx,
// h, du, da has the same bits whatever rows share the call; the weight
// GEMMs sum over the rows (OpenBLAS), in chunks that depend only on the
// expert's live rows. moert_expert_ffn_grad runs both per chunk;
// moert_expert_ffn_grad_data the first on any subset of the rows, and
// moert_expert_ffn_grad_weight the second on the same chunks as the fused
// kernel, hence its bits.

Status CpuBackend::ffnGradRows(const float *x, const float *dy, float *dx,
                               float *fOut, int64_t rows, const FfnWeights &w,
                               int64_t D, int64_t F, int32_t activation,
                               Hidden hidden, const float *savedA,
                               const float *savedU) {
  bool gated = isGatedActivation(activation);
  float *a = gated ? ffnWork_.data() : nullptr;
  float *u = ffnWork_.data() + (gated ? rows * F : 0);
  float *h = u + rows * F;
  float *dh = h + rows * F;
  size_t hiddenBytes = static_cast<size_t>(rows * F) * sizeof(float);
  if (hidden == Hidden::Recompute) {
    if (gated)
      MOERT_TRY(gemmNT(x, w.gate, a, rows, F, D));
    MOERT_TRY(gemmNT(x, w.up, u, rows, F, D));
  } else if (hidden == Hidden::Copy) {
    if (gated)
      std::memcpy(a, savedA, hiddenBytes);
    std::memcpy(u, savedU, hiddenBytes);
  }
  // h = the hidden activation; a := act'(a) u, u := act(a) (gated) or
  // u := act'(u).
  activateGrad(activation, a, u, h, rows, F, threads_);
  MOERT_TRY(gemmNNRows(dy, w.down, dh, rows, F, D, false));
  if (fOut)
    MOERT_TRY(gemmNT(h, w.down, fOut, rows, D, F));
  multiplyInto(u, dh, rows * F, threads_); // du
  MOERT_TRY(gemmNNRows(u, w.up, dx, rows, D, F, false));
  if (gated) {
    multiplyInto(a, dh, rows * F, threads_); // da
    MOERT_TRY(gemmNNRows(a, w.gate, dx, rows, D, F, true));
  }
  return Status::ok();
}

void CpuBackend::ffnGradWeights(const float *x, const float *dy, const float *h,
                                const float *du, const float *da, int64_t rows,
                                const FfnGrads &g, float beta, int64_t D,
                                int64_t F) {
  gemmTN(dy, h, g.down, D, F, rows, beta);
  gemmTN(du, x, g.up, F, D, rows, beta);
  if (g.gate)
    gemmTN(da, x, g.gate, F, D, rows, beta);
}

Status CpuBackend::ffnGradChunk(const float *x, const float *dy, float *dx,
                                float *fOut, int64_t rows, const FfnWeights &w,
                                const FfnGrads &g, float beta, int64_t D,
                                int64_t F, int32_t activation, Hidden hidden,
                                const float *savedA, const float *savedU) {
  MOERT_TRY(ffnGradRows(x, dy, dx, fOut, rows, w, D, F, activation, hidden,
                        savedA, savedU));
  bool gated = isGatedActivation(activation);
  float *a = gated ? ffnWork_.data() : nullptr;
  float *u = ffnWork_.data() + (gated ? rows * F : 0);
  float *h = u + rows * F;
  ffnGradWeights(x, dy, h, u, a, rows, g, beta, D, F);
  return Status::ok();
}

Status CpuBackend::runFfnGrad(const float *x, const float *dy, float *dx,
                              const RowBlock *blocks, int64_t numBlocks,
                              const FfnWeights &w, const FfnGrads &g, int64_t D,
                              int64_t F, int32_t activation, float *fOut,
                              const float *savedA, const float *savedU) {
  bool gated = isGatedActivation(activation);
  int64_t live = liveRows(blocks, numBlocks);
  if (live == 0) {
    zeroWeightGrads(gated ? g.gate : nullptr, g.up, g.down, D, F);
    return Status::ok();
  }
  int64_t perRow = (gated ? 4 : 3) * F;
  int64_t chunk = gradChunkRows(live, D, F, gated);
  MOERT_TRY(
      ffnWork_.reserve(chunk * (perRow + 4 * D), "moert_expert_ffn_grad"));
  float *xg = ffnWork_.data() + chunk * perRow;
  float *dyg = xg + chunk * D;
  float *dxg = dyg + chunk * D;
  float *fg = dxg + chunk * D;
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  float beta = 0.0f; // the first chunk overwrites the weight gradients
  return forEachRowChunk(
      blocks, numBlocks, chunk,
      [&](int64_t first, int64_t rows) {
        int64_t o = first * D, h = first * F;
        Status st = ffnGradChunk(
            x + o, dy + o, dx + o, fOut ? fOut + o : nullptr, rows, w, g, beta,
            D, F, activation, savedU ? Hidden::Copy : Hidden::Recompute,
            savedA ? savedA + h : nullptr, savedU ? savedU + h : nullptr);
        beta = 1.0f;
        return st;
      },
      // Saved a and u go straight to where ffnGradChunk keeps them.
      [&](int64_t row, int64_t n, int64_t at, int64_t rows) {
        float *ag = gated ? ffnWork_.data() : nullptr;
        float *ug = ffnWork_.data() + (gated ? rows * F : 0);
        gatherGradInputs({x, dy, savedA, savedU}, {xg, dyg, ag, ug}, row, n, at,
                         D, F);
      },
      [&](int64_t rows) {
        Status st = ffnGradChunk(xg, dyg, dxg, fOut ? fg : nullptr, rows, w, g,
                                 beta, D, F, activation,
                                 savedU ? Hidden::Loaded : Hidden::Recompute,
                                 nullptr, nullptr);
        beta = 1.0f;
        return st;
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t) {
        std::memcpy(dx + row * D, dxg + at * D, n * rowBytes);
        if (fOut)
          std::memcpy(fOut + row * D, fg + at * D, n * rowBytes);
      });
}

Status CpuBackend::runFfnGradData(const float *x, const float *dy, float *dx,
                                  float *hidden, float *dpreGate, float *dpreUp,
                                  const RowBlock *blocks, int64_t numBlocks,
                                  const FfnWeights &w, int64_t D, int64_t F,
                                  int32_t activation, const float *savedA,
                                  const float *savedU) {
  bool gated = isGatedActivation(activation);
  int64_t live = liveRows(blocks, numBlocks);
  if (live == 0)
    return Status::ok();
  int64_t perRow = (gated ? 4 : 3) * F;
  int64_t chunk = gradChunkRows(live, D, F, gated);
  MOERT_TRY(
      ffnWork_.reserve(chunk * (perRow + 3 * D), "moert_expert_ffn_grad_data"));
  float *xg = ffnWork_.data() + chunk * perRow;
  float *dyg = xg + chunk * D;
  float *dxg = dyg + chunk * D;
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  size_t hiddenRowBytes = static_cast<size_t>(F) * sizeof(float);
  // ffnGradRows leaves da, du and h at the start of the workspace ([rows, F]
  // each).
  auto hiddens = [&](int64_t rows, float *&ag, float *&ug, float *&hg) {
    ag = gated ? ffnWork_.data() : nullptr;
    ug = ffnWork_.data() + (gated ? rows * F : 0);
    hg = ug + rows * F;
  };
  return forEachRowChunk(
      blocks, numBlocks, chunk,
      [&](int64_t first, int64_t rows) {
        int64_t o = first * D, h = first * F;
        MOERT_TRY(ffnGradRows(
            x + o, dy + o, dx + o, nullptr, rows, w, D, F, activation,
            savedU ? Hidden::Copy : Hidden::Recompute,
            savedA ? savedA + h : nullptr, savedU ? savedU + h : nullptr));
        float *ag, *ug, *hg;
        hiddens(rows, ag, ug, hg);
        size_t bytes = static_cast<size_t>(rows) * hiddenRowBytes;
        std::memcpy(hidden + h, hg, bytes);
        std::memcpy(dpreUp + h, ug, bytes);
        if (gated)
          std::memcpy(dpreGate + h, ag, bytes);
        return Status::ok();
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t rows) {
        float *ag, *ug, *hg;
        hiddens(rows, ag, ug, hg);
        gatherGradInputs({x, dy, savedA, savedU}, {xg, dyg, ag, ug}, row, n, at,
                         D, F);
      },
      [&](int64_t rows) {
        return ffnGradRows(xg, dyg, dxg, nullptr, rows, w, D, F, activation,
                           savedU ? Hidden::Loaded : Hidden::Recompute, nullptr,
                           nullptr);
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t rows) {
        float *ag, *ug, *hg;
        hiddens(rows, ag, ug, hg);
        std::memcpy(dx + row * D, dxg + at * D, n * rowBytes);
        std::memcpy(hidden + row * F, hg + at * F, n * hiddenRowBytes);
        std::memcpy(dpreUp + row * F, ug + at * F, n * hiddenRowBytes);
        if (gated)
          std::memcpy(dpreGate + row * F, ag + at * F, n * hiddenRowBytes);
      });
}

Status CpuBackend::runFfnGradWeight(const float *x, const float *dy,
                                    const float *hidden, const float *dpreGate,
                                    const float *dpreUp, const RowBlock *blocks,
                                    int64_t numBlocks, const FfnGrads &g,
                                    int64_t D, int64_t F) {
  bool gated = g.gate != nullptr;
  int64_t live = liveRows(blocks, numBlocks);
  if (live == 0) {
    zeroWeightGrads(g.gate, g.up, g.down, D, F);
    return Status::ok();
  }
  // The chunks of runFfnGrad (same live rows, same gated): the same GEMMs
  // on the same values, so the same sums.
  int64_t chunk = gradChunkRows(live, D, F, gated);
  int64_t hiddens = gated ? 3 : 2;
  MOERT_TRY(ffnWork_.reserve(chunk * (2 * D + hiddens * F),
                             "moert_expert_ffn_grad_weight"));
  float *xg = ffnWork_.data();
  float *dyg = xg + chunk * D;
  float *hg = dyg + chunk * D;
  float *ug = hg + chunk * F;
  float *ag = gated ? ug + chunk * F : nullptr;
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  size_t hiddenRowBytes = static_cast<size_t>(F) * sizeof(float);
  float beta = 0.0f; // the first chunk overwrites the weight gradients
  return forEachRowChunk(
      blocks, numBlocks, chunk,
      [&](int64_t first, int64_t rows) {
        int64_t o = first * D, h = first * F;
        ffnGradWeights(x + o, dy + o, hidden + h, dpreUp + h,
                       gated ? dpreGate + h : nullptr, rows, g, beta, D, F);
        beta = 1.0f;
        return Status::ok();
      },
      [&](int64_t row, int64_t n, int64_t at, int64_t) {
        std::memcpy(xg + at * D, x + row * D, n * rowBytes);
        std::memcpy(dyg + at * D, dy + row * D, n * rowBytes);
        std::memcpy(hg + at * F, hidden + row * F, n * hiddenRowBytes);
        std::memcpy(ug + at * F, dpreUp + row * F, n * hiddenRowBytes);
        if (gated)
          std::memcpy(ag + at * F, dpreGate + row * F, n * hiddenRowBytes);
      },
      [&](int64_t rows) {
        ffnGradWeights(xg, dyg, hg, ug, ag, rows, g, beta, D, F);
        beta = 1.0f;
        return Status::ok();
      },
      [](int64_t, int64_t, int64_t, int64_t) {}); // nothing per row
}

/// Zeroes the rows of `buf` ([totalRows, width]) that no block of blocks_
/// covers.
void CpuBackend::zeroUncoveredRows(float *buf, int64_t width,
                                   int64_t totalRows) const {
  std::vector<RowBlock> sorted(blocks_.begin(), blocks_.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const RowBlock &a, const RowBlock &b) { return a.row < b.row; });
  size_t rowBytes = static_cast<size_t>(width) * sizeof(float);
  int64_t next = 0; // first row not known to be covered
  for (const RowBlock &b : sorted) {
    if (b.row > next)
      std::memset(buf + next * width, 0, (b.row - next) * rowBytes);
    next = std::max(next, b.row + b.rows);
  }
  if (next < totalRows)
    std::memset(buf + next * width, 0, (totalRows - next) * rowBytes);
}

/// Fills blocks_ / blockStart_ with the live rows of every expert (adjacent
/// blocks merged) and zeroes the rows of y that no expert writes.
Status CpuBackend::collectBlocks(const char *fn, const int32_t *counts,
                                 float *y, int64_t E, int64_t S, int64_t R,
                                 int64_t totalRows, int64_t D) {
  int64_t C = R / S; // capacity layout: rows of one segment of one expert
  int64_t sum = 0;
  for (int64_t i = 0; counts && i < S * E; ++i) {
    int32_t c = counts[i];
    if (c < 0 || (R > 0 && c > C))
      return error(MOERT_ERR_INVALID,
                   "%s: counts[%" PRId64 ",%" PRId64
                   "] = %d is outside [0, %" PRId64 "]",
                   fn, i / E, i % E, c, R > 0 ? C : totalRows);
    sum += c;
  }
  if (R == 0 && sum > totalRows)
    return error(MOERT_ERR_INVALID,
                 "%s: the counts sum to %" PRId64 " rows but x has %" PRId64,
                 fn, sum, totalRows);
  if (R == 0) { // packed: segment-major offsets of every (s, e) block
    cursor_.resize(static_cast<size_t>(S * E));
    for (int64_t i = 0, row = 0; i < S * E; row += counts[i++])
      cursor_[i] = row;
  }
  blocks_.clear();
  blockStart_.assign(static_cast<size_t>(E + 1), 0);
  size_t rowBytes = static_cast<size_t>(D) * sizeof(float);
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t s = 0; s < S; ++s) {
      int64_t n = counts ? counts[s * E + e] : C;
      int64_t row = R > 0 ? e * R + s * C : cursor_[s * E + e];
      if (y && R > 0 && n < C)
        std::memset(y + (row + n) * D, 0, (C - n) * rowBytes);
      if (n == 0)
        continue;
      bool extends = blocks_.size() > size_t(blockStart_[e]) &&
                     blocks_.back().row + blocks_.back().rows == row;
      if (extends)
        blocks_.back().rows += n;
      else
        blocks_.push_back({row, n});
    }
    blockStart_[e + 1] = static_cast<int64_t>(blocks_.size());
  }
  if (y && R == 0 && sum < totalRows)
    std::memset(y + sum * D, 0, (totalRows - sum) * rowBytes);
  return Status::ok();
}

Status CpuBackend::expertFfn(const void *x, const int32_t *counts,
                             const void *gate, const void *up, const void *down,
                             void *y, void *saveA, void *saveU, int64_t E,
                             int64_t segments, int64_t rowsPerExpert,
                             int64_t totalRows, int64_t D, int64_t F,
                             int32_t activation, int32_t dtype) {
  MOERT_TRY(requireF32("moert_expert_ffn", dtype));
  auto *yf = static_cast<float *>(y);
  MOERT_TRY(collectBlocks("moert_expert_ffn", counts, yf, E, segments,
                          rowsPerExpert, totalRows, D));
  // moert_expert_ffn_train: the saved rows of no expert are zero too, so that
  // forward_train's results are defined everywhere (not what the caller's
  // buffer held before).
  for (void *saved : {saveA, saveU})
    if (saved)
      zeroUncoveredRows(static_cast<float *>(saved), F, totalRows);
  // Held weights (moert_hold_weights) serve this kernel's GEMMs only.
  struct InExpertFfn {
    bool &flag;
    explicit InExpertFfn(bool &f) : flag(f) { flag = true; }
    ~InExpertFfn() { flag = false; }
  } scope(inExpertFfn_);
  for (int64_t e = 0; e < E; ++e) {
    FfnWeights w{gate ? static_cast<const float *>(gate) + e * F * D : nullptr,
                 static_cast<const float *>(up) + e * F * D,
                 static_cast<const float *>(down) + e * D * F};
    MOERT_TRY(runFfn(static_cast<const float *>(x), yf,
                     blocks_.data() + blockStart_[e],
                     blockStart_[e + 1] - blockStart_[e], w, D, F, activation,
                     static_cast<float *>(saveA), static_cast<float *>(saveU)));
  }
  return Status::ok();
}

Status CpuBackend::mlp(const void *xv, const void *gate, const void *up,
                       const void *down, const void *sigmoidGate, void *yv,
                       int64_t T, int64_t D, int64_t F, int32_t activation,
                       int32_t dtype) {
  MOERT_TRY(requireF32("moert_mlp", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *y = static_cast<float *>(yv);
  FfnWeights w{static_cast<const float *>(gate), static_cast<const float *>(up),
               static_cast<const float *>(down)};
  RowBlock all{0, T};
  MOERT_TRY(runFfn(x, y, &all, 1, w, D, F, activation, nullptr, nullptr));
  if (!sigmoidGate)
    return Status::ok();
  auto *g = static_cast<const float *>(sigmoidGate);
#pragma omp parallel for num_threads(threads_) if (T * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    float s = sigmoid(dot(x + t * D, g, D));
    for (int64_t d = 0; d < D; ++d)
      y[t * D + d] *= s;
  }
  return Status::ok();
}

Status CpuBackend::expertFfnGrad(
    const void *x, const int32_t *counts, const void *gate, const void *up,
    const void *down, const void *dy, const void *savedA, const void *savedU,
    void *dx, void *dgate, void *dup, void *ddown, int64_t E, int64_t segments,
    int64_t rowsPerExpert, int64_t totalRows, int64_t D, int64_t F,
    int32_t activation, int32_t dtype) {
  MOERT_TRY(requireF32("moert_expert_ffn_grad", dtype));
  auto *dxf = static_cast<float *>(dx);
  // Dead rows of dx are zeroed here; live rows are written below.
  MOERT_TRY(collectBlocks("moert_expert_ffn_grad", counts, dxf, E, segments,
                          rowsPerExpert, totalRows, D));
  for (int64_t e = 0; e < E; ++e) {
    int64_t o = e * F * D;
    FfnWeights w{gate ? static_cast<const float *>(gate) + o : nullptr,
                 static_cast<const float *>(up) + o,
                 static_cast<const float *>(down) + o};
    FfnGrads g{dgate ? static_cast<float *>(dgate) + o : nullptr,
               static_cast<float *>(dup) + o, static_cast<float *>(ddown) + o};
    MOERT_TRY(runFfnGrad(
        static_cast<const float *>(x), static_cast<const float *>(dy), dxf,
        blocks_.data() + blockStart_[e], blockStart_[e + 1] - blockStart_[e], w,
        g, D, F, activation, nullptr, static_cast<const float *>(savedA),
        static_cast<const float *>(savedU)));
  }
  return Status::ok();
}

Status CpuBackend::expertFfnGradData(
    const void *x, const int32_t *counts, const void *gate, const void *up,
    const void *down, const void *dy, const void *savedA, const void *savedU,
    void *dx, void *hidden, void *dpreGate, void *dpreUp, int64_t E,
    int64_t segments, int64_t rowsPerExpert, int64_t totalRows, int64_t D,
    int64_t F, int32_t activation, int32_t dtype) {
  const char *fn = "moert_expert_ffn_grad_data";
  MOERT_TRY(requireF32(fn, dtype));
  auto *dxf = static_cast<float *>(dx);
  MOERT_TRY(
      collectBlocks(fn, counts, dxf, E, segments, rowsPerExpert, totalRows, D));
  for (void *rows : {hidden, dpreGate, dpreUp})
    if (rows)
      zeroUncoveredRows(static_cast<float *>(rows), F, totalRows);
  for (int64_t e = 0; e < E; ++e) {
    int64_t o = e * F * D;
    FfnWeights w{gate ? static_cast<const float *>(gate) + o : nullptr,
                 static_cast<const float *>(up) + o,
                 static_cast<const float *>(down) + o};
    MOERT_TRY(runFfnGradData(
        static_cast<const float *>(x), static_cast<const float *>(dy), dxf,
        static_cast<float *>(hidden), static_cast<float *>(dpreGate),
        static_cast<float *>(dpreUp), blocks_.data() + blockStart_[e],
        blockStart_[e + 1] - blockStart_[e], w, D, F, activation,
        static_cast<const float *>(savedA),
        static_cast<const float *>(savedU)));
  }
  return Status::ok();
}

Status CpuBackend::expertFfnGradWeight(const void *x, const int32_t *counts,
                                       const void *dy, const void *hidden,
                                       const void *dpreGate, const void *dpreUp,
                                       void *dgate, void *dup, void *ddown,
                                       int64_t E, int64_t segments,
                                       int64_t rowsPerExpert, int64_t totalRows,
                                       int64_t D, int64_t F, int32_t dtype) {
  const char *fn = "moert_expert_ffn_grad_weight";
  MOERT_TRY(requireF32(fn, dtype));
  MOERT_TRY(collectBlocks(fn, counts, nullptr, E, segments, rowsPerExpert,
                          totalRows, D));
  for (int64_t e = 0; e < E; ++e) {
    int64_t o = e * F * D;
    FfnGrads g{dgate ? static_cast<float *>(dgate) + o : nullptr,
               static_cast<float *>(dup) + o, static_cast<float *>(ddown) + o};
    MOERT_TRY(runFfnGradWeight(
        static_cast<const float *>(x), static_cast<const float *>(dy),
        static_cast<const float *>(hidden),
        static_cast<const float *>(dpreGate),
        static_cast<const float *>(dpreUp), blocks_.data() + blockStart_[e],
        blockStart_[e + 1] - blockStart_[e], g, D, F));
  }
  return Status::ok();
}

Status CpuBackend::mlpGrad(const void *xv, const void *gate, const void *up,
                           const void *down, const void *sigmoidGate,
                           const void *dyv, void *dxv, void *dgate, void *dup,
                           void *ddown, void *dsigmoidGate, int64_t T,
                           int64_t D, int64_t F, int32_t activation,
                           int32_t dtype) {
  MOERT_TRY(requireF32("moert_mlp_grad", dtype));
  auto *x = static_cast<const float *>(xv);
  auto *dy = static_cast<const float *>(dyv);
  auto *dx = static_cast<float *>(dxv);
  FfnWeights w{static_cast<const float *>(gate), static_cast<const float *>(up),
               static_cast<const float *>(down)};
  FfnGrads g{static_cast<float *>(dgate), static_cast<float *>(dup),
             static_cast<float *>(ddown)};
  RowBlock all{0, T};
  if (!sigmoidGate)
    return runFfnGrad(x, dy, dx, &all, 1, w, g, D, F, activation, nullptr);
  // o = f(x) s with s = sigmoid(x.sg): f gets dy s; p = x.sg gets
  // dp = (dy . f) s (1 - s), which reaches x (dp sg) and sg (dp^T x).
  auto *sg = static_cast<const float *>(sigmoidGate);
  MOERT_TRY(trainWork_.reserve(2 * T * D + 2 * T, "moert_mlp_grad"));
  float *dys = trainWork_.data();
  float *f = dys + T * D;
  float *s = f + T * D;
  float *dp = s + T;
#pragma omp parallel for num_threads(threads_) if (T * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    s[t] = sigmoid(dot(x + t * D, sg, D));
    for (int64_t d = 0; d < D; ++d)
      dys[t * D + d] = dy[t * D + d] * s[t];
  }
  MOERT_TRY(runFfnGrad(x, dys, dx, &all, 1, w, g, D, F, activation, f));
#pragma omp parallel for num_threads(threads_) if (T * D > 65536)
  for (int64_t t = 0; t < T; ++t) {
    dp[t] = dot(dy + t * D, f + t * D, D) * s[t] * (1.0f - s[t]);
    for (int64_t d = 0; d < D; ++d)
      dx[t * D + d] += dp[t] * sg[d];
  }
  cblas_sgemv(CblasRowMajor, CblasTrans, T, D, 1.0f, x, D, dp, 1, 0.0f,
              static_cast<float *>(dsigmoidGate), 1);
  return Status::ok();
}

} // namespace moert
