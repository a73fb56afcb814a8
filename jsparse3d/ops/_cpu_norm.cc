// CPU kernels for batch normalization over the valid rows of a feature matrix, with an optional ReLU, called by
// XLA through its FFI (the `norm` and `norm_vjp` targets of _batch_norm.py). float32 throughout.
//
//   JsparseNorm:     y = mask ? act(x * scale + shift) : 0, with the batch statistics of the valid rows
//                    (mean, biased variance) and scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
//   JsparseNormVjp:  the cotangents of x, gamma and beta for a cotangent of y, from x and the statistics (the
//                    ReLU's gate x * scale + shift > 0 recomputed with the forward's arithmetic: y is not saved).
//
// One pass computes the per-channel sums, a second the rows. Determinism: the sums are taken over fixed blocks
// of kNormRows rows (each in row order) and the block partials are added in block order, so no result depends
// on the number of threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "_cpu_parallel.h"

namespace ffi = xla::ffi;
using jsparse3d::NumParts;
using jsparse3d::ParallelFor;

using Matrix = ffi::Buffer<ffi::F32, 2>;  // [rows, channels]
using Vector = ffi::Buffer<ffi::F32, 1>;  // [channels]
using Mask = ffi::Buffer<ffi::PRED, 1>;   // valid rows

