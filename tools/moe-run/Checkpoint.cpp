//===- Checkpoint.cpp - Weights and optimizer state files of training -----===//
#include "Checkpoint.h"

#include "base/Dtype.h"
#include "support/Format.h"

#include <cmath>
#include <cstring>

using namespace moert;

namespace moe_run {

namespace {

/// [a, b] -> [b, a] of one matrix of 4-byte elements.
void transposeMatrix(const float *src, float *dst, int64_t a, int64_t b) {
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j)
      dst[j * a + i] = src[i * b + j];
}

/// Undoes the transpose of every trailing matrix of `data` (argument shape
/// `shape`, F32), in place.
void untranspose(std::vector<float> &data, const std::vector<int64_t> &shape) {
  size_t r = shape.size();
  int64_t a = shape[r - 2], b = shape[r - 1];
  if (a * b == 0)
    return;
  std::vector<float> tmp(static_cast<size_t>(a * b));
  for (size_t off = 0; off < data.size(); off += a * b) {
    transposeMatrix(data.data() + off, tmp.data(), a, b);
    std::memcpy(data.data() + off, tmp.data(), tmp.size() * sizeof(float));
  }
}

std::vector<int64_t> swapLast(std::vector<int64_t> v) {
  if (v.size() >= 2)
    std::swap(v[v.size() - 1], v[v.size() - 2]);
  return v;
}

FileTensor makeTensor(std::string name, std::vector<int64_t> shape,
                      const float *data, int64_t n) {
  FileTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.data.resize(static_cast<size_t>(n) * sizeof(float));
  std::memcpy(t.data.data(), data, t.data.size());
  return t;
}

} // namespace

Status toFileTensors(const TensorSpec &spec, const std::vector<char> &global,
                     const std::vector<int64_t> &fileShape,
                     std::vector<FileTensor> &out) {
  int64_t n = numElements(spec.shape);
  std::vector<float> f32(static_cast<size_t>(n));
  MOERT_TRY(convertElements(global.data(), spec.dtype, f32.data(), MOERT_F32, n,
                            spec.name));
  if (spec.transpose)
    untranspose(f32, spec.shape);
  if (!spec.isExpertStack()) {
    std::vector<int64_t> shape =
        fileShape.empty() ? (spec.transpose ? swapLast(spec.shape) : spec.shape)
                          : fileShape;
    if (numElements(shape) != n)
      return supportError(MOERT_ERR_INVALID,
                          "'%s': file shape %s does not hold the %lld "
                          "elements of the argument",
                          spec.name.c_str(), shapeString(shape).c_str(),
                          static_cast<long long>(n));
    out.push_back(makeTensor(spec.name, shape, f32.data(), n));
    return Status::ok();
  }
  std::vector<int64_t> sub(spec.shape.begin() + 1, spec.shape.end());
  if (spec.transpose)
    sub = swapLast(sub);
  int64_t per = numElements(sub);
  for (int64_t e = 0; e < spec.shape[0]; ++e)
    out.push_back(makeTensor(expandExpertName(spec.name, e), sub,
                             f32.data() + e * per, per));
  return Status::ok();
}

std::vector<int64_t> fileShapeOf(const TensorSource *file,
                                 const TensorSpec &spec) {
  if (spec.isExpertStack()) {
    std::vector<int64_t> sub(spec.shape.begin() + 1, spec.shape.end());
    return spec.transpose ? swapLast(sub) : sub;
  }
  const TensorInfo *t = file ? file->find(spec.name) : nullptr;
  if (t && numElements(t->shape) == numElements(spec.shape))
    return t->shape;
  return spec.transpose ? swapLast(spec.shape) : spec.shape;
}

Status writeFileTensors(const std::string &path,
                        const std::vector<FileTensor> &tensors,
                        const std::map<std::string, std::string> &meta) {
  std::vector<TensorData> list;
  for (const FileTensor &t : tensors)
    list.push_back({t.name, t.dtype, t.shape, t.data.data()});
  return writeSafetensors(path, list, meta);
}

Status readOptimizerStep(const SafetensorsFile &file, int64_t &step) {
  const TensorInfo *t;
  MOERT_TRY(file.lookup("optimizer.step", t));
  int64_t value = -1;
  bool ok = isIntDtype(t->dtype) && t->shape == std::vector<int64_t>{1} &&
            file.readAll("optimizer.step", MOERT_I64, &value).isOk() &&
            value >= 0;
  if (!ok)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor 'optimizer.step' must be one non-negative "
                        "integer of shape [1] (got %s %s)",
                        file.path().c_str(), t->dtypeName.c_str(),
                        shapeString(t->shape).c_str());
  step = value;
  return Status::ok();
}

int64_t firstNonFinite(const float *data, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(data[i]))
      return i;
  return -1;
}

} // namespace moe_run
