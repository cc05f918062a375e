//===- ShardedLoader.cpp - This rank's slices of safetensors files --------===//
#include "ShardedLoader.h"

#include "base/Dtype.h"
#include "support/Format.h"

#include <algorithm>
#include <cstring>

using namespace moert;

namespace moe_run {

namespace {

//===----------------------------------------------------------------------===//
// Slices: transposes and placement
//===----------------------------------------------------------------------===//

/// [..., a, b] -> [..., b, a] for every trailing matrix.
void transposeTrailing(const char *src, char *dst,
                       const std::vector<int64_t> &srcShape, size_t es) {
  size_t r = srcShape.size();
  int64_t a = srcShape[r - 2], b = srcShape[r - 1];
  int64_t batch = numElements(srcShape) / std::max<int64_t>(a * b, 1);
  for (int64_t m = 0; m < batch; ++m) {
    const char *s = src + m * a * b * es;
    char *d = dst + m * a * b * es;
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j)
        std::memcpy(d + (j * a + i) * es, s + (i * b + j) * es, es);
  }
}

std::vector<int64_t> swapLast(std::vector<int64_t> v) {
  if (v.size() >= 2)
    std::swap(v[v.size() - 1], v[v.size() - 2]);
  return v;
}

/// Copies the dense block `local` (shape hi - lo) into `global` at `slice`.
void placeSlice(char *global, const std::vector<int64_t> &shape,
                const Slice &slice, const char *local, size_t es) {
  size_t r = shape.size();
  if (r == 0) {
    std::memcpy(global, local, es);
    return;
  }
  std::vector<int64_t> stride(r, 1);
  for (size_t d = r - 1; d-- > 0;)
    stride[d] = stride[d + 1] * shape[d + 1];
  int64_t row = (slice.hi[r - 1] - slice.lo[r - 1]) * es;
  if (row == 0)
    return;
  std::vector<int64_t> idx(slice.lo.begin(), slice.lo.end());
  for (size_t d = 0; d < r; ++d)
    if (slice.lo[d] == slice.hi[d])
      return;
  while (true) {
    int64_t off = 0;
    for (size_t d = 0; d < r; ++d)
      off += idx[d] * stride[d];
    std::memcpy(global + off * es, local, row);
    local += row;
    int d = static_cast<int>(r) - 2;
    while (d >= 0 && ++idx[d] == slice.hi[d]) {
      idx[d] = slice.lo[d];
      --d;
    }
    if (d < 0)
      return;
  }
}

//===----------------------------------------------------------------------===//
// Loading one argument
//===----------------------------------------------------------------------===//

/// Reads the slice [lo, hi) of `spec` (argument coordinates) from file
/// tensor `name` viewed as `view` (argument coordinates), honouring the
/// transpose flag, into `out`. `File`: a SafetensorsFile or a TensorSource
/// (a checkpoint folder; FP8 dequantized).
template <typename File>
Status readArgSlice(const File &file, const std::string &name,
                    const TensorSpec &spec, std::vector<int64_t> view,
                    std::vector<int64_t> lo, std::vector<int64_t> hi,
                    char *out) {
  size_t es = dtypeSize(spec.dtype);
  if (!spec.transpose)
    return file.readSlice(name, view, lo, hi, spec.dtype, out);
  view = swapLast(view);
  lo = swapLast(lo);
  hi = swapLast(hi);
  std::vector<int64_t> shape(lo.size());
  for (size_t d = 0; d < lo.size(); ++d)
    shape[d] = hi[d] - lo[d];
  std::vector<char> tmp(static_cast<size_t>(numElements(shape)) * es);
  MOERT_TRY(file.readSlice(name, view, lo, hi, spec.dtype, tmp.data()));
  transposeTrailing(tmp.data(), out, shape, es);
  return Status::ok();
}

template <typename File>
Status checkDtypeClass(const File &file, const TensorInfo &t,
                       const TensorSpec &spec) {
  bool argFloat = isFloatDtype(spec.dtype);
  if ((argFloat && isFloatTensor(t)) || (!argFloat && isIntDtype(t.dtype)))
    return Status::ok();
  return supportError(MOERT_ERR_INVALID,
                      "%s: tensor '%s' has dtype %s but argument %lld ('%s') "
                      "is %s",
                      file.path().c_str(), t.name.c_str(), t.dtypeName.c_str(),
                      static_cast<long long>(spec.index), spec.name.c_str(),
                      safetensorsDtypeName(spec.dtype));
}

template <typename File>
Status loadPlain(const File &file, const TensorSpec &spec, const Slice &slice,
                 char *out) {
  const TensorInfo *t;
  MOERT_TRY(file.lookup(spec.name, t));
  MOERT_TRY(checkDtypeClass(file, *t, spec));
  return readArgSlice(file, spec.name, spec, spec.shape, slice.lo, slice.hi,
                      out);
}

/// A stack over experts: one file tensor per global expert index.
template <typename File>
Status loadExpertStack(const File &file, const TensorSpec &spec,
                       const Slice &slice, char *out) {
  std::vector<int64_t> sub(spec.shape.begin() + 1, spec.shape.end());
  std::vector<int64_t> lo(slice.lo.begin() + 1, slice.lo.end());
  std::vector<int64_t> hi(slice.hi.begin() + 1, slice.hi.end());
  int64_t perExpert = dtypeSize(spec.dtype);
  for (size_t d = 0; d < lo.size(); ++d)
    perExpert *= hi[d] - lo[d];
  std::vector<int64_t> fileShape = spec.transpose ? swapLast(sub) : sub;
  for (int64_t e = slice.lo[0]; e < slice.hi[0]; ++e) {
    std::string name = expandExpertName(spec.name, e);
    const TensorInfo *t;
    MOERT_TRY(file.lookup(name, t));
    MOERT_TRY(checkDtypeClass(file, *t, spec));
    if (t->shape != fileShape)
      return supportError(MOERT_ERR_INVALID,
                          "%s: tensor '%s' has shape %s but argument '%s' "
                          "needs %s per expert%s",
                          file.path().c_str(), name.c_str(),
                          shapeString(t->shape).c_str(), spec.name.c_str(),
                          shapeString(fileShape).c_str(),
                          spec.transpose ? " (transposed)" : "");
    MOERT_TRY(readArgSlice(file, name, spec, sub, lo, hi,
                           out + (e - slice.lo[0]) * perExpert));
  }
  return Status::ok();
}

} // namespace