namespace {

constexpr int64_t kNormRows = 1024;  // rows per block (and per work item)
constexpr int64_t kMaxStackChannels = 512;

// Two per-channel sums over the valid rows: add_row(r, s0, s1) adds row r's terms into s0[0:c] and s1[0:c].
// Returns them as sums[0:c] and sums[c:2c].
template <class AddRow>
std::vector<float> ValidRowSums(ffi::ThreadPool& pool, int64_t n, int64_t c, const bool* mask, AddRow add_row) {
  const int64_t blocks = (n + kNormRows - 1) / kNormRows;
  std::vector<float> partial(static_cast<size_t>(blocks * 2 * c), 0.0f);
  ParallelFor::Run(pool, blocks, NumParts(pool), [&](int64_t b) {
    float* s = partial.data() + b * 2 * c;
    for (int64_t r = b * kNormRows, end = std::min(n, r + kNormRows); r < end; ++r)
      if (mask[r]) add_row(r, s, s + c);
  });
  std::vector<float> sums(static_cast<size_t>(2 * c), 0.0f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t e = 0; e < 2 * c; ++e) sums[e] += partial[b * 2 * c + e];
  return sums;
}

// Runs row(r) for every row, kNormRows rows per work item.
template <class Row>
void EachRow(ffi::ThreadPool& pool, int64_t n, Row row) {
  const int64_t blocks = (n + kNormRows - 1) / kNormRows;
  ParallelFor::Run(pool, blocks, NumParts(pool), [&](int64_t b) {
    for (int64_t r = b * kNormRows, end = std::min(n, r + kNormRows); r < end; ++r) row(r);
  });
}

// The per-channel affine map of the normalization: y = x * scale + shift. The forward and the backward's ReLU
// gate both take it from here, so the gate sees exactly the forward's values.
void Affine(const float* gamma, const float* beta, const float* mean, const float* var, float epsilon, int64_t c,
            std::vector<float>& scale, std::vector<float>& shift) {
  scale.resize(static_cast<size_t>(c));
  shift.resize(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    scale[j] = gamma[j] / std::sqrt(var[j] + epsilon);
    shift[j] = beta[j] - mean[j] * scale[j];
  }
}

int64_t CountValid(const bool* mask, int64_t n) {
  int64_t count = 0;
  for (int64_t r = 0; r < n; ++r) count += mask[r];
  return count;
}

ffi::Error NormImpl(ffi::ThreadPool pool, Matrix x, Mask mask, Vector gamma, Vector beta, ffi::Result<Matrix> y,
                    ffi::Result<Vector> mean_out, ffi::Result<Vector> var_out, float epsilon, int64_t relu) {
  const int64_t n = x.dimensions()[0], c = x.dimensions()[1];
  if (mask.dimensions()[0] != n || gamma.dimensions()[0] != c || beta.dimensions()[0] != c)
    return ffi::Error::InvalidArgument("jsparse3d norm: operand shapes disagree");
  const float* xd = x.typed_data();
  const bool* md = mask.typed_data();
  auto add_row = [&](int64_t r, float* __restrict s0, float* __restrict s1) {
    const float* __restrict xr = xd + r * c;
    for (int64_t j = 0; j < c; ++j) {
      s0[j] += xr[j];
      s1[j] += xr[j] * xr[j];
    }
  };
  const std::vector<float> sums = ValidRowSums(pool, n, c, md, add_row);
  const float count = static_cast<float>(std::max<int64_t>(CountValid(md, n), 1));
  float* mean = mean_out->typed_data();
  float* var = var_out->typed_data();
  for (int64_t j = 0; j < c; ++j) {
    mean[j] = sums[j] / count;
    var[j] = std::max(sums[c + j] / count - mean[j] * mean[j], 0.0f);
  }
  std::vector<float> scale, shift;
  Affine(gamma.typed_data(), beta.typed_data(), mean, var, epsilon, c, scale, shift);
  float* yd = y->typed_data();
  EachRow(pool, n, [&](int64_t r) {
    const float* __restrict xr = xd + r * c;
    float* __restrict yr = yd + r * c;
    if (!md[r]) {
      std::fill(yr, yr + c, 0.0f);
    } else if (relu) {
      for (int64_t j = 0; j < c; ++j) yr[j] = std::max(xr[j] * scale[j] + shift[j], 0.0f);
    } else {
      for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * scale[j] + shift[j];
    }
  });
  return ffi::Error::Success();
}

// With g = dy on the rows that passed (valid, and x * scale + shift > 0 under the ReLU) and
// xhat = (x - mean) / sqrt(var + eps):
//   dbeta = sum g,  dgamma = sum g * xhat,
//   dx = gamma / sqrt(var + eps) * (g - dbeta / n - xhat * dgamma / n) on valid rows, 0 on padded ones.
ffi::Error NormVjpImpl(ffi::ThreadPool pool, Matrix dy, Matrix x, Mask mask, Vector gamma, Vector beta, Vector mean,
                       Vector var, ffi::Result<Matrix> dx, ffi::Result<Vector> dgamma, ffi::Result<Vector> dbeta,
                       float epsilon, int64_t relu) {
  const int64_t n = x.dimensions()[0], c = x.dimensions()[1];
  if (dy.dimensions()[0] != n || dy.dimensions()[1] != c || beta.dimensions()[0] != c ||
      mask.dimensions()[0] != n || gamma.dimensions()[0] != c || mean.dimensions()[0] != c ||
      var.dimensions()[0] != c)
    return ffi::Error::InvalidArgument("jsparse3d norm_vjp: operand shapes disagree");
  const float *dyd = dy.typed_data(), *xd = x.typed_data(), *mu = mean.typed_data();
  const bool* md = mask.typed_data();
  std::vector<float> inv(static_cast<size_t>(c)), scale, shift;
  for (int64_t j = 0; j < c; ++j) inv[j] = 1.0f / std::sqrt(var.typed_data()[j] + epsilon);
  Affine(gamma.typed_data(), beta.typed_data(), mu, var.typed_data(), epsilon, c, scale, shift);
  // g, the cotangent on the rows and channels that passed, for row r.
  auto gate = [&](int64_t r, float* __restrict g) {
    const float* __restrict dyr = dyd + r * c;
    const float* __restrict xr = xd + r * c;
    if (relu) {
      for (int64_t j = 0; j < c; ++j) g[j] = xr[j] * scale[j] + shift[j] > 0.0f ? dyr[j] : 0.0f;
    } else {
      std::copy(dyr, dyr + c, g);
    }
  };
  auto add_row = [&](int64_t r, float* __restrict s0, float* __restrict s1) {
    float g[kMaxStackChannels];
    std::vector<float> heap;
    float* gr = c <= kMaxStackChannels ? g : (heap.resize(static_cast<size_t>(c)), heap.data());
    gate(r, gr);
    const float* __restrict xr = xd + r * c;
    for (int64_t j = 0; j < c; ++j) {
      s0[j] += gr[j];
      s1[j] += gr[j] * ((xr[j] - mu[j]) * inv[j]);
    }
  };
  const std::vector<float> sums = ValidRowSums(pool, n, c, md, add_row);
  const float count = static_cast<float>(std::max<int64_t>(CountValid(md, n), 1));
  std::vector<float> k(static_cast<size_t>(c)), mean_g(static_cast<size_t>(c)), mean_gx(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) {
    dbeta->typed_data()[j] = sums[j];
    dgamma->typed_data()[j] = sums[c + j];
    k[j] = gamma.typed_data()[j] * inv[j];
    mean_g[j] = sums[j] / count;
    mean_gx[j] = sums[c + j] / count;
  }
  float* dxd = dx->typed_data();
  EachRow(pool, n, [&](int64_t r) {
    float* __restrict out = dxd + r * c;
    if (!md[r]) {
      std::fill(out, out + c, 0.0f);
      return;
    }
    gate(r, out);
    const float* __restrict xr = xd + r * c;
    for (int64_t j = 0; j < c; ++j)
      out[j] = k[j] * (out[j] - mean_g[j] - ((xr[j] - mu[j]) * inv[j]) * mean_gx[j]);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseNorm, NormImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Mask>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Ret<Matrix>()
                                  .Ret<Vector>()
                                  .Ret<Vector>()
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseNormVjp, NormVjpImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Matrix>()
                                  .Arg<Mask>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Arg<Vector>()
                                  .Ret<Matrix>()
                                  .Ret<Vector>()
                                  .Ret<Vector>()
                                  .Attr<float>("epsilon")
                                  .Attr<int64_t>("relu"));
