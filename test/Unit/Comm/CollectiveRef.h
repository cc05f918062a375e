//===- CollectiveRef.h - Reference results of the shaped collectives -*- C++
//-*-//
//
// Plain loops over 4-d indices that spell out moert.h's semantics; the tests
// compare the runtime's collectives (one rank or many) with them. Every rank
// can compute every other rank's input (inputValue), so each rank checks its
// own output without extra communication.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TEST_UNIT_COMM_COLLECTIVEREF_H
#define MOE_TEST_UNIT_COMM_COLLECTIVEREF_H

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ref {

using Dims = std::array<int64_t, 4>;
using Tensor = std::vector<float>;

inline int64_t numel(const Dims &d) { return d[0] * d[1] * d[2] * d[3]; }

inline int64_t flat(const Dims &d, const Dims &i) {
  return ((i[0] * d[1] + i[1]) * d[2] + i[2]) * d[3] + i[3];
}

template <typename F> void forEach(const Dims &d, F f) {
  Dims i;
  for (i[0] = 0; i[0] < d[0]; ++i[0])
    for (i[1] = 0; i[1] < d[1]; ++i[1])
      for (i[2] = 0; i[2] < d[2]; ++i[2])
        for (i[3] = 0; i[3] < d[3]; ++i[3])
          f(i);
}

/// Element `i` of world rank `rank`'s input: exact in f32, distinct.
inline float inputValue(int rank, int64_t i) {
  return static_cast<float>(rank * 4096 + i);
}

inline Tensor input(int rank, int64_t n) {
  Tensor t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    t[i] = inputValue(rank, i);
  return t;
}

/// World ranks of this rank's group over `mask`, in group order: the ranks
/// that differ from `rank` only on the masked axes, row-major.
inline std::vector<int> groupRanks(const std::vector<int64_t> &mesh, int rank,
                                   int64_t mask) {
  auto coords = [&](int r) {
    std::vector<int64_t> c(mesh.size());
    for (size_t a = mesh.size(); a-- > 0;) {
      c[a] = r % mesh[a];
      r /= static_cast<int>(mesh[a]);
    }
    return c;
  };
  int64_t world = 1;
  for (int64_t s : mesh)
    world *= s;
  std::vector<int64_t> mine = coords(rank);
  std::vector<int> out;
  for (int r = 0; r < world; ++r) {
    std::vector<int64_t> c = coords(r);
    bool same = true;
    for (size_t a = 0; a < mesh.size(); ++a)
      if (!(mask & (int64_t(1) << a)) && c[a] != mine[a])
        same = false;
    if (same)
      out.push_back(r);
  }
  return out;
}

/// Output of the even all-to-all for group member `me`; ins in group order.
inline Tensor allToAll(const std::vector<Tensor> &ins, Dims d, int split,
                       int concat, int me) {
  int64_t n = static_cast<int64_t>(ins.size());
  Dims cs = d;
  cs[split] /= n;
  Dims od = cs;
  od[concat] *= n;
  Tensor out(static_cast<size_t>(numel(od)));
  forEach(od, [&](const Dims &o) {
    int64_t peer = o[concat] / cs[concat];
    Dims i = o;
    i[concat] %= cs[concat];
    i[split] += me * cs[split];
    out[flat(od, o)] = ins[peer][flat(d, i)];
  });
  return out;
}

inline Tensor allGather(const std::vector<Tensor> &ins, Dims d, int dim) {
  Dims od = d;
  od[dim] *= static_cast<int64_t>(ins.size());
  Tensor out(static_cast<size_t>(numel(od)));
  forEach(od, [&](const Dims &o) {
    Dims i = o;
    i[dim] %= d[dim];
    out[flat(od, o)] = ins[o[dim] / d[dim]][flat(d, i)];
  });
  return out;
}

inline Tensor reduceScatter(const std::vector<Tensor> &ins, Dims d, int dim,
                            int me) {
  Dims od = d;
  od[dim] /= static_cast<int64_t>(ins.size());
  Tensor out(static_cast<size_t>(numel(od)), 0.0f);
  forEach(od, [&](const Dims &o) {
    Dims i = o;
    i[dim] += me * od[dim];
    for (const Tensor &in : ins)
      out[flat(od, o)] += in[flat(d, i)];
  });
  return out;
}

inline Tensor allReduce(const std::vector<Tensor> &ins) {
  Tensor out(ins[0].size(), 0.0f);
  for (const Tensor &in : ins)
    for (size_t i = 0; i < in.size(); ++i)
      out[i] += in[i];
  return out;
}

} // namespace ref

#endif // MOE_TEST_UNIT_COMM_COLLECTIVEREF_H
