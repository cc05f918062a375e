//===- Unavailable.cpp - Communicators not built in -----------------------===//
//
// The runtime builds without CUDA and without MPI; these factories then
// answer with MOERT_ERR_UNSUPPORTED and a message saying how to get the part.
//
//===----------------------------------------------------------------------===//
#include "comm/Communicator.h"

namespace moert {

#ifndef MOE_HAVE_CUDA
Status createNcclCommunicator(const CommOptions &, void *,
                              std::unique_ptr<Communicator> &) {
  return Status(MOERT_ERR_UNSUPPORTED,
                "this runtime was built without NCCL (needs the CUDA toolkit "
                "and libnccl at configure time)");
}
#endif

#ifndef MOE_HAVE_MPI
Status createMpiCommunicator(const CommOptions &,
                             std::unique_ptr<Communicator> &) {
  return Status(MOERT_ERR_UNSUPPORTED,
                "this runtime was built without MPI (install libopenmpi-dev "
                "and reconfigure)");
}
#endif

} // namespace moert
