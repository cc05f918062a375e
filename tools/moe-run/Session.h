//===- Session.h - Module, context and ranks of one moe-run -----*- C++ -*-===//
//
// What an inference run and a training run share: the manifest and the
// module library (its entry points looked up by name), the runtime context
// of this rank and its mesh coordinates, the check that every rank runs the
// same module, and the agreement of all ranks on a failure one of them saw
// alone (World.h has the failure discipline).
//
//===----------------------------------------------------------------------===//
#ifndef MOE_RUN_SESSION_H
#define MOE_RUN_SESSION_H

#include "Options.h"

#include "moert/moert.h"
#include "support/Manifest.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moe_run {

using EntryFn = void (*)(moert_ctx *, void **, void **);

/// Seconds on a monotonic clock.
double now();
/// `file` relative to `dir` (unless absolute).
std::string joinPath(const std::string &dir, const std::string &file);
/// The context's error as a Status, prefixed with `what`.
moert::Status ctxError(moert_ctx *ctx, const char *what);
/// Fails early (before any run) when `path` cannot be created.
moert::Status probeWritable(const std::string &path);
/// Same file (device and inode)?
bool sameFile(const std::string &a, const std::string &b);

/// Host memory for this rank's buffer of `spec` (zeroed); an error naming
/// the tensor and the bytes when it cannot be allocated.
moert::Status hostBuffer(const moert::TensorSpec &spec, std::vector<char> &buf);
/// Device memory (moert_alloc) for this rank's buffer of `spec`; an error
/// naming the tensor and the bytes when it cannot be allocated.
moert::Status deviceBuffer(moert_ctx *ctx, const moert::TensorSpec &spec,
                           void *&out);

class Session {
public:
  Session(const Options &o, moert::Manifest manifest, moert::Status loaded)
      : opt(o), manifest(std::move(manifest)), loaded_(std::move(loaded)) {}
  ~Session();

  /// Reports a manifest that failed to load, checks the mesh against the
  /// world size, loads the library and looks up `entries` (fatal on any
  /// error: every rank sees the same), then creates the context and checks
  /// that every rank runs the same module. False when ranks differ.
  bool start(const std::vector<std::string> &entries);
  /// Entry `name` (one of those passed to start) and its function.
  const moert::Entry &entry(const std::string &name) const;
  EntryFn function(const std::string &name) const;

  /// All ranks learn whether every rank is ok; false when any is not.
  bool agree(bool ok, const char *stage);
  /// Gathers one string per rank to rank 0 (lengths first, then padded).
  moert::Status gatherStrings(const std::string &mine,
                              std::vector<std::string> &all);
  /// Gathers the local buffer of `spec` at `local` (device memory) into the
  /// global tensor on rank 0 (`global` stays empty elsewhere).
  moert::Status gatherTensor(const moert::TensorSpec &spec, const void *local,
                             std::vector<char> &global);

  const Options opt;
  const moert::Manifest manifest;
  moert_ctx *ctx = nullptr;
  std::vector<int64_t> coords;

private:
  void createContext();
  void printThreads() const;
  bool checkSameModule();

  void *loadVerified(const std::string &lib, const std::string &manifestPath);

  moert::Status loaded_;
  std::string libraryHash_;
  std::vector<std::pair<std::string, EntryFn>> fns_;
};

} // namespace moe_run

#endif // MOE_RUN_SESSION_H
