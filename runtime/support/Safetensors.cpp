//===- Safetensors.cpp - Read slices of, and write, safetensors files -----===//
#include "support/Safetensors.h"
#include "base/CheckedMath.h"
#include "support/Format.h"
#include "support/Json.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

namespace moert {

//===----------------------------------------------------------------------===//
// Scalar conversions
//===----------------------------------------------------------------------===//

static float bitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static uint32_t floatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float halfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0x1f) // inf / nan
    return bitsToFloat(sign | 0x7f800000 | (mant << 13));
  if (exp != 0)
    return bitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0)
    return bitsToFloat(sign);
  // Subnormal: value = mant * 2^-24.
  float v = static_cast<float>(mant) * bitsToFloat(0x33800000); // 2^-24
  return sign ? -v : v;
}

uint16_t floatToHalf(float f) {
  uint32_t u = floatToBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  uint32_t absU = u & 0x7fffffff;
  if (absU >= 0x7f800000) // inf / nan (keep nan quiet)
    return sign | (absU > 0x7f800000 ? 0x7e00 : 0x7c00);
  if (absU >= 0x477ff000) // rounds to >= 65536: overflow to inf
    return sign | 0x7c00;
  if (absU < 0x38800000) { // below the smallest normal half (2^-14)
    // Scale so that rounding the float to an integer rounds the half.
    float v = bitsToFloat(absU) * bitsToFloat(0x4b800000); // 2^24
    // v in [0, 1024): round to nearest even via the float adder.
    float r = (v + 8388608.0f) - 8388608.0f;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t mant = absU & 0x7fffff;
  uint32_t exp = (absU >> 23) - 112;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
    ++h; // carries into the exponent correctly
  return sign | static_cast<uint16_t>(h);
}

float bf16ToFloat(uint16_t b) {
  return bitsToFloat(static_cast<uint32_t>(b) << 16);
}

uint16_t floatToBf16(float f) {
  uint32_t u = floatToBits(f);
  if ((u & 0x7fffffff) > 0x7f800000) // nan: keep it a (quiet) nan
    return static_cast<uint16_t>((u >> 16) | 0x40);
  uint32_t rounding = 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

//===----------------------------------------------------------------------===//
// Dtypes
//===----------------------------------------------------------------------===//

const char *safetensorsDtypeName(int32_t dtype) {
  switch (dtype) {
  case MOERT_F32:
    return "F32";
  case MOERT_F16:
    return "F16";
  case MOERT_BF16:
    return "BF16";
  case MOERT_I32:
    return "I32";
  case MOERT_I64:
    return "I64";
  default:
    return nullptr;
  }
}

int32_t dtypeFromSafetensors(const std::string &name) {
  for (int32_t t = MOERT_F32; t <= MOERT_I64; ++t)
    if (name == safetensorsDtypeName(t))
      return t;
  return -1;
}

int32_t dtypeFromName(const std::string &name) {
  for (int32_t t = MOERT_F32; t <= MOERT_I64; ++t)
    if (name == dtypeName(t))
      return t;
  return -1;
}

/// Bytes per element of every dtype the format defines, 0 if unknown.
static size_t safetensorsElemSize(const std::string &name) {
  static const std::pair<const char *, size_t> kSizes[] = {
      {"BOOL", 1},    {"U8", 1},      {"I8", 1},  {"F8_E5M2", 1},
      {"F8_E4M3", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},     {"BF16", 2},    {"I32", 4}, {"U32", 4},
      {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
  for (const auto &p : kSizes)
    if (name == p.first)
      return p.second;
  return 0;
}

static float loadFloat(const void *p, int32_t t, int64_t i) {
  if (t == MOERT_F32)
    return static_cast<const float *>(p)[i];
  uint16_t h = static_cast<const uint16_t *>(p)[i];
  return t == MOERT_F16 ? halfToFloat(h) : bf16ToFloat(h);
}

static void storeFloat(void *p, int32_t t, int64_t i, float v) {
  if (t == MOERT_F32)
    static_cast<float *>(p)[i] = v;
  else if (t == MOERT_F16)
    static_cast<uint16_t *>(p)[i] = floatToHalf(v);
  else
    static_cast<uint16_t *>(p)[i] = floatToBf16(v);
}

/// I32 <-> I64 (the types differ).
static Status convertInts(const void *src, int32_t srcType, void *dst,
                          int64_t n, const std::string &what) {
  if (srcType == MOERT_I32) { // widen
    const int32_t *s = static_cast<const int32_t *>(src);
    int64_t *d = static_cast<int64_t *>(dst);
    for (int64_t i = 0; i < n; ++i)
      d[i] = s[i];
    return Status::ok();
  }
  const int64_t *s = static_cast<const int64_t *>(src);
  int32_t *d = static_cast<int32_t *>(dst);
  for (int64_t i = 0; i < n; ++i) {
    if (s[i] < INT32_MIN || s[i] > INT32_MAX)
      return supportError(MOERT_ERR_INVALID,
                          "%s: value %lld does not fit in i32", what.c_str(),
                          static_cast<long long>(s[i]));
    d[i] = static_cast<int32_t>(s[i]);
  }
  return Status::ok();
}

Status convertElements(const void *src, int32_t srcType, void *dst,
                       int32_t dstType, int64_t n, const std::string &what) {
  if (srcType == dstType) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtypeSize(srcType));
    return Status::ok();
  }
  if (isFloatDtype(srcType) && isFloatDtype(dstType)) {
    for (int64_t i = 0; i < n; ++i)
      storeFloat(dst, dstType, i, loadFloat(src, srcType, i));
    return Status::ok();
  }
  if (isIntDtype(srcType) && isIntDtype(dstType))
    return convertInts(src, srcType, dst, n, what);
  return supportError(MOERT_ERR_INVALID, "%s: cannot convert %s to %s",
                      what.c_str(), dtypeName(srcType), dtypeName(dstType));
}

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i)
      s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t numElements(const std::vector<int64_t> &shape) {
  // Shapes reach here validated (the manifest and header parsers refuse an
  // overflowing one); -1 flags any other.
  int64_t n;
  return checkedNumElements(shape, n) ? n : -1;
}

//===----------------------------------------------------------------------===//
// Low-level file access
//===----------------------------------------------------------------------===//

/// Reads exactly `bytes` at `offset`; fewer means the file is truncated.
static Status preadFull(int fd, void *buf, int64_t bytes, int64_t offset,
                        const std::string &path, const std::string &what) {
  char *p = static_cast<char *>(buf);
  int64_t done = 0;
  while (done < bytes) {
    size_t chunk =
        static_cast<size_t>(std::min<int64_t>(bytes - done, 1 << 30));
    ssize_t n = ::pread(fd, p + done, chunk, offset + done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return supportError(MOERT_ERR_IO, "%s: cannot read %s: %s", path.c_str(),
                          what.c_str(), std::strerror(errno));
    if (n == 0)
      return supportError(
          MOERT_ERR_IO,
          "%s: file is truncated: %s needs %lld bytes at "
          "offset %lld, only %lld could be read",
          path.c_str(), what.c_str(), static_cast<long long>(bytes),
          static_cast<long long>(offset), static_cast<long long>(done));
    done += n;
  }
  return Status::ok();
}

static Status writeFull(int fd, const void *buf, int64_t bytes,
                        const std::string &path) {
  const char *p = static_cast<const char *>(buf);
  int64_t done = 0;
  while (done < bytes) {
    size_t chunk =
        static_cast<size_t>(std::min<int64_t>(bytes - done, 1 << 30));
    ssize_t n = ::write(fd, p + done, chunk);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return supportError(MOERT_ERR_IO, "%s: write failed: %s", path.c_str(),
                          std::strerror(errno));
    done += n;
  }
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// SafetensorsFile: header
//===----------------------------------------------------------------------===//

/// The format caps the header at 100 MB; a larger length is corruption.
constexpr int64_t kMaxHeaderBytes = 100 * 1000 * 1000;

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0)
    ::close(fd_);
}

Status SafetensorsFile::open(const std::string &path,
                             std::unique_ptr<SafetensorsFile> &out) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  // O_NONBLOCK: a FIFO or a device named as a safetensors file must not
  // block open(); fstat then refuses anything but a regular file.
  f->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f->fd_ < 0)
    return supportError(MOERT_ERR_IO, "%s: cannot open: %s", path.c_str(),
                        std::strerror(errno));
  struct stat st;
  if (::fstat(f->fd_, &st) != 0)
    return supportError(MOERT_ERR_IO, "%s: cannot stat: %s", path.c_str(),
                        std::strerror(errno));
  if (S_ISDIR(st.st_mode))
    return supportError(MOERT_ERR_IO,
                        "%s: is a directory, not a safetensors "
                        "file",
                        path.c_str());
  if (!S_ISREG(st.st_mode))
    return supportError(MOERT_ERR_IO,
                        "%s: is not a regular file (a FIFO, socket or "
                        "device): moe-run reads safetensors files only",
                        path.c_str());
  int64_t size = st.st_size;
  if (size < 8)
    return supportError(MOERT_ERR_IO,
                        "%s: file is truncated (%lld bytes): a safetensors "
                        "file starts with an 8-byte header length",
                        path.c_str(), static_cast<long long>(size));
  unsigned char lenBytes[8];
  MOERT_TRY(preadFull(f->fd_, lenBytes, 8, 0, path, "the header length"));
  uint64_t headerLen = 0;
  for (int i = 7; i >= 0; --i)
    headerLen = (headerLen << 8) | lenBytes[i];
  if (headerLen == 0 || headerLen > static_cast<uint64_t>(kMaxHeaderBytes))
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: header length %llu is not in "
                        "[1, %lld] (not a safetensors file?)",
                        path.c_str(),
                        static_cast<unsigned long long>(headerLen),
                        static_cast<long long>(kMaxHeaderBytes));
  if (static_cast<int64_t>(headerLen) > size - 8)
    return supportError(MOERT_ERR_IO,
                        "%s: file is truncated: the header needs %llu bytes "
                        "but only %lld follow the length",
                        path.c_str(),
                        static_cast<unsigned long long>(headerLen),
                        static_cast<long long>(size - 8));
  std::string header(static_cast<size_t>(headerLen), '\0');
  MOERT_TRY(preadFull(f->fd_, &header[0], static_cast<int64_t>(headerLen), 8,
                      path, "the header"));
  int64_t dataStart = 8 + static_cast<int64_t>(headerLen);
  MOERT_TRY(f->parseHeader(header, dataStart, size - dataStart));
  out = std::move(f);
  return Status::ok();
}

