//===- Manifest.h - manifest.json of a compiled module ----------*- C++ -*-===//
//
// The manifest (docs/module-format.md) is described in two steps:
//  1. moe-attach-manifest describes the mesh and the entry points of the
//     per-rank tensor program (names, roles, dtypes, local and global
//     shapes, shard specs) into the module attribute `moe.manifest`, before
//     moe-to-runtime replaces the tensor signatures by pointer tables;
//  2. after the compile pipeline, completeManifest adds what lowering
//     decided (each entry's arena bytes), and renderManifest what only the
//     driver knows (library, hash, target, source).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_PIPELINES_MANIFEST_H
#define MOE_PIPELINES_MANIFEST_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LLVM.h"

#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

#include <string>

namespace mlir::moe {

// The attribute names (moe.manifest on the module, written by
// moe-attach-manifest; moe.arena_bytes on every entry point, written by
// moe-to-runtime) are MoEDialect::kManifestAttrName and kArenaBytesAttrName.

/// Describes `module`'s mesh and public functions as
/// `{"mesh": {...}, "entries": [...]}`. Emits a diagnostic and fails on an
/// argument without moe.input / moe.weight, a non-tensor or unsupported dtype,
/// a malformed moe.shard / moe.global_shape, or a module without a public
/// function.
FailureOr<llvm::json::Object> describeEntryPoints(ModuleOp module);

/// Reads the `moe.manifest` of a module that went through the compile
/// pipeline and adds each entry's `arena_bytes` (the `moe.arena_bytes` of its
/// entry point).
llvm::Expected<llvm::json::Object> completeManifest(ModuleOp module);

/// What the driver knows about the files of the module directory.
struct ManifestFiles {
  std::string library = "module.so"; ///< file name of the shared library
  StringRef libraryBytes;            ///< its contents (hashed)
  std::string target = "cpu";        ///< default device: cpu or cuda
  std::string source;                ///< the model file compiled
};

/// manifest.json: `description` (from completeManifest) with the format,
/// version, library, module hash, target and source, pretty-printed.
std::string renderManifest(llvm::json::Object description,
                           const ManifestFiles &files);

/// FNV-1a 64 of `bytes` as 16 hex digits (the manifest's module_hash).
std::string moduleHash(StringRef bytes);

} // namespace mlir::moe

#endif // MOE_PIPELINES_MANIFEST_H
