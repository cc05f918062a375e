//===- CudaCheck.cpp - CUDA runtime errors as Status values ---------------===//
#include "base/CudaCheck.h"

namespace moert {
namespace cuda {

Status cudaCheck(cudaError_t err, const char *op, const char *call) {
  if (err == cudaSuccess)
    return Status::ok();
  // Clear a non-sticky error so that it is not reported again by the next
  // unrelated call (sticky errors stay: the context is then unusable).
  (void)cudaGetLastError();
  return error(MOERT_ERR_DEVICE, "%s: %s failed: %s (%s)", op, call,
               cudaGetErrorString(err), cudaGetErrorName(err));
}

Status launchCheck(const char *op, const char *kernel) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess)
    return Status::ok();
  return error(MOERT_ERR_DEVICE, "%s: launch of kernel %s failed: %s (%s)", op,
               kernel, cudaGetErrorString(err), cudaGetErrorName(err));
}

} // namespace cuda
} // namespace moert