Status SafetensorsFile::parseHeader(const std::string &header,
                                    int64_t dataStart, int64_t dataBytes) {
  json::Value root;
  Status s = json::parse(header, path_ + " (header)", root);
  if (!s.isOk())
    return supportError(MOERT_ERR_INVALID, "corrupt header: %s",
                        s.message().c_str());
  if (!root.isObject())
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: expected a JSON object, found %s",
                        path_.c_str(), json::Value::kindName(root.kind()));
  for (const auto &m : root.members()) {
    if (m.first == "__metadata__") {
      if (!m.second.isObject())
        return supportError(MOERT_ERR_INVALID,
                            "%s: corrupt header: __metadata__ is not an "
                            "object",
                            path_.c_str());
      for (const auto &kv : m.second.members())
        if (kv.second.isString())
          metadata_[kv.first] = kv.second.getString();
      continue;
    }
    MOERT_TRY(parseEntry(m.first, &m.second, dataStart, dataBytes));
  }
  return Status::ok();
}

/// Reads a list of non-negative integers, or fails naming `field`.
static bool readIntList(const json::Value *v, std::vector<int64_t> &out) {
  if (!v || !v->isArray())
    return false;
  out.clear();
  for (const json::Value &e : v->elements()) {
    if (!e.isInt() || e.getInt() < 0)
      return false;
    out.push_back(e.getInt());
  }
  return true;
}

