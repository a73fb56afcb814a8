// CPU kernels for the two sparse-convolution primitives, called by XLA through its FFI.
//
// They take the kernel map exactly as the XLA lowering does (pairs compacted into offset-homogeneous blocks,
// optionally mirrored, with the centre offset as identity pairs) and compute the same sums, float32 throughout:
//
//   JsparseConv:   out[d] += x[s] @ w[o]                      out: [num_dst, C_out]
//   JsparseConvWt: out[d] += x[s] @ w[o]^T (input gradients)  out: [num_dst, C_in]
//   JsparseWgrad:  grad[o] += a[s]^T b[d]                     grad: [K, C_a, C_b]
//
// Determinism. Every output element is summed in an order fixed by the map alone, never by the number of
// threads or by which thread ran what:
// - conv: the work is split by destination row ranges, each computed in groups of rows; every row receives its
//   centre term, then its pairs in block order (a block's pairs, then its mirrored pairs), whatever the range or
//   the group that holds it.
// - wgrad: the pairs are cut into chunks that depend only on the map (runs of blocks of one offset, at most
//   kChunkPairs pairs); each chunk sums into its own partial, and the partials of an offset are added in chunk
//   order.
// Threads come from XLA's intra-op pool (_cpu_parallel.h).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__FMA__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"
#include "_cpu_parallel.h"
#include "_cpu_vectors.h"

namespace ffi = xla::ffi;
using jsparse3d::NumParts;
using jsparse3d::ParallelFor;
using jsparse3d::loadv;
using jsparse3d::madd;
using jsparse3d::maddv;
using jsparse3d::splatv;
using jsparse3d::storev;
using jsparse3d::v8;
#ifdef __AVX512F__
using jsparse3d::v16;
#endif

// Operand types (aliases also keep the commas of template arguments out of the FFI binding macros).
using Matrix = ffi::Buffer<ffi::F32, 2>;  // [rows, channels]
using Stack = ffi::Buffer<ffi::F32, 3>;   // [K, C_in, C_out]
using Rows = ffi::Buffer<ffi::S32, 1>;    // pair rows or block offsets
using Count = ffi::Buffer<ffi::S32, 0>;   // blocks in use
using Mask = ffi::Buffer<ffi::PRED, 1>;   // centre rows

namespace {

// out_q[j:j + J * lanes] += x_q[0:m] @ w[0:m, j:j + J * lanes] for P rows at once (w's rows n apart). Each weight
// vector loaded is used for all P rows, and the P x J accumulators are independent chains.
template <class V, int J, int P>
inline void rows_tile(const float* const* x, const float* w, float* const* out, int64_t m, int64_t n, int64_t j) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  V acc[P][J];
  for (int q = 0; q < P; ++q)
    for (int v = 0; v < J; ++v) acc[q][v] = loadv<V>(out[q] + j + L * v);
  for (int64_t i = 0; i < m; ++i) {
    V wv[J];
    for (int v = 0; v < J; ++v) wv[v] = loadv<V>(w + i * n + j + L * v);
    for (int q = 0; q < P; ++q) {
      const V xi = splatv<V>(x[q][i]);
      for (int v = 0; v < J; ++v) acc[q][v] = maddv(xi, wv[v], acc[q][v]);
    }
  }
  for (int q = 0; q < P; ++q)
    for (int v = 0; v < J; ++v) storev<V>(out[q] + j + L * v, acc[q][v]);
}

