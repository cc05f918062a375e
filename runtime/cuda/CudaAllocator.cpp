//===- CudaAllocator.cpp - Caching device and pinned-host memory ----------===//
#include "cuda/CudaAllocator.h"

#include <algorithm>

namespace moert {
namespace cuda {

namespace {
constexpr size_t kSmall = size_t(1) << 20; // 1 MiB
constexpr size_t kSmallAlign = 512;
constexpr size_t kLargeAlign = size_t(2) << 20; // 2 MiB
} // namespace

size_t DeviceAllocator::roundUp(size_t bytes) {
  if (bytes == 0)
    bytes = 1;
  size_t align = bytes <= kSmall ? kSmallAlign : kLargeAlign;
  return (bytes + align - 1) / align * align;
}

DeviceAllocator::~DeviceAllocator() {
  // Destructors cannot report; the stream is synchronized by the backend
  // before it destroys the allocator.
  for (auto &kv : cached_)
    (void)cudaFree(kv.second);
  for (auto &kv : live_)
    (void)cudaFree(kv.first);
}

Status DeviceAllocator::allocate(int64_t bytes, void **out, const char *what) {
  *out = nullptr;
  if (bytes < 0)
    return error(MOERT_ERR_INVALID, "%s: negative allocation size %lld", what,
                 static_cast<long long>(bytes));
  size_t want = roundUp(static_cast<size_t>(bytes));
  std::lock_guard<std::mutex> lock(mu_);
  // Best fit among cached blocks, without wasting much of a larger block.
  auto it = cached_.lower_bound(want);
  size_t limit = want <= kSmall ? 2 * want : want + want / 4;
  if (it != cached_.end() && it->first <= limit) {
    *out = it->second;
    live_[it->second] = it->first;
    liveBytes_ += static_cast<int64_t>(it->first);
    cachedBytes_ -= static_cast<int64_t>(it->first);
    cached_.erase(it);
    return Status::ok();
  }
  void *p = nullptr;
  cudaError_t err = cudaMalloc(&p, want);
  if (err == cudaErrorMemoryAllocation && !cached_.empty()) {
    // Give the cache back to the driver and try once more.
    (void)cudaGetLastError();
    cudaError_t s = cudaStreamSynchronize(stream_);
    if (s != cudaSuccess)
      return cudaCheck(s, what, "cudaStreamSynchronize(stream)");
    for (auto &kv : cached_)
      MOERT_CUDA(what, cudaFree(kv.second));
    cached_.clear();
    cachedBytes_ = 0;
    err = cudaMalloc(&p, want);
  }
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t freeB = 0, totalB = 0;
    (void)cudaMemGetInfo(&freeB, &totalB);
    (void)cudaGetLastError();
    return error(MOERT_ERR_NOMEM,
                 "%s: cudaMalloc of %zu bytes failed: out of device memory "
                 "(%zu of %zu bytes free, %lld in use by this context)",
                 what, want, freeB, totalB, static_cast<long long>(liveBytes_));
  }
  MOERT_TRY(cudaCheck(err, what, "cudaMalloc(&p, bytes)"));
  live_[p] = want;
  liveBytes_ += static_cast<int64_t>(want);
  *out = p;
  return Status::ok();
}

bool DeviceAllocator::release(void *p) {
  if (!p)
    return true;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end())
    return false;
  cached_.emplace(it->second, p);
  liveBytes_ -= static_cast<int64_t>(it->second);
  cachedBytes_ += static_cast<int64_t>(it->second);
  live_.erase(it);
  return true;
}

Status DeviceAllocator::trim() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_.empty())
    return Status::ok();
  MOERT_CUDA("cuda allocator trim", cudaStreamSynchronize(stream_));
  for (auto &kv : cached_)
    MOERT_CUDA("cuda allocator trim", cudaFree(kv.second));
  cached_.clear();
  cachedBytes_ = 0;
  return Status::ok();
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_)
    (void)cudaFreeHost(ptr_);
}

Status PinnedBuffer::reserve(size_t bytes, const char *what) {
  if (bytes <= capacity_)
    return Status::ok();
  size_t want = std::max<size_t>(bytes, std::max<size_t>(2 * capacity_, 4096));
  if (ptr_) {
    void *old = ptr_;
    ptr_ = nullptr;
    capacity_ = 0;
    MOERT_CUDA(what, cudaFreeHost(old));
  }
  MOERT_CUDA(what, cudaMallocHost(&ptr_, want));
  capacity_ = want;
  return Status::ok();
}

} // namespace cuda
} // namespace moert
