//===- CudaCommon.cpp - cuBLAS checks and dtypes of the CUDA backend ------===//
#include "cuda/CudaCommon.h"

#include "base/Dtype.h"

namespace moert {
namespace cuda {

const char *cublasStatusName(cublasStatus_t st) {
  switch (st) {
  case CUBLAS_STATUS_SUCCESS:
    return "CUBLAS_STATUS_SUCCESS";
  case CUBLAS_STATUS_NOT_INITIALIZED:
    return "CUBLAS_STATUS_NOT_INITIALIZED";
  case CUBLAS_STATUS_ALLOC_FAILED:
    return "CUBLAS_STATUS_ALLOC_FAILED";
  case CUBLAS_STATUS_INVALID_VALUE:
    return "CUBLAS_STATUS_INVALID_VALUE";
  case CUBLAS_STATUS_ARCH_MISMATCH:
    return "CUBLAS_STATUS_ARCH_MISMATCH";
  case CUBLAS_STATUS_MAPPING_ERROR:
    return "CUBLAS_STATUS_MAPPING_ERROR";
  case CUBLAS_STATUS_EXECUTION_FAILED:
    return "CUBLAS_STATUS_EXECUTION_FAILED";
  case CUBLAS_STATUS_INTERNAL_ERROR:
    return "CUBLAS_STATUS_INTERNAL_ERROR";
  case CUBLAS_STATUS_NOT_SUPPORTED:
    return "CUBLAS_STATUS_NOT_SUPPORTED";
  case CUBLAS_STATUS_LICENSE_ERROR:
    return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cublasStatus_t";
}

Status cublasCheck(cublasStatus_t st, const char *op, const char *call) {
  if (st == CUBLAS_STATUS_SUCCESS)
    return Status::ok();
  return error(MOERT_ERR_DEVICE, "%s: %s failed: %s (%d)", op, call,
               cublasStatusName(st), static_cast<int>(st));
}

Status cudaDataTypeOf(int32_t dtype, const char *op, cudaDataType_t &out) {
  switch (dtype) {
  case MOERT_F32:
    out = CUDA_R_32F;
    return Status::ok();
  case MOERT_F16:
    out = CUDA_R_16F;
    return Status::ok();
  case MOERT_BF16:
    out = CUDA_R_16BF;
    return Status::ok();
  default:
    return error(MOERT_ERR_INVALID,
                 "%s: dtype %d (%s) is not a floating-point storage type "
                 "(f32, f16 or bf16)",
                 op, dtype, dtypeName(dtype));
  }
}

} // namespace cuda
} // namespace moert