// out_q[0:n] += x_q[0:m] @ w[0:m, 0:n] for P rows at once: the widest vector tiles first, then 8 columns, then
// single columns. Every element is the same chain of fused multiply-adds over i whichever tile holds it.
// N > 0 fixes n at compile time (twice as fast at 16 channels); N = 0 takes it at run time.
template <int P, int64_t N>
void rows_times_matrix(const float* const* x, const float* w, float* const* out, int64_t m, int64_t n_) {
  const int64_t n = N ? N : n_;
  int64_t j = 0;
#ifdef __AVX512F__
  for (; j + 32 <= n; j += 32) rows_tile<v16, 2, P>(x, w, out, m, n, j);
  for (; j + 16 <= n; j += 16) rows_tile<v16, 1, P>(x, w, out, m, n, j);
#endif
  for (; j + 16 <= n; j += 16) rows_tile<v8, 2, P>(x, w, out, m, n, j);
  for (; j + 8 <= n; j += 8) rows_tile<v8, 1, P>(x, w, out, m, n, j);
  for (; j < n; ++j)
    for (int q = 0; q < P; ++q) {
      float acc = out[q][j];
      for (int64_t i = 0; i < m; ++i) acc = madd(x[q][i], w[i * n + j], acc);
      out[q][j] = acc;
    }
}

#ifdef __AVX512F__
constexpr int kRowsAtOnce = 8;  // 8 rows x 32 columns: 16 of the 32 vector registers accumulate
#else
constexpr int kRowsAtOnce = 6;  // 6 rows x 16 columns: 12 of the 16
#endif

// out[d_q] += x[s_q] @ w for the q < count rows listed, kRowsAtOnce at a time.
template <int64_t N>
void gather_gemm_scatter_n(const float* x, const int32_t* s, const int32_t* d, int64_t count, const float* w,
                           float* out, int64_t m, int64_t n) {
  constexpr int P = kRowsAtOnce;
  int64_t q = 0;
  for (; q + P <= count; q += P) {
    const float* xr[P];
    float* orr[P];
    for (int p = 0; p < P; ++p) xr[p] = x + s[q + p] * m, orr[p] = out + d[q + p] * n;
    rows_times_matrix<P, N>(xr, w, orr, m, n);
  }
  if (q + P / 2 <= count) {  // half a tile, then single rows
    const float* xr[P / 2];
    float* orr[P / 2];
    for (int p = 0; p < P / 2; ++p) xr[p] = x + s[q + p] * m, orr[p] = out + d[q + p] * n;
    rows_times_matrix<P / 2, N>(xr, w, orr, m, n);
    q += P / 2;
  }
  for (; q < count; ++q) {
    const float* xr[1] = {x + s[q] * m};
    float* orr[1] = {out + d[q] * n};
    rows_times_matrix<1, N>(xr, w, orr, m, n);
  }
}

void gather_gemm_scatter(const float* x, const int32_t* s, const int32_t* d, int64_t count, const float* w,
                         float* out, int64_t m, int64_t n) {
  switch (n) {  // the channel counts of the common models
    case 8: return gather_gemm_scatter_n<8>(x, s, d, count, w, out, m, n);
    case 16: return gather_gemm_scatter_n<16>(x, s, d, count, w, out, m, n);
    case 24: return gather_gemm_scatter_n<24>(x, s, d, count, w, out, m, n);
    case 32: return gather_gemm_scatter_n<32>(x, s, d, count, w, out, m, n);
    case 48: return gather_gemm_scatter_n<48>(x, s, d, count, w, out, m, n);
    case 64: return gather_gemm_scatter_n<64>(x, s, d, count, w, out, m, n);
    case 96: return gather_gemm_scatter_n<96>(x, s, d, count, w, out, m, n);
    case 128: return gather_gemm_scatter_n<128>(x, s, d, count, w, out, m, n);
    default: return gather_gemm_scatter_n<0>(x, s, d, count, w, out, m, n);
  }
}

