//===- Checkpoint.h - Weights and optimizer state files of training -*- C++
//-*-===//
//
// The way back from an argument to its file tensors (the transpose of
// loading, docs/module-format.md "Weight names"): a stack over experts is
// split into one tensor per expert, a transposed argument is transposed
// back, and a tensor loaded into another shape (DBRX's fused [E*F, D]) gets
// its file shape back. Saved files are F32 (optimizer.step I64), written
// atomically, in the format train-reference writes (docs/spec.md 7.5).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_CHECKPOINT_H
#define MOE_RUN_CHECKPOINT_H

#include "support/CheckpointIndex.h"
#include "support/Manifest.h"
#include "support/Safetensors.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe_run {

/// A file tensor held in memory.
struct FileTensor {
  std::string name;
  int32_t dtype = MOERT_F32;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

/// The file tensors of the global tensor `global` (spec.shape, spec.dtype)
/// of the weight-like argument `spec`, named after `spec.name`, as F32.
/// `fileShape` is the shape of the file tensor of a plain (non-stack)
/// argument (empty: the argument's shape, transposed back if it is).
moert::Status toFileTensors(const moert::TensorSpec &spec,
                            const std::vector<char> &global,
                            const std::vector<int64_t> &fileShape,
                            std::vector<FileTensor> &out);

/// The shape of the file tensor(s) of a weight-like argument read from
/// `file`: per expert for a stack, the file's own for a plain tensor.
std::vector<int64_t> fileShapeOf(const moert::TensorSource *file,
                                 const moert::TensorSpec &spec);

/// Writes `tensors` to `path` atomically (moert::writeSafetensors).
moert::Status writeFileTensors(const std::string &path,
                               const std::vector<FileTensor> &tensors,
                               const std::map<std::string, std::string> &meta);

/// Reads optimizer.step from the state file: one non-negative integer of
/// shape [1]; the error names the file and the tensor.
moert::Status readOptimizerStep(const moert::SafetensorsFile &file,
                                int64_t &step);

/// First element of `n` F32 values that is not finite, or -1.
int64_t firstNonFinite(const float *data, int64_t n);

} // namespace moe_run

#endif // MOE_RUN_CHECKPOINT_H