Status SafetensorsFile::parseEntry(const std::string &name, const void *entry,
                                   int64_t dataStart, int64_t dataBytes) {
  const json::Value &e = *static_cast<const json::Value *>(entry);
  const char *file = path_.c_str();
  const char *tn = name.c_str();
  if (!e.isObject())
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: entry of tensor '%s' is not an "
                        "object",
                        file, tn);
  TensorInfo t;
  t.name = name;
  const json::Value *dt = e.get("dtype");
  if (!dt || !dt->isString())
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has no dtype string",
                        file, tn);
  t.dtypeName = dt->getString();
  t.elemBytes = safetensorsElemSize(t.dtypeName);
  if (t.elemBytes == 0)
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has unknown dtype "
                        "'%s'",
                        file, tn, t.dtypeName.c_str());
  t.dtype = dtypeFromSafetensors(t.dtypeName);
  if (!readIntList(e.get("shape"), t.shape))
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has no shape (a "
                        "list of non-negative integers)",
                        file, tn);
  std::vector<int64_t> offs;
  if (!readIntList(e.get("data_offsets"), offs) || offs.size() != 2 ||
      offs[0] > offs[1])
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has no valid "
                        "data_offsets [begin, end]",
                        file, tn);
  int64_t numel, nbytes;
  if (!checkedNumElements(t.shape, numel) ||
      !checkedMul(numel, static_cast<int64_t>(t.elemBytes), nbytes))
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has an "
                        "impossibly large shape %s (its byte size overflows "
                        "64 bits)",
                        file, tn, shapeString(t.shape).c_str());
  if (offs[1] - offs[0] != nbytes)
    return supportError(MOERT_ERR_INVALID,
                        "%s: corrupt header: tensor '%s' has data_offsets "
                        "[%lld, %lld] (%lld bytes) but shape %s of %s needs "
                        "%lld bytes",
                        file, tn, static_cast<long long>(offs[0]),
                        static_cast<long long>(offs[1]),
                        static_cast<long long>(offs[1] - offs[0]),
                        shapeString(t.shape).c_str(), t.dtypeName.c_str(),
                        static_cast<long long>(numel * t.elemBytes));
  if (offs[1] > dataBytes)
    return supportError(MOERT_ERR_IO,
                        "%s: tensor '%s' has data_offsets [%lld, %lld] "
                        "beyond the %lld-byte data section: the file is "
                        "truncated or its offsets are out of bounds",
                        file, tn, static_cast<long long>(offs[0]),
                        static_cast<long long>(offs[1]),
                        static_cast<long long>(dataBytes));
  t.offset = dataStart + offs[0];
  t.bytes = offs[1] - offs[0];
  tensors_[name] = std::move(t);
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// SafetensorsFile: lookups and slices
//===----------------------------------------------------------------------===//

