//===- moe-run.cpp - Run a compiled MoE module on one rank or many --------===//
//
// moe-run OUT_DIR --weights W.safetensors --inputs X.safetensors
//         --output Y.safetensors [options]
//
// Reads OUT_DIR/manifest.json (docs/module-format.md), loads the module
// library, creates a runtime context on this rank (MPI when started by
// mpirun with more than one rank, NCCL with --device cuda), loads only this
// rank's slice of every weight and input, runs the entry point, gathers the
// results to rank 0 and writes them atomically, and reports timings and
// collective byte counts.
//
// Failure discipline under mpirun: problems every rank sees alike (options,
// manifest, library) are reported by every rank, which then exits; problems
// one rank may see alone (a slice of a truncated file) are agreed on with an
// allgather before any collective; a failure during the run (when the other
// ranks may be waiting in a collective) is reported and followed by
// MPI_Abort, so no rank is left waiting.
//
//===----------------------------------------------------------------------===//
#include "moert/moert.h"
#include "support/Format.h"
#include "support/Json.h"
#include "support/Manifest.h"
#include "support/ModuleAbi.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <map>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#ifdef MOE_HAVE_MPI
// The C API only: keep OpenMPI's C++ bindings (and their library) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

using namespace moert;

namespace {

//===----------------------------------------------------------------------===//
// Options
//===----------------------------------------------------------------------===//

const char *kUsage =
    "usage: moe-run OUT_DIR --weights W.safetensors --inputs X.safetensors\n"
    "               --output Y.safetensors [options]\n"
    "\n"
    "Runs the compiled module in OUT_DIR (written by moe-compile) on this\n"
    "rank; under `mpirun -np N` on N ranks (N = product of the module's "
    "mesh).\n"
    "Every rank reads only its slice of each weight and input; rank 0 writes\n"
    "the gathered outputs.\n"
    "\n"
    "options:\n"
    "  --weights FILE      safetensors file with the weights (Hugging Face "
    "names)\n"
    "  --inputs FILE       safetensors file with the inputs\n"
    "  --output FILE       safetensors file to write (atomically, on rank 0)\n"
    "  --entry NAME        entry point to run (default: forward)\n"
    "  --device cpu|cuda   device (default: the manifest's target, else cpu)\n"
    "  --check REF         compare every output with the same-named tensor "
    "of REF\n"
    "  --rtol R            relative tolerance of --check (default: 1e-4)\n"
    "  --atol A            absolute tolerance of --check (default: 1e-5)\n"
    "  --stats FILE        write per-rank statistics as JSON (rank 0)\n"
    "  --trace FILE        write a Chrome trace of all ranks (rank 0)\n"
    "  --repeat N          timed runs (default: 1)\n"
    "  --warmup N          untimed runs before them (default: 0)\n"
    "  --threads N         CPU threads per rank (default: runtime default)\n"
    "  --timeout SECONDS   a collective not done after this fails (default: "
    "300)\n"
    "  --quiet             print no tables\n"
    "  --help              print this help\n"
    "\n"
    "Exit status: 0 on success, 1 on an error or a --check mismatch, 2 on a\n"
    "usage error.\n";

struct Options {
  std::string outDir, weights, inputs, output, entry = "forward", device;
  std::string check, stats, trace;
  double rtol = 1e-4, atol = 1e-5, timeout = 300;
  int64_t repeat = 1, warmup = 0, threads = 0;
  bool quiet = false, help = false;
};

Status parseNumber(const std::string &flag, const std::string &text, double lo,
                   double &out) {
  char *end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || errno || !std::isfinite(v) || v < lo)
    return supportError(MOERT_ERR_INVALID,
                        "%s expects a number >= %g, got '%s'", flag.c_str(), lo,
                        text.c_str());
  out = v;
  return Status::ok();
}

Status parseCount(const std::string &flag, const std::string &text, int64_t lo,
                  int64_t &out) {
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end || errno || v < lo)
    return supportError(MOERT_ERR_INVALID,
                        "%s expects an integer >= %lld, got '%s'", flag.c_str(),
                        static_cast<long long>(lo), text.c_str());
  out = v;
  return Status::ok();
}

Status setOption(Options &o, const std::string &flag, const std::string &v) {
  std::map<std::string, std::string *> strings = {
      {"--weights", &o.weights}, {"--inputs", &o.inputs},
      {"--output", &o.output},   {"--entry", &o.entry},
      {"--device", &o.device},   {"--check", &o.check},
      {"--stats", &o.stats},     {"--trace", &o.trace}};
  auto it = strings.find(flag);
  if (it != strings.end()) {
    if (v.empty())
      return supportError(MOERT_ERR_INVALID, "%s expects a value",
                          flag.c_str());
    *it->second = v;
    return Status::ok();
  }
  if (flag == "--rtol")
    return parseNumber(flag, v, 0, o.rtol);
  if (flag == "--atol")
    return parseNumber(flag, v, 0, o.atol);
  if (flag == "--timeout")
    return parseNumber(flag, v, 1e-3, o.timeout);
  if (flag == "--repeat")
    return parseCount(flag, v, 1, o.repeat);
  if (flag == "--warmup")
    return parseCount(flag, v, 0, o.warmup);
  if (flag == "--threads")
    return parseCount(flag, v, 0, o.threads);
  return supportError(MOERT_ERR_INVALID, "unknown option '%s'", flag.c_str());
}

