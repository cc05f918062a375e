//===- Manifest.cpp - manifest.json of a compiled module ------------------===//
//
// Entry points are described from the per-rank tensor program (the only
// place where names, roles, dtypes and shard specs still sit on the
// signatures); moe-compile completes the description after lowering.
//
//===----------------------------------------------------------------------===//
#include "moe/Pipelines/Manifest.h"
#include "moe/Dialect/MoE/IR/MoE.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinAttributes.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <map>

using namespace mlir;
using mlir::moe::MoEDialect;

namespace {

llvm::Error makeError(const Twine &msg) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), msg);
}

/// The manifest's dtype of `t`, or empty if the runtime has none.
StringRef dtypeName(Type t) {
  if (t.isF32())
    return "f32";
  if (t.isF16())
    return "f16";
  if (t.isBF16())
    return "bf16";
  if (t.isInteger(32))
    return "i32";
  if (t.isInteger(64))
    return "i64";
  return "";
}

llvm::json::Array shapeJson(ArrayRef<int64_t> shape) {
  llvm::json::Array a;
  for (int64_t d : shape)
    a.push_back(d);
  return a;
}

/// Adds dtype, local_shape, shape and shard of one argument or result to `o`.
/// `what` names it in diagnostics ("argument 2").
LogicalResult describeTensor(func::FuncOp f, const Twine &what, Type type,
                             DictionaryAttr attrs, llvm::json::Object &o) {
  auto t = dyn_cast<RankedTensorType>(type);
  if (!t || !t.hasStaticShape())
    return f.emitError() << what << " of @" << f.getSymName() << " has type "
                         << type << ": entry points take statically shaped "
                         << "tensors";
  StringRef dtype = dtypeName(t.getElementType());
  if (dtype.empty())
    return f.emitError() << what << " of @" << f.getSymName()
                         << " has element type " << t.getElementType()
                         << ", which the runtime does not support (f32, f16, "
                         << "bf16, i32, i64)";
  o["dtype"] = dtype.str();
  o["local_shape"] = shapeJson(t.getShape());

  SmallVector<int64_t> global(t.getShape());
  if (Attribute g =
          attrs ? attrs.get(MoEDialect::kGlobalShapeAttrName) : Attribute()) {
    auto dense = dyn_cast<DenseI64ArrayAttr>(g);
    if (!dense || dense.size() != t.getRank())
      return f.emitError() << what << " of @" << f.getSymName()
                           << ": moe.global_shape must be an array<i64> of "
                           << t.getRank() << " sizes";
    global.assign(dense.asArrayRef().begin(), dense.asArrayRef().end());
  }
  o["shape"] = shapeJson(global);

  ArrayAttr spec;
  if (Attribute s =
          attrs ? attrs.get(MoEDialect::kShardAttrName) : Attribute()) {
    spec = dyn_cast<ArrayAttr>(s);
    if (!spec || int64_t(spec.size()) > t.getRank())
      return f.emitError() << what << " of @" << f.getSymName()
                           << ": moe.shard must be an array of at most "
                           << t.getRank() << " arrays of mesh-axis names";
  }
  llvm::json::Array shard;
  for (int64_t d = 0; d < t.getRank(); ++d) {
    llvm::json::Array axes;
    if (spec && d < int64_t(spec.size())) {
      auto dimAxes = dyn_cast<ArrayAttr>(spec[d]);
      if (!dimAxes)
        return f.emitError()
               << what << " of @" << f.getSymName() << ": moe.shard entry " << d
               << " is not an array of mesh-axis names";
      for (Attribute a : dimAxes) {
        auto axis = dyn_cast<StringAttr>(a);
        if (!axis)
          return f.emitError()
                 << what << " of @" << f.getSymName() << ": moe.shard entry "
                 << d << " is not an array of mesh-axis names";
        axes.push_back(axis.getValue().str());
      }
    }
    shard.push_back(std::move(axes));
  }
  o["shard"] = std::move(shard);
  return success();
}

/// The collectives `f` runs per call, from CollectiveOpInterface, keyed as
/// the runtime statistics key them (op name, axes in mesh order): calls and
/// bytes this rank sends to other ranks; `upper_bound` when the count depends
/// on the data (all_to_all_v). moe.slice moves nothing and the runtime counts
/// it as a phase, so it is left out.
llvm::json::Array describeCollectives(func::FuncOp f) {
  struct Sum {
    int64_t calls = 0, bytes = 0;
    bool upperBound = false;
  };
  std::map<std::pair<std::string, std::string>, Sum> sums;
  f.walk([&](moe::CollectiveOpInterface c) {
    if (isa<moe::SliceOp>(c.getOperation()))
      return;
    StringRef op = c->getName().stripDialect();
    op.consume_back("_start");
    std::string axes;
    if (moe::MeshOp mesh = c.getMeshOp()) {
      SmallVector<std::pair<int64_t, StringRef>> ordered;
      for (Attribute a : c.getAxes()) {
        StringRef name = cast<StringAttr>(a).getValue();
        ordered.push_back({mesh.getAxisIndex(name), name});
      }
      llvm::sort(ordered);
      for (auto &[index, name] : ordered) {
        if (!axes.empty())
          axes.push_back(',');
        axes.append(name.data(), name.size());
      }
    }
    Sum &sum = sums[{op.str(), axes}];
    sum.calls += 1;
    sum.bytes += c.getBytesSentPerRank();
    sum.upperBound |= c.isBytesSentUpperBound();
  });
  llvm::json::Array out;
  for (auto &[key, sum] : sums)
    out.push_back(llvm::json::Object{{"op", key.first},
                                     {"axis", key.second},
                                     {"calls", sum.calls},
                                     {"bytes_sent", sum.bytes},
                                     {"upper_bound", sum.upperBound}});
  return out;
}