// g[0:R, 0:J * lanes] += ap[0:np, 0:R]^T bp[0:np, :] with ap rows `ld` apart and bp, g rows `n` apart: R x J
// vector accumulators stay in registers over the whole panel, each element summed in pair order.
template <class V, int R, int J>
inline void panel_tile(const float* ap, int64_t ld, const float* bp, int64_t np, float* g, int64_t n) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  V acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < J; ++v) acc[r][v] = loadv<V>(g + r * n + L * v);
  for (int64_t q = 0; q < np; ++q) {
    V bq[J];
    for (int v = 0; v < J; ++v) bq[v] = loadv<V>(bp + q * n + L * v);
    for (int r = 0; r < R; ++r) {
      const V ar = splatv<V>(ap[q * ld + r]);
      for (int v = 0; v < J; ++v) acc[r][v] = maddv(ar, bq[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < J; ++v) storev<V>(g + r * n + L * v, acc[r][v]);
}

// Rows [0, R) of g over one packed panel: the widest tiles that fit, then 8 columns, then single columns. Where a
// strip of 16 columns would be left, the last 48 go as one R x 3 tile (an R x 1 tile loads a broadcast for every
// multiply-add): 0.53-0.66x the time at 48 and 80 channels.
template <int R>
inline void panel_rows(const float* ap, int64_t ld, const float* bp, int64_t np, float* g, int64_t n) {
  int64_t j = 0;
#ifdef __AVX512F__
  for (; j + 32 <= n && n - j != 48; j += 32) panel_tile<v16, R, 2>(ap, ld, bp + j, np, g + j, n);
  if (j + 48 <= n) panel_tile<v16, R, 3>(ap, ld, bp + j, np, g + j, n), j += 48;
  for (; j + 16 <= n; j += 16) panel_tile<v16, R, 1>(ap, ld, bp + j, np, g + j, n);
#endif
  for (; j + 16 <= n; j += 16) panel_tile<v8, R, 2>(ap, ld, bp + j, np, g + j, n);
  for (; j + 8 <= n; j += 8) panel_tile<v8, R, 1>(ap, ld, bp + j, np, g + j, n);
  for (; j < n; ++j)
    for (int r = 0; r < R; ++r) {
      float acc = g[r * n + j];
      for (int64_t q = 0; q < np; ++q) acc = madd(ap[q * ld + r], bp[q * n + j], acc);
      g[r * n + j] = acc;
    }
}

// Rows [i, i + R) of outer_products_direct: R x 16 register tiles read the gathered rows directly, then single
// columns.
template <int R>
inline void direct_rows(const float* a, int64_t lda, const float* b, int64_t ldb, const int32_t* s, const int32_t* d,
                        int64_t num_pairs, float* g, int64_t i, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    v8 acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = loadv<v8>(g + (i + r) * n + j);
      acc[r][1] = loadv<v8>(g + (i + r) * n + j + 8);
    }
    for (int64_t p = 0; p < num_pairs; ++p) {
      const float* ar = a + s[p] * lda + i;
      const float* br = b + d[p] * ldb + j;
      const v8 b0 = loadv<v8>(br), b1 = loadv<v8>(br + 8);
      for (int r = 0; r < R; ++r) {
        const v8 ar_r = splatv<v8>(ar[r]);
        acc[r][0] = maddv(ar_r, b0, acc[r][0]);
        acc[r][1] = maddv(ar_r, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      storev<v8>(g + (i + r) * n + j, acc[r][0]);
      storev<v8>(g + (i + r) * n + j + 8, acc[r][1]);
    }
  }
  for (; j < n; ++j) {
    float acc[R];
    for (int r = 0; r < R; ++r) acc[r] = g[(i + r) * n + j];
    for (int64_t p = 0; p < num_pairs; ++p) {
      const float bv = b[d[p] * ldb + j];
      for (int r = 0; r < R; ++r) acc[r] = madd(a[s[p] * lda + i + r], bv, acc[r]);
    }
    for (int r = 0; r < R; ++r) g[(i + r) * n + j] = acc[r];
  }
}

// outer_products for few channels: register tiles read the gathered rows directly (at up to 16 x 32 channels they
// stay in cache, and packing would cost as much as the arithmetic). The same sums, in the same order.
void outer_products_direct(const float* a, int64_t lda, const float* b, int64_t ldb, const int32_t* s, const int32_t* d,
                           int64_t num_pairs, float* g, int64_t m, int64_t n) {
  int64_t i = 0;
  for (; i + 6 <= m; i += 6) direct_rows<6>(a, lda, b, ldb, s, d, num_pairs, g, i, n);
  for (; i + 4 <= m; i += 4) direct_rows<4>(a, lda, b, ldb, s, d, num_pairs, g, i, n);
  for (; i < m; ++i) direct_rows<1>(a, lda, b, ldb, s, d, num_pairs, g, i, n);
}

// g[0:m, 0:n] += sum over the pairs p of a[s_p, 0:m]^T b[d_p, 0:n] (g rows `n` apart), every element summed in
// pair order. The gathered rows are copied a panel of pairs at a time, so that the tiles read contiguous, cached
// memory instead of gathering every row again for every tile.
void outer_products(const float* a, int64_t lda, const float* b, int64_t ldb, const int32_t* s, const int32_t* d,
                    int64_t num_pairs, float* g, int64_t m, int64_t n) {
  if (m * n <= 512) return outer_products_direct(a, lda, b, ldb, s, d, num_pairs, g, m, n);
  constexpr int64_t kPanel = 128;  // pairs per panel: both panels stay in L2 at up to 256 channels
  std::vector<float> ap(static_cast<size_t>(kPanel * m)), bp(static_cast<size_t>(kPanel * n));
  for (int64_t p0 = 0; p0 < num_pairs; p0 += kPanel) {
    const int64_t np = std::min(kPanel, num_pairs - p0);
    for (int64_t q = 0; q < np; ++q) {
      std::memcpy(ap.data() + q * m, a + s[p0 + q] * lda, sizeof(float) * static_cast<size_t>(m));
      std::memcpy(bp.data() + q * n, b + d[p0 + q] * ldb, sizeof(float) * static_cast<size_t>(n));
    }
    int64_t i = 0;
    for (; i + kRowsAtOnce <= m; i += kRowsAtOnce)
      panel_rows<kRowsAtOnce>(ap.data() + i, m, bp.data(), np, g + i * n, n);
    for (; i + 4 <= m; i += 4) panel_rows<4>(ap.data() + i, m, bp.data(), np, g + i * n, n);
    for (; i < m; ++i) panel_rows<1>(ap.data() + i, m, bp.data(), np, g + i * n, n);
  }
}

// The map operands shared by both kernels.
struct Map {
  const int32_t* src;
  const int32_t* dst;
  const int32_t* block_offset;
  int64_t num_blocks;
  int64_t block_size;
  const bool* center_mask;
  int64_t center;
  bool mirrored;
};

// Whether (src, dst) is a real pair: padding pairs hold a sentinel row outside the operands.
inline bool RealPair(int32_t sp, int32_t dp, int64_t num_src, int64_t num_dst) {
  return sp >= 0 && dp >= 0 && sp < num_src && dp < num_dst;
}

ffi::Error CheckMap(const Map& map, int64_t num_pairs_cap, int64_t num_block_cap, int64_t num_offsets) {
  if (map.block_size <= 0 || num_block_cap * map.block_size > num_pairs_cap)
    return ffi::Error::InvalidArgument("jsparse3d: block_size does not match the pair arrays");
  if (map.num_blocks < 0 || map.num_blocks > num_block_cap)
    return ffi::Error::InvalidArgument("jsparse3d: num_blocks exceeds the block arrays");
  for (int64_t b = 0; b < map.num_blocks; ++b)
    if (map.block_offset[b] < 0 || map.block_offset[b] >= num_offsets)
      return ffi::Error::InvalidArgument("jsparse3d: a block offset is outside the kernel");
  return ffi::Error::Success();
}

constexpr int64_t kMacsPerItem = int64_t{1} << 21;  // conv: multiply-adds per work item (at least)

// conv: output bytes of a row group, which stays in cache while every offset adds to it (256-4,096 rows). Measured
// on a 66k-site LiDAR map against one group per range: forward 0.67 / 0.64 / 0.90 of the time at 64 / 128 / 256
// channels, input gradient 0.79 / 0.80 / 0.99.
constexpr int64_t kGroupBytes = int64_t{1} << 18;

constexpr int64_t kChunkPairs = 8192;   // wgrad: pairs per chunk (at most)

struct ConvArgs {
  Map map;
  const float* x;   // [num_src, c_in]
  const float* w;   // [k, c_in, c_out]
  float* out;       // [num_dst, c_out]
  int64_t num_src, num_dst, k, c_in, c_out;
};

// Computes the output rows [lo, hi), `group` rows at a time: each group's rows are zeroed, receive their centre
// term, then their pairs in block order (a block's pairs, then its mirrored pairs), so that a group's output rows
// stay in cache while every offset adds to them, instead of every offset sweeping the whole range. A row receives
// the same terms in the same order whatever the group size, so the group size never changes a result.
void ConvRows(const ConvArgs args, const int64_t lo, const int64_t hi, const int64_t group) {
  const Map map = args.map;
  const int64_t c_in = args.c_in, c_out = args.c_out, wsize = c_in * c_out;
  const int64_t num_groups = (hi - lo + group - 1) / group, bs = map.block_size;
  const int64_t num_pairs = map.num_blocks * bs;
  auto real = [&args](int32_t sp, int32_t dp) { return RealPair(sp, dp, args.num_src, args.num_dst); };
  // The pairs of each group in summation order (a counting sort, stable): rows s, d and the weight index.
  std::vector<int64_t> start(static_cast<size_t>(num_groups + 1), 0);
  for (int64_t p = 0; p < num_pairs; ++p) {
    const int32_t sp = map.src[p], dp = map.dst[p];
    if (!real(sp, dp)) continue;
    if (dp >= lo && dp < hi) ++start[(dp - lo) / group + 1];
    if (map.mirrored && sp >= lo && sp < hi) ++start[(sp - lo) / group + 1];
  }
  for (int64_t g = 0; g < num_groups; ++g) start[g + 1] += start[g];
  thread_local std::vector<int32_t> entries;  // kept between calls: no fresh pages per call
  entries.resize(static_cast<size_t>(3 * start[num_groups]));
  int32_t *es = entries.data(), *ed = es + start[num_groups], *ew = ed + start[num_groups];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t b = 0; b < map.num_blocks; ++b) {
    const int32_t o = map.block_offset[b];
    for (int64_t p = b * bs, end = p + bs; p < end; ++p) {
      const int32_t sp = map.src[p], dp = map.dst[p];
      if (!real(sp, dp) || dp < lo || dp >= hi) continue;
      const int64_t e = next[(dp - lo) / group]++;
      es[e] = sp, ed[e] = dp, ew[e] = o;
    }
    if (!map.mirrored) continue;
    for (int64_t p = b * bs, end = p + bs; p < end; ++p) {
      const int32_t sp = map.src[p], dp = map.dst[p];
      if (!real(sp, dp) || sp < lo || sp >= hi) continue;
      const int64_t e = next[(sp - lo) / group]++;
      es[e] = dp, ed[e] = sp, ew[e] = static_cast<int32_t>(args.k - 1 - o);
    }
  }
  std::vector<int32_t> rows;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t glo = lo + g * group, ghi = std::min(hi, glo + group);
    std::fill(args.out + glo * c_out, args.out + ghi * c_out, 0.0f);
    if (map.center >= 0) {
      rows.clear();
      for (int64_t r = glo; r < ghi; ++r)
        if (map.center_mask[r]) rows.push_back(static_cast<int32_t>(r));
      gather_gemm_scatter(args.x, rows.data(), rows.data(), static_cast<int64_t>(rows.size()),
                          args.w + map.center * wsize, args.out, c_in, c_out);
    }
    // Runs of one weight: a row appears at most once per weight, so a run never holds a row twice.
    for (int64_t e = start[g], end = start[g + 1]; e < end;) {
      int64_t f = e + 1;
      while (f < end && ew[f] == ew[e]) ++f;
      gather_gemm_scatter(args.x, es + e, ed + e, f - e, args.w + ew[e] * wsize, args.out, c_in, c_out);
      e = f;
    }
  }
}

