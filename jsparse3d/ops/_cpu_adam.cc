// The Adam (and AdamW) update of every float32 parameter of a model in one call, called by XLA through its FFI
// (the `adam` target of jsparse3d/training/_adam.py).
//
// Written in XLA, Adam is a few elementwise fusions per parameter array, and each array shape is its own
// compiled kernel: for a U-ResNet's 141 arrays that is 40% of the training step's compile. Here one handler
// takes every array. Per element, in optax's order of operations (so the results equal optax.adam's):
//
//   mu  = (1 - b1) * g + b1 * mu
//   nu  = (1 - b2) * (g * g) + b2 * nu
//   u   = (mu / bc1) / (sqrt(nu / bc2 + eps_root) + eps)     bc1 = 1 - b1^t, bc2 = 1 - b2^t
//   u   = u + weight_decay * p                                 (AdamW; skipped when weight_decay is 0)
//   u   = step * u                                             step = -learning_rate(t)
//   out = apply ? p + u : u
//
// Operands: scalars f32[3] = (bc1, bc2, step), then for each of the L arrays its parameter, gradient, mu and nu
// (4L buffers). Results: for each array its output (new parameter or update), mu and nu (3L buffers). Elements are
// independent, so the split into work items cannot change a result.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "_cpu_parallel.h"
#include "_cpu_vectors.h"

namespace ffi = xla::ffi;
using jsparse3d::NumParts;
using jsparse3d::ParallelFor;
using jsparse3d::loadv;
using jsparse3d::storev;

using Scalars = ffi::Buffer<ffi::F32, 1>;  // (bc1, bc2, step)

namespace {

inline float Sqrt(float x) { return std::sqrt(x); }

#if defined(__AVX512F__) || defined(__AVX__)
#ifdef __AVX512F__
using Vec = jsparse3d::v16;
inline Vec Sqrt(Vec x) { return reinterpret_cast<Vec>(_mm512_sqrt_ps(reinterpret_cast<__m512>(x))); }
#else
using Vec = jsparse3d::v8;
inline Vec Sqrt(Vec x) { return reinterpret_cast<Vec>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x))); }
#endif
constexpr int64_t kLanes = sizeof(Vec) / sizeof(float);
#endif

constexpr int64_t kAdamChunk = 1 << 15;  // elements per work item

struct Slice {
  const float *p, *g, *mu, *nu;
  float *out, *mu_out, *nu_out;
  int64_t begin, end;
};

struct Constants {
  float b1, b2, one_minus_b1, one_minus_b2, eps, eps_root, weight_decay, bc1, bc2, step;
};

// The update of one element, or of one vector of elements (float or a vector type: the same operations, each
// rounded once, in the same order). sqrt is the only function call; it is exact in both.
template <bool kDecay, bool kApply, class T>
inline void UpdateElements(const Constants& k, T p, T g, T mu_in, T nu_in, T& out, T& mu, T& nu) {
  mu = k.one_minus_b1 * g + k.b1 * mu_in;
  nu = k.one_minus_b2 * (g * g) + k.b2 * nu_in;
  T u = (mu / k.bc1) / (Sqrt(nu / k.bc2 + k.eps_root) + k.eps);
  if (kDecay) u = u + k.weight_decay * p;
  u = k.step * u;
  out = kApply ? p + u : u;
}

// One work item, a vector at a time where the CPU has vectors. Each vector of operands is loaded before the
// results are stored: an output may alias its operand (the same element), never another one.
template <bool kDecay, bool kApply>
void Update(const Slice& s, const Constants& k) {
  int64_t i = s.begin;
#if defined(__AVX512F__) || defined(__AVX__)
  for (; i + kLanes <= s.end; i += kLanes) {
    Vec out, mu, nu;
    UpdateElements<kDecay, kApply>(k, loadv<Vec>(s.p + i), loadv<Vec>(s.g + i), loadv<Vec>(s.mu + i),
                                   loadv<Vec>(s.nu + i), out, mu, nu);
    storev<Vec>(s.mu_out + i, mu), storev<Vec>(s.nu_out + i, nu), storev<Vec>(s.out + i, out);
  }
#endif
  for (; i < s.end; ++i) {
    float out, mu, nu;
    UpdateElements<kDecay, kApply>(k, s.p[i], s.g[i], s.mu[i], s.nu[i], out, mu, nu);
    s.mu_out[i] = mu, s.nu_out[i] = nu, s.out[i] = out;
  }
}

ffi::Error AdamImpl(ffi::ThreadPool pool, Scalars scalars, ffi::RemainingArgs args,
                    ffi::RemainingRets rets, float b1, float b2, float one_minus_b1, float one_minus_b2, float eps,
                    float eps_root, float weight_decay, int64_t apply) {
  if (scalars.element_count() != 3) return ffi::Error::InvalidArgument("adam: scalars must hold 3 values");
  if (args.size() % 4 != 0 || rets.size() * 4 != args.size() * 3)
    return ffi::Error::InvalidArgument("adam: expected 4 operands and 3 results per parameter array");
  const float bc1 = scalars.typed_data()[0], bc2 = scalars.typed_data()[1], step = scalars.typed_data()[2];
  std::vector<Slice> work;
  for (size_t a = 0; a < args.size() / 4; ++a) {
    auto p = args.get<ffi::AnyBuffer>(4 * a), g = args.get<ffi::AnyBuffer>(4 * a + 1);
    auto mu = args.get<ffi::AnyBuffer>(4 * a + 2), nu = args.get<ffi::AnyBuffer>(4 * a + 3);
    auto out = rets.get<ffi::AnyBuffer>(3 * a), mu_out = rets.get<ffi::AnyBuffer>(3 * a + 1);
    auto nu_out = rets.get<ffi::AnyBuffer>(3 * a + 2);
    if (!p || !g || !mu || !nu || !out || !mu_out || !nu_out)
      return ffi::Error::InvalidArgument("adam: an operand or result is not a buffer");
    const int64_t n = static_cast<int64_t>(p->element_count());
    for (const ffi::AnyBuffer* b : {&*p, &*g, &*mu, &*nu})
      if (b->element_type() != ffi::F32 || static_cast<int64_t>(b->element_count()) != n)
        return ffi::Error::InvalidArgument("adam: every array of one parameter must be float32 of one size");
    for (int64_t begin = 0; begin < n; begin += kAdamChunk)
      work.push_back({p->typed_data<float>(), g->typed_data<float>(), mu->typed_data<float>(),
                      nu->typed_data<float>(), (*out)->typed_data<float>(), (*mu_out)->typed_data<float>(),
                      (*nu_out)->typed_data<float>(), begin, std::min(n, begin + kAdamChunk)});
  }
  const Constants k{b1, b2, one_minus_b1, one_minus_b2, eps, eps_root, weight_decay, bc1, bc2, step};
  ParallelFor::Run(pool, static_cast<int64_t>(work.size()), NumParts(pool), [&](int64_t w) {
    if (weight_decay != 0.0f)
      apply ? Update<true, true>(work[w], k) : Update<true, false>(work[w], k);
    else
      apply ? Update<false, true>(work[w], k) : Update<false, false>(work[w], k);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Scalars>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<float>("b1")
                                  .Attr<float>("b2")
                                  .Attr<float>("one_minus_b1")
                                  .Attr<float>("one_minus_b2")
                                  .Attr<float>("eps")
                                  .Attr<float>("eps_root")
                                  .Attr<float>("weight_decay")
                                  .Attr<int64_t>("apply"));
