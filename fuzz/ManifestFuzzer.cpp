//===- ManifestFuzzer.cpp - libFuzzer target: manifest.json parser --------===//
//
// Any bytes go to parseManifest, as moe-run reads manifest.json. A manifest
// it accepts is used the way moe-run uses it: every rank's coordinates, the
// slice of every argument and result on that rank (which must lie inside
// the global shape and have the manifest's local shape), the local byte
// sizes, the expert names of every stack and the entry lookups.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "support/Manifest.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace moert;

namespace {

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "manifest fuzzer: %s\n", what.c_str());
  std::abort();
}

void checkTensor(const Manifest &m, const TensorSpec &t,
                 const std::vector<int64_t> &coords) {
  Slice slice;
  Status s = computeSlice(m.mesh, t, coords, slice);
  if (!s.isOk())
    fail("computeSlice refuses a tensor parseManifest accepted: " +
         s.message());
  if (slice.lo.size() != t.shape.size() || slice.hi.size() != t.shape.size())
    fail("slice of the wrong rank for '" + t.name + "'");
  for (size_t d = 0; d < t.shape.size(); ++d)
    if (slice.lo[d] < 0 || slice.lo[d] > slice.hi[d] ||
        slice.hi[d] > t.shape[d])
      fail("slice of '" + t.name + "' outside its shape " +
           shapeString(t.shape));
  if (slice.shape() != t.localShape)
    fail("slice " + shapeString(slice.shape()) + " of '" + t.name +
         "' is not its local shape " + shapeString(t.localShape));
  if (t.localBytes() < 0)
    fail("negative local byte size of '" + t.name + "'");
  if (t.isExpertStack()) {
    int64_t experts = std::min<int64_t>(t.shape[0], 4);
    for (int64_t e = 0; e < experts; ++e)
      if (expandExpertName(t.name, e).find("{e}") != std::string::npos)
        fail("expandExpertName left '{e}' in '" + t.name + "'");
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  Manifest m;
  Status s = parseManifest(text, "manifest.json", m);
  if (!s.isOk()) {
    if (s.message().find("manifest.json") == std::string::npos)
      fail("error does not name the file: " + s.message());
    return 0;
  }
  int64_t ranks = m.mesh.size();
  if (ranks < 1)
    fail("mesh of " + std::to_string(ranks) + " ranks accepted");
  // Every rank of a small mesh; the first and last ranks of a large one.
  std::vector<int64_t> rankList;
  for (int64_t r = 0; r < std::min<int64_t>(ranks, 16); ++r)
    rankList.push_back(r);
  if (ranks > 16)
    rankList.push_back(ranks - 1);
  for (int64_t r : rankList) {
    std::vector<int64_t> coords = m.mesh.coords(r);
    for (size_t a = 0; a < coords.size(); ++a)
      if (coords[a] < 0 || coords[a] >= m.mesh.shape[a])
        fail("coordinates of rank " + std::to_string(r) + " outside the mesh");
    for (const Entry &e : m.entries) {
      if (m.findEntry(e.name) != &e)
        fail("findEntry does not find entry '" + e.name + "'");
      for (const TensorSpec &t : e.args)
        checkTensor(m, t, coords);
      for (const TensorSpec &t : e.results)
        checkTensor(m, t, coords);
    }
  }
  return 0;
}
