//===- CudaAllocator.h - Caching device and pinned-host memory --*- C++ -*-===//
//
// The CUDA backend serves every allocation (moert_alloc, the context's arena,
// its own workspaces) from a cache of device blocks so that a steady-state run
// calls cudaMalloc / cudaFree never.
//
// All work of a backend is ordered on its one stream, so a block released
// while kernels that use it are still queued can be handed out again at once:
// the next user's work is queued after them on the same stream.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_CUDA_CUDAALLOCATOR_H
#define MOERT_CUDA_CUDAALLOCATOR_H

#include "cuda/CudaCommon.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace moert {
namespace cuda {

class DeviceAllocator {
public:
  /// `stream` is synchronized before cached blocks are really freed.
  explicit DeviceAllocator(cudaStream_t stream) : stream_(stream) {}
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator &) = delete;
  DeviceAllocator &operator=(const DeviceAllocator &) = delete;

  /// A block of at least `bytes` (256-byte aligned). `what` names the user
  /// in the out-of-memory message.
  Status allocate(int64_t bytes, void **out, const char *what);
  /// Returns a block to the cache; unknown pointers and null are ignored
  /// (returns false for an unknown non-null pointer).
  bool release(void *p);
  /// cudaFree of every cached block (after synchronizing the stream).
  Status trim();

  int64_t liveBytes() const { return liveBytes_; }
  int64_t cachedBytes() const { return cachedBytes_; }

private:
  static size_t roundUp(size_t bytes);

  cudaStream_t stream_;
  std::mutex mu_;
  std::multimap<size_t, void *> cached_;    // size -> block
  std::unordered_map<void *, size_t> live_; // block -> size
  int64_t liveBytes_ = 0;
  int64_t cachedBytes_ = 0;
};

/// A scratch block that goes back to the cache when it leaves scope.
class Scratch {
public:
  explicit Scratch(DeviceAllocator &a) : alloc_(&a) {}
  ~Scratch() { alloc_->release(ptr_); }
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;

  Status allocate(int64_t bytes, const char *what) {
    alloc_->release(ptr_);
    ptr_ = nullptr;
    return alloc_->allocate(bytes, &ptr_, what);
  }
  template <typename T> T *as() const { return static_cast<T *>(ptr_); }
  void *get() const { return ptr_; }

private:
  DeviceAllocator *alloc_;
  void *ptr_ = nullptr;
};

/// Page-locked host memory that grows on demand (for small copies between
/// host and device that must be asynchronous: group counts, pointer arrays).
class PinnedBuffer {
public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer &) = delete;
  PinnedBuffer &operator=(const PinnedBuffer &) = delete;

  /// Makes room for `bytes`. Growing frees the old buffer: the caller must
  /// make sure no copy still uses it (synchronize first).
  Status reserve(size_t bytes, const char *what);
  template <typename T> T *as() const { return static_cast<T *>(ptr_); }

private:
  void *ptr_ = nullptr;
  size_t capacity_ = 0;
};

} // namespace cuda
} // namespace moert

#endif // MOERT_CUDA_CUDAALLOCATOR_H
