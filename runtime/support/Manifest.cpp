//===- Manifest.cpp - manifest.json of a compiled module ------------------===//
#include "support/Manifest.h"
#include "base/CheckedMath.h"
#include "base/Dtype.h"
#include "support/Format.h"
#include "support/Json.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

namespace moert {

//===----------------------------------------------------------------------===//
// Mesh and specs
//===----------------------------------------------------------------------===//

int64_t Mesh::size() const {
  // parseMesh refuses a mesh whose size overflows; -1 flags one built
  // otherwise.
  int64_t n;
  return checkedNumElements(shape, n) ? n : -1;
}

std::vector<int64_t> Mesh::coords(int64_t rank) const {
  std::vector<int64_t> c(shape.size(), 0);
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    c[i] = rank % shape[i];
    rank /= shape[i];
  }
  return c;
}

int Mesh::axisIndex(const std::string &name) const {
  for (size_t i = 0; i < axes.size(); ++i)
    if (axes[i] == name)
      return static_cast<int>(i);
  return -1;
}

bool TensorSpec::isExpertStack() const {
  return name.find("{e}") != std::string::npos;
}

int64_t TensorSpec::localBytes() const {
  // parseTensor refuses a spec whose byte size overflows; -1 flags one built
  // otherwise.
  int64_t bytes;
  return checkedByteSize(localShape, static_cast<int64_t>(dtypeSize(dtype)),
                         bytes)
             ? bytes
             : -1;
}

const Entry *Manifest::findEntry(const std::string &name) const {
  for (const Entry &e : entries)
    if (e.name == name)
      return &e;
  return nullptr;
}

//===----------------------------------------------------------------------===//
// Parsing helpers: every error names the source and the JSON path
//===----------------------------------------------------------------------===//

namespace {

class Reader {
public:
  explicit Reader(const std::string &source) : source_(source) {}

  __attribute__((format(printf, 3, 4))) Status
  fail(const std::string &path, const char *fmt, ...) const {
    va_list ap;
    va_start(ap, fmt);
    std::string msg = vformat(fmt, ap);
    va_end(ap);
    return supportError(MOERT_ERR_INVALID, "%s: %s: %s", source_.c_str(),
                        path.c_str(), msg.c_str());
  }

  Status field(const json::Value &obj, const std::string &path, const char *key,
               json::Value::Kind kind, const json::Value *&out) const {
    out = obj.get(key);
    if (!out)
      return fail(path, "missing field \"%s\"", key);
    if (out->kind() != kind)
      return fail(path + "." + key, "expected %s, found %s",
                  json::Value::kindName(kind),
                  json::Value::kindName(out->kind()));
    return Status::ok();
  }

  Status string(const json::Value &obj, const std::string &path,
                const char *key, std::string &out) const {
    const json::Value *v;
    MOERT_TRY(field(obj, path, key, json::Value::Kind::String, v));
    out = v->getString();
    return Status::ok();
  }

  Status integer(const json::Value &obj, const std::string &path,
                 const char *key, int64_t &out) const {
    const json::Value *v;
    MOERT_TRY(field(obj, path, key, json::Value::Kind::Number, v));
    if (!v->isInt())
      return fail(path + "." + key, "expected an integer");
    out = v->getInt();
    return Status::ok();
  }

  Status intList(const json::Value &obj, const std::string &path,
                 const char *key, std::vector<int64_t> &out) const {
    const json::Value *v;
    MOERT_TRY(field(obj, path, key, json::Value::Kind::Array, v));
    out.clear();
    for (size_t i = 0; i < v->elements().size(); ++i) {
      const json::Value &e = v->elements()[i];
      if (!e.isInt() || e.getInt() < 0)
        return fail(format("%s.%s[%zu]", path.c_str(), key, i),
                    "expected a non-negative integer");
      out.push_back(e.getInt());
    }
    return Status::ok();
  }