/// What an entry point is for, from its name (docs/module-format.md):
/// the training entries of `moe-differentiate`, anything else a forward.
StringRef entryRole(StringRef name) {
  if (name == "forward_train" || name == "backward")
    return name;
  if (name.starts_with("step_"))
    return "step";
  return "forward";
}

FailureOr<llvm::json::Object> describeEntry(func::FuncOp f) {
  // The library exports the entry as the C symbol moe_entry_<name>, which
  // the runner looks up by name; a name that is not a C identifier cannot be
  // one (MLIR allows dots and other characters in symbol names).
  StringRef symName = f.getSymName();
  if (symName.empty() || llvm::isDigit(symName.front()) ||
      !llvm::all_of(symName,
                    [](char c) { return llvm::isAlnum(c) || c == '_'; }))
    return f.emitError() << "entry point @" << symName
                         << " cannot be exported: its name must be a C "
                            "identifier (letters, digits and '_', not "
                            "starting with a digit), because the library "
                            "exports it as moe_entry_"
                         << symName;
  llvm::json::Object entry;
  entry["name"] = symName.str();
  entry["symbol"] = ("moe_entry_" + f.getSymName()).str();
  entry["role"] = entryRole(f.getSymName()).str();
  llvm::json::Array args, results;
  for (unsigned i = 0; i < f.getNumArguments(); ++i) {
    DictionaryAttr attrs = f.getArgAttrDict(i);
    llvm::json::Object a;
    a["index"] = int64_t(i);
    // The role is the one moe.* naming attribute the argument carries (the
    // dialect verifies there is at most one).
    static constexpr std::pair<StringLiteral, StringLiteral> roles[] = {
        {MoEDialect::kInputAttrName, "input"},
        {MoEDialect::kWeightAttrName, "weight"},
        {MoEDialect::kSavedAttrName, "saved"},
        {MoEDialect::kGradAttrName, "grad"},
        {MoEDialect::kStateAttrName, "state"},
        {MoEDialect::kHparamsAttrName, "hparams"}};
    StringAttr name;
    StringRef role;
    for (auto [attrName, roleName] : roles)
      if (StringAttr n = attrs ? attrs.getAs<StringAttr>(attrName) : nullptr) {
        name = n;
        role = roleName;
        break;
      }
    if (!name)
      return f.emitError() << "argument " << i << " of @" << f.getSymName()
                           << " has no moe.input, moe.weight, moe.saved, "
                              "moe.grad, moe.state or moe.hparams: the "
                              "runner cannot know where its data comes from";
    a["role"] = role.str();
    a["name"] = name.getValue().str();
    bool weight = role == "weight";
    if (weight)
      a["transpose"] = bool(attrs.get(MoEDialect::kWeightTransposeAttrName));
    if (failed(describeTensor(f, "argument " + Twine(i),
                              f.getArgumentTypes()[i], attrs, a)))
      return failure();
    args.push_back(std::move(a));
  }
  for (unsigned i = 0; i < f.getNumResults(); ++i) {
    DictionaryAttr attrs = f.getResultAttrDict(i);
    llvm::json::Object r;
    r["index"] = int64_t(i);
    StringAttr name =
        attrs ? attrs.getAs<StringAttr>(MoEDialect::kOutputAttrName) : nullptr;
    r["name"] = name ? name.getValue().str() : ("result" + Twine(i)).str();
    if (failed(describeTensor(f, "result " + Twine(i), f.getResultTypes()[i],
                              attrs, r)))
      return failure();
    results.push_back(std::move(r));
  }
  entry["args"] = std::move(args);
  entry["results"] = std::move(results);
  entry["collectives"] = describeCollectives(f);
  return entry;
}

/// `{"axes": [...], "shape": [...]}`; empty arrays for a single device.
llvm::json::Object describeMesh(ModuleOp module) {
  llvm::json::Array axes, shape;
  auto meshes = module.getOps<moe::MeshOp>();
  if (!meshes.empty()) {
    moe::MeshOp mesh = *meshes.begin();
    for (Attribute a : mesh.getAxes())
      axes.push_back(cast<StringAttr>(a).getValue().str());
    for (int64_t s : mesh.getShape())
      shape.push_back(s);
  }
  return llvm::json::Object{{"axes", std::move(axes)},
                            {"shape", std::move(shape)}};
}

} // namespace