Status parseArgs(int argc, char **argv, Options &o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      o.help = true;
      return Status::ok();
    }
    if (a == "--quiet") {
      o.quiet = true;
    } else if (a.rfind("--", 0) == 0) {
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        MOERT_TRY(setOption(o, a.substr(0, eq), a.substr(eq + 1)));
      } else {
        if (i + 1 >= argc)
          return supportError(MOERT_ERR_INVALID, "%s expects a value",
                              a.c_str());
        MOERT_TRY(setOption(o, a, argv[++i]));
      }
    } else if (o.outDir.empty()) {
      o.outDir = a;
    } else {
      return supportError(MOERT_ERR_INVALID,
                          "unexpected argument '%s' (one OUT_DIR only)",
                          a.c_str());
    }
  }
  if (o.outDir.empty())
    return supportError(MOERT_ERR_INVALID, "missing OUT_DIR");
  if (o.output.empty())
    return supportError(MOERT_ERR_INVALID, "missing --output FILE");
  if (!o.device.empty() && o.device != "cpu" && o.device != "cuda")
    return supportError(MOERT_ERR_INVALID,
                        "--device must be cpu or cuda, got '%s'",
                        o.device.c_str());
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// World: rank, size, exits
//===----------------------------------------------------------------------===//

struct World {
  bool mpi = false; // MPI initialized by us
  int rank = 0, size = 1;
};

World gWorld;

