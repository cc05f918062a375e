//===- ShardedLoader.h - This rank's slices of safetensors files -*- C++
//-*-===//
//
// Every rank reads only its slice of each weight and input (the sharding
// rule of docs/module-format.md, computeSlice in the support library):
// plain tensors as one hyper-rectangle, stacks over experts ("...{e}...") one
// file tensor per expert of the rank's range, transposed arguments read in
// file order and transposed in memory. Results go the other way: rank 0
// places every rank's slice into the global tensor.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_SHARDEDLOADER_H
#define MOE_RUN_SHARDEDLOADER_H

#include "support/CheckpointIndex.h"
#include "support/Manifest.h"
#include "support/Safetensors.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe_run {

class ShardedLoader {
public:
  /// Loads for the rank at `coords` of `mesh`.
  ShardedLoader(const moert::Mesh &mesh, std::vector<int64_t> coords)
      : mesh_(mesh), coords_(std::move(coords)) {}

  /// Opens the weights (a safetensors file or a checkpoint folder, see
  /// support/CheckpointIndex.h: shards are opened when first needed) and
  /// the inputs file; an empty path is not opened.
  moert::Status open(const std::string &weights, const std::string &inputs);
  /// Reads this rank's slice of argument `spec` (spec.localBytes() bytes,
  /// the argument's dtype) into `out`, from the weights file for a weight
  /// and the inputs file otherwise.
  moert::Status read(const moert::TensorSpec &spec, char *out) const;
  /// Reads this rank's slice of `spec` from `file` (as read() does; the
  /// targets and optimizer state files of a training run).
  moert::Status readFrom(const moert::SafetensorsFile &file,
                         const moert::TensorSpec &spec, char *out) const;
  moert::Status readFrom(const moert::TensorSource &source,
                         const moert::TensorSpec &spec, char *out) const;
  /// The weights (nullptr when none are open).
  const moert::TensorSource *weightsFile() const { return weights_.get(); }
  /// Closes the files.
  void close();

private:
  const moert::Mesh &mesh_;
  std::vector<int64_t> coords_;
  std::unique_ptr<moert::TensorSource> weights_;
  std::unique_ptr<moert::SafetensorsFile> inputs_;
};

/// The global tensor of result `spec` from the local buffers of every rank
/// (`all`: rank r's `bytesPerRank` bytes at r * bytesPerRank).
moert::Status assembleGlobal(const moert::Mesh &mesh,
                             const moert::TensorSpec &spec, const char *all,
                             int64_t bytesPerRank, std::vector<char> &global);

/// True when the rank at `coords` holds the first copy of its slice of
/// `spec`: its coordinate is 0 on every mesh axis that splits no dimension
/// of `spec` (the axes `spec` is replicated over). Over all ranks, the slices
/// of the ranks for which it is true hold every element of the tensor
/// exactly once (shards counted once each, replicas once), whatever the mesh.
bool isFirstReplica(const moert::Mesh &mesh, const moert::TensorSpec &spec,
                    const std::vector<int64_t> &coords);

} // namespace moe_run

#endif // MOE_RUN_SHARDEDLOADER_H
