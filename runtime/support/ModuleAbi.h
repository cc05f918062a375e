//===- ModuleAbi.h - Refuse modules of another runtime ABI ----*- C++ -*-===//
//
// A compiled module calls the kernels of the runtime it was compiled for
// (runtime/include/moert/moert_kernels.def). It exports the version of that
// ABI as `const int32_t moe_abi_version` (MOERT_ABI_VERSION_SYMBOL); a
// driver checks it right after loading the library, before calling anything
// in it, so that a module built against other kernel signatures is refused
// with a message instead of running with misread arguments.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_MODULEABI_H
#define MOERT_SUPPORT_MODULEABI_H

#include "base/Status.h"

#include <string>

namespace moert {

/// Checks the module library `dlopenHandle` (from dlopen; `library` is its
/// path, for messages): it must export `moe_abi_version` equal to this
/// runtime's MOERT_ABI_VERSION. A module without the symbol is refused too.
Status checkModuleAbi(void *dlopenHandle, const std::string &library);

/// The module's own description of its mesh and entry points: the exported
/// `const char moe_manifest[]` (MOERT_MANIFEST_SYMBOL), read within the
/// symbol's size. A module without it is refused.
Status readModuleDescription(void *dlopenHandle, const std::string &library,
                             std::string &text);

} // namespace moert

#endif // MOERT_SUPPORT_MODULEABI_H