// Row boundaries that give each of `items` contiguous destination ranges about the same number of products.
// Equal row counts would not: real rows are a prefix, so on a coarse level of a large tensor (half padding or
// more) one range would hold all the work. Which range a row falls in never changes its result.
std::vector<int64_t> BalancedRows(const ConvArgs& args, int64_t items) {
  const Map& map = args.map;
  std::vector<int64_t> bounds(static_cast<size_t>(items + 1), args.num_dst);
  bounds[0] = 0;
  if (items == 1) return bounds;
  std::vector<int64_t> work(static_cast<size_t>(args.num_dst), 0);
  for (int64_t p = 0, end = map.num_blocks * map.block_size; p < end; ++p) {
    const int32_t sp = map.src[p], dp = map.dst[p];
    if (!RealPair(sp, dp, args.num_src, args.num_dst)) continue;
    ++work[dp];
    if (map.mirrored) ++work[sp];
  }
  if (map.center >= 0)
    for (int64_t r = 0; r < args.num_dst; ++r) work[r] += map.center_mask[r];
  int64_t total = 0;
  for (int64_t w : work) total += w;
  int64_t done = 0, item = 1;
  for (int64_t r = 0; r < args.num_dst && item < items; ++r) {
    done += work[r];
    while (item < items && done * items >= total * item) bounds[item++] = r + 1;
  }
  return bounds;
}

