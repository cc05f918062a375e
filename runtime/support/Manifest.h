//===- Manifest.h - manifest.json of a compiled module ----------*- C++ -*-===//
//
// docs/module-format.md is the specification: the mesh, the entry points,
// every argument's and result's name, dtype, global and local shape and shard
// spec. parseManifest validates all of it (errors name the JSON path, e.g.
// "manifest.json: entries[0].args[2].shard[0]: unknown mesh axis 'xp'"), so
// the driver can trust it. The slicing functions implement the sharding rule.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SUPPORT_MANIFEST_H
#define MOERT_SUPPORT_MANIFEST_H

#include "base/Status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moert {

struct Mesh {
  std::vector<std::string> axes;
  std::vector<int64_t> shape;

  /// Number of ranks (1 for an empty mesh).
  int64_t size() const;
  /// Coordinates of `rank` on every axis, row-major (last axis fastest).
  std::vector<int64_t> coords(int64_t rank) const;
  /// Index of axis `name`, or -1.
  int axisIndex(const std::string &name) const;
};

/// One argument or result of an entry point.
struct TensorSpec {
  int64_t index = 0;
  /// Arguments: "input", "weight", "saved", "grad", "state" or "hparams"
  /// (docs/module-format.md, "Training entry points"); results: "result".
  std::string role;
  std::string name; // may contain "{e}" (weights)
  bool transpose = false;
  int32_t dtype = MOERT_F32;
  std::vector<int64_t> shape;      // global
  std::vector<int64_t> localShape; // this rank's buffer
  /// Mesh axes every dimension is split over (empty: replicated).
  std::vector<std::vector<std::string>> shard;

  /// True when `name` is a stack over experts ("...experts.{e}...").
  bool isExpertStack() const;
  int64_t localBytes() const;
};

struct Entry {
  std::string name;
  std::string symbol;
  int64_t arenaBytes = 0;
  std::vector<TensorSpec> args;    // sorted by index, indices 0..n-1
  std::vector<TensorSpec> results; // sorted by index, indices 0..n-1
};

struct Manifest {
  std::string moduleHash;
  std::string library;
  std::string target;
  Mesh mesh;
  std::vector<Entry> entries;

  /// Entry `name`, or nullptr.
  const Entry *findEntry(const std::string &name) const;
};

/// True for the roles an argument may have.
bool isArgumentRole(const std::string &role);

/// The training entry points, in the order a step runs them (0 forward_train,
/// 1 backward, 2 step_adamw / step_sgd); -1 for any other entry (forward).
int trainingStage(const std::string &entryName);

/// The optimizer state slots an entry takes ("exp_avg", "exp_avg_sq" for
/// step_adamw, "momentum_buffer" for step_sgd; none for the others).
std::vector<std::string> stateSlots(const std::string &entryName);

/// Checks how the entries fit together (parseManifest calls it): which roles
/// each entry may take; every `saved` / `grad` argument is a result of an
/// earlier training entry with the same dtype, shapes and shard spec; every
/// `state` argument is "<weight>.<slot>" of a weight of its entry and sharded
/// like it; `hparams` is f32 [8] "optimizer.hparams"; a step entry returns
/// only arguments it replaces; a weight has one spec in every entry; a
/// training module has forward_train, backward and a step entry, and
/// forward_train a result "loss" f32 [1]. A result that no later entry takes
/// is fine. Errors name `source`, the entry and the tensor.
Status checkEntryGraph(const Manifest &m, const std::string &source);

/// Parses and validates manifest text; `source` names it in errors.
Status parseManifest(const std::string &text, const std::string &source,
                     Manifest &out);
/// Parses the description a module library embeds (MOERT_MANIFEST_SYMBOL:
/// the JSON object with manifest.json's "mesh" and "entries") with the same
/// rules; the header fields are left empty.
Status parseModuleDescription(const std::string &text,
                              const std::string &source, Manifest &out);
/// Checks that `file` (manifest.json, named `fileSource`) describes exactly
/// the mesh and entry points of `library` (the library's own description):
/// every entry's symbol and arena size, every argument's and result's role,
/// name, dtype, shapes, shard spec and transpose flag. The error names the
/// field and both values.
Status checkManifestAgainstLibrary(const Manifest &file,
                                   const Manifest &library,
                                   const std::string &fileSource);
/// Reads and parses the file at `path`.
Status loadManifest(const std::string &path, Manifest &out);

/// The hyper-rectangle [lo[d], hi[d]) of the global tensor a rank holds.
struct Slice {
  std::vector<int64_t> lo, hi;
  std::vector<int64_t> shape() const;
};

/// The slice of `spec` held by the rank at `coords` (sharding rule of
/// docs/module-format.md).
Status computeSlice(const Mesh &mesh, const TensorSpec &spec,
                    const std::vector<int64_t> &coords, Slice &out);

/// `pattern` with every "{e}" replaced by the expert index.
std::string expandExpertName(const std::string &pattern, int64_t expert);

/// FNV-1a 64 of `bytes`, as 16 lower-case hex digits (the module hash).
std::string fnv1a64Hex(const void *bytes, size_t n);
/// FNV-1a 64 of the file at `path`.
Status hashFile(const std::string &path, std::string &hex);

} // namespace moert

#endif // MOERT_SUPPORT_MANIFEST_H
