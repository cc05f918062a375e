//===- CudaTestUtil.h - Helpers of the CUDA backend tests --------*- C++
//-*-===//
//
// The CUDA backend is checked against the CPU backend (the reference
// behaviour) on random data. The CPU backend computes in f32, so a bf16 or
// f16 run is compared with the CPU run on the same inputs rounded to that
// type (relative norm error); f32 runs are compared element by element.
//
//===----------------------------------------------------------------------===//
#ifndef MOE_TEST_UNIT_CUDA_CUDATESTUTIL_H
#define MOE_TEST_UNIT_CUDA_CUDATESTUTIL_H

#include "core/Backend.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace moert_cuda_test {

using moert::Backend;
using moert::Status;

/// Empty when a CUDA device is usable, else why not.
inline std::string noDeviceReason() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no CUDA device (cudaGetDeviceCount: ") +
           cudaGetErrorString(e) + ")";
  }
  if (n == 0)
    return "no CUDA device";
  return "";
}

#define SKIP_WITHOUT_CUDA()                                                    \
  do {                                                                         \
    std::string why_ = ::moert_cuda_test::noDeviceReason();                    \
    if (!why_.empty())                                                         \
      GTEST_SKIP() << why_;                                                    \
  } while (0)

#define ASSERT_OK(expr)                                                        \
  do {                                                                         \
    ::moert::Status s_ = (expr);                                               \
    ASSERT_TRUE(s_.isOk()) << #expr << ": " << s_.message();                   \
  } while (0)

//===--- Host storage types ----------------------------------------------===//

inline uint16_t toBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return 0x7fc0; // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float fromBf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline size_t elemSize(int32_t dtype) { return dtype == MOERT_F32 ? 4 : 2; }