const TensorInfo *SafetensorsFile::find(const std::string &name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Status SafetensorsFile::lookup(const std::string &name,
                               const TensorInfo *&out) const {
  out = find(name);
  if (out)
    return Status::ok();
  std::string hint = nearestNameHint(tensors_, name);
  return supportError(
      MOERT_ERR_INVALID, "%s: missing tensor '%s': the file has %zu tensors%s",
      path_.c_str(), name.c_str(), tensors_.size(), hint.c_str());
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto &kv : tensors_)
    out.push_back(kv.first);
  return out;
}

Status SafetensorsFile::readRun(const TensorInfo &t, int64_t firstElem,
                                int64_t count, int32_t outType,
                                char *out) const {
  int64_t offset = t.offset + firstElem * static_cast<int64_t>(t.elemBytes);
  std::string what = format("tensor '%s'", t.name.c_str());
  if (outType == t.dtype) {
    int64_t bytes = count * static_cast<int64_t>(t.elemBytes);
    ++readCalls_;
    bytesRead_ += bytes;
    return preadFull(fd_, out, bytes, offset, path_, what);
  }
  // Convert through a bounded buffer: never more than 4 MiB extra memory.
  const int64_t kChunkElems = (4 << 20) / static_cast<int64_t>(t.elemBytes);
  std::vector<char> buf(static_cast<size_t>(std::min(count, kChunkElems) *
                                            static_cast<int64_t>(t.elemBytes)));
  size_t outElem = dtypeSize(outType);
  for (int64_t done = 0; done < count;) {
    int64_t n = std::min(count - done, kChunkElems);
    int64_t bytes = n * static_cast<int64_t>(t.elemBytes);
    ++readCalls_;
    bytesRead_ += bytes;
    MOERT_TRY(preadFull(fd_, buf.data(), bytes,
                        offset + done * static_cast<int64_t>(t.elemBytes),
                        path_, what));
    MOERT_TRY(convertElements(buf.data(), t.dtype, out + done * outElem,
                              outType, n, path_ + ": " + what));
    done += n;
  }
  return Status::ok();
}

