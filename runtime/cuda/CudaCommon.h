//===- CudaCommon.h - cuBLAS checks and dtypes of the CUDA backend -*- C++ -*-//
//
// Every cuBLAS call of the backend goes through MOERT_CUBLAS, as every CUDA
// runtime call goes through MOERT_CUDA (base/CudaCheck.h): a failure becomes
// a Status naming the operation, the call and the library's error string.
//
// This header is included by both .cu files (nvcc) and plain .cpp files.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_CUDACOMMON_H
#define MOERT_CUDA_CUDACOMMON_H

#include "base/CudaCheck.h"

#include <cublas_v2.h>

#include <cstdint>

namespace moert {
namespace cuda {

/// OK, or MOERT_ERR_DEVICE: "<op>: <call> failed: <name> (<code>)".
Status cublasCheck(cublasStatus_t st, const char *op, const char *call);
const char *cublasStatusName(cublasStatus_t st);

/// cudaDataType of a storage dtype (f32, f16, bf16), or an error.
Status cudaDataTypeOf(int32_t dtype, const char *op, cudaDataType_t &out);

} // namespace cuda
} // namespace moert

/// Returns from the enclosing function (which returns Status) when a cuBLAS
/// call fails.
#define MOERT_CUBLAS(op, call)                                                 \
  MOERT_TRY(::moert::cuda::cublasCheck((call), (op), #call))

#endif // MOERT_CUDA_CUDACOMMON_H