  Status stringList(const json::Value &v, const std::string &path,
                    std::vector<std::string> &out) const {
    if (!v.isArray())
      return fail(path, "expected a list of strings, found %s",
                  json::Value::kindName(v.kind()));
    out.clear();
    for (size_t i = 0; i < v.elements().size(); ++i) {
      const json::Value &e = v.elements()[i];
      if (!e.isString())
        return fail(format("%s[%zu]", path.c_str(), i), "expected a string");
      out.push_back(e.getString());
    }
    return Status::ok();
  }

private:
  std::string source_;
};

std::string joinAxes(const std::vector<std::string> &axes) {
  std::string s;
  for (size_t i = 0; i < axes.size(); ++i)
    s += (i ? ", " : "") + axes[i];
  return s.empty() ? "none" : s;
}

//===----------------------------------------------------------------------===//
// Sections
//===----------------------------------------------------------------------===//

Status parseMesh(const Reader &r, const json::Value &root, Mesh &mesh) {
  const json::Value *m;
  MOERT_TRY(r.field(root, "mesh", "mesh", json::Value::Kind::Object, m));
  const json::Value *axes;
  MOERT_TRY(r.field(*m, "mesh", "axes", json::Value::Kind::Array, axes));
  MOERT_TRY(r.stringList(*axes, "mesh.axes", mesh.axes));
  MOERT_TRY(r.intList(*m, "mesh", "shape", mesh.shape));
  if (mesh.axes.size() != mesh.shape.size())
    return r.fail("mesh", "%zu axes but %zu sizes in shape", mesh.axes.size(),
                  mesh.shape.size());
  std::set<std::string> seen;
  for (size_t i = 0; i < mesh.axes.size(); ++i) {
    if (mesh.axes[i].empty() || !seen.insert(mesh.axes[i]).second)
      return r.fail(format("mesh.axes[%zu]", i), "axis name '%s' is %s",
                    mesh.axes[i].c_str(),
                    mesh.axes[i].empty() ? "empty" : "repeated");
    if (mesh.shape[i] < 1)
      return r.fail(format("mesh.shape[%zu]", i),
                    "size of axis '%s' must be at least 1, got %lld",
                    mesh.axes[i].c_str(),
                    static_cast<long long>(mesh.shape[i]));
  }
  int64_t ranks;
  if (!checkedNumElements(mesh.shape, ranks))
    return r.fail("mesh.shape",
                  "the product of the axis sizes %s overflows 64 bits",
                  shapeString(mesh.shape).c_str());
  if (ranks > (1 << 20))
    return r.fail("mesh.shape", "%lld ranks is more than this driver handles",
                  static_cast<long long>(ranks));
  return Status::ok();
}

Status parseShard(const Reader &r, const json::Value &t,
                  const std::string &path, const Mesh &mesh, TensorSpec &spec) {
  const json::Value *shard;
  MOERT_TRY(r.field(t, path, "shard", json::Value::Kind::Array, shard));
  if (shard->elements().size() != spec.shape.size())
    return r.fail(path + ".shard", "%zu entries for a tensor of rank %zu",
                  shard->elements().size(), spec.shape.size());
  std::set<std::string> used;
  for (size_t d = 0; d < spec.shape.size(); ++d) {
    std::string dpath = format("%s.shard[%zu]", path.c_str(), d);
    std::vector<std::string> axes;
    MOERT_TRY(r.stringList(shard->elements()[d], dpath, axes));
    int64_t n = 1;
    for (const std::string &a : axes) {
      int i = mesh.axisIndex(a);
      if (i < 0)
        return r.fail(dpath, "unknown mesh axis '%s' (mesh axes: %s)",
                      a.c_str(), joinAxes(mesh.axes).c_str());
      if (!used.insert(a).second)
        return r.fail(dpath, "mesh axis '%s' shards two dimensions", a.c_str());
      if (!checkedMul(n, mesh.shape[i], n))
        return r.fail(dpath, "the ranks of [%s] overflow 64 bits",
                      joinAxes(axes).c_str());
    }
    if (spec.shape[d] % n != 0)
      return r.fail(dpath,
                    "dimension %zu of length %lld is not divisible by the "
                    "%lld ranks of [%s]",
                    d, static_cast<long long>(spec.shape[d]),
                    static_cast<long long>(n), joinAxes(axes).c_str());
    if (spec.localShape[d] != spec.shape[d] / n)
      return r.fail(path + ".local_shape",
                    "dimension %zu is %lld but shape %s split over [%s] "
                    "gives %lld",
                    d, static_cast<long long>(spec.localShape[d]),
                    shapeString(spec.shape).c_str(), joinAxes(axes).c_str(),
                    static_cast<long long>(spec.shape[d] / n));
    spec.shard.push_back(std::move(axes));
  }
  return Status::ok();
}

Status parseTensor(const Reader &r, const json::Value &t,
                   const std::string &path, const Mesh &mesh, bool isResult,
                   TensorSpec &spec) {
  if (!t.isObject())
    return r.fail(path, "expected an object, found %s",
                  json::Value::kindName(t.kind()));
  MOERT_TRY(r.integer(t, path, "index", spec.index));
  MOERT_TRY(r.string(t, path, "name", spec.name));
  if (spec.name.empty())
    return r.fail(path + ".name", "empty name");
  if (isResult) {
    spec.role = "result";
  } else {
    MOERT_TRY(r.string(t, path, "role", spec.role));
    if (!isArgumentRole(spec.role))
      return r.fail(path + ".role",
                    "role '%s' is not one of input, weight, saved, grad, "
                    "state, hparams",
                    spec.role.c_str());
  }
  std::string dtype;
  MOERT_TRY(r.string(t, path, "dtype", dtype));
  spec.dtype = dtypeFromName(dtype);
  if (spec.dtype < 0)
    return r.fail(path + ".dtype",
                  "unknown dtype '%s' (f32, f16, bf16, i32, i64)",
                  dtype.c_str());
  MOERT_TRY(r.intList(t, path, "shape", spec.shape));
  MOERT_TRY(r.intList(t, path, "local_shape", spec.localShape));
  if (spec.localShape.size() != spec.shape.size())
    return r.fail(path + ".local_shape", "rank %zu but shape %s has rank %zu",
                  spec.localShape.size(), shapeString(spec.shape).c_str(),
                  spec.shape.size());
  int64_t bytes;
  if (!checkedByteSize(spec.shape, static_cast<int64_t>(dtypeSize(spec.dtype)),
                       bytes))
    return r.fail(path + ".shape", "%s of %s: the byte size overflows 64 bits",
                  shapeString(spec.shape).c_str(), dtype.c_str());
  if (const json::Value *tr = t.get("transpose")) {
    if (!tr->isBool())
      return r.fail(path + ".transpose", "expected a boolean");
    spec.transpose = tr->getBool();
  }
  // Weights, their optimizer state, their gradients and the step results
  // that replace them may be stacks over experts or transposed; the
  // activations (input, saved) and the hyperparameters may not.
  bool weightLike = spec.role == "weight" || spec.role == "state" ||
                    spec.role == "grad" || isResult;
  if (spec.transpose && (!weightLike || spec.shape.size() < 2))
    return r.fail(path + ".transpose",
                  "only weights (and their state, gradients and updates) of "
                  "rank >= 2 can be transposed");
  if (spec.isExpertStack() && (!weightLike || spec.shape.empty()))
    return r.fail(path + ".name",
                  "'{e}' names are for weights (and their state, gradients "
                  "and updates) of rank >= 1 only");
  if (spec.isExpertStack() && spec.transpose && spec.shape.size() < 3)
    return r.fail(path + ".transpose",
                  "an expert stack needs rank >= 3 to be transposed");
  return parseShard(r, t, path, mesh, spec);
}

Status parseTensorList(const Reader &r, const json::Value &entry,
                       const std::string &path, const char *key,
                       const Mesh &mesh, std::vector<TensorSpec> &out) {
  const json::Value *list;
  MOERT_TRY(r.field(entry, path, key, json::Value::Kind::Array, list));
  bool isResult = std::strcmp(key, "results") == 0;
  size_t n = list->elements().size();
  std::vector<bool> seen(n, false);
  for (size_t i = 0; i < n; ++i) {
    std::string tpath = format("%s.%s[%zu]", path.c_str(), key, i);
    TensorSpec spec;
    MOERT_TRY(parseTensor(r, list->elements()[i], tpath, mesh, isResult, spec));
    if (spec.index < 0 || spec.index >= static_cast<int64_t>(n) ||
        seen[spec.index])
      return r.fail(tpath + ".index",
                    "index %lld is %s (the %zu %s must have indices 0..%zu)",
                    static_cast<long long>(spec.index),
                    spec.index >= 0 && spec.index < static_cast<int64_t>(n)
                        ? "repeated"
                        : "out of range",
                    n, key, n ? n - 1 : 0);
    seen[spec.index] = true;
    out.push_back(std::move(spec));
  }
  std::sort(out.begin(), out.end(),
            [](const TensorSpec &a, const TensorSpec &b) {
              return a.index < b.index;
            });
  return Status::ok();
}

bool isIdentifier(const std::string &s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9'))
    return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_'))
      return false;
  return true;
}

Status parseEntry(const Reader &r, const json::Value &e,
                  const std::string &path, const Mesh &mesh, Entry &entry) {
  if (!e.isObject())
    return r.fail(path, "expected an object, found %s",
                  json::Value::kindName(e.kind()));
  MOERT_TRY(r.string(e, path, "name", entry.name));
  MOERT_TRY(r.string(e, path, "symbol", entry.symbol));
  if (!isIdentifier(entry.symbol))
    return r.fail(path + ".symbol", "'%s' is not a C identifier",
                  entry.symbol.c_str());
  if (e.get("arena_bytes"))
    MOERT_TRY(r.integer(e, path, "arena_bytes", entry.arenaBytes));
  MOERT_TRY(parseTensorList(r, e, path, "args", mesh, entry.args));
  return parseTensorList(r, e, path, "results", mesh, entry.results);
}

Status parseHeaderFields(const Reader &r, const json::Value &root,
                         Manifest &m) {
  std::string format;
  MOERT_TRY(r.string(root, "(top level)", "format", format));
  if (format != "moe-compiler-module")
    return r.fail("format", "'%s' is not \"moe-compiler-module\"",
                  format.c_str());
  int64_t version;
  MOERT_TRY(r.integer(root, "(top level)", "version", version));
  if (version != 1)
    return r.fail("version",
                  "version %lld is not supported (this driver reads 1)",
                  static_cast<long long>(version));
  MOERT_TRY(r.string(root, "(top level)", "module_hash", m.moduleHash));
  bool hex = m.moduleHash.size() == 16 &&
             m.moduleHash.find_first_not_of("0123456789abcdefABCDEF") ==
                 std::string::npos;
  if (!hex)
    return r.fail("module_hash", "'%s' is not 16 hex digits",
                  m.moduleHash.c_str());
  MOERT_TRY(r.string(root, "(top level)", "library", m.library));
  if (m.library.empty())
    return r.fail("library", "empty file name");
  if (root.get("target"))
    MOERT_TRY(r.string(root, "(top level)", "target", m.target));
  return Status::ok();
}

} // namespace

