//===- CudaCheck.h - CUDA runtime errors as Status values -------*- C++ -*-===//
//
// Every CUDA runtime call of the runtime (the CUDA backend and the NCCL
// communicator) goes through one of the checks below, so that a failure
// becomes a Status naming the operation, the call and the driver's error
// string (a program that ignores error codes crashes on a machine without a
// GPU instead of reporting).
//
// Base layer (docs/runtime.md), built only with CUDA. Included by .cu files
// (nvcc) and plain .cpp files.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_BASE_CUDACHECK_H
#define MOERT_BASE_CUDACHECK_H

#include "base/Status.h"

#include <cuda_runtime.h>

namespace moert {
namespace cuda {

/// OK, or MOERT_ERR_DEVICE: "<op>: <call> failed: <string> (<name>)".
Status cudaCheck(cudaError_t err, const char *op, const char *call);
/// Checks that the last kernel launch was accepted (cudaGetLastError).
Status launchCheck(const char *op, const char *kernel);

} // namespace cuda
} // namespace moert

/// Returns from the enclosing function (which returns Status) when a CUDA
/// runtime call fails. `op` names the kernel or method, e.g. "moert_dispatch".
#define MOERT_CUDA(op, call)                                                   \
  MOERT_TRY(::moert::cuda::cudaCheck((call), (op), #call))
/// After a `kernel<<<...>>>(...)` launch.
#define MOERT_LAUNCHED(op, kernel)                                             \
  MOERT_TRY(::moert::cuda::launchCheck((op), (kernel)))

#endif // MOERT_BASE_CUDACHECK_H