// The conv of `x` with the weight stack `w` ([k, c_in, c_out], the layout ConvRows reads).
ffi::Error RunConv(ffi::ThreadPool& pool, Matrix& x, const float* w, int64_t k, int64_t w_c_in, int64_t w_c_out,
                   Rows& src, Rows& dst, Rows& block_offset, Count& num_blocks, Mask& center_mask,
                   ffi::Result<Matrix>& out, int64_t block_size, int64_t center, int64_t mirrored) {
  ConvArgs args{{src.typed_data(), dst.typed_data(), block_offset.typed_data(), num_blocks.typed_data()[0],
                 block_size, center_mask.typed_data(), center, mirrored != 0},
                x.typed_data(), w, out->typed_data(),
                static_cast<int64_t>(x.dimensions()[0]), static_cast<int64_t>(out->dimensions()[0]),
                k, static_cast<int64_t>(x.dimensions()[1]), w_c_out};
  if (w_c_in != args.c_in || out->dimensions()[1] != args.c_out)
    return ffi::Error::InvalidArgument("jsparse3d conv: operand shapes disagree");
  if (center >= 0 && (args.num_src != args.num_dst || center_mask.dimensions()[0] != args.num_dst || center >= args.k))
    return ffi::Error::InvalidArgument("jsparse3d conv: a centre offset needs num_src == num_dst rows");
  if (ffi::Error e = CheckMap(args.map, src.dimensions()[0], block_offset.dimensions()[0], args.k); e.failure())
    return e;
  // One work item per thread once the products are worth sharing. Counted in products, not rows: the coarse
  // levels of a U-Net have few rows but wide channels, and ran on one thread when items were 2,048 rows.
  const int64_t products = args.map.num_blocks * block_size * (mirrored ? 2 : 1) + (center >= 0 ? args.num_dst : 0);
  const int64_t items =
      std::max<int64_t>(1, std::min<int64_t>(NumParts(pool), products * args.c_in * args.c_out / kMacsPerItem));
  const std::vector<int64_t> bounds = BalancedRows(args, items);
  const int64_t group = std::clamp<int64_t>(kGroupBytes / (4 * args.c_out), 256, 4096);
  ParallelFor::Run(pool, items, items, [&args, &bounds, group](int64_t item) {
    ConvRows(args, bounds[item], bounds[item + 1], group);
  });
  return ffi::Error::Success();
}