namespace {

/// "mesh" and "entries" of `root`, and how the entries fit together.
Status parseBody(const Reader &r, const json::Value &root,
                 const std::string &source, Manifest &m) {
  MOERT_TRY(parseMesh(r, root, m.mesh));
  const json::Value *entries;
  MOERT_TRY(r.field(root, "(top level)", "entries", json::Value::Kind::Array,
                    entries));
  if (entries->elements().empty())
    return r.fail("entries", "no entry points");
  std::set<std::string> names;
  for (size_t i = 0; i < entries->elements().size(); ++i) {
    Entry e;
    std::string path = format("entries[%zu]", i);
    MOERT_TRY(parseEntry(r, entries->elements()[i], path, m.mesh, e));
    if (!names.insert(e.name).second)
      return r.fail(path + ".name", "entry '%s' appears twice", e.name.c_str());
    m.entries.push_back(std::move(e));
  }
  return checkEntryGraph(m, source);
}

Status parseTop(const std::string &text, const std::string &source, bool header,
                Manifest &out) {
  json::Value root;
  MOERT_TRY(json::parse(text, source, root));
  Reader r(source);
  if (!root.isObject())
    return r.fail("(top level)", "expected an object, found %s",
                  json::Value::kindName(root.kind()));
  Manifest m;
  if (header)
    MOERT_TRY(parseHeaderFields(r, root, m));
  MOERT_TRY(parseBody(r, root, source, m));
  out = std::move(m);
  return Status::ok();
}

std::string axesList(const std::vector<std::vector<std::string>> &shard) {
  std::string s = "[";
  for (size_t d = 0; d < shard.size(); ++d)
    s += (d ? ", [" : "[") + joinAxes(shard[d]) + "]";
  return s + "]";
}

Status compareTensor(const TensorSpec &f, const TensorSpec &l,
                     const std::string &path, const std::string &source) {
  auto differ = [&](const char *field, const std::string &mine,
                    const std::string &lib) {
    return supportError(MOERT_ERR_INVALID,
                        "%s: %s.%s ('%s') is %s but the module library says "
                        "%s: the manifest does not describe this module.so",
                        source.c_str(), path.c_str(), field, l.name.c_str(),
                        mine.c_str(), lib.c_str());
  };
  if (f.role != l.role)
    return differ("role", f.role, l.role);
  if (f.name != l.name)
    return differ("name", "'" + f.name + "'", "'" + l.name + "'");
  if (f.dtype != l.dtype)
    return differ("dtype", dtypeName(f.dtype), dtypeName(l.dtype));
  if (f.shape != l.shape)
    return differ("shape", shapeString(f.shape), shapeString(l.shape));
  if (f.localShape != l.localShape)
    return differ("local_shape", shapeString(f.localShape),
                  shapeString(l.localShape));
  if (f.shard != l.shard)
    return differ("shard", axesList(f.shard), axesList(l.shard));
  if (f.transpose != l.transpose)
    return differ("transpose", f.transpose ? "true" : "false",
                  l.transpose ? "true" : "false");
  return Status::ok();
}

} // namespace

