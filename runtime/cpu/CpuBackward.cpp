//===- CpuBackward.cpp - Training kernels of the CPU backend --------------===//
//
// Temporary: every training kernel answers MOERT_ERR_UNSUPPORTED until the
// implementation lands (next commit on the tkern branch).
//
//===----------------------------------------------------------------------===//
#include "cpu/CpuBackend.h"

namespace moert {

Status CpuBackend::rmsnormGrad(const void * /*x*/, const void * /*w*/,
                               const void * /*dy*/, void * /*dx*/,
                               void * /*dw*/, int64_t /*T*/, int64_t /*D*/,
                               float /*eps*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::rmsnormGrad: not implemented yet");
}

Status CpuBackend::routerGrad(const void * /*x*/, const void * /*w*/,
                              const float * /*dlogits*/, void * /*dx*/,
                              void * /*dw*/, int64_t /*T*/, int64_t /*D*/,
                              int64_t /*E*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::routerGrad: not implemented yet");
}

Status CpuBackend::topkGrad(const float * /*logits*/,
                            const int32_t * /*indices*/,
                            const float * /*dweights*/,
                            const float * /*dscores*/, float * /*dlogits*/,
                            int64_t /*T*/, int64_t /*E*/, int64_t /*k*/,
                            int32_t /*scoreFn*/, int32_t /*renormalize*/,
                            float /*scaling*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::topkGrad: not implemented yet");
}

Status CpuBackend::dispatchGrad(const void * /*dout*/,
                                const int32_t * /*positions*/, void * /*dx*/,
                                int64_t /*T*/, int64_t /*k*/, int64_t /*D*/,
                                int64_t /*outRows*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::dispatchGrad: not implemented yet");
}

Status CpuBackend::combineGrad(const void * /*y*/,
                               const int32_t * /*positions*/,
                               const float * /*weights*/,
                               const void * /*passthrough*/,
                               const void * /*dout*/, void * /*dy*/,
                               float * /*dweights*/, void * /*dpassthrough*/,
                               int64_t /*T*/, int64_t /*k*/, int64_t /*D*/,
                               int64_t /*yRows*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::combineGrad: not implemented yet");
}

Status CpuBackend::expertFfnGrad(
    const void * /*x*/, const int32_t * /*counts*/, const void * /*gate*/,
    const void * /*up*/, const void * /*down*/, const void * /*dy*/,
    void * /*dx*/, void * /*dgate*/, void * /*dup*/, void * /*ddown*/,
    int64_t /*E*/, int64_t /*segments*/, int64_t /*rowsPerExpert*/,
    int64_t /*totalRows*/, int64_t /*D*/, int64_t /*F*/, int32_t /*activation*/,
    int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::expertFfnGrad: not implemented yet");
}

Status CpuBackend::mlpGrad(const void * /*x*/, const void * /*gate*/,
                           const void * /*up*/, const void * /*down*/,
                           const void * /*sigmoidGate*/, const void * /*dy*/,
                           void * /*dx*/, void * /*dgate*/, void * /*dup*/,
                           void * /*ddown*/, void * /*dsigmoidGate*/,
                           int64_t /*T*/, int64_t /*D*/, int64_t /*F*/,
                           int32_t /*activation*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::mlpGrad: not implemented yet");
}

Status CpuBackend::expertLoadGrad(const float * /*dstats*/, float * /*dscores*/,
                                  int64_t /*T*/, int64_t /*E*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::expertLoadGrad: not implemented yet");
}

Status CpuBackend::loadBalanceLossGrad(const float * /*stats*/,
                                       const float * /*dloss*/,
                                       float * /*dstats*/, int64_t /*E*/,
                                       int64_t /*tokens*/, int64_t /*k*/,
                                       float /*coeff*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::loadBalanceLossGrad: not implemented yet");
}

Status CpuBackend::zLossGrad(const float * /*logits*/, const float * /*dloss*/,
                             float * /*dlogits*/, int64_t /*T*/, int64_t /*E*/,
                             int64_t /*totalTokens*/, float /*coeff*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::zLossGrad: not implemented yet");
}

Status CpuBackend::mseLoss(const void * /*y*/, const void * /*target*/,
                           float * /*loss*/, void * /*dy*/, int64_t /*n*/,
                           int64_t /*totalN*/, int32_t /*dtype*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::mseLoss: not implemented yet");
}

Status CpuBackend::adamw(const float * /*w*/, const float * /*g*/,
                         const float * /*m*/, const float * /*v*/,
                         const float * /*hparams*/, float * /*wOut*/,
                         float * /*mOut*/, float * /*vOut*/, int64_t /*n*/) {
  return error(MOERT_ERR_UNSUPPORTED, "CpuBackend::adamw: not implemented yet");
}

Status CpuBackend::sgd(const float * /*w*/, const float * /*g*/,
                       const float * /*buf*/, const float * /*hparams*/,
                       float * /*wOut*/, float * /*bufOut*/, int64_t /*n*/) {
  return error(MOERT_ERR_UNSUPPORTED, "CpuBackend::sgd: not implemented yet");
}

Status CpuBackend::biasUpdate(const float * /*bias*/, const float * /*load*/,
                              const float * /*hparams*/, float * /*biasOut*/,
                              int64_t /*E*/, int64_t /*tokens*/,
                              int64_t /*k*/) {
  return error(MOERT_ERR_UNSUPPORTED,
               "CpuBackend::biasUpdate: not implemented yet");
}

} // namespace moert