ffi::Error ConvImpl(ffi::ThreadPool pool, Matrix x, Stack w, Rows src, Rows dst, Rows block_offset, Count num_blocks,
                    Mask center_mask, ffi::Result<Matrix> out, int64_t block_size, int64_t center,
                    int64_t mirrored) {
  return RunConv(pool, x, w.typed_data(), w.dimensions()[0], w.dimensions()[1], w.dimensions()[2], src, dst,
                 block_offset, num_blocks, center_mask, out, block_size, center, mirrored);
}

// The conv with each w[o] transposed (w: [k, c_out, c_in]), as the input gradient needs it: the stack is
// transposed here, once per call, rather than by XLA in a separate kernel per layer. The products are exactly
// those of JsparseConv on XLA's transposed copy.
ffi::Error ConvWtImpl(ffi::ThreadPool pool, Matrix x, Stack w, Rows src, Rows dst, Rows block_offset,
                      Count num_blocks, Mask center_mask, ffi::Result<Matrix> out, int64_t block_size, int64_t center,
                      int64_t mirrored) {
  const int64_t k = w.dimensions()[0], rows = w.dimensions()[1], cols = w.dimensions()[2];
  std::vector<float> wt(static_cast<size_t>(k * rows * cols));
  const float* wd = w.typed_data();
  for (int64_t o = 0; o < k; ++o) {
    const float* from = wd + o * rows * cols;
    float* to = wt.data() + o * rows * cols;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) to[j * rows + i] = from[i * cols + j];
  }
  return RunConv(pool, x, wt.data(), k, cols, rows, src, dst, block_offset, num_blocks, center_mask, out,
                 block_size, center, mirrored);
}

