//===- CheckpointIndex.h - Checkpoint folders and FP8 weights ---*- C++ -*-===//
//
// A checkpoint as Hugging Face publishes it: one safetensors file, or a
// folder with `model.safetensors.index.json`
//   {"metadata": {"total_size": N}, "weight_map": {"<tensor>": "<shard>"}}
// and the shards it names. TensorSource reads tensors by name from either:
// a shard is opened (its header read) the first time one of its tensors is
// looked up, so a rank opens only the files that hold its tensors, and
// tensors nobody asks for (attention, embeddings) are never read. F8_E4M3
// tensors are dequantized with their DeepSeek-V3 block scale
// `<name>_scale_inv` (Fp8.h) on read.
//
// The index is untrusted: parseCheckpointIndex checks that it is a JSON
// object with a non-empty `weight_map` of tensor names to plain file names
// in the folder (no path separators, no "." or ".."), and that `metadata`,
// when present, is an object.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_CHECKPOINTINDEX_H
#define MOERT_SUPPORT_CHECKPOINTINDEX_H

#include "support/Safetensors.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// The file name of the index in a checkpoint folder.
constexpr const char *kCheckpointIndexName = "model.safetensors.index.json";

/// A parsed index: the shard files (in order of first mention) and, for
/// every tensor, the position of its shard in `files`.
struct CheckpointIndex {
  std::vector<std::string> files;
  std::map<std::string, size_t> shardOf;
};

/// Parses and validates the text of an index; `source` names it in errors.
Status parseCheckpointIndex(const std::string &text, const std::string &source,
                            CheckpointIndex &out);

/// True for the file dtypes a float argument can be read from: F32, F16,
/// BF16 and F8_E4M3 (with a block scale).
bool isFloatTensor(const TensorInfo &t);

class TensorSource {
public:
  /// Opens `path`: a safetensors file, a folder with an index (or with one
  /// `model.safetensors`), or an index file itself. Only the index (or the
  /// single file's header) is read here.
  static Status open(const std::string &path,
                     std::unique_ptr<TensorSource> &out);

  const std::string &path() const { return path_; }
  /// Tensor `name`, or nullptr when it is not there or its shard cannot be
  /// opened.
  const TensorInfo *find(const std::string &name) const;
  /// Whether the file or the index lists tensor `name` (opens nothing).
  bool contains(const std::string &name) const;
  /// Tensor `name` (opening its shard) or an error naming it.
  Status lookup(const std::string &name, const TensorInfo *&out) const;
  /// As SafetensorsFile::readSlice; F8_E4M3 tensors are dequantized.
  Status readSlice(const std::string &name,
                   const std::vector<int64_t> &viewShape,
                   const std::vector<int64_t> &lo,
                   const std::vector<int64_t> &hi, int32_t outType,
                   void *out) const;

  /// The files opened so far (tests check that a rank opens only its own).
  std::vector<std::string> openedFiles() const;
  /// Bytes read from tensor data so far, over every open file.
  int64_t bytesRead() const;

private:
  TensorSource() = default;
  /// The file holding `name` (opening it) and its entry.
  Status locate(const std::string &name, const SafetensorsFile *&file,
                const TensorInfo *&info) const;
  Status readFp8Slice(const SafetensorsFile &file, const TensorInfo &t,
                      const std::vector<int64_t> &view,
                      const std::vector<int64_t> &lo,
                      const std::vector<int64_t> &hi, int32_t outType,
                      char *out) const;

  std::string path_;      // what the user gave
  std::string dir_;       // the folder of the shards
  std::string indexPath_; // empty for a single file
  CheckpointIndex index_;
  mutable std::vector<std::unique_ptr<SafetensorsFile>> shards_;
};

} // namespace moert

#endif // MOERT_SUPPORT_CHECKPOINTINDEX_H
