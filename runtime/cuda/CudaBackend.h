//===- CudaBackend.h - What the context may ask the CUDA backend -*- C++
//-*-===//
//
// The backend itself is only reachable through moert::Backend
// (createCudaBackend). This header adds what the context needs to wire the
// NCCL communicator onto the same stream as the kernels.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_CUDABACKEND_H
#define MOERT_CUDA_CUDABACKEND_H

#include "core/Backend.h"

namespace moert {

/// The cudaStream_t of a CUDA backend (for createNcclCommunicator), or null
/// for any other backend. The stream is a blocking stream, so work on the
/// legacy default stream (stream 0) is ordered with it too.
void *cudaBackendStream(Backend &backend);

} // namespace moert

#endif // MOERT_CUDA_CUDABACKEND_H