/// Checks the dtype pairing and the view / bounds of a slice request.
static Status checkSliceRequest(const std::string &path, const TensorInfo &t,
                                const std::vector<int64_t> &view,
                                const std::vector<int64_t> &lo,
                                const std::vector<int64_t> &hi,
                                int32_t outType) {
  const char *file = path.c_str();
  const char *tn = t.name.c_str();
  if (t.dtype < 0)
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' has dtype %s; only F32, F16, BF16, "
                        "I32 and I64 can be read",
                        file, tn, t.dtypeName.c_str());
  if (dtypeSize(outType) == 0 ||
      !((isFloatDtype(t.dtype) && isFloatDtype(outType)) ||
        (isIntDtype(t.dtype) && isIntDtype(outType))))
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' has dtype %s, which cannot be read "
                        "as %s",
                        file, tn, t.dtypeName.c_str(), dtypeName(outType));
  if (numElements(view) != numElements(t.shape))
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s' has shape %s (%lld elements), which "
                        "does not match the expected shape %s (%lld elements)",
                        file, tn, shapeString(t.shape).c_str(),
                        static_cast<long long>(numElements(t.shape)),
                        shapeString(view).c_str(),
                        static_cast<long long>(numElements(view)));
  if (lo.size() != view.size() || hi.size() != view.size())
    return supportError(MOERT_ERR_INVALID,
                        "%s: tensor '%s': slice of rank %zu for a view of "
                        "rank %zu",
                        file, tn, lo.size(), view.size());
  for (size_t d = 0; d < view.size(); ++d)
    if (lo[d] < 0 || lo[d] > hi[d] || hi[d] > view[d])
      return supportError(MOERT_ERR_INVALID,
                          "%s: tensor '%s': slice [%lld, %lld) of dimension "
                          "%zu is outside [0, %lld)",
                          file, tn, static_cast<long long>(lo[d]),
                          static_cast<long long>(hi[d]), d,
                          static_cast<long long>(view[d]));
  return Status::ok();
}

Status SafetensorsFile::readSlice(const std::string &name,
                                  const std::vector<int64_t> &viewShape,
                                  const std::vector<int64_t> &lo,
                                  const std::vector<int64_t> &hi,
                                  int32_t outType, void *out) const {
  const TensorInfo *t;
  MOERT_TRY(lookup(name, t));
  const std::vector<int64_t> &view = viewShape.empty() ? t->shape : viewShape;
  MOERT_TRY(checkSliceRequest(path_, *t, view, lo, hi, outType));
  int rank = static_cast<int>(view.size());
  for (int d = 0; d < rank; ++d)
    if (lo[d] == hi[d])
      return Status::ok(); // empty slice
  if (rank == 0)
    return readRun(*t, 0, 1, outType, static_cast<char *>(out));

  std::vector<int64_t> stride(rank, 1);
  for (int d = rank - 2; d >= 0; --d)
    stride[d] = stride[d + 1] * view[d + 1];
  // Dimensions inside k are whole: one contiguous run per index of 0..k-1.
  int k = rank - 1;
  while (k > 0 && lo[k] == 0 && hi[k] == view[k])
    --k;
  int64_t runElems = (hi[k] - lo[k]) * stride[k];
  int64_t runBytes = runElems * static_cast<int64_t>(dtypeSize(outType));
  std::vector<int64_t> idx(lo.begin(), lo.begin() + k);
  char *dst = static_cast<char *>(out);
  while (true) {
    int64_t first = lo[k] * stride[k];
    for (int d = 0; d < k; ++d)
      first += idx[d] * stride[d];
    MOERT_TRY(readRun(*t, first, runElems, outType, dst));
    dst += runBytes;
    int d = k - 1;
    while (d >= 0 && ++idx[d] == hi[d]) {
      idx[d] = lo[d];
      --d;
    }
    if (d < 0)
      return Status::ok();
  }
}

Status SafetensorsFile::readRaw(const TensorInfo &t, int64_t firstElem,
                                int64_t count, void *out) const {
  int64_t numel = numElements(t.shape);
  if (firstElem < 0 || count < 0 || firstElem > numel ||
      count > numel - firstElem)
    return supportError(
        MOERT_ERR_INVALID,
        "%s: tensor '%s': elements [%lld, +%lld) are outside "
        "its %lld elements",
        path_.c_str(), t.name.c_str(), static_cast<long long>(firstElem),
        static_cast<long long>(count), static_cast<long long>(numel));
  int64_t es = static_cast<int64_t>(t.elemBytes);
  ++readCalls_;
  bytesRead_ += count * es;
  return preadFull(fd_, out, count * es, t.offset + firstElem * es, path_,
                   format("tensor '%s'", t.name.c_str()));
}

Status SafetensorsFile::readAll(const std::string &name, int32_t outType,
                                void *out) const {
  const TensorInfo *t;
  MOERT_TRY(lookup(name, t));
  std::vector<int64_t> lo(t->shape.size(), 0);
  return readSlice(name, t->shape, lo, t->shape, outType, out);
}