/// Storage bytes of `v` in `dtype` (f32, f16, bf16).
inline std::vector<uint8_t> encode(const std::vector<float> &v, int32_t dtype) {
  std::vector<uint8_t> out(v.size() * elemSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == MOERT_F32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else if (dtype == MOERT_BF16) {
      uint16_t h = toBf16(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    } else {
      __half h = __float2half_rn(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

inline std::vector<float> decode(const std::vector<uint8_t> &b, int32_t dtype) {
  std::vector<float> out(b.size() / elemSize(dtype));
  for (size_t i = 0; i < out.size(); ++i) {
    if (dtype == MOERT_F32) {
      std::memcpy(&out[i], &b[4 * i], 4);
    } else if (dtype == MOERT_BF16) {
      uint16_t h;
      std::memcpy(&h, &b[2 * i], 2);
      out[i] = fromBf16(h);
    } else {
      __half h;
      std::memcpy(&h, &b[2 * i], 2);
      out[i] = __half2float(h);
    }
  }
  return out;
}

/// `v` rounded to `dtype` and back.
inline std::vector<float> rounded(const std::vector<float> &v, int32_t dtype) {
  return decode(encode(v, dtype), dtype);
}

inline std::vector<float> randomVec(size_t n, unsigned seed, float lo = -1.0f,
                                    float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(gen);
  return v;
}

/// k distinct experts per token, uniformly at random.
inline std::vector<int32_t> randomIndices(int64_t T, int64_t k, int64_t E,
                                          unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<int32_t> idx(T * k), perm(E);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e)
      perm[e] = int32_t(e);
    std::shuffle(perm.begin(), perm.end(), gen);
    for (int64_t j = 0; j < k; ++j)
      idx[t * k + j] = perm[j];
  }
  return idx;
}

//===--- Buffers on a backend
//----------------------------------------------===//

/// Memory of one backend, freed with it. Fresh buffers are filled with 0xff
/// bytes (NaN for floats, -1 for ints) so that unwritten output shows.
class Buf {
public:
  Buf(Backend &b, size_t bytes) : b_(&b), bytes_(bytes) {
    status_ = b.alloc(int64_t(bytes ? bytes : 1), &p_);
    if (status_.isOk() && bytes) {
      std::vector<uint8_t> poison(bytes, 0xff);
      status_ = b.copyToDevice(p_, poison.data(), int64_t(bytes));
    }
  }
  ~Buf() {
    if (p_)
      b_->free(p_);
  }
  Buf(const Buf &) = delete;
  Buf &operator=(const Buf &) = delete;

  const Status &status() const { return status_; }
  void *get() const { return p_; }
  template <typename T> T *as() const { return static_cast<T *>(p_); }
  size_t bytes() const { return bytes_; }

  Status upload(const void *host, size_t bytes) {
    return b_->copyToDevice(p_, host, int64_t(bytes));
  }
  template <typename T> std::vector<T> download() const {
    std::vector<T> out(bytes_ / sizeof(T));
    Status s = b_->copyToHost(out.data(), p_, int64_t(bytes_));
    EXPECT_TRUE(s.isOk()) << s.message();
    return out;
  }

private:
  Backend *b_;
  void *p_ = nullptr;
  size_t bytes_;
  Status status_;
};

/// A buffer holding `v` (typed host vector) on backend `b`.
template <typename T>
std::unique_ptr<Buf> put(Backend &b, const std::vector<T> &v) {
  auto buf = std::make_unique<Buf>(b, v.size() * sizeof(T));
  if (buf->status().isOk() && !v.empty()) {
    Status s = buf->upload(v.data(), v.size() * sizeof(T));
    EXPECT_TRUE(s.isOk()) << s.message();
  }
  return buf;
}

/// `v` stored as `dtype` on backend `b`.
inline std::unique_ptr<Buf> putAs(Backend &b, const std::vector<float> &v,
                                  int32_t dtype) {
  return put(b, encode(v, dtype));
}

/// Contents of `buf` read as `dtype`, in f32.
inline std::vector<float> getAs(const Buf &buf, int32_t dtype) {
  return decode(buf.download<uint8_t>(), dtype);
}

//===--- Comparisons
//---------------------------------------------------------===//

inline double relNormError(const std::vector<float> &got,
                           const std::vector<float> &ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    double d = double(got[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  if (den == 0)
    return std::sqrt(num);
  return std::sqrt(num / den);
}

/// f32: every element within rtol of the reference (plus an absolute floor
/// of rtol/10 of the largest magnitude, for values that cancel to ~0).
/// bf16 / f16: relative norm error below 1e-2.
inline ::testing::AssertionResult close(const std::vector<float> &got,
                                        const std::vector<float> &ref,
                                        int32_t dtype, double rtol = 1e-4) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != " << ref.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(got[i]) != std::isnan(ref[i]))
      return ::testing::AssertionFailure() << "element " << i << ": got "
                                           << got[i] << ", expected " << ref[i];
  if (dtype != MOERT_F32) {
    double err = relNormError(got, ref);
    if (err < 1e-2)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "relative norm error " << err << " >= 1e-2";
  }
  double maxAbs = 0;
  for (float r : ref)
    maxAbs = std::max(maxAbs, std::fabs(double(r)));
  const double atol = rtol * 0.1 * maxAbs;
  for (size_t i = 0; i < got.size(); ++i) {
    double d = std::fabs(double(got[i]) - double(ref[i]));
    if (std::isnan(ref[i]))
      continue;
    if (d > atol + rtol * std::fabs(double(ref[i])))
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got[i] << ", expected " << ref[i]
             << " (|diff| " << d << ", max |ref| " << maxAbs << ")";
  }
  return ::testing::AssertionSuccess();
}

/// A CPU and a CUDA backend side by side, for tests that compare the two;
/// skips without a GPU.
class CpuAndCudaTest : public ::testing::Test {
protected:
  void SetUp() override {
    SKIP_WITHOUT_CUDA();
    moert::BackendOptions o;
    o.numThreads = 2;
    ASSERT_OK(moert::createCpuBackend(o, cpu));
    ASSERT_OK(moert::createCudaBackend(o, gpu));
  }
  /// A CUDA backend whose expert GEMMs run in `mode` (MOERT_CUDA_GEMM).
  std::unique_ptr<moert::Backend> gpuWithGemm(const char *mode) {
    setenv("MOERT_CUDA_GEMM", mode, 1);
    std::unique_ptr<moert::Backend> b;
    moert::Status s = moert::createCudaBackend(moert::BackendOptions(), b);
    unsetenv("MOERT_CUDA_GEMM");
    EXPECT_TRUE(s.isOk()) << s.message();
    return b;
  }

  std::unique_ptr<moert::Backend> cpu, gpu;
};

} // namespace moert_cuda_test

#endif // MOE_TEST_UNIT_CUDA_CUDATESTUTIL_H
