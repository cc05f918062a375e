//===- Session.cpp - Module, context and ranks of one moe-run -------------===//
#include "Session.h"

#include "ShardedLoader.h"
#include "World.h"

#include "base/Dtype.h"
#include "support/Format.h"
#include "support/ModuleAbi.h"
#include "support/Safetensors.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <new>
#include <sys/stat.h>
#include <unistd.h>

using namespace moert;

namespace moe_run {

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

bool sameFile(const std::string &a, const std::string &b) {
  struct stat sa, sb;
  return !a.empty() && !b.empty() && ::stat(a.c_str(), &sa) == 0 &&
         ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

Status hostBuffer(const TensorSpec &spec, std::vector<char> &buf) {
  int64_t bytes = spec.localBytes();
  try {
    buf.assign(static_cast<size_t>(bytes), 0);
  } catch (const std::bad_alloc &) {
    return supportError(MOERT_ERR_NOMEM,
                        "cannot allocate %lld bytes of host memory for '%s' "
                        "(%s %s)",
                        static_cast<long long>(bytes), spec.name.c_str(),
                        dtypeName(spec.dtype),
                        shapeString(spec.localShape).c_str());
  }
  return Status::ok();
}

Status deviceBuffer(moert_ctx *ctx, const TensorSpec &spec, void *&out) {
  int64_t bytes = std::max<int64_t>(spec.localBytes(), 1);
  if (moert_alloc(ctx, bytes, &out) == MOERT_OK)
    return Status::ok();
  return supportError(
      moert_ctx_status(ctx), "cannot allocate %lld bytes for '%s' (%s %s): %s",
      static_cast<long long>(bytes), spec.name.c_str(), dtypeName(spec.dtype),
      shapeString(spec.localShape).c_str(), moert_ctx_error(ctx));
}

Session::~Session() {
  if (ctx)
    moert_ctx_destroy(ctx);
  // The library stays loaded until exit: its code may be referenced.
}

bool Session::start(const std::vector<std::string> &entries) {
  std::string manifestPath = joinPath(opt.outDir, "manifest.json");
  if (!loaded_.isOk())
    fatal(loaded_);
  for (const std::string &name : entries)
    if (!manifest.findEntry(name)) {
      std::string names;
      for (const Entry &e : manifest.entries)
        names += (names.empty() ? "" : ", ") + e.name;
      fatal(supportError(
          MOERT_ERR_INVALID, "%s: no entry point '%s' (it has: %s)%s",
          manifestPath.c_str(), name.c_str(), names.c_str(),
          name.size() > 7 && name.compare(name.size() - 7, 7, "_replay") == 0
              ? "; compile the model with moe-compile --routing"
          : opt.train ? "; compile the model with moe-compile "
                        "--train"
                      : ""));
    }
  if (manifest.mesh.size() != world().size)
    fatal(supportError(
        MOERT_ERR_INVALID,
        "%s: the module's mesh %s has %lld ranks but %d "
        "ranks were started (run it under mpirun -np %lld)",
        manifestPath.c_str(), shapeString(manifest.mesh.shape).c_str(),
        static_cast<long long>(manifest.mesh.size()), world().size,
        static_cast<long long>(manifest.mesh.size())));
  std::string lib = joinPath(opt.outDir, manifest.library);
  void *library = loadVerified(lib, manifestPath);
  for (const std::string &name : entries) {
    const Entry *e = manifest.findEntry(name);
    auto fn = reinterpret_cast<EntryFn>(::dlsym(library, e->symbol.c_str()));
    if (!fn)
      fatal(supportError(MOERT_ERR_INVALID, "%s: no symbol '%s' for entry '%s'",
                         lib.c_str(), e->symbol.c_str(), name.c_str()));
    fns_.emplace_back(name, fn);
  }
  createContext();
  return checkSameModule();
}

/// Loads the module library only once it is known to be the one the
/// manifest describes: a regular file whose hash is the manifest's
/// module_hash (checked before dlopen, so that a truncated or foreign file
/// is never mapped), built for this runtime's ABI, and whose own description
/// of its mesh and entry points (MOERT_MANIFEST_SYMBOL) is the manifest's.
/// Any mismatch is an error, in every mode.
void *Session::loadVerified(const std::string &lib,
                            const std::string &manifestPath) {
  struct stat st;
  if (::stat(lib.c_str(), &st) != 0)
    fatal(supportError(MOERT_ERR_IO, "%s: cannot read the module library: %s",
                       lib.c_str(), std::strerror(errno)));
  if (!S_ISREG(st.st_mode))
    fatal(supportError(MOERT_ERR_IO,
                       "%s: the module library is not a regular file",
                       lib.c_str()));
  Status s = hashFile(lib, libraryHash_);
  if (!s.isOk())
    fatal(
        supportError(MOERT_ERR_IO, "module library: %s", s.message().c_str()));
  if (libraryHash_ != manifest.moduleHash)
    fatal(supportError(
        MOERT_ERR_INVALID,
        "%s hashes to %s but %s says module_hash %s: the library is not the "
        "one this manifest was written for (truncated, replaced or from "
        "another model); recompile the model",
        lib.c_str(), libraryHash_.c_str(), manifestPath.c_str(),
        manifest.moduleHash.c_str()));
  void *library = ::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library)
    fatal(supportError(MOERT_ERR_IO, "%s: cannot load the module library: %s",
                       lib.c_str(), ::dlerror()));
  if (Status abi = checkModuleAbi(library, lib); !abi.isOk())
    fatal(abi);
  std::string text;
  if (Status d = readModuleDescription(library, lib, text); !d.isOk())
    fatal(d);
  Manifest own;
  if (Status d = parseModuleDescription(
          text, lib + " (" + MOERT_MANIFEST_SYMBOL + ")", own);
      !d.isOk())
    fatal(d);
  if (Status d = checkManifestAgainstLibrary(manifest, own, manifestPath);
      !d.isOk())
    fatal(d);
  return library;
}

const Entry &Session::entry(const std::string &name) const {
  return *manifest.findEntry(name);
}

EntryFn Session::function(const std::string &name) const {
  for (const auto &[n, fn] : fns_)
    if (n == name)
      return fn;
  return nullptr;
}

void Session::createContext() {
  bool cuda = opt.device == "cuda";
  moert_ctx_options o;
  moert_ctx_options_init(&o);
  o.device = cuda ? MOERT_DEVICE_CUDA : MOERT_DEVICE_CPU;
  o.comm = world().size > 1 ? (cuda ? MOERT_COMM_NCCL : MOERT_COMM_MPI)
                            : MOERT_COMM_SINGLE;
  o.num_threads = static_cast<int32_t>(opt.threads);
  std::vector<const char *> axes;
  for (const std::string &a : manifest.mesh.axes)
    axes.push_back(a.c_str());
  o.mesh_rank = static_cast<int32_t>(axes.size());
  o.mesh_shape = manifest.mesh.shape.data();
  o.mesh_axes = axes.data();
  o.timeout_s = opt.timeout;
  o.record_trace = opt.trace.empty() ? 0 : 1;
  o.net = opt.net.empty() ? nullptr : opt.net.c_str();
  if (moert_ctx_create(&o, &ctx) != MOERT_OK)
    fatal(supportError(MOERT_ERR_INVALID,
                       "cannot create the runtime context: %s",
                       moert_last_error()));
  if (world().rank == 0 && !opt.quiet && !opt.t.json && !cuda)
    printThreads();
  for (size_t i = 0; i < axes.size(); ++i)
    coords.push_back(moert_ctx_coord(ctx, static_cast<int32_t>(i)));
}

/// One line on where the CPU threads per rank come from.
void Session::printThreads() const {
  int32_t threads = moert_ctx_num_threads(ctx);
  int32_t local = moert_ctx_local_ranks(ctx);
  long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  const char *omp = std::getenv("OMP_NUM_THREADS");
  std::string why = opt.threads > 0 ? "--threads"
                    : omp && std::atoi(omp) > 0
                        ? "OMP_NUM_THREADS"
                        : format("%ld cores / %d rank%s on this node", cores,
                                 local, local == 1 ? "" : "s");
  std::printf("threads per rank: %d (%s)\n", threads, why.c_str());
  if (!opt.net.empty())
    std::printf("network emulation: %s (link time only)\n", opt.net.c_str());
  std::fflush(stdout);
}

/// Every rank must run the same module: compare manifest and library hashes.
/// Every rank sees every hash, so all of them report a mismatch.
bool Session::checkSameModule() {
  std::string mine = manifest.moduleHash + libraryHash_;
  std::vector<char> all(mine.size() * world().size);
  if (moert_world_allgather(ctx, mine.data(), all.data(),
                            static_cast<int64_t>(mine.size())) != MOERT_OK)
    fatal(ctxError(ctx, "comparing module hashes"));
  for (int r = 0; r < world().size; ++r) {
    std::string theirs(all.data() + r * mine.size(), mine.size());
    if (theirs != mine) {
      report("error: rank %d runs module %s (library %s) but this rank runs "
             "%s (library %s): every rank must run the same module",
             r, theirs.substr(0, 16).c_str(), theirs.substr(16).c_str(),
             manifest.moduleHash.c_str(), libraryHash_.c_str());
      return false;
    }
  }
  return true;
}

bool Session::agree(bool ok, const char *stage) {
  char mine = ok ? 1 : 0;
  std::vector<char> all(world().size);
  if (moert_world_allgather(ctx, &mine, all.data(), 1) != MOERT_OK)
    fatal(ctxError(ctx, stage));
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

Status Session::gatherStrings(const std::string &mine,
                              std::vector<std::string> &all) {
  int64_t len = static_cast<int64_t>(mine.size());
  std::vector<int64_t> lens(world().size);
  if (moert_world_allgather(ctx, &len, lens.data(), 8) != MOERT_OK)
    return ctxError(ctx, "gathering statistics");
  int64_t maxLen = *std::max_element(lens.begin(), lens.end());
  std::string padded = mine;
  padded.resize(static_cast<size_t>(maxLen));
  std::vector<char> buf(world().rank == 0 ? maxLen * world().size : 0);
  if (moert_world_gather(ctx, padded.data(), buf.data(), maxLen) != MOERT_OK)
    return ctxError(ctx, "gathering statistics");
  for (int r = 0; world().rank == 0 && r < world().size; ++r)
    all.emplace_back(buf.data() + r * maxLen, static_cast<size_t>(lens[r]));
  return Status::ok();
}

Status Session::gatherTensor(const TensorSpec &spec, const void *localBuf,
                             std::vector<char> &global) {
  int64_t bytes = spec.localBytes();
  std::vector<char> local(static_cast<size_t>(bytes));
  if (moert_copy_to_host(ctx, local.data(), localBuf, bytes) != MOERT_OK)
    return ctxError(ctx, format("reading '%s'", spec.name.c_str()).c_str());
  std::vector<char> all(world().rank == 0 ? bytes * world().size : 0);
  if (moert_world_gather(ctx, local.data(), all.data(), bytes) != MOERT_OK)
    return ctxError(ctx, format("gathering '%s'", spec.name.c_str()).c_str());
  global.clear();
  if (world().rank == 0)
    MOERT_TRY(assembleGlobal(manifest.mesh, spec, all.data(), bytes, global));
  return Status::ok();
}

} // namespace moe_run