Status parseManifest(const std::string &text, const std::string &source,
                     Manifest &out) {
  return parseTop(text, source, /*header=*/true, out);
}

Status parseModuleDescription(const std::string &text,
                              const std::string &source, Manifest &out) {
  return parseTop(text, source, /*header=*/false, out);
}

Status checkManifestAgainstLibrary(const Manifest &file,
                                   const Manifest &library,
                                   const std::string &source) {
  auto fail = [&](const std::string &path, const std::string &mine,
                  const std::string &lib) {
    return supportError(MOERT_ERR_INVALID,
                        "%s: %s is %s but the module library says %s: the "
                        "manifest does not describe this module.so",
                        source.c_str(), path.c_str(), mine.c_str(),
                        lib.c_str());
  };
  if (file.mesh.axes != library.mesh.axes)
    return fail("mesh.axes", "[" + joinAxes(file.mesh.axes) + "]",
                "[" + joinAxes(library.mesh.axes) + "]");
  if (file.mesh.shape != library.mesh.shape)
    return fail("mesh.shape", shapeString(file.mesh.shape),
                shapeString(library.mesh.shape));
  if (file.entries.size() != library.entries.size())
    return fail("entries", format("%zu entry points", file.entries.size()),
                format("%zu", library.entries.size()));
  for (size_t i = 0; i < file.entries.size(); ++i) {
    const Entry &f = file.entries[i], &l = library.entries[i];
    std::string path = format("entries[%zu]", i);
    if (f.name != l.name)
      return fail(path + ".name", "'" + f.name + "'", "'" + l.name + "'");
    if (f.symbol != l.symbol)
      return fail(path + ".symbol", "'" + f.symbol + "'", "'" + l.symbol + "'");
    if (f.arenaBytes != l.arenaBytes)
      return fail(path + ".arena_bytes", std::to_string(f.arenaBytes),
                  std::to_string(l.arenaBytes));
    for (int results = 0; results < 2; ++results) {
      const auto &fl = results ? f.results : f.args;
      const auto &ll = results ? l.results : l.args;
      const char *key = results ? "results" : "args";
      if (fl.size() != ll.size())
        return fail(path + "." + key, std::to_string(fl.size()) + " tensors",
                    std::to_string(ll.size()));
      for (size_t j = 0; j < fl.size(); ++j)
        MOERT_TRY(compareTensor(
            fl[j], ll[j], format("%s.%s[%zu]", path.c_str(), key, j), source));
    }
  }
  return Status::ok();
}