/// Size of the job from the launcher's environment, 0 if unknown.
int launcherSize() {
  for (const char *var :
       {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE"})
    if (const char *v = std::getenv(var))
      return std::atoi(v);
  return 0;
}

/// One line on stderr, prefixed with the rank when there are several.
__attribute__((format(printf, 1, 2))) void report(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string msg = vformat(fmt, ap);
  va_end(ap);
  if (gWorld.size > 1)
    std::fprintf(stderr, "moe-run: rank %d: %s\n", gWorld.rank, msg.c_str());
  else
    std::fprintf(stderr, "moe-run: %s\n", msg.c_str());
  std::fflush(stderr);
}

/// Ends this rank after an error the other ranks may not share: with MPI,
/// MPI_Abort brings every rank down (the message is already printed).
[[noreturn]] void abortAll() {
  std::fflush(stdout);
  std::fflush(stderr);
#ifdef MOE_HAVE_MPI
  if (gWorld.mpi && gWorld.size > 1)
    MPI_Abort(MPI_COMM_WORLD, 1);
#endif
  std::_Exit(1);
}

[[noreturn]] void fatal(const Status &s) {
  report("error: %s", s.message().c_str());
  abortAll();
}

Status initWorld(int *argc, char ***argv, bool cuda) {
  if (!moert_world_launched() || launcherSize() == 1)
    return Status::ok();
  moert_status st =
      moert_world_init(argc, argv, cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI);
  if (st == MOERT_ERR_UNSUPPORTED)
    return supportError(st, "started by an MPI launcher, but this runtime was "
                            "built without MPI (install libopenmpi-dev and "
                            "rebuild)");
  if (st != MOERT_OK)
    return supportError(st, "MPI initialization failed (status %d)", st);
#ifdef MOE_HAVE_MPI
  gWorld.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &gWorld.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &gWorld.size);
#endif
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// Small helpers
//===----------------------------------------------------------------------===//

double now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string joinPath(const std::string &dir, const std::string &file) {
  if (!file.empty() && file[0] == '/')
    return file;
  return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

Status ctxError(moert_ctx *ctx, const char *what) {
  return supportError(moert_ctx_status(ctx), "%s: %s", what,
                      moert_ctx_error(ctx));
}

/// Writes `text` to `path` through a temporary file and a rename.
Status writeTextFile(const std::string &path, const std::string &text) {
  std::string tmp = format("%s.tmp.%d", path.c_str(), (int)::getpid());
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    return supportError(MOERT_ERR_IO, "%s: cannot write: %s", path.c_str(),
                        std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return supportError(MOERT_ERR_IO, "%s: cannot write: %s", path.c_str(),
                        std::strerror(err));
  }
  return Status::ok();
}

/// Fails early (before any run) when `path` cannot be created.
Status probeWritable(const std::string &path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    return supportError(MOERT_ERR_IO, "%s: is a directory, not a file name",
                        path.c_str());
  std::string probe = format("%s.probe.%d", path.c_str(), (int)::getpid());
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0)
    return supportError(MOERT_ERR_IO, "%s: cannot write the output file: %s",
                        path.c_str(), std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
  return Status::ok();
}

/// Same file (device and inode)?
bool sameFile(const std::string &a, const std::string &b) {
  struct stat sa, sb;
  return !a.empty() && !b.empty() && ::stat(a.c_str(), &sa) == 0 &&
         ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

//===----------------------------------------------------------------------===//
// Slices: transposes and placement
//===----------------------------------------------------------------------===//

/// [..., a, b] -> [..., b, a] for every trailing matrix.
void transposeTrailing(const char *src, char *dst,
                       const std::vector<int64_t> &srcShape, size_t es) {
  size_t r = srcShape.size();
  int64_t a = srcShape[r - 2], b = srcShape[r - 1];
  int64_t batch = numElements(srcShape) / std::max<int64_t>(a * b, 1);
  for (int64_t m = 0; m < batch; ++m) {
    const char *s = src + m * a * b * es;
    char *d = dst + m * a * b * es;
    for (int64_t i = 0; i < a; ++i)
      for (int64_t j = 0; j < b; ++j)
        std::memcpy(d + (j * a + i) * es, s + (i * b + j) * es, es);
  }
}

std::vector<int64_t> swapLast(std::vector<int64_t> v) {
  if (v.size() >= 2)
    std::swap(v[v.size() - 1], v[v.size() - 2]);
  return v;
}

/// Copies the dense block `local` (shape hi - lo) into `global` at `slice`.
void placeSlice(char *global, const std::vector<int64_t> &shape,
                const Slice &slice, const char *local, size_t es) {
  size_t r = shape.size();
  if (r == 0) {
    std::memcpy(global, local, es);
    return;
  }
  std::vector<int64_t> stride(r, 1);
  for (size_t d = r - 1; d-- > 0;)
    stride[d] = stride[d + 1] * shape[d + 1];
  int64_t row = (slice.hi[r - 1] - slice.lo[r - 1]) * es;
  if (row == 0)
    return;
  std::vector<int64_t> idx(slice.lo.begin(), slice.lo.end());
  for (size_t d = 0; d < r; ++d)
    if (slice.lo[d] == slice.hi[d])
      return;
  while (true) {
    int64_t off = 0;
    for (size_t d = 0; d < r; ++d)
      off += idx[d] * stride[d];
    std::memcpy(global + off * es, local, row);
    local += row;
    int d = static_cast<int>(r) - 2;
    while (d >= 0 && ++idx[d] == slice.hi[d]) {
      idx[d] = slice.lo[d];
      --d;
    }
    if (d < 0)
      return;
  }
}

//===----------------------------------------------------------------------===//
// Loading one argument
//===----------------------------------------------------------------------===//

/// Reads the slice [lo, hi) of `spec` (argument coordinates) from file
/// tensor `name` viewed as `view` (argument coordinates), honouring the
/// transpose flag, into `out`.
Status readArgSlice(const SafetensorsFile &file, const std::string &name,
                    const TensorSpec &spec, std::vector<int64_t> view,
                    std::vector<int64_t> lo, std::vector<int64_t> hi,
                    char *out) {
  size_t es = dtypeSize(spec.dtype);
  if (!spec.transpose)
    return file.readSlice(name, view, lo, hi, spec.dtype, out);
  view = swapLast(view);
  lo = swapLast(lo);
  hi = swapLast(hi);
  std::vector<int64_t> shape(lo.size());
  for (size_t d = 0; d < lo.size(); ++d)
    shape[d] = hi[d] - lo[d];
  std::vector<char> tmp(static_cast<size_t>(numElements(shape)) * es);
  MOERT_TRY(file.readSlice(name, view, lo, hi, spec.dtype, tmp.data()));
  transposeTrailing(tmp.data(), out, shape, es);
  return Status::ok();
}

Status checkDtypeClass(const SafetensorsFile &file, const TensorInfo &t,
                       const TensorSpec &spec) {
  bool argFloat = isFloatDtype(spec.dtype);
  if ((argFloat && isFloatDtype(t.dtype)) || (!argFloat && isIntDtype(t.dtype)))
    return Status::ok();
  return supportError(MOERT_ERR_INVALID,
                      "%s: tensor '%s' has dtype %s but argument %lld ('%s') "
                      "is %s",
                      file.path().c_str(), t.name.c_str(), t.dtypeName.c_str(),
                      static_cast<long long>(spec.index), spec.name.c_str(),
                      safetensorsDtypeName(spec.dtype));
}

Status loadPlain(const SafetensorsFile &file, const TensorSpec &spec,
                 const Slice &slice, char *out) {
  const TensorInfo *t;
  MOERT_TRY(file.lookup(spec.name, t));
  MOERT_TRY(checkDtypeClass(file, *t, spec));
  return readArgSlice(file, spec.name, spec, spec.shape, slice.lo, slice.hi,
                      out);
}

/// A stack over experts: one file tensor per global expert index.
Status loadExpertStack(const SafetensorsFile &file, const TensorSpec &spec,
                       const Slice &slice, char *out) {
  std::vector<int64_t> sub(spec.shape.begin() + 1, spec.shape.end());
  std::vector<int64_t> lo(slice.lo.begin() + 1, slice.lo.end());
  std::vector<int64_t> hi(slice.hi.begin() + 1, slice.hi.end());
  int64_t perExpert = dtypeSize(spec.dtype);
  for (size_t d = 0; d < lo.size(); ++d)
    perExpert *= hi[d] - lo[d];
  std::vector<int64_t> fileShape = spec.transpose ? swapLast(sub) : sub;
  for (int64_t e = slice.lo[0]; e < slice.hi[0]; ++e) {
    std::string name = expandExpertName(spec.name, e);
    const TensorInfo *t;
    MOERT_TRY(file.lookup(name, t));
    MOERT_TRY(checkDtypeClass(file, *t, spec));
    if (t->shape != fileShape)
      return supportError(MOERT_ERR_INVALID,
                          "%s: tensor '%s' has shape %s but argument '%s' "
                          "needs %s per expert%s",
                          file.path().c_str(), name.c_str(),
                          shapeString(t->shape).c_str(), spec.name.c_str(),
                          shapeString(fileShape).c_str(),
                          spec.transpose ? " (transposed)" : "");
    MOERT_TRY(readArgSlice(file, name, spec, sub, lo, hi,
                           out + (e - slice.lo[0]) * perExpert));
  }
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// The driver
//===----------------------------------------------------------------------===//

using EntryFn = void (*)(moert_ctx *, void **, void **);

class Driver {
public:
  /// `manifest` as main() read it; a failure to read it (`loaded`) is
  /// reported by setUp, with the other problems every rank shares.
  Driver(const Options &o, Manifest manifest, Status loaded)
      : opt_(o), manifest_(std::move(manifest)), loaded_(std::move(loaded)) {}
  ~Driver();
  int run();

private:
  void setUp();
  void createContext();
  bool checkSameModule();
  bool loadAll();
  Status loadArgs();
  Status loadArg(const TensorSpec &spec, void *&buffer);
  Status openFiles();
  bool agree(bool ok, const char *stage);
  void runEntry();
  void poisonResults();
  Status gatherResults(std::vector<std::vector<char>> &globals);
  Status gatherStrings(const std::string &mine, std::vector<std::string> &all);
  int finish();
  Status writeStats(const std::vector<std::string> &stats);
  void printTables(const std::vector<std::string> &stats);
  bool checkOutputs(const std::vector<std::vector<char>> &globals);

  Options opt_;
  Manifest manifest_;
  Status loaded_;
  const Entry *entry_ = nullptr;
  std::string libraryHash_;
  void *library_ = nullptr;
  EntryFn fn_ = nullptr;
  moert_ctx *ctx_ = nullptr;
  std::vector<int64_t> coords_;
  std::unique_ptr<SafetensorsFile> weights_, inputs_;
  std::vector<void *> args_, results_;
  double loadSeconds_ = 0, runSeconds_ = 0;
  /// Part of loadSeconds_ spent copying to the device (0-ish on CPU).
  double h2dSeconds_ = 0;
};

Driver::~Driver() {
  if (ctx_) {
    for (void *p : args_)
      moert_free(ctx_, p);
    for (void *p : results_)
      moert_free(ctx_, p);
    moert_ctx_destroy(ctx_);
  }
  // The library stays loaded: its code may be referenced until exit.
}

/// Manifest, entry, mesh size and library: the same on every rank.
void Driver::setUp() {
  std::string manifestPath = joinPath(opt_.outDir, "manifest.json");
  if (!loaded_.isOk())
    fatal(loaded_);
  entry_ = manifest_.findEntry(opt_.entry);
  if (!entry_) {
    std::string names;
    for (const Entry &e : manifest_.entries)
      names += (names.empty() ? "" : ", ") + e.name;
    fatal(supportError(MOERT_ERR_INVALID,
                       "%s: no entry point '%s' (it has: "
                       "%s)",
                       manifestPath.c_str(), opt_.entry.c_str(),
                       names.c_str()));
  }
  if (manifest_.mesh.size() != gWorld.size)
    fatal(supportError(
        MOERT_ERR_INVALID,
        "%s: the module's mesh %s has %lld ranks but %d "
        "ranks were started (run it under mpirun -np %lld)",
        manifestPath.c_str(), shapeString(manifest_.mesh.shape).c_str(),
        static_cast<long long>(manifest_.mesh.size()), gWorld.size,
        static_cast<long long>(manifest_.mesh.size())));
  std::string lib = joinPath(opt_.outDir, manifest_.library);
  Status s = hashFile(lib, libraryHash_);
  if (!s.isOk())
    fatal(
        supportError(MOERT_ERR_IO, "module library: %s", s.message().c_str()));
  library_ = ::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library_)
    fatal(supportError(MOERT_ERR_IO, "%s: cannot load the module library: %s",
                       lib.c_str(), ::dlerror()));
  if (Status abi = checkModuleAbi(library_, lib); !abi.isOk())
    fatal(abi);
  fn_ = reinterpret_cast<EntryFn>(::dlsym(library_, entry_->symbol.c_str()));
  if (!fn_)
    fatal(supportError(MOERT_ERR_INVALID, "%s: no symbol '%s' for entry '%s'",
                       lib.c_str(), entry_->symbol.c_str(),
                       entry_->name.c_str()));
}

void Driver::createContext() {
  bool cuda = opt_.device == "cuda";
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = cuda ? MOERT_DEVICE_CUDA : MOERT_DEVICE_CPU;
  o.comm = gWorld.size > 1 ? (cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI)
                           : MOERT_COMM_SINGLE;
  o.num_threads = static_cast<int32_t>(opt_.threads);
  std::vector<const char *> axes;
  for (const std::string &a : manifest_.mesh.axes)
    axes.push_back(a.c_str());
  o.mesh_rank = static_cast<int32_t>(axes.size());
  o.mesh_shape = manifest_.mesh.shape.data();
  o.mesh_axes = axes.data();
  o.timeout_s = opt_.timeout;
  o.record_trace = opt_.trace.empty() ? 0 : 1;
  if (moert_ctx_create(&o, &ctx_) != MOERT_OK)
    fatal(supportError(MOERT_ERR_INVALID,
                       "cannot create the runtime context: "
                       "%s",
                       moert_last_error()));
  for (size_t i = 0; i < axes.size(); ++i)
    coords_.push_back(moert_ctx_coord(ctx_, static_cast<int32_t>(i)));
}

/// Every rank must run the same module: compare manifest and library hashes.
/// Every rank sees every hash, so all of them report a mismatch.
bool Driver::checkSameModule() {
  std::string mine = manifest_.moduleHash + libraryHash_;
  std::vector<char> all(mine.size() * gWorld.size);
  if (moert_world_allgather(ctx_, mine.data(), all.data(),
                            static_cast<int64_t>(mine.size())) != MOERT_OK)
    fatal(ctxError(ctx_, "comparing module hashes"));
  for (int r = 0; r < gWorld.size; ++r) {
    std::string theirs(all.data() + r * mine.size(), mine.size());
    if (theirs != mine) {
      report("error: rank %d runs module %s (library %s) but this rank runs "
             "%s (library %s): every rank must run the same module",
             r, theirs.substr(0, 16).c_str(), theirs.substr(16).c_str(),
             manifest_.moduleHash.c_str(), libraryHash_.c_str());
      return false;
    }
  }
  if (gWorld.rank == 0 && !opt_.quiet && libraryHash_ != manifest_.moduleHash)
    report("warning: %s hashes to %s but the manifest says %s",
           manifest_.library.c_str(), libraryHash_.c_str(),
           manifest_.moduleHash.c_str());
  return true;
}

Status Driver::openFiles() {
  bool needWeights = false, needInputs = false;
  for (const TensorSpec &a : entry_->args)
    (a.role == "weight" ? needWeights : needInputs) = true;
  if (needWeights && opt_.weights.empty())
    return supportError(MOERT_ERR_INVALID,
                        "entry '%s' takes weights: pass "
                        "--weights FILE",
                        entry_->name.c_str());
  if (needInputs && opt_.inputs.empty())
    return supportError(MOERT_ERR_INVALID,
                        "entry '%s' takes inputs: pass "
                        "--inputs FILE",
                        entry_->name.c_str());
  for (const std::string *in : {&opt_.weights, &opt_.inputs, &opt_.check})
    if (sameFile(*in, opt_.output))
      return supportError(MOERT_ERR_INVALID,
                          "--output %s is the same file as %s",
                          opt_.output.c_str(), in->c_str());
  if (!opt_.weights.empty())
    MOERT_TRY(SafetensorsFile::open(opt_.weights, weights_));
  if (!opt_.inputs.empty())
    MOERT_TRY(SafetensorsFile::open(opt_.inputs, inputs_));
  if (gWorld.rank != 0)
    return Status::ok();
  if (!opt_.check.empty()) {
    std::unique_ptr<SafetensorsFile> ref;
    MOERT_TRY(SafetensorsFile::open(opt_.check, ref));
  }
  return probeWritable(opt_.output);
}

Status Driver::loadArg(const TensorSpec &spec, void *&buffer) {
  Slice slice;
  MOERT_TRY(computeSlice(manifest_.mesh, spec, coords_, slice));
  int64_t bytes = spec.localBytes();
  std::vector<char> host(static_cast<size_t>(bytes));
  const SafetensorsFile &file = spec.role == "weight" ? *weights_ : *inputs_;
  if (spec.isExpertStack())
    MOERT_TRY(loadExpertStack(file, spec, slice, host.data()));
  else
    MOERT_TRY(loadPlain(file, spec, slice, host.data()));
  if (moert_alloc(ctx_, std::max<int64_t>(bytes, 1), &buffer) != MOERT_OK)
    return ctxError(ctx_, "loading arguments");
  // Each weight goes to the device once; the copy is timed apart from the
  // file reads so that H2D cost is visible on GPUs.
  double start = now();
  if (moert_copy_to_device(ctx_, buffer, host.data(), bytes) != MOERT_OK ||
      moert_synchronize(ctx_) != MOERT_OK)
    return ctxError(ctx_, "copying arguments to the device");
  h2dSeconds_ += now() - start;
  return Status::ok();
}

Status Driver::loadArgs() {
  MOERT_TRY(openFiles());
  args_.assign(entry_->args.size(), nullptr);
  for (const TensorSpec &spec : entry_->args)
    MOERT_TRY(loadArg(spec, args_[spec.index]));
  results_.assign(entry_->results.size(), nullptr);
  for (const TensorSpec &spec : entry_->results) {
    int64_t bytes = std::max<int64_t>(spec.localBytes(), 1);
    if (moert_alloc(ctx_, bytes, &results_[spec.index]) != MOERT_OK)
      return ctxError(ctx_, "allocating results");
  }
  return Status::ok();
}

/// All ranks learn whether every rank is ok; false when any is not.
bool Driver::agree(bool ok, const char *stage) {
  char mine = ok ? 1 : 0;
  std::vector<char> all(gWorld.size);
  if (moert_world_allgather(ctx_, &mine, all.data(), 1) != MOERT_OK)
    fatal(ctxError(ctx_, stage));
  std::string failed;
  for (int r = 0; r < gWorld.size; ++r)
    if (!all[r])
      failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  if (failed.empty())
    return true;
  if (ok && gWorld.rank == 0)
    report("error: stopping: rank(s) %s failed while %s", failed.c_str(),
           stage);
  return false;
}

bool Driver::loadAll() {
  double start = now();
  Status s = loadArgs();
  if (!s.isOk())
    report("error: %s", s.message().c_str());
  loadSeconds_ = now() - start;
  weights_.reset();
  inputs_.reset();
  return agree(s.isOk(), "loading weights and inputs");
}

/// Warmup and timed runs; a failure here is this rank's alone as far as it
/// knows, and others may wait in a collective: report and abort.
void Driver::runEntry() {
  for (int64_t i = 0; i < opt_.warmup + opt_.repeat; ++i) {
    if (i == opt_.warmup) {
      moert_ctx_reset_stats(ctx_);
      runSeconds_ = 0;
    }
    poisonResults();
    double start = now();
    fn_(ctx_, args_.data(), results_.data());
    moert_synchronize(ctx_);
    runSeconds_ += now() - start;
    if (moert_ctx_status(ctx_) != MOERT_OK)
      fatal(ctxError(
          ctx_, format("running entry '%s'", entry_->name.c_str()).c_str()));
  }
}

/// Fills every result buffer with NaN bytes before a run, so that an output
/// the module fails to write can never pass --check with stale data.
void Driver::poisonResults() {
  for (const TensorSpec &spec : entry_->results) {
    std::vector<unsigned char> nan(static_cast<size_t>(spec.localBytes()),
                                   0xFF);
    if (moert_copy_to_device(ctx_, results_[spec.index], nan.data(),
                             spec.localBytes()) != MOERT_OK)
      fatal(ctxError(ctx_, "poisoning the result buffers"));
  }
}

Status Driver::gatherResults(std::vector<std::vector<char>> &globals) {
  for (const TensorSpec &spec : entry_->results) {
    int64_t bytes = spec.localBytes();
    std::vector<char> local(static_cast<size_t>(bytes));
    if (moert_copy_to_host(ctx_, local.data(), results_[spec.index], bytes) !=
        MOERT_OK)
      return ctxError(ctx_, "reading results");
    std::vector<char> all(gWorld.rank == 0 ? bytes * gWorld.size : 0);
    if (moert_world_gather(ctx_, local.data(), all.data(), bytes) != MOERT_OK)
      return ctxError(ctx_, "gathering results");
    std::vector<char> global;
    if (gWorld.rank == 0) {
      size_t es = dtypeSize(spec.dtype);
      global.resize(static_cast<size_t>(numElements(spec.shape)) * es);
      for (int r = 0; r < gWorld.size; ++r) {
        Slice slice;
        MOERT_TRY(computeSlice(manifest_.mesh, spec, manifest_.mesh.coords(r),
                               slice));
        placeSlice(global.data(), spec.shape, slice, all.data() + r * bytes,
                   es);
      }
    }
    globals.push_back(std::move(global));
  }
  return Status::ok();
}

/// Gathers one string per rank to rank 0 (lengths first, then padded).
Status Driver::gatherStrings(const std::string &mine,
                             std::vector<std::string> &all) {
  int64_t len = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lens(gWorld.size);
  if (moert_world_allgather(ctx_, &len, lens.data(), 8) != MOERT_OK)
    return ctxError(ctx_, "gathering statistics");
  int64_t maxLen = *std::max_element(lens.begin(), lens.end());
  std::string padded = mine;
  padded.resize(static_cast<size_t>(maxLen));
  std::vector<char> buf(gWorld.rank == 0 ? maxLen * gWorld.size : 0);
  if (moert_world_gather(ctx_, padded.data(), buf.data(), maxLen) != MOERT_OK)
    return ctxError(ctx_, "gathering statistics");
  for (int r = 0; gWorld.rank == 0 && r < gWorld.size; ++r)
    all.emplace_back(buf.data() + r * maxLen, static_cast<size_t>(lens[r]));
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// Reports (rank 0)
//===----------------------------------------------------------------------===//

std::string humanBytes(double b) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? format("%.0f B", b) : format("%.2f %s", b, units[u]);
}

/// This rank's statistics object with load and run times added.
std::string rankStats(moert_ctx *ctx, double load, double h2d, double run) {
  json::Value v;
  Status s = json::parse(moert_ctx_stats_json(ctx), "runtime statistics", v);
  if (!s.isOk() || !v.isObject()) {
    v = json::Value::object();
    v.set("rank", static_cast<int64_t>(moert_ctx_rank(ctx)));
  }
  v.set("load_seconds", load);
  v.set("h2d_seconds", h2d);
  v.set("run_seconds", run);
  return json::write(v);
}

Status Driver::writeStats(const std::vector<std::string> &stats) {
  std::string text = "[\n";
  for (size_t r = 0; r < stats.size(); ++r)
    text += "  " + stats[r] + (r + 1 < stats.size() ? ",\n" : "\n");
  return writeTextFile(opt_.stats, text + "]\n");
}

void printPhases(const json::Value &rank0, int64_t runs, double runSeconds) {
  struct Row {
    std::string name;
    int64_t calls;
    double seconds;
  };
  std::vector<Row> rows;
  if (const json::Value *phases = rank0.get("phases"))
    for (const json::Value &p : phases->elements())
      if (p.get("name") && p.get("calls") && p.get("seconds"))
        rows.push_back({p.get("name")->getString(), p.get("calls")->getInt(),
                        p.get("seconds")->getNumber()});
  std::sort(rows.begin(), rows.end(),
            [](const Row &a, const Row &b) { return a.seconds > b.seconds; });
  std::printf("\nphases (rank 0, %lld run%s, %.3f ms per run)\n",
              static_cast<long long>(runs), runs == 1 ? "" : "s",
              runSeconds * 1e3 / runs);
  std::printf("  %-28s %8s %12s %12s %7s\n", "phase", "calls", "total ms",
              "ms/run", "share");
  for (const Row &r : rows)
    std::printf("  %-28s %8lld %12.3f %12.3f %6.1f%%\n", r.name.c_str(),
                static_cast<long long>(r.calls), r.seconds * 1e3,
                r.seconds * 1e3 / runs,
                runSeconds > 0 ? 100.0 * r.seconds / runSeconds : 0.0);
}

void printCollectives(const std::vector<json::Value> &ranks) {
  using Key = std::pair<std::string, std::string>;
  std::map<Key, std::pair<int64_t, int64_t>> total;
  std::string perRank;
  for (const json::Value &r : ranks) {
    const json::Value *list = r.get("collectives");
    const json::Value *rank = r.get("rank");
    for (size_t i = 0; list && i < list->elements().size(); ++i) {
      const json::Value &c = list->elements()[i];
      if (!c.get("op") || !c.get("axis") || !c.get("calls") ||
          !c.get("bytes_sent"))
        continue;
      Key k{c.get("op")->getString(), c.get("axis")->getString()};
      total[k].first += c.get("calls")->getInt();
      total[k].second += c.get("bytes_sent")->getInt();
      perRank += format(
          "  %-6lld %-16s %-10s %8lld %14lld  %s\n",
          rank ? static_cast<long long>(rank->getInt()) : -1LL, k.first.c_str(),
          k.second.c_str(), static_cast<long long>(c.get("calls")->getInt()),
          static_cast<long long>(c.get("bytes_sent")->getInt()),
          humanBytes(double(c.get("bytes_sent")->getInt())).c_str());
    }
  }
  std::printf("\ncollectives (all ranks)\n  %-16s %-10s %8s %14s\n", "op",
              "axis", "calls", "bytes sent");
  for (const auto &kv : total)
    std::printf("  %-16s %-10s %8lld %14lld  %s\n", kv.first.first.c_str(),
                kv.first.second.c_str(),
                static_cast<long long>(kv.second.first),
                static_cast<long long>(kv.second.second),
                humanBytes(double(kv.second.second)).c_str());
  std::printf("\ncollectives per rank\n  %-6s %-16s %-10s %8s %14s\n%s", "rank",
              "op", "axis", "calls", "bytes sent", perRank.c_str());
}

void Driver::printTables(const std::vector<std::string> &stats) {
  std::vector<json::Value> ranks(stats.size());
  for (size_t r = 0; r < stats.size(); ++r)
    if (!json::parse(stats[r], "statistics", ranks[r]).isOk())
      ranks[r] = json::Value::object();
  std::printf("\nload (rank 0): %.3f s, of which host-to-device %.3f s\n",
              loadSeconds_, h2dSeconds_);
  printPhases(ranks[0], opt_.repeat, runSeconds_);
  if (gWorld.size > 1)
    printCollectives(ranks);
  std::fflush(stdout);
}

/// Elements of a tensor as doubles (for --check).
std::vector<double> toDoubles(const char *data, int32_t dtype, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == MOERT_I32)
      out[i] = reinterpret_cast<const int32_t *>(data)[i];
    else if (dtype == MOERT_I64)
      out[i] = static_cast<double>(reinterpret_cast<const int64_t *>(data)[i]);
    else if (dtype == MOERT_F32)
      out[i] = reinterpret_cast<const float *>(data)[i];
    else if (dtype == MOERT_F16)
      out[i] = halfToFloat(reinterpret_cast<const uint16_t *>(data)[i]);
    else
      out[i] = bf16ToFloat(reinterpret_cast<const uint16_t *>(data)[i]);
  }
  return out;
}

/// Compares one output with its reference; prints one line.
bool checkTensor(const SafetensorsFile &ref, const TensorSpec &spec,
                 const std::vector<char> &global, double rtol, double atol) {
  const TensorInfo *t;
  Status s = ref.lookup(spec.name, t);
  if (s.isOk() && t->shape != spec.shape)
    s = supportError(MOERT_ERR_INVALID,
                     "%s: tensor '%s' has shape %s but the "
                     "output is %s",
                     ref.path().c_str(), spec.name.c_str(),
                     shapeString(t->shape).c_str(),
                     shapeString(spec.shape).c_str());
  int64_t n = numElements(spec.shape);
  int32_t refType = isIntDtype(spec.dtype) ? MOERT_I64 : MOERT_F32;
  std::vector<char> expect(static_cast<size_t>(n) * dtypeSize(refType));
  if (s.isOk())
    s = ref.readAll(spec.name, refType, expect.data());
  if (!s.isOk()) {
    report("check: error: %s", s.message().c_str());
    return false;
  }
  std::vector<double> a = toDoubles(global.data(), spec.dtype, n);
  std::vector<double> b = toDoubles(expect.data(), refType, n);
  double maxAbs = 0, maxRel = 0;
  int64_t bad = 0, worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    double err = std::fabs(a[i] - b[i]);
    bool nanOk = std::isnan(a[i]) && std::isnan(b[i]);
    if (nanOk)
      continue;
    if (!(err <= atol + rtol * std::fabs(b[i]))) {
      if (bad++ == 0 || err > std::fabs(a[worst] - b[worst]))
        worst = i;
    }
    maxAbs = std::max(maxAbs, std::isnan(err) ? INFINITY : err);
    // Relative error only where rtol, not atol, sets the tolerance: near-zero
    // reference values make |err/ref| meaningless.
    if (std::fabs(b[i]) >= atol / rtol)
      maxRel =
          std::max(maxRel, std::isnan(err) ? INFINITY : err / std::fabs(b[i]));
  }
  std::printf("check %-40s max abs err %.3e  max rel err %.3e (|ref| >= "
              "%g)  %s\n",
              spec.name.c_str(), maxAbs, maxRel, atol / rtol,
              bad ? "MISMATCH" : "ok");
  if (bad)
    std::printf("  %lld of %lld elements outside atol %g + rtol %g * |ref|; "
                "worst at flat index %lld: got %.9g, expected %.9g\n",
                static_cast<long long>(bad), static_cast<long long>(n), atol,
                rtol, static_cast<long long>(worst), a[worst], b[worst]);
  return bad == 0;
}

bool Driver::checkOutputs(const std::vector<std::vector<char>> &globals) {
  std::unique_ptr<SafetensorsFile> ref;
  Status s = SafetensorsFile::open(opt_.check, ref);
  if (!s.isOk()) {
    report("check: error: %s", s.message().c_str());
    return false;
  }
  bool ok = true;
  for (const TensorSpec &spec : entry_->results)
    ok = checkTensor(*ref, spec, globals[spec.index], opt_.rtol, opt_.atol) &&
         ok;
  std::fflush(stdout);
  return ok;
}

/// Gathers, writes and reports; returns the exit status of this rank.
int Driver::finish() {
  std::vector<std::vector<char>> globals;
  Status s = gatherResults(globals);
  std::vector<std::string> stats, traces;
  if (s.isOk())
    s = gatherStrings(rankStats(ctx_, loadSeconds_, h2dSeconds_, runSeconds_),
                      stats);
  if (s.isOk() && !opt_.trace.empty())
    s = gatherStrings(moert_ctx_trace_json(ctx_), traces);
  if (!s.isOk())
    fatal(s);
  if (gWorld.rank != 0)
    return 0;
  std::vector<TensorData> tensors;
  for (const TensorSpec &spec : entry_->results)
    tensors.push_back(
        {spec.name, spec.dtype, spec.shape, globals[spec.index].data()});
  s = writeSafetensors(opt_.output, tensors);
  if (s.isOk() && !opt_.stats.empty())
    s = writeStats(stats);
  if (s.isOk() && !opt_.trace.empty()) {
    std::string body;
    for (const std::string &t : traces)
      if (!t.empty())
        body += (body.empty() ? "" : ",\n") + t;
    s = writeTextFile(opt_.trace, "[\n" + body + "\n]\n");
  }
  if (!s.isOk()) {
    report("error: %s", s.message().c_str());
    return 1;
  }
  if (!opt_.quiet)
    printTables(stats);
  return opt_.check.empty() || checkOutputs(globals) ? 0 : 1;
}

int Driver::run() {
  setUp();
  createContext();
  if (!checkSameModule() || !loadAll())
    return 1;
  runEntry();
  return finish();
}

} // namespace

int main(int argc, char **argv) {
  Options opt;
  Status s = parseArgs(argc, argv, opt);
  if (opt.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!s.isOk()) {
    std::fprintf(stderr,
                 "moe-run: error: %s\n(run moe-run --help for "
                 "usage)\n",
                 s.message().c_str());
    return 2;
  }
  Manifest manifest; // the default device is the manifest's target
  Status loaded = loadManifest(joinPath(opt.outDir, "manifest.json"), manifest);
  if (opt.device.empty())
    opt.device = loaded.isOk() && manifest.target == "cuda" ? "cuda" : "cpu";
  s = initWorld(&argc, &argv, opt.device == "cuda");
  if (!s.isOk())
    fatal(s);
  int rc;
  {
    Driver d(opt, std::move(manifest), std::move(loaded));
    rc = d.run();
  }
  moert_world_finalize();
  return rc;
}
