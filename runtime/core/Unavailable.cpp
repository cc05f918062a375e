//===- Unavailable.cpp - Backends not built in ----------------------------===//
//
// The runtime builds without CUDA; createCudaBackend then answers with
// MOERT_ERR_UNSUPPORTED and a message saying how to get the backend.
//
//===----------------------------------------------------------------------===//
#include "core/Backend.h"

namespace moert {

#ifndef MOE_HAVE_CUDA
Status createCudaBackend(const BackendOptions &, std::unique_ptr<Backend> &) {
  return Status(MOERT_ERR_UNSUPPORTED,
                "this runtime was built without CUDA (configure with the CUDA "
                "toolkit installed, or -DMOE_ENABLE_CUDA=ON)");
}
#endif

} // namespace moert