Status loadManifest(const std::string &path, Manifest &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return supportError(MOERT_ERR_IO, "%s: cannot open: %s", path.c_str(),
                        std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad())
    return supportError(MOERT_ERR_IO, "%s: read failed", path.c_str());
  return parseManifest(ss.str(), path, out);
}

//===----------------------------------------------------------------------===//
// Slicing
//===----------------------------------------------------------------------===//

std::vector<int64_t> Slice::shape() const {
  std::vector<int64_t> s(lo.size());
  for (size_t d = 0; d < lo.size(); ++d)
    s[d] = hi[d] - lo[d];
  return s;
}

Status computeSlice(const Mesh &mesh, const TensorSpec &spec,
                    const std::vector<int64_t> &coords, Slice &out) {
  if (coords.size() != mesh.axes.size())
    return supportError(MOERT_ERR_INVALID,
                        "'%s': %zu mesh coordinates for a mesh of %zu axes",
                        spec.name.c_str(), coords.size(), mesh.axes.size());
  size_t rank = spec.shape.size();
  out.lo.assign(rank, 0);
  out.hi = spec.shape;
  for (size_t d = 0; d < rank && d < spec.shard.size(); ++d) {
    int64_t n = 1, i = 0;
    for (const std::string &a : spec.shard[d]) {
      int ax = mesh.axisIndex(a);
      if (ax < 0)
        return supportError(MOERT_ERR_INVALID,
                            "'%s': unknown mesh axis '%s' in dimension %zu",
                            spec.name.c_str(), a.c_str(), d);
      i = i * mesh.shape[ax] + coords[ax];
      n *= mesh.shape[ax];
    }
    int64_t len = spec.shape[d];
    if (len % n != 0)
      return supportError(MOERT_ERR_INVALID,
                          "'%s': dimension %zu of length %lld is not "
                          "divisible by %lld ranks",
                          spec.name.c_str(), d, static_cast<long long>(len),
                          static_cast<long long>(n));
    out.lo[d] = i * (len / n);
    out.hi[d] = (i + 1) * (len / n);
  }
  return Status::ok();
}

