//===- CudaCommon.h - Error checks and helpers of the CUDA backend -*- C++ -*-//
//
// Every CUDA, cuBLAS and NCCL call of the runtime goes through one of the
// checks below, so that a failure becomes a Status naming the operation, the
// call and the driver's error string (a program that ignores error codes
// crashes on a machine without a GPU instead of reporting).
//
// This header is included by both .cu files (nvcc) and plain .cpp files.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_CUDACOMMON_H
#define MOERT_CUDA_CUDACOMMON_H

#include "../core/Status.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moert {
namespace cuda {

/// OK, or MOERT_ERR_DEVICE: "<op>: <call> failed: <string> (<name>)".
Status cudaCheck(cudaError_t err, const char *op, const char *call);
Status cublasCheck(cublasStatus_t st, const char *op, const char *call);
/// Checks that the last kernel launch was accepted (cudaGetLastError).
Status launchCheck(const char *op, const char *kernel);
const char *cublasStatusName(cublasStatus_t st);

/// cudaDataType of a storage dtype (f32, f16, bf16), or an error.
Status cudaDataTypeOf(int32_t dtype, const char *op, cudaDataType_t &out);

} // namespace cuda
} // namespace moert

/// Returns from the enclosing function (which returns Status) when a CUDA
/// runtime call fails. `op` names the kernel or method, e.g. "moert_dispatch".
#define MOERT_CUDA(op, call)                                                   \
  MOERT_TRY(::moert::cuda::cudaCheck((call), (op), #call))
#define MOERT_CUBLAS(op, call)                                                 \
  MOERT_TRY(::moert::cuda::cublasCheck((call), (op), #call))
/// After a `kernel<<<...>>>(...)` launch.
#define MOERT_LAUNCHED(op, kernel)                                             \
  MOERT_TRY(::moert::cuda::launchCheck((op), (kernel)))

#endif // MOERT_CUDA_CUDACOMMON_H