//===----------------------------------------------------------------------===//
// ShardedLoader
//===----------------------------------------------------------------------===//

Status ShardedLoader::open(const std::string &weights,
                           const std::string &inputs) {
  if (!weights.empty())
    MOERT_TRY(TensorSource::open(weights, weights_));
  if (!inputs.empty())
    MOERT_TRY(SafetensorsFile::open(inputs, inputs_));
  return Status::ok();
}

Status ShardedLoader::read(const TensorSpec &spec, char *out) const {
  bool weight = spec.role == "weight";
  if (weight ? !weights_ : !inputs_)
    return supportError(MOERT_ERR_INVALID, "argument '%s': no %s file open",
                        spec.name.c_str(), weight ? "weights" : "inputs");
  return weight ? readFrom(*weights_, spec, out)
                : readFrom(*inputs_, spec, out);
}

/// The token mask (docs/spec.md 3.11) is 1 or 0 per token: checked where it
/// is read, so that the error names the token's index in the whole batch.
static Status checkTokenMask(const std::string &path, const TensorSpec &spec,
                             const Slice &slice, const char *out) {
  if (spec.role != "input" || spec.name != "token_mask" ||
      spec.dtype != MOERT_I32 || slice.lo.size() != 1)
    return Status::ok();
  int64_t n = slice.hi[0] - slice.lo[0];
  for (int64_t t = 0; t < n; ++t) {
    int32_t v;
    std::memcpy(&v, out + t * 4, 4);
    if (v != 0 && v != 1)
      return supportError(MOERT_ERR_INVALID,
                          "%s: tensor 'token_mask': token %lld has mask %d: "
                          "1 marks a real token, 0 padding, nothing else",
                          path.c_str(), static_cast<long long>(slice.lo[0] + t),
                          v);
  }
  return Status::ok();
}

template <typename File>
static Status readSpec(const Mesh &mesh, const std::vector<int64_t> &coords,
                       const File &file, const TensorSpec &spec, char *out) {
  Slice slice;
  MOERT_TRY(computeSlice(mesh, spec, coords, slice));
  if (spec.isExpertStack())
    return loadExpertStack(file, spec, slice, out);
  MOERT_TRY(loadPlain(file, spec, slice, out));
  return checkTokenMask(file.path(), spec, slice, out);
}

Status ShardedLoader::readFrom(const SafetensorsFile &file,
                               const TensorSpec &spec, char *out) const {
  return readSpec(mesh_, coords_, file, spec, out);
}

Status ShardedLoader::readFrom(const TensorSource &source,
                               const TensorSpec &spec, char *out) const {
  return readSpec(mesh_, coords_, source, spec, out);
}

void ShardedLoader::close() {
  weights_.reset();
  inputs_.reset();
}

Status assembleGlobal(const Mesh &mesh, const TensorSpec &spec, const char *all,
                      int64_t bytesPerRank, std::vector<char> &global) {
  size_t es = dtypeSize(spec.dtype);
  global.assign(static_cast<size_t>(numElements(spec.shape)) * es, 0);
  for (int64_t r = 0; r < mesh.size(); ++r) {
    Slice slice;
    MOERT_TRY(computeSlice(mesh, spec, mesh.coords(r), slice));
    placeSlice(global.data(), spec.shape, slice, all + r * bytesPerRank, es);
  }
  return Status::ok();
}

bool isFirstReplica(const Mesh &mesh, const TensorSpec &spec,
                    const std::vector<int64_t> &coords) {
  for (size_t a = 0; a < mesh.axes.size() && a < coords.size(); ++a) {
    bool splits = false;
    for (const std::vector<std::string> &dim : spec.shard)
      for (const std::string &axis : dim)
        splits = splits || axis == mesh.axes[a];
    if (!splits && coords[a] != 0)
      return false;
  }
  return true;
}

} // namespace moe_run