std::string expandExpertName(const std::string &pattern, int64_t expert) {
  std::string out;
  std::string e = std::to_string(expert);
  size_t pos = 0;
  while (true) {
    size_t hit = pattern.find("{e}", pos);
    if (hit == std::string::npos)
      return out + pattern.substr(pos);
    out += pattern.substr(pos, hit - pos) + e;
    pos = hit + 3;
  }
}

//===----------------------------------------------------------------------===//
// Module hash
//===----------------------------------------------------------------------===//

static uint64_t fnvUpdate(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string fnv1a64Hex(const void *bytes, size_t n) {
  uint64_t h = fnvUpdate(0xcbf29ce484222325ULL,
                         static_cast<const unsigned char *>(bytes), n);
  return format("%016llx", static_cast<unsigned long long>(h));
}

Status hashFile(const std::string &path, std::string &hex) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return supportError(MOERT_ERR_IO, "%s: cannot open: %s", path.c_str(),
                        std::strerror(errno));
  uint64_t h = 0xcbf29ce484222325ULL;
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h = fnvUpdate(h, reinterpret_cast<const unsigned char *>(buf.data()),
                  static_cast<size_t>(in.gcount()));
  }
  if (in.bad())
    return supportError(MOERT_ERR_IO, "%s: read failed", path.c_str());
  hex = format("%016llx", static_cast<unsigned long long>(h));
  return Status::ok();
}

} // namespace moert