ffi::Error WgradImpl(ffi::ThreadPool pool, Matrix a, Matrix b,
                     Rows src, Rows dst, Rows block_offset,
                     Count num_blocks, Mask center_mask,
                     ffi::Result<Stack> grad, int64_t block_size, int64_t center, int64_t mirrored) {
  const int64_t num_src = a.dimensions()[0], c_a = a.dimensions()[1];
  const int64_t num_dst = b.dimensions()[0], c_b = b.dimensions()[1];
  const int64_t k = grad->dimensions()[0];
  if (grad->dimensions()[1] != c_a || grad->dimensions()[2] != c_b)
    return ffi::Error::InvalidArgument("jsparse3d wgrad: operand shapes disagree");
  if (center >= 0 && (num_src != num_dst || center_mask.dimensions()[0] != num_dst || center >= k))
    return ffi::Error::InvalidArgument("jsparse3d wgrad: a centre offset needs num_src == num_dst rows");
  Map map{src.typed_data(), dst.typed_data(), block_offset.typed_data(), num_blocks.typed_data()[0], block_size,
          center_mask.typed_data(), center, mirrored != 0};
  if (ffi::Error e = CheckMap(map, src.dimensions()[0], block_offset.dimensions()[0], k); e.failure()) return e;

  // Chunks: runs of consecutive blocks with one offset, cut every kChunkPairs pairs; centre rows likewise.
  struct Chunk {
    int64_t offset, begin, end;  // pair range; for the centre chunk, a row range
  };
  std::vector<Chunk> chunks;
  const int64_t blocks_per_chunk = std::max<int64_t>(1, kChunkPairs / block_size);
  for (int64_t bl = 0; bl < map.num_blocks;) {
    int64_t e = bl + 1;
    while (e < map.num_blocks && e - bl < blocks_per_chunk && map.block_offset[e] == map.block_offset[bl]) ++e;
    chunks.push_back({map.block_offset[bl], bl * block_size, e * block_size});
    bl = e;
  }
  const int64_t num_pair_chunks = static_cast<int64_t>(chunks.size());
  if (center >= 0)
    for (int64_t r = 0; r < num_dst; r += kChunkPairs) chunks.push_back({center, r, std::min(r + kChunkPairs, num_dst)});
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
  const int64_t gsize = c_a * c_b;
  const int64_t parts = map.mirrored ? 2 : 1;
  std::vector<float> partial(static_cast<size_t>(num_chunks * parts * gsize), 0.0f);

  const float* ad = a.typed_data();
  const float* bd = b.typed_data();
  ParallelFor::Run(pool, num_chunks, NumParts(pool), [&](int64_t i) {
    // The centre's chunks are claimed first: each is the size of the largest pair chunks, and on LArTPC maps the
    // first holds over a quarter of all the work, which a thread claiming it last would finish alone (2 threads:
    // 1.07x one thread's speed at 16 channels, 1.8x with this order). The claims' order changes no sum.
    const int64_t c = (i + num_pair_chunks) % num_chunks;
    const Chunk& ch = chunks[c];
    float* g = partial.data() + c * parts * gsize;
    std::vector<int32_t> s, d;
    s.reserve(static_cast<size_t>(ch.end - ch.begin));
    d.reserve(static_cast<size_t>(ch.end - ch.begin));
    if (c >= num_pair_chunks) {
      for (int64_t r = ch.begin; r < ch.end; ++r)
        if (map.center_mask[r]) s.push_back(static_cast<int32_t>(r));
      outer_products(ad, c_a, bd, c_b, s.data(), s.data(), static_cast<int64_t>(s.size()), g, c_a, c_b);
      return;
    }
    for (int64_t p = ch.begin; p < ch.end; ++p) {
      const int32_t sp = map.src[p], dp = map.dst[p];
      if (!RealPair(sp, dp, num_src, num_dst)) continue;
      s.push_back(sp);
      d.push_back(dp);
    }
    const int64_t n = static_cast<int64_t>(s.size());
    outer_products(ad, c_a, bd, c_b, s.data(), d.data(), n, g, c_a, c_b);
    if (map.mirrored) outer_products(ad, c_a, bd, c_b, d.data(), s.data(), n, g + gsize, c_a, c_b);
  });

  // Sum the partials of each offset in chunk order.
  float* gd = grad->typed_data();
  std::fill(gd, gd + k * gsize, 0.0f);
  for (int64_t c = 0; c < num_chunks; ++c) {
    const float* g = partial.data() + c * parts * gsize;
    float* t = gd + chunks[c].offset * gsize;
    for (int64_t e = 0; e < gsize; ++e) t[e] += g[e];
    if (map.mirrored && c < num_pair_chunks) {
      float* tm = gd + (k - 1 - chunks[c].offset) * gsize;
      for (int64_t e = 0; e < gsize; ++e) tm[e] += g[gsize + e];
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// The operands of both conv targets (JsparseConvWt reads the same stack as [K, C_out, C_in]).
static auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<Matrix>()
      .Arg<Stack>()
      .Arg<Rows>()
      .Arg<Rows>()
      .Arg<Rows>()
      .Arg<Count>()
      .Arg<Mask>()
      .Ret<Matrix>()
      .Attr<int64_t>("block_size")
      .Attr<int64_t>("center")
      .Attr<int64_t>("mirrored");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseConv, ConvImpl, ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseConvWt, ConvWtImpl, ConvBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseWgrad, WgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Matrix>()
                                  .Arg<Matrix>()
                                  .Arg<Rows>()
                                  .Arg<Rows>()
                                  .Arg<Rows>()
                                  .Arg<Count>()
                                  .Arg<Mask>()
                                  .Ret<Stack>()
                                  .Attr<int64_t>("block_size")
                                  .Attr<int64_t>("center")
                                  .Attr<int64_t>("mirrored"));
