//===- CheckpointIndex.cpp - Checkpoint folders and FP8 weights -----------===//
#include "support/CheckpointIndex.h"
#include "support/Format.h"
#include "support/Fp8.h"
#include "support/Json.h"

#include "base/CheckedMath.h"
#include "base/Dtype.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

namespace moert {

//===----------------------------------------------------------------------===//
// The index
//===----------------------------------------------------------------------===//

/// An index larger than this is corruption (DeepSeek-V3's, 91k tensors, is
/// about 9 MB).
constexpr int64_t kMaxIndexBytes = 100 * 1000 * 1000;

/// A shard name must be a plain file in the index's folder.
static bool isPlainFileName(const std::string &s) {
  return !s.empty() && s.size() <= 255 && s != "." && s != ".." &&
         s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

Status parseCheckpointIndex(const std::string &text, const std::string &source,
                            CheckpointIndex &out) {
  out = CheckpointIndex();
  json::Value root;
  MOERT_TRY(json::parse(text, source, root));
  const char *src = source.c_str();
  if (!root.isObject())
    return supportError(MOERT_ERR_INVALID,
                        "%s: not a checkpoint index: expected a JSON object "
                        "with a 'weight_map'",
                        src);
  const json::Value *meta = root.get("metadata");
  if (meta && !meta->isObject() && !meta->isNull())
    return supportError(MOERT_ERR_INVALID,
                        "%s: 'metadata' must be an object (got %s)", src,
                        json::Value::kindName(meta->kind()));
  const json::Value *map = root.get("weight_map");
  if (!map || !map->isObject())
    return supportError(MOERT_ERR_INVALID,
                        "%s: not a checkpoint index: no 'weight_map' object "
                        "of tensor names to shard files",
                        src);
  if (map->members().empty())
    return supportError(MOERT_ERR_INVALID, "%s: 'weight_map' is empty", src);
  std::map<std::string, size_t> fileIds;
  for (const json::Value::Member &m : map->members()) {
    if (m.first.empty())
      return supportError(MOERT_ERR_INVALID,
                          "%s: 'weight_map' has an empty tensor name", src);
    if (!m.second.isString() || !isPlainFileName(m.second.getString()))
      return supportError(MOERT_ERR_INVALID,
                          "%s: tensor '%s' maps to %s, not to a file name in "
                          "the index's folder (no '/', '\\', '.' or '..')",
                          src, m.first.c_str(),
                          m.second.isString()
                              ? ("'" + m.second.getString() + "'").c_str()
                              : json::Value::kindName(m.second.kind()));
    auto ins = fileIds.emplace(m.second.getString(), out.files.size());
    if (ins.second)
      out.files.push_back(m.second.getString());
    out.shardOf[m.first] = ins.first->second;
  }
  return Status::ok();
}

bool isFloatTensor(const TensorInfo &t) {
  return isFloatDtype(t.dtype) || t.dtypeName == "F8_E4M3";
}

//===----------------------------------------------------------------------===//
// Opening
//===----------------------------------------------------------------------===//

static bool statPath(const std::string &p, struct stat &st) {
  return ::stat(p.c_str(), &st) == 0;
}

static Status readIndexFile(const std::string &path, std::string &text) {
  struct stat st;
  if (!statPath(path, st))
    return supportError(MOERT_ERR_IO, "%s: cannot open: %s", path.c_str(),
                        std::strerror(errno));
  if (st.st_size > kMaxIndexBytes)
    return supportError(MOERT_ERR_INVALID,
                        "%s: %lld bytes is too large for a checkpoint index",
                        path.c_str(), static_cast<long long>(st.st_size));
  std::ifstream f(path, std::ios::binary);
  if (!f)
    return supportError(MOERT_ERR_IO, "%s: cannot open: %s", path.c_str(),
                        std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  text = ss.str();
  return Status::ok();
}

static std::string dirName(const std::string &p) {
  size_t slash = p.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

static bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Status TensorSource::open(const std::string &path,
                          std::unique_ptr<TensorSource> &out) {
  std::unique_ptr<TensorSource> s(new TensorSource());
  s->path_ = path;
  struct stat st;
  std::string file = path;
  if (statPath(path, st) && S_ISDIR(st.st_mode)) {
    std::string index = path + "/" + kCheckpointIndexName;
    std::string single = path + "/model.safetensors";
    if (statPath(index, st))
      s->indexPath_ = index;
    else if (statPath(single, st))
      file = single;
    else
      return supportError(MOERT_ERR_IO,
                          "%s: a checkpoint folder holds %s and its shards, "
                          "or model.safetensors; neither is here",
                          path.c_str(), kCheckpointIndexName);
  } else if (endsWith(path, ".json")) {
    s->indexPath_ = path;
  }
  if (!s->indexPath_.empty()) {
    std::string text;
    MOERT_TRY(readIndexFile(s->indexPath_, text));
    MOERT_TRY(parseCheckpointIndex(text, s->indexPath_, s->index_));
    s->dir_ = dirName(s->indexPath_);
    s->shards_.resize(s->index_.files.size());
  } else {
    s->shards_.resize(1);
    MOERT_TRY(SafetensorsFile::open(file, s->shards_[0]));
  }
  out = std::move(s);
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// Lookups
//===----------------------------------------------------------------------===//

Status TensorSource::locate(const std::string &name,
                            const SafetensorsFile *&file,
                            const TensorInfo *&info) const {
  if (indexPath_.empty()) {
    file = shards_[0].get();
    return file->lookup(name, info);
  }
  auto it = index_.shardOf.find(name);
  if (it == index_.shardOf.end()) {
    std::string hint = nearestNameHint(index_.shardOf, name);
    return supportError(MOERT_ERR_INVALID,
                        "%s: missing tensor '%s': it is in none of the %zu "
                        "shards of the index%s",
                        indexPath_.c_str(), name.c_str(), index_.files.size(),
                        hint.c_str());
  }
  std::unique_ptr<SafetensorsFile> &shard = shards_[it->second];
  const std::string &fileName = index_.files[it->second];
  if (!shard) {
    Status s = SafetensorsFile::open(dir_ + "/" + fileName, shard);
    if (!s.isOk())
      return supportError(s.code(),
                          "%s: tensor '%s' is in shard '%s', which cannot be "
                          "read: %s",
                          indexPath_.c_str(), name.c_str(), fileName.c_str(),
                          s.message().c_str());
  }
  file = shard.get();
  info = file->find(name);
  if (!info)
    return supportError(MOERT_ERR_INVALID,
                        "%s: the index %s puts tensor '%s' in this file, "
                        "but it has no such tensor",
                        file->path().c_str(), indexPath_.c_str(), name.c_str());
  return Status::ok();
}

bool TensorSource::contains(const std::string &name) const {
  return indexPath_.empty() ? shards_[0]->find(name) != nullptr
                            : index_.shardOf.count(name) != 0;
}

const TensorInfo *TensorSource::find(const std::string &name) const {
  const SafetensorsFile *file;
  const TensorInfo *info = nullptr;
  return locate(name, file, info).isOk() ? info : nullptr;
}

Status TensorSource::lookup(const std::string &name,
                            const TensorInfo *&out) const {
  const SafetensorsFile *file;
  return locate(name, file, out);
}

std::vector<std::string> TensorSource::openedFiles() const {
  std::vector<std::string> out;
  for (const auto &f : shards_)
    if (f)
      out.push_back(f->path());
  return out;
}

int64_t TensorSource::bytesRead() const {
  int64_t n = 0;
  for (const auto &f : shards_)
    if (f)
      n += f->bytesRead();
  return n;
}

//===----------------------------------------------------------------------===//
// Reading, FP8 included
//===----------------------------------------------------------------------===//

Status TensorSource::readSlice(const std::string &name,
                               const std::vector<int64_t> &viewShape,
                               const std::vector<int64_t> &lo,
                               const std::vector<int64_t> &hi, int32_t outType,
                               void *out) const {
  const SafetensorsFile *file;
  const TensorInfo *t;
  MOERT_TRY(locate(name, file, t));
  if (t->dtypeName == "F8_E4M3")
    return readFp8Slice(*file, *t, viewShape.empty() ? t->shape : viewShape, lo,
                        hi, outType, static_cast<char *>(out));
  return file->readSlice(name, viewShape, lo, hi, outType, out);
}

/// Reads and checks the block scale of the [rows, cols] F8 tensor `t`.
static Status readBlockScale(const TensorSource &src, const TensorInfo &t,
                             int64_t rows, int64_t cols,
                             std::vector<float> &scale) {
  std::string name = t.name + "_scale_inv";
  const TensorInfo *s = nullptr;
  if (src.contains(name)) // listed: its shard must be readable
    MOERT_TRY(src.lookup(name, s));
  if (!s)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' is F8_E4M3 but there is no block "
                        "scale '%s' (DeepSeek-V3's convention; other FP8 "
                        "scalings are not read)",
                        src.path().c_str(), t.name.c_str(), name.c_str());
  std::vector<int64_t> want = {(rows + kFp8BlockSize - 1) / kFp8BlockSize,
                               (cols + kFp8BlockSize - 1) / kFp8BlockSize};
  if (!isFloatDtype(s->dtype) || s->shape != want)
    return supportError(MOERT_ERR_INVALID,
                        "%s: block scale '%s' is %s %s; tensor '%s' of shape "
                        "%s needs a float tensor of shape %s (one scale per "
                        "%lldx%lld block)",
                        src.path().c_str(), name.c_str(), s->dtypeName.c_str(),
                        shapeString(s->shape).c_str(), t.name.c_str(),
                        shapeString(t.shape).c_str(), shapeString(want).c_str(),
                        static_cast<long long>(kFp8BlockSize),
                        static_cast<long long>(kFp8BlockSize));
  scale.resize(static_cast<size_t>(want[0] * want[1]));
  std::vector<int64_t> zero = {0, 0};
  MOERT_TRY(src.readSlice(name, want, zero, want, MOERT_F32, scale.data()));
  for (size_t i = 0; i < scale.size(); ++i)
    if (!std::isfinite(scale[i]))
      return supportError(MOERT_ERR_INVALID,
                          "%s: block scale '%s' has a non-finite value at "
                          "block (%lld, %lld)",
                          src.path().c_str(), name.c_str(),
                          static_cast<long long>(i / want[1]),
                          static_cast<long long>(i % want[1]));
  return Status::ok();
}

Status TensorSource::readFp8Slice(const SafetensorsFile &file,
                                  const TensorInfo &t,
                                  const std::vector<int64_t> &view,
                                  const std::vector<int64_t> &lo,
                                  const std::vector<int64_t> &hi,
                                  int32_t outType, char *out) const {
  const char *tn = t.name.c_str();
  if (!isFloatDtype(outType))
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' has dtype F8_E4M3, which cannot be "
                        "read as %s",
                        file.path().c_str(), tn, dtypeName(outType));
  if (t.shape.size() != 2)
    return supportError(MOERT_ERR_INVALID,
                        "%s: F8_E4M3 tensor '%s' has shape %s; block scales "
                        "are defined for matrices only",
                        file.path().c_str(), tn, shapeString(t.shape).c_str());
  int64_t rows = t.shape[0], cols = t.shape[1], numel, viewNumel;
  if (!checkedNumElements(t.shape, numel) ||
      !checkedNumElements(view, viewNumel) || viewNumel != numel)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' has shape %s, which does not match "
                        "the expected shape %s",
                        file.path().c_str(), tn, shapeString(t.shape).c_str(),
                        shapeString(view).c_str());
  size_t rank = view.size();
  if (lo.size() != rank || hi.size() != rank)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s': slice of rank %zu for a view of "
                        "rank %zu",
                        file.path().c_str(), tn, lo.size(), rank);
  for (size_t d = 0; d < rank; ++d) {
    if (lo[d] < 0 || lo[d] > hi[d] || hi[d] > view[d])
      return supportError(
          MOERT_ERR_INVALID,
          "%s: tensor '%s': slice [%lld, %lld) of dimension "
          "%zu is outside [0, %lld)",
          file.path().c_str(), tn, static_cast<long long>(lo[d]),
          static_cast<long long>(hi[d]), d, static_cast<long long>(view[d]));
    if (lo[d] == hi[d])
      return Status::ok(); // empty slice
  }
  std::vector<float> scale;
  MOERT_TRY(readBlockScale(*this, t, rows, cols, scale));

  // Runs of consecutive file elements, as SafetensorsFile::readSlice.
  std::vector<int64_t> stride(rank, 1);
  for (size_t d = rank - 1; d-- > 0;)
    stride[d] = stride[d + 1] * view[d + 1];
  size_t k = rank - 1;
  while (k > 0 && lo[k] == 0 && hi[k] == view[k])
    --k;
  int64_t runElems = (hi[k] - lo[k]) * stride[k];
  size_t outElem = dtypeSize(outType);
  const int64_t kChunk = 1 << 20; // elements per read: 1 MiB + 4 MiB buffers
  std::vector<uint8_t> raw(static_cast<size_t>(std::min(runElems, kChunk)));
  std::vector<float> vals(raw.size());
  std::vector<int64_t> idx(lo.begin(), lo.begin() + k);
  std::string what = file.path() + ": tensor '" + t.name + "'";
  while (true) {
    int64_t first = lo[k] * stride[k];
    for (size_t d = 0; d < k; ++d)
      first += idx[d] * stride[d];
    for (int64_t done = 0; done < runElems;) {
      int64_t n = std::min(runElems - done, kChunk);
      MOERT_TRY(file.readRaw(t, first + done, n, raw.data()));
      dequantizeBlockRun(raw.data(), first + done, n, cols, scale.data(),
                         vals.data());
      MOERT_TRY(convertElements(vals.data(), MOERT_F32, out, outType, n, what));
      out += n * static_cast<int64_t>(outElem);
      done += n;
    }
    size_t d = k;
    while (d > 0 && ++idx[d - 1] == hi[d - 1]) {
      idx[d - 1] = lo[d - 1];
      --d;
    }
    if (d == 0)
      return Status::ok();
  }
}

} // namespace moert
