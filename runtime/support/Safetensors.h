//===- Safetensors.h - Read slices of, and write, safetensors files -*- C++
//-*-//
//
// A safetensors file is an 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
// "__metadata__": {...}} and the raw data. Reading validates the whole header
// when the file is opened, then reads hyper-rectangle slices with pread of
// contiguous runs only: a rank never reads more of a checkpoint than its
// slice. Every error names the file and, where there is one, the tensor.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_SAFETENSORS_H
#define MOERT_SUPPORT_SAFETENSORS_H

#include "base/Dtype.h"
#include "base/Status.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moert {

//===--- Scalar conversions (round to nearest even) -----------------------===//
float halfToFloat(uint16_t h);
uint16_t floatToHalf(float f);
float bf16ToFloat(uint16_t b);
uint16_t floatToBf16(float f);

/// Converts `n` elements between the runtime's dtypes. Float types convert
/// among themselves, I32 and I64 among themselves (I64 -> I32 fails when a
/// value does not fit); float <-> int is refused. `what` names the data.
Status convertElements(const void *src, int32_t srcType, void *dst,
                       int32_t dstType, int64_t n, const std::string &what);

/// Safetensors dtype string ("F32", "BF16", ...) of a runtime dtype.
const char *safetensorsDtypeName(int32_t dtype);
/// Runtime dtype of a safetensors dtype string, or -1 when it has none.
int32_t dtypeFromSafetensors(const std::string &name);
/// Runtime dtype from a manifest name ("f32", "bf16", ...), or -1.
int32_t dtypeFromName(const std::string &name);

/// "[2, 3, 4]".
std::string shapeString(const std::vector<int64_t> &shape);
int64_t numElements(const std::vector<int64_t> &shape);

struct TensorInfo {
  std::string name;
  std::string dtypeName; // as in the file: "F32", "F64", ...
  int32_t dtype = -1;    // runtime dtype, -1 when not one of ours
  size_t elemBytes = 0;
  std::vector<int64_t> shape;
  int64_t offset = 0; // absolute file offset of the first byte
  int64_t bytes = 0;
};

class SafetensorsFile {
public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  /// Opens `path` and validates its header: length, JSON, every tensor's
  /// dtype, shape and offsets against the data section.
  static Status open(const std::string &path,
                     std::unique_ptr<SafetensorsFile> &out);

  const std::string &path() const { return path_; }
  /// Tensor `name`, or nullptr.
  const TensorInfo *find(const std::string &name) const;
  /// Tensor `name` or an error naming the file and the tensor (and a near
  /// name when there is one).
  Status lookup(const std::string &name, const TensorInfo *&out) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string> &metadata() const {
    return metadata_;
  }

  /// Reads elements [lo[d], hi[d]) of every dimension d of tensor `name`,
  /// viewed row-major as `viewShape` (same element count as the file shape;
  /// empty = the file shape), converted to `outType`, into `out` (dense,
  /// row-major, shape hi - lo).
  Status readSlice(const std::string &name,
                   const std::vector<int64_t> &viewShape,
                   const std::vector<int64_t> &lo,
                   const std::vector<int64_t> &hi, int32_t outType,
                   void *out) const;
  /// Reads the whole tensor converted to `outType`.
  Status readAll(const std::string &name, int32_t outType, void *out) const;
  /// Reads the stored bytes of elements [firstElem, firstElem + count) of
  /// `t` (a tensor of this file) unconverted, for dtypes the runtime has no
  /// type of (F8_E4M3: TensorSource dequantizes it, CheckpointIndex.h).
  Status readRaw(const TensorInfo &t, int64_t firstElem, int64_t count,
                 void *out) const;

  /// Number of pread calls so far (tests check that slices read runs only).
  int64_t readCalls() const { return readCalls_; }
  int64_t bytesRead() const { return bytesRead_; }

private:
  SafetensorsFile() = default;
  Status parseHeader(const std::string &header, int64_t dataStart,
                     int64_t dataBytes);
  Status parseEntry(const std::string &name, const void *entry,
                    int64_t dataStart, int64_t dataBytes);
  Status readRun(const TensorInfo &t, int64_t firstElem, int64_t count,
                 int32_t outType, char *out) const;

  std::string path_;
  int fd_ = -1;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  mutable int64_t readCalls_ = 0;
  mutable int64_t bytesRead_ = 0;
};

/// A tensor to write: `data` holds numElements(shape) elements of `dtype`.
struct TensorData {
  std::string name;
  int32_t dtype = MOERT_F32;
  std::vector<int64_t> shape;
  const void *data = nullptr;
};

/// Writes `tensors` to `path` atomically: a temporary file in the same
/// directory, renamed into place only when complete (removed on error).
Status
writeSafetensors(const std::string &path,
                 const std::vector<TensorData> &tensors,
                 const std::map<std::string, std::string> &metadata = {});

} // namespace moert

#endif // MOERT_SUPPORT_SAFETENSORS_H
