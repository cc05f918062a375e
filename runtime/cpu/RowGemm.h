//===- RowGemm.h - Row-independent SGEMM for the expert FFN -----*- C++ -*-===//
//
// c[m,n] = sum_k a[m,k] b[n,k] (the NT form of the FFN's forward GEMMs:
// weights are stored [out, in]; `nn` takes b as [K, N] for the backward's
// data GEMMs) where every element of c is computed by the
// same sequence of floating-point operations whatever the number of rows of
// the call, the row's position in it, the thread count and the blocking:
//
//   acc = 0; for k = 0 .. K-1: acc = fma(a[m,k], b[n,k], acc); c[m,n] = acc
//
// A row of c therefore depends only on its own row of a and on b, so cutting
// the rows of a into chunks (moe-overlap's chunks, the backend's workspace
// chunks) cannot change a bit. BLAS libraries do not promise this: OpenBLAS's
// sgemm computes a row differently with M mod its kernel's row block and
// with the row's offset in the call, and the block depends on the CPU
// (docs/design.md, "Overlap"), which is why this kernel is hand-written.
//
// Two paths give the same bits: an AVX2+FMA register-blocked kernel (chosen
// at run time when the CPU has both) and a portable one (std::fma in the same
// k order). MOERT_ROWGEMM=portable in the environment forces the portable
// path (tests pick the path explicitly).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CPU_ROWGEMM_H
#define MOERT_CPU_ROWGEMM_H

#include "base/Status.h"

#include <cstdint>

namespace moert {
namespace cpu {

enum class RowGemmPath {
  Auto,     // AVX2 when the CPU has AVX2 and FMA, unless MOERT_ROWGEMM=portable
  Avx2,     // the AVX2+FMA kernel (the caller checks rowGemmHasAvx2())
  Portable, // std::fma, any CPU
};

/// Whether this CPU (and OS) can run the AVX2+FMA path.
bool rowGemmHasAvx2();
/// The path RowGemmPath::Auto takes in this process.
RowGemmPath rowGemmAutoPath();
const char *rowGemmPathName(RowGemmPath path);

/// b [N, K] packed once (RowGemm::pack) for any number of RowGemm::nt calls:
/// the packing reads and rewrites all of b, which for a few rows costs more
/// than the product. Packing moves values only, so a product with a packed
/// b has the bits of one that packs b itself.
class PackedB {
public:
  PackedB() = default;
  PackedB(const PackedB &) = delete;
  PackedB &operator=(const PackedB &) = delete;
  ~PackedB();
  /// The b it was packed from, and its shape.
  const float *source() const { return source_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t bytes() const;

private:
  friend class RowGemm;
  float *data_ = nullptr; // per block of kKc values of k, its panels
  const float *source_ = nullptr;
  int64_t n_ = 0, k_ = 0;
};

/// The row-independent SGEMM, with its packing buffers (they only grow). Not
/// thread-safe: one per backend.
class RowGemm {
public:
  RowGemm() = default;
  RowGemm(const RowGemm &) = delete;
  RowGemm &operator=(const RowGemm &) = delete;
  ~RowGemm();

  /// c[M,N] = a[M,K] . b[N,K]^T, all row-major and contiguous, on up to
  /// `threads` OpenMP threads. `fn` names the caller in errors (only
  /// allocation can fail).
  Status nt(const float *a, const float *b, float *c, int64_t M, int64_t N,
            int64_t K, int threads, const char *fn,
            RowGemmPath path = RowGemmPath::Auto);
  /// nt with b packed beforehand (b.n() x b.k()): the same bits.
  Status nt(const float *a, const PackedB &b, float *c, int64_t M, int threads,
            const char *fn, RowGemmPath path = RowGemmPath::Auto);
  /// Packs b [N, K] into `out` (replacing what it held), on up to `threads`
  /// threads.
  static Status pack(const float *b, int64_t N, int64_t K, int threads,
                     const char *fn, PackedB &out,
                     RowGemmPath path = RowGemmPath::Auto);

  /// c[M,N] = a[M,K] . b[K,N] (the NN form of the backward's data GEMMs:
  /// dh = dy.down, dx = du.up), each element the same ascending fma chain.
  /// With `accumulate` the chain starts from c's value instead of 0 (dx +=
  /// da.gate), which keeps a row of c a function of that row alone.
  Status nn(const float *a, const float *b, float *c, int64_t M, int64_t N,
            int64_t K, int threads, const char *fn, bool accumulate = false,
            RowGemmPath path = RowGemmPath::Auto);

  // Blocking (none of it changes a bit): register tile kMr x kNr, K in
  // blocks of kKc, rows of a packed in blocks of kMc.
  static constexpr int64_t kMr = 6, kNr = 16, kKc = 256, kMc = 96;

private:
  /// b is [N, K] (nt; or `packed`) or, with bKN, [K, N] (nn); with
  /// accumulateC each element's chain starts from c's value.
  Status run(const float *a, const float *b, const PackedB *packed, float *c,
             int64_t M, int64_t N, int64_t K, int threads, const char *fn,
             bool bKN, bool accumulateC, RowGemmPath path);
  Status reserve(int64_t floats, const char *fn);
  float *pack_ = nullptr;
  int64_t packSize_ = 0;
};

} // namespace cpu
} // namespace moert

#endif // MOERT_CPU_ROWGEMM_H
