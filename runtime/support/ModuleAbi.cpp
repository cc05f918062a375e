//===- ModuleAbi.cpp - Refuse a module built for another runtime ABI ------===//
#include "support/ModuleAbi.h"

#include "support/Format.h"

#include <cstdint>
#include <cstring>
#include <dlfcn.h>
#include <link.h>

namespace moert {

Status checkModuleAbi(void *dlopenHandle, const std::string &library) {
  if (!dlopenHandle)
    return supportError(MOERT_ERR_INVALID,
                        "%s: the module library is not loaded",
                        library.c_str());
  ::dlerror(); // clear a stale error
  const auto *version = static_cast<const int32_t *>(
      ::dlsym(dlopenHandle, MOERT_ABI_VERSION_SYMBOL));
  if (!version)
    return supportError(
        MOERT_ERR_INVALID,
        "%s does not say which runtime ABI it was built for (no symbol '%s'; "
        "this runtime is version %d): recompile the model with this "
        "moe-compile",
        library.c_str(), MOERT_ABI_VERSION_SYMBOL, MOERT_ABI_VERSION);
  if (*version != MOERT_ABI_VERSION)
    return supportError(MOERT_ERR_INVALID,
                        "%s was built for runtime ABI version %d, this "
                        "runtime is version %d: recompile the model with this "
                        "moe-compile",
                        library.c_str(), static_cast<int>(*version),
                        MOERT_ABI_VERSION);
  return Status::ok();
}

Status readModuleDescription(void *dlopenHandle, const std::string &library,
                             std::string &text) {
  ::dlerror();
  const char *desc =
      static_cast<const char *>(::dlsym(dlopenHandle, MOERT_MANIFEST_SYMBOL));
  if (!desc)
    return supportError(MOERT_ERR_INVALID,
                        "%s does not describe its entry points (no symbol "
                        "'%s'): recompile the model with this moe-compile",
                        library.c_str(), MOERT_MANIFEST_SYMBOL);
  // The symbol's size bounds the read: a description without its NUL is
  // cut there, never read past.
  Dl_info info;
  void *symEntry = nullptr;
  if (!::dladdr1(desc, &info, &symEntry, RTLD_DL_SYMENT) || !symEntry ||
      static_cast<const ElfW(Sym) *>(symEntry)->st_size == 0)
    return supportError(MOERT_ERR_INVALID,
                        "%s: symbol '%s' has no size: recompile the model "
                        "with this moe-compile",
                        library.c_str(), MOERT_MANIFEST_SYMBOL);
  size_t size = static_cast<const ElfW(Sym) *>(symEntry)->st_size;
  text.assign(desc, ::strnlen(desc, size));
  return Status::ok();
}

} // namespace moert