//===----------------------------------------------------------------------===//
// Writing
//===----------------------------------------------------------------------===//

static Status checkTensorsToWrite(const std::string &path,
                                  const std::vector<TensorData> &tensors) {
  std::set<std::string> seen;
  for (const TensorData &t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      return supportError(MOERT_ERR_INVALID,
                          "%s: cannot write a tensor named '%s'", path.c_str(),
                          t.name.c_str());
    if (!seen.insert(t.name).second)
      return supportError(MOERT_ERR_INVALID, "%s: tensor '%s' given twice",
                          path.c_str(), t.name.c_str());
    if (!safetensorsDtypeName(t.dtype))
      return supportError(MOERT_ERR_INVALID, "%s: tensor '%s' has dtype %d",
                          path.c_str(), t.name.c_str(), t.dtype);
    for (int64_t d : t.shape)
      if (d < 0)
        return supportError(
            MOERT_ERR_INVALID, "%s: tensor '%s' has negative shape %s",
            path.c_str(), t.name.c_str(), shapeString(t.shape).c_str());
    if (!t.data && numElements(t.shape) > 0)
      return supportError(MOERT_ERR_INVALID, "%s: tensor '%s' has no data",
                          path.c_str(), t.name.c_str());
  }
  return Status::ok();
}

/// The header, padded with spaces so that the data starts 8-byte aligned.
static std::string
buildHeader(const std::vector<TensorData> &tensors,
            const std::map<std::string, std::string> &metadata) {
  json::Value root = json::Value::object();
  if (!metadata.empty()) {
    json::Value meta = json::Value::object();
    for (const auto &kv : metadata)
      meta.set(kv.first, kv.second);
    root.set("__metadata__", std::move(meta));
  }
  int64_t offset = 0;
  for (const TensorData &t : tensors) {
    int64_t bytes =
        numElements(t.shape) * static_cast<int64_t>(dtypeSize(t.dtype));
    json::Value e = json::Value::object();
    e.set("dtype", safetensorsDtypeName(t.dtype));
    json::Value shape = json::Value::array();
    for (int64_t d : t.shape)
      shape.push(d);
    e.set("shape", std::move(shape));
    json::Value offs = json::Value::array();
    offs.push(offset);
    offs.push(offset + bytes);
    e.set("data_offsets", std::move(offs));
    root.set(t.name, std::move(e));
    offset += bytes;
  }
  std::string header = json::write(root);
  while (header.size() % 8 != 0)
    header += ' ';
  return header;
}

static Status writeContents(int fd, const std::string &tmp,
                            const std::string &header,
                            const std::vector<TensorData> &tensors) {
  unsigned char len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<unsigned char>(n >> (8 * i));
  MOERT_TRY(writeFull(fd, len, 8, tmp));
  MOERT_TRY(
      writeFull(fd, header.data(), static_cast<int64_t>(header.size()), tmp));
  for (const TensorData &t : tensors)
    MOERT_TRY(writeFull(
        fd, t.data,
        numElements(t.shape) * static_cast<int64_t>(dtypeSize(t.dtype)), tmp));
  return Status::ok();
}

Status writeSafetensors(const std::string &path,
                        const std::vector<TensorData> &tensors,
                        const std::map<std::string, std::string> &metadata) {
  MOERT_TRY(checkTensorsToWrite(path, tensors));
  static std::atomic<int> counter{0};
  std::string tmp = format("%s.tmp.%d.%d", path.c_str(),
                           static_cast<int>(::getpid()), counter++);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return supportError(MOERT_ERR_IO, "%s: cannot create the output file: %s",
                        path.c_str(), std::strerror(errno));
  Status s = writeContents(fd, tmp, buildHeader(tensors, metadata), tensors);
  if (::close(fd) != 0 && s.isOk())
    s = supportError(MOERT_ERR_IO, "%s: close failed: %s", tmp.c_str(),
                     std::strerror(errno));
  if (s.isOk() && ::rename(tmp.c_str(), path.c_str()) != 0)
    s = supportError(MOERT_ERR_IO, "%s: cannot rename '%s' into place: %s",
                     path.c_str(), tmp.c_str(), std::strerror(errno));
  if (!s.isOk())
    ::unlink(tmp.c_str());
  return s;
}

} // namespace moert