FailureOr<llvm::json::Object> mlir::moe::describeEntryPoints(ModuleOp module) {
  llvm::json::Array entries;
  for (auto f : module.getOps<func::FuncOp>()) {
    if (!f.isPublic() || f.isExternal())
      continue;
    FailureOr<llvm::json::Object> entry = describeEntry(f);
    if (failed(entry))
      return failure();
    entries.push_back(std::move(*entry));
  }
  if (entries.empty())
    return module.emitError("the module has no public function to compile");
  return llvm::json::Object{{"mesh", describeMesh(module)},
                            {"entries", std::move(entries)}};
}

llvm::Expected<llvm::json::Object>
mlir::moe::completeManifest(ModuleOp module) {
  auto text = module->getAttrOfType<StringAttr>(MoEDialect::kManifestAttrName);
  if (!text)
    return makeError("the module has no " + MoEDialect::kManifestAttrName +
                     " attribute (run moe-attach-manifest)");
  llvm::Expected<llvm::json::Value> parsed = llvm::json::parse(text.getValue());
  if (!parsed)
    return makeError("malformed " + MoEDialect::kManifestAttrName + ": " +
                     llvm::toString(parsed.takeError()));
  llvm::json::Object *manifest = parsed->getAsObject();
  llvm::json::Array *entries =
      manifest ? manifest->getArray("entries") : nullptr;
  if (!entries)
    return makeError(MoEDialect::kManifestAttrName +
                     " has no \"entries\" array");
  for (llvm::json::Value &value : *entries) {
    llvm::json::Object *entry = value.getAsObject();
    std::optional<StringRef> symbol =
        entry ? entry->getString("symbol") : std::nullopt;
    if (!symbol)
      return makeError(MoEDialect::kManifestAttrName +
                       " has an entry without a symbol");
    auto f = module.lookupSymbol<func::FuncOp>(*symbol);
    if (!f)
      return makeError("the module has no entry point @" + *symbol +
                       " (run moe-to-runtime after moe-attach-manifest)");
    auto bytes = f->getAttrOfType<IntegerAttr>(MoEDialect::kArenaBytesAttrName);
    if (!bytes)
      return makeError("entry point @" + *symbol + " has no " +
                       MoEDialect::kArenaBytesAttrName);
    (*entry)["arena_bytes"] = bytes.getInt();
  }
  // moe-checkpoint's plan, with the memory of a training step per rank: the
  // bytes held from forward_train to backward (saved_bytes) and the peak,
  // saved bytes plus the larger arena of the two entries (the arena of each
  // entry holds its intermediates; the saved values are results of
  // forward_train and arguments of backward, outside both arenas).
  if (auto plan = module->getAttrOfType<DictionaryAttr>(
          MoEDialect::kCheckpointAttrName)) {
    llvm::json::Object c;
    for (NamedAttribute a : plan) {
      if (auto s = dyn_cast<StringAttr>(a.getValue()))
        c[a.getName().getValue()] = s.getValue().str();
      else if (auto i = dyn_cast<IntegerAttr>(a.getValue()))
        c[a.getName().getValue()] = i.getInt();
      else if (auto f = dyn_cast<FloatAttr>(a.getValue()))
        c[a.getName().getValue()] = f.getValueAsDouble();
    }
    int64_t arenas[2] = {0, 0};
    for (const llvm::json::Value &value : *entries) {
      const llvm::json::Object *entry = value.getAsObject();
      std::optional<StringRef> name = entry->getString("name");
      std::optional<int64_t> bytes = entry->getInteger("arena_bytes");
      if (name && bytes && (*name == "forward_train" || *name == "backward"))
        arenas[*name == "backward"] = *bytes;
    }
    int64_t saved = c.getInteger("saved_bytes").value_or(0);
    c["forward_train_arena_bytes"] = arenas[0];
    c["backward_arena_bytes"] = arenas[1];
    c["peak_bytes"] = saved + std::max(arenas[0], arenas[1]);
    (*manifest)["checkpoint"] = std::move(c);
  }
  return std::move(*manifest);
}

std::string mlir::moe::renderManifest(llvm::json::Object description,
                                      const ManifestFiles &files) {
  llvm::json::Object manifest = std::move(description);
  manifest["format"] = "moe-compiler-module";
  manifest["version"] = 1;
  manifest["module_hash"] = moduleHash(files.libraryBytes);
  manifest["library"] = files.library;
  manifest["target"] = files.target;
  manifest["source"] = files.source;
  return llvm::formatv("{0:2}\n", llvm::json::Value(std::move(manifest))).str();
}

std::string mlir::moe::moduleHash(StringRef bytes) {
  uint64_t h = 0xcbf29ce484222325ull; // FNV-1a 64 offset basis
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return llvm::formatv("{0}", llvm::format_hex_no_prefix(h, 16)).str();
}
