//===- CheckedMath.h - Overflow-checked sizes -------------------*- C++ -*-===//
//
// Every size that comes from a file (a shape in manifest.json or in a
// safetensors header, a mesh size, a tensor type in the IR) is multiplied
// with these helpers, never with a bare `*`: a product that does not fit in
// int64 is reported, not wrapped around.
//
// Each returns false on overflow (or on a negative operand where a size is
// expected) and leaves `out` unspecified; true and the value otherwise.
//
// Base layer (docs/runtime.md): header-only, includes nothing of the runtime,
// so that the compiler (lib/) uses it too.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_BASE_CHECKEDMATH_H
#define MOERT_BASE_CHECKEDMATH_H

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace moert {

/// out = a * b; false when the product does not fit in int64.
inline bool checkedMul(int64_t a, int64_t b, int64_t &out) {
  return !__builtin_mul_overflow(a, b, &out);
}

/// out = a + b; false when the sum does not fit in int64.
inline bool checkedAdd(int64_t a, int64_t b, int64_t &out) {
  return !__builtin_add_overflow(a, b, &out);
}

/// The product of `n` sizes at `dims` (1 for none); false when a size is
/// negative or the product does not fit in int64.
inline bool checkedProduct(const int64_t *dims, size_t n, int64_t &out) {
  int64_t p = 1;
  for (size_t i = 0; i < n; ++i)
    if (dims[i] < 0 || !checkedMul(p, dims[i], p))
      return false;
  out = p;
  return true;
}

/// Number of elements of a shape (any contiguous range of int64_t with
/// data() and size(): std::vector, llvm::ArrayRef, ...).
template <typename Shape>
inline bool checkedNumElements(const Shape &shape, int64_t &out) {
  return checkedProduct(shape.data(), shape.size(), out);
}
inline bool checkedNumElements(std::initializer_list<int64_t> shape,
                               int64_t &out) {
  return checkedProduct(shape.begin(), shape.size(), out);
}

/// Bytes of a dense tensor of `shape` with elements of `elementBytes`.
template <typename Shape>
inline bool checkedByteSize(const Shape &shape, int64_t elementBytes,
                            int64_t &out) {
  int64_t n;
  return elementBytes >= 0 && checkedNumElements(shape, n) &&
         checkedMul(n, elementBytes, out);
}

/// `value` rounded up to a multiple of `align` (> 0); false on overflow.
inline bool checkedAlignUp(int64_t value, int64_t align, int64_t &out) {
  if (align <= 0 || value < 0)
    return false;
  int64_t bumped;
  if (!checkedAdd(value, align - 1, bumped))
    return false;
  out = bumped - bumped % align;
  return true;
}

} // namespace moert

#endif // MOERT_BASE_CHECKEDMATH_H
