// Float vectors for the native CPU kernels: 256-bit `v8` everywhere, 512-bit `v16` where the CPU has AVX-512, and
// the few operations the kernels build on, written once for every width. A lane's result never depends on the
// vector width that computed it.

#ifndef JSPARSE3D_OPS_CPU_VECTORS_H_
#define JSPARSE3D_OPS_CPU_VECTORS_H_

#include <cmath>
#include <cstring>

#if defined(__FMA__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace jsparse3d {

typedef float v8 __attribute__((vector_size(32)));
#ifdef __AVX512F__
typedef float v16 __attribute__((vector_size(64)));
#endif

// Unaligned loads and stores (memcpy compiles to one vector move).
template <class V>
inline V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class V>
inline void storev(float* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

// A broadcast straight from memory. (`V{} + a` would add 0.0f first, an extra dependent operation per row on the
// port that also runs the second 512-bit FMA unit: half the speed at 64-256 channels.)
template <class V>
inline V splatv(float a) {
  return V{} + a;
}

#ifdef __AVX__
template <>
inline v8 splatv<v8>(float a) {
  return reinterpret_cast<v8>(_mm256_set1_ps(a));
}
#endif

// c + a * b, rounded the same way wherever it is used: a fused multiply-add where the CPU has one. The sources are
// compiled with -ffp-contract=off, so the compiler never fuses some products and not others (which would make a
// row's result depend on which code path, and so on which thread's share, it went through).
inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return c + a * b;
#endif
}

inline v8 maddv(v8 a, v8 b, v8 c) {
#ifdef __FMA__
  return _mm256_fmadd_ps(a, b, c);
#else
  return c + a * b;
#endif
}

#ifdef __AVX512F__
template <>
inline v16 splatv<v16>(float a) {
  return reinterpret_cast<v16>(_mm512_set1_ps(a));
}

inline v16 maddv(v16 a, v16 b, v16 c) {
  return reinterpret_cast<v16>(
      _mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(c)));
}
#endif

}  // namespace jsparse3d

#endif  // JSPARSE3D_OPS_CPU_VECTORS_H_
