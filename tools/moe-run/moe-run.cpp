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
// The driver: the other parts are Options (command line), World (ranks and
// the failure discipline under mpirun), ShardedLoader (slices per rank) and
// Report (statistics, trace, --check). moe-run uses only the C ABI
// (moert/moert.h) and the support library (runtime/support over the
// header-only runtime/base); docs/runtime.md.
//
//===----------------------------------------------------------------------===//
#include "Options.h"
#include "Report.h"
#include "ShardedLoader.h"
#include "World.h"

#include "moert/moert.h"
#include "support/Format.h"
#include "support/Manifest.h"
#include "support/ModuleAbi.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace moert;
using namespace moe_run;

namespace {

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
// The module library
//===----------------------------------------------------------------------===//

using EntryFn = void (*)(moert_ctx *, void **, void **);

/// Loads the module library at `path` (RTLD_NOW | RTLD_LOCAL; it stays
/// loaded until exit, its code may be referenced until then) and looks up
/// the entry point `symbol` of entry `entryName`.
Status loadModuleLibrary(const std::string &path, const std::string &symbol,
                         const std::string &entryName, EntryFn &fn) {
  void *library = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library)
    return supportError(MOERT_ERR_IO, "%s: cannot load the module library: %s",
                        path.c_str(), ::dlerror());
  if (Status abi = checkModuleAbi(library, path); !abi.isOk())
    return abi;
  fn = reinterpret_cast<EntryFn>(::dlsym(library, symbol.c_str()));
  if (!fn)
    return supportError(MOERT_ERR_INVALID, "%s: no symbol '%s' for entry '%s'",
                        path.c_str(), symbol.c_str(), entryName.c_str());
  return Status::ok();
}

//===----------------------------------------------------------------------===//
// The driver
//===----------------------------------------------------------------------===//

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

  Options opt_;
  Manifest manifest_;
  Status loaded_;
  const Entry *entry_ = nullptr;
  std::string libraryHash_;
  EntryFn fn_ = nullptr;
  moert_ctx *ctx_ = nullptr;
  std::vector<int64_t> coords_;
  std::unique_ptr<ShardedLoader> loader_;
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
  // The library stays loaded (loadModuleLibrary).
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
  if (manifest_.mesh.size() != world().size)
    fatal(supportError(
        MOERT_ERR_INVALID,
        "%s: the module's mesh %s has %lld ranks but %d "
        "ranks were started (run it under mpirun -np %lld)",
        manifestPath.c_str(), shapeString(manifest_.mesh.shape).c_str(),
        static_cast<long long>(manifest_.mesh.size()), world().size,
        static_cast<long long>(manifest_.mesh.size())));
  std::string lib = joinPath(opt_.outDir, manifest_.library);
  Status s = hashFile(lib, libraryHash_);
  if (!s.isOk())
    fatal(
        supportError(MOERT_ERR_IO, "module library: %s", s.message().c_str()));
  s = loadModuleLibrary(lib, entry_->symbol, entry_->name, fn_);
  if (!s.isOk())
    fatal(s);
}

void Driver::createContext() {
  bool cuda = opt_.device == "cuda";
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = cuda ? MOERT_DEVICE_CUDA : MOERT_DEVICE_CPU;
  o.comm = world().size > 1 ? (cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI)
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
  std::vector<char> all(mine.size() * world().size);
  if (moert_world_allgather(ctx_, mine.data(), all.data(),
                            static_cast<int64_t>(mine.size())) != MOERT_OK)
    fatal(ctxError(ctx_, "comparing module hashes"));
  for (int r = 0; r < world().size; ++r) {
    std::string theirs(all.data() + r * mine.size(), mine.size());
    if (theirs != mine) {
      report("error: rank %d runs module %s (library %s) but this rank runs "
             "%s (library %s): every rank must run the same module",
             r, theirs.substr(0, 16).c_str(), theirs.substr(16).c_str(),
             manifest_.moduleHash.c_str(), libraryHash_.c_str());
      return false;
    }
  }
  if (world().rank == 0 && !opt_.quiet && libraryHash_ != manifest_.moduleHash)
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
  loader_ = std::make_unique<ShardedLoader>(manifest_.mesh, coords_);
  MOERT_TRY(loader_->open(opt_.weights, opt_.inputs));
  if (world().rank != 0)
    return Status::ok();
  if (!opt_.check.empty()) {
    std::unique_ptr<SafetensorsFile> ref;
    MOERT_TRY(SafetensorsFile::open(opt_.check, ref));
  }
  return probeWritable(opt_.output);
}

Status Driver::loadArg(const TensorSpec &spec, void *&buffer) {
  int64_t bytes = spec.localBytes();
  std::vector<char> host(static_cast<size_t>(bytes));
  MOERT_TRY(loader_->read(spec, host.data()));
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
  std::vector<char> all(world().size);
  if (moert_world_allgather(ctx_, &mine, all.data(), 1) != MOERT_OK)
    fatal(ctxError(ctx_, stage));
  std::string failed;
  for (int r = 0; r < world().size; ++r)
    if (!all[r])
      failed += (failed.empty() ? "" : ", ") + std::to_string(r);
  if (failed.empty())
    return true;
  if (ok && world().rank == 0)
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
  if (loader_)
    loader_->close();
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
    std::vector<char> all(world().rank == 0 ? bytes * world().size : 0);
    if (moert_world_gather(ctx_, local.data(), all.data(), bytes) != MOERT_OK)
      return ctxError(ctx_, "gathering results");
    std::vector<char> global;
    if (world().rank == 0)
      MOERT_TRY(
          assembleGlobal(manifest_.mesh, spec, all.data(), bytes, global));
    globals.push_back(std::move(global));
  }
  return Status::ok();
}

/// Gathers one string per rank to rank 0 (lengths first, then padded).
Status Driver::gatherStrings(const std::string &mine,
                             std::vector<std::string> &all) {
  int64_t len = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lens(world().size);
  if (moert_world_allgather(ctx_, &len, lens.data(), 8) != MOERT_OK)
    return ctxError(ctx_, "gathering statistics");
  int64_t maxLen = *std::max_element(lens.begin(), lens.end());
  std::string padded = mine;
  padded.resize(static_cast<size_t>(maxLen));
  std::vector<char> buf(world().rank == 0 ? maxLen * world().size : 0);
  if (moert_world_gather(ctx_, padded.data(), buf.data(), maxLen) != MOERT_OK)
    return ctxError(ctx_, "gathering statistics");
  for (int r = 0; world().rank == 0 && r < world().size; ++r)
    all.emplace_back(buf.data() + r * maxLen, static_cast<size_t>(lens[r]));
  return Status::ok();
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
  if (world().rank != 0)
    return 0;
  std::vector<TensorData> tensors;
  for (const TensorSpec &spec : entry_->results)
    tensors.push_back(
        {spec.name, spec.dtype, spec.shape, globals[spec.index].data()});
  s = writeSafetensors(opt_.output, tensors);
  if (s.isOk() && !opt_.stats.empty())
    s = writeStats(opt_.stats, stats);
  if (s.isOk() && !opt_.trace.empty())
    s = writeTrace(opt_.trace, traces);
  if (!s.isOk()) {
    report("error: %s", s.message().c_str());
    return 1;
  }
  if (!opt_.quiet)
    printTables(stats, {loadSeconds_, h2dSeconds_, runSeconds_, opt_.repeat});
  return opt_.check.empty() || checkOutputs(opt_.check, *entry_, globals,
                                            opt_.rtol, opt_.atol)
             ? 0
             : 1;
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
    std::fputs(usageText(), stdout);
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
