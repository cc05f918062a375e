//===- SafetensorsFuzzer.cpp - libFuzzer target: safetensors reader -------===//
//
// The input is a whole safetensors file (kept in a memfd, opened by path as
// moe-run opens weights and inputs). A file SafetensorsFile::open accepts is
// read as moe-run reads it: every tensor whole in its own dtype (which must
// equal the file's bytes), converted to the other dtype of its class, and
// as slices of its shape and of a flattened view (which must equal the same
// elements of the whole tensor). Then what was read is written back with
// writeSafetensors, with the metadata, and must read back the same.
//
//===----------------------------------------------------------------------===//
#include "base/Dtype.h"
#include "support/Safetensors.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using namespace moert;

namespace {

[[noreturn]] void fail(const std::string &what) {
  std::fprintf(stderr, "safetensors fuzzer: %s\n", what.c_str());
  std::abort();
}

void check(const Status &s, const std::string &what) {
  if (!s.isOk())
    fail(what + ": " + s.message());
}

/// The memfd that holds the input, and a scratch directory for the writer.
struct Files {
  int fd = -1;
  std::string path;
  std::string dir;
  Files() {
    fd = memfd_create("moe-fuzz-safetensors", MFD_CLOEXEC);
    if (fd < 0)
      fail("memfd_create failed");
    path = "/proc/self/fd/" + std::to_string(fd);
    const char *tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/moe-fuzz-st-XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data()))
      fail("mkdtemp failed for " + pattern);
    dir = buf.data();
  }
  ~Files() {
    ::unlink((dir + "/out.safetensors").c_str());
    ::rmdir(dir.c_str());
  }
};

Files &files() {
  static Files f;
  return f;
}

/// The other dtype of `dtype`'s class that a read may convert to.
int32_t otherDtype(int32_t dtype) {
  switch (dtype) {
  case MOERT_F32:
    return MOERT_BF16;
  case MOERT_F16:
  case MOERT_BF16:
    return MOERT_F32;
  case MOERT_I32:
    return MOERT_I64;
  case MOERT_I64:
    return MOERT_I32;
  }
  return dtype;
}

/// Reads the middle half of every dimension of `t` (shape `view`) and checks
/// it against the same elements of `whole`.
void checkSlice(const SafetensorsFile &f, const TensorInfo &t,
                const std::vector<int64_t> &view,
                const std::vector<char> &whole) {
  size_t rank = view.size();
  std::vector<int64_t> lo(rank), hi(rank), stride(rank, 1);
  int64_t count = 1;
  for (size_t d = 0; d < rank; ++d) {
    lo[d] = view[d] / 4;
    hi[d] = view[d] - view[d] / 4;
    count *= hi[d] - lo[d];
  }
  for (size_t d = rank; d-- > 1;)
    stride[d - 1] = stride[d] * view[d];
  std::vector<char> slice(static_cast<size_t>(count) * t.elemBytes);
  check(f.readSlice(t.name, view, lo, hi, t.dtype, slice.data()),
        "readSlice of '" + t.name + "'");
  std::vector<int64_t> idx(lo);
  for (int64_t i = 0; i < count; ++i) {
    int64_t flat = 0;
    for (size_t d = 0; d < rank; ++d)
      flat += idx[d] * stride[d];
    if (std::memcmp(slice.data() + i * t.elemBytes,
                    whole.data() + flat * t.elemBytes, t.elemBytes) != 0)
      fail("slice of '" + t.name + "' differs from the whole tensor");
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < hi[d])
        break;
      idx[d] = lo[d];
    }
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Files &io = files();
  if (::ftruncate(io.fd, 0) != 0 ||
      ::pwrite(io.fd, data, size, 0) != static_cast<ssize_t>(size))
    fail("cannot write the input to the memfd");

  std::unique_ptr<SafetensorsFile> f;
  Status s = SafetensorsFile::open(io.path, f);
  if (!s.isOk()) {
    if (s.message().find(io.path) == std::string::npos)
      fail("error does not name the file: " + s.message());
    return 0;
  }

  std::vector<std::vector<char>> wholes;
  std::vector<TensorData> out;
  for (const std::string &name : f->names()) {
    const TensorInfo *t = f->find(name);
    if (!t)
      fail("names() lists '" + name + "' but find() does not");
    if (t->offset < 0 || t->bytes < 0 ||
        static_cast<uint64_t>(t->offset + t->bytes) > size)
      fail("tensor '" + name + "' lies outside the file");
    if (t->dtype < 0)
      continue; // F64, U8, ...: listed, not readable
    int64_t numel = numElements(t->shape);
    if (numel * static_cast<int64_t>(t->elemBytes) != t->bytes)
      fail("byte size of '" + name + "' does not match its shape");

    // Whole, in its own dtype: the file's bytes.
    std::vector<char> whole(static_cast<size_t>(t->bytes));
    check(f->readAll(name, t->dtype, whole.data()),
          "readAll of '" + name + "'");
    if (t->bytes && std::memcmp(whole.data(), data + t->offset,
                                static_cast<size_t>(t->bytes)) != 0)
      fail("readAll of '" + name + "' differs from the file's bytes");
    // Converted (I64 -> I32 may refuse a value that does not fit).
    int32_t other = otherDtype(t->dtype);
    std::vector<char> conv(static_cast<size_t>(numel) * dtypeSize(other));
    Status cs = f->readAll(name, other, conv.data());
    if (!cs.isOk() && !(t->dtype == MOERT_I64 && other == MOERT_I32))
      fail("conversion of '" + name + "' failed: " + cs.message());
    // Slices of the shape and of a flattened view.
    checkSlice(*f, *t, t->shape, whole);
    checkSlice(*f, *t, {numel}, whole);

    TensorData td;
    td.name = name;
    td.dtype = t->dtype;
    td.shape = t->shape;
    wholes.push_back(std::move(whole));
    out.push_back(td);
  }
  for (size_t i = 0; i < out.size(); ++i)
    out[i].data = wholes[i].data();

  // Write what was read, read it back.
  std::string path = io.dir + "/out.safetensors";
  check(writeSafetensors(path, out, f->metadata()), "writeSafetensors");
  std::unique_ptr<SafetensorsFile> back;
  check(SafetensorsFile::open(path, back), "reopening the written file");
  if (back->metadata() != f->metadata())
    fail("metadata differs after writing");
  if (back->names().size() != out.size())
    fail("tensor count differs after writing");
  for (size_t i = 0; i < out.size(); ++i) {
    const TensorInfo *t = back->find(out[i].name);
    if (!t || t->dtype != out[i].dtype || t->shape != out[i].shape)
      fail("tensor '" + out[i].name + "' differs after writing");
    std::vector<char> again(wholes[i].size());
    check(back->readAll(t->name, t->dtype, again.data()),
          "reading back '" + t->name + "'");
    if (again != wholes[i])
      fail("data of '" + t->name + "' differs after writing");
  }
  return 0;
}
