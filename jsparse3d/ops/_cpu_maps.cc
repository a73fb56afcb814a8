// CPU kernels that build kernel maps, called by XLA through its FFI.
//
// They produce exactly the arrays of the XLA path in _kernel_map.py (the same pairs, in the same positions, the
// same padding), so either path can build a map for either conv implementation and the tests compare them for
// equality. What changes is the cost: one sequential pass over a hash table held in cache, instead of a few
// hundred vectorised HLO ops per map (XLA compiles those for seconds and runs their scatters slowly).
//
//   JsparseQueryMap:   pairs (row of coords[i] + offset in `source`, i) for every valid query row i and offset
//   JsparseCompact:    a [Kq, M] partner table compacted into offset-homogeneous blocks of pairs
//   JsparseDownsample: the output coordinates of a strided op, unique in order of first occurrence, in a given
//                      capacity (sites past it are flagged)
//   JsparseQueryRows:  the row of each query coordinate in `source`, or -1 (the point-voxel lookups)
//
// Everything is sequential, so results never depend on threads. The coordinate rules (range, key layout) are
// those of _coords.py.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

using Coords = ffi::Buffer<ffi::S32, 2>;  // [N, 4] rows (batch, x, y, z)
using Ints = ffi::Buffer<ffi::S32, 1>;
using Table = ffi::Buffer<ffi::S32, 2>;   // [Kq, M]
using Scalar = ffi::Buffer<ffi::S32, 0>;

namespace {

constexpr int32_t kSentinel = 1 << 30;  // _kernel_map.SENTINEL
constexpr int64_t kCoordMin = -(int64_t{1} << 17), kCoordMax = (int64_t{1} << 17) - 1, kMaxBatch = 1023;
constexpr int32_t kCapacityOverflow = 1, kOutOfRange = 2, kDuplicateCoords = 4;  // _errors bits

inline bool InRange(int64_t b, int64_t x, int64_t y, int64_t z) {
  return b >= 0 && b <= kMaxBatch && x >= kCoordMin && x <= kCoordMax && y >= kCoordMin && y <= kCoordMax &&
         z >= kCoordMin && z <= kCoordMax;
}

// The 64-bit key of _coords.pack_keys: batch (10 bits) | x, y, z + 2^17 (18 bits each).
inline uint64_t Pack(int64_t b, int64_t x, int64_t y, int64_t z) {
  return (uint64_t(b) << 54) | (uint64_t(x - kCoordMin) << 36) | (uint64_t(y - kCoordMin) << 18) |
         uint64_t(z - kCoordMin);
}

// Open addressing with linear probing over at least twice as many slots as keys; the first row inserted under
// a key keeps it.
class RowTable {
 public:
  explicit RowTable(int64_t n) {
    int64_t size = 64;
    while (size < 2 * n) size <<= 1;
    mask_ = static_cast<uint64_t>(size - 1);
    keys_.assign(static_cast<size_t>(size), 0);
    rows_.assign(static_cast<size_t>(size), -1);
  }

  // The row already stored under `key`, or -1 after storing `row` there.
  int32_t InsertOrFind(uint64_t key, int32_t row) {
    for (uint64_t s = Mix(key) & mask_;; s = (s + 1) & mask_) {
      if (rows_[s] < 0) {
        keys_[s] = key;
        rows_[s] = row;
        return -1;
      }
      if (keys_[s] == key) return rows_[s];
    }
  }

  int32_t Find(uint64_t key) const {
    for (uint64_t s = Mix(key) & mask_;; s = (s + 1) & mask_) {
      if (rows_[s] < 0) return -1;
      if (keys_[s] == key) return rows_[s];
    }
  }

 private:
  static uint64_t Mix(uint64_t k) {  // splitmix64's finaliser
    k ^= k >> 30;
    k *= 0xBF58476D1CE4E5B9ULL;
    k ^= k >> 27;
    k *= 0x94D049BB133111EBULL;
    return k ^ (k >> 31);
  }
  uint64_t mask_;
  std::vector<uint64_t> keys_;
  std::vector<int32_t> rows_;
};

struct Pairs {
  int32_t* src;
  int32_t* dst;
  int32_t* block_offset;
  int64_t num_pairs_cap, num_blocks_cap;
};

// _kernel_map._compact: table[o * m + i] is the partner of row i under offset o (or -1); pairs of one offset
// fill whole blocks of `bs` in row order, offsets one after another; the rest is sentinel padding.
ffi::Error Compact(const int32_t* table, int64_t kq, int64_t m, const int32_t* offset_ids, bool rows_are_dst,
                   int64_t bs, const Pairs& out, int32_t* num_blocks, int32_t* num_pairs) {
  std::vector<int64_t> ends(static_cast<size_t>(kq));
  int64_t total_blocks = 0, total_pairs = 0;
  for (int64_t o = 0; o < kq; ++o) {
    int64_t count = 0;
    for (int64_t i = 0; i < m; ++i) count += table[o * m + i] >= 0;
    total_pairs += count;
    total_blocks += (count + bs - 1) / bs;
    ends[o] = total_blocks;
  }
  if (total_blocks > out.num_blocks_cap || out.num_blocks_cap * bs > out.num_pairs_cap)
    return ffi::Error::InvalidArgument("jsparse3d compact: the pair arrays are too small for the map");
  std::fill(out.src, out.src + out.num_pairs_cap, kSentinel);
  std::fill(out.dst, out.dst + out.num_pairs_cap, kSentinel);
  for (int64_t o = 0; o < kq; ++o) {
    int64_t p = (o ? ends[o - 1] : 0) * bs;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t partner = table[o * m + i];
      if (partner < 0) continue;
      out.src[p] = rows_are_dst ? partner : static_cast<int32_t>(i);
      out.dst[p] = rows_are_dst ? static_cast<int32_t>(i) : partner;
      ++p;
    }
  }
  int64_t o = 0;
  for (int64_t b = 0; b < out.num_blocks_cap; ++b) {
    while (o < kq && b >= ends[o]) ++o;
    out.block_offset[b] = offset_ids[std::min(o, kq - 1)];
  }
  *num_blocks = static_cast<int32_t>(total_blocks);
  *num_pairs = static_cast<int32_t>(total_pairs);
  return ffi::Error::Success();
}

Pairs OutputPairs(ffi::Result<Ints>& src, ffi::Result<Ints>& dst, ffi::Result<Ints>& block_offset) {
  return Pairs{src->typed_data(), dst->typed_data(), block_offset->typed_data(),
               static_cast<int64_t>(src->dimensions()[0]), static_cast<int64_t>(block_offset->dimensions()[0])};
}

ffi::Error CompactImpl(Table table, Ints offset_ids, ffi::Result<Ints> src, ffi::Result<Ints> dst,
                       ffi::Result<Ints> block_offset, ffi::Result<Scalar> num_blocks,
                       ffi::Result<Scalar> num_pairs, int64_t block_size, int64_t rows_are_dst) {
  const int64_t kq = table.dimensions()[0], m = table.dimensions()[1];
  if (offset_ids.dimensions()[0] != kq || kq == 0 || block_size <= 0)
    return ffi::Error::InvalidArgument("jsparse3d compact: operand shapes disagree");
  return Compact(table.typed_data(), kq, m, offset_ids.typed_data(), rows_are_dst != 0, block_size,
                 OutputPairs(src, dst, block_offset), num_blocks->typed_data(), num_pairs->typed_data());
}

// Stores the valid, in-range rows of `coords`; returns the error bits of what it saw.
int32_t Insert(const int32_t* c, int64_t n_valid, RowTable& table) {
  int32_t errors = 0;
  for (int64_t i = 0; i < n_valid; ++i, c += 4) {
    if (!InRange(c[0], c[1], c[2], c[3])) {
      errors |= kOutOfRange;
      continue;
    }
    if (table.InsertOrFind(Pack(c[0], c[1], c[2], c[3]), static_cast<int32_t>(i)) >= 0) errors |= kDuplicateCoords;
  }
  return errors;
}

int64_t Valid(const Scalar& n, int64_t capacity) {
  return std::clamp<int64_t>(n.typed_data()[0], 0, capacity);
}

ffi::Error QueryMapImpl(Coords source, Scalar source_valid, Coords query, Scalar query_valid, Coords offsets,
                        Ints offset_ids, ffi::Result<Ints> src, ffi::Result<Ints> dst, ffi::Result<Ints> block_offset,
                        ffi::Result<Scalar> num_blocks, ffi::Result<Scalar> num_pairs, ffi::Result<Scalar> errors,
                        int64_t block_size) {
  const int64_t ns = source.dimensions()[0], m = query.dimensions()[0], kq = offsets.dimensions()[0];
  if (source.dimensions()[1] != 4 || query.dimensions()[1] != 4 || offsets.dimensions()[1] != 3 ||
      offset_ids.dimensions()[0] != kq || kq == 0 || block_size <= 0)
    return ffi::Error::InvalidArgument("jsparse3d query map: operand shapes disagree");
  RowTable rows(ns);
  *errors->typed_data() = Insert(source.typed_data(), Valid(source_valid, ns), rows);
  const int64_t mq = Valid(query_valid, m);
  std::vector<int32_t> table(static_cast<size_t>(kq * m), -1);
  const int32_t* q = query.typed_data();
  const int32_t* off = offsets.typed_data();
  for (int64_t i = 0; i < mq; ++i) {
    const int64_t b = q[4 * i], x = q[4 * i + 1], y = q[4 * i + 2], z = q[4 * i + 3];
    for (int64_t o = 0; o < kq; ++o) {
      const int64_t nx = x + off[3 * o], ny = y + off[3 * o + 1], nz = z + off[3 * o + 2];
      if (InRange(b, nx, ny, nz)) table[o * m + i] = rows.Find(Pack(b, nx, ny, nz));
    }
  }
  return Compact(table.data(), kq, m, offset_ids.typed_data(), true, block_size, OutputPairs(src, dst, block_offset),
                 num_blocks->typed_data(), num_pairs->typed_data());
}

ffi::Error QueryRowsImpl(Coords source, Scalar source_valid, Coords query, ffi::Result<Ints> rows,
                         ffi::Result<Scalar> errors) {
  const int64_t ns = source.dimensions()[0], m = query.dimensions()[0];
  if (source.dimensions()[1] != 4 || query.dimensions()[1] != 4 || rows->dimensions()[0] != m)
    return ffi::Error::InvalidArgument("jsparse3d query rows: operand shapes disagree");
  RowTable table(ns);
  *errors->typed_data() = Insert(source.typed_data(), Valid(source_valid, ns), table);
  const int32_t* q = query.typed_data();
  int32_t* r = rows->typed_data();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t b = q[4 * i], x = q[4 * i + 1], y = q[4 * i + 2], z = q[4 * i + 3];
    r[i] = InRange(b, x, y, z) ? table.Find(Pack(b, x, y, z)) : -1;
  }
  return ffi::Error::Success();
}

inline int64_t FloorTo(int64_t v, int64_t f) {
  const int64_t q = v >= 0 ? v / f : -((-v + f - 1) / f);
  return q * f;
}

ffi::Error DownsampleImpl(Coords coords, Scalar num_valid, ffi::Result<Coords> out_coords,
                          ffi::Result<Scalar> out_valid, ffi::Result<Ints> out_row, ffi::Result<Scalar> errors,
                          int64_t fx, int64_t fy, int64_t fz) {
  const int64_t n = coords.dimensions()[0], capacity = out_coords->dimensions()[0];
  if (coords.dimensions()[1] != 4 || out_coords->dimensions()[1] != 4 || fx <= 0 || fy <= 0 || fz <= 0)
    return ffi::Error::InvalidArgument("jsparse3d downsample: bad operand shape or factor");
  const int32_t* c = coords.typed_data();
  int32_t* oc = out_coords->typed_data();
  int32_t* row = out_row->typed_data();
  for (int64_t i = 0; i < capacity; ++i) {
    oc[4 * i] = -1;
    oc[4 * i + 1] = oc[4 * i + 2] = oc[4 * i + 3] = 0;
  }
  std::fill(row, row + n, -1);
  const int64_t nv = Valid(num_valid, n);
  RowTable inputs(nv), table(n);
  int32_t err = Insert(c, nv, inputs), count = 0;  // the input's own flags, as building its index raises them
  for (int64_t i = 0; i < nv; ++i) {
    const int64_t b = c[4 * i], x = FloorTo(c[4 * i + 1], fx), y = FloorTo(c[4 * i + 2], fy),
                  z = FloorTo(c[4 * i + 3], fz);
    if (!InRange(b, x, y, z)) {
      err |= kOutOfRange;
      continue;
    }
    const uint64_t key = Pack(b, x, y, z);
    const int32_t seen = count < capacity ? table.InsertOrFind(key, count) : table.Find(key);
    if (seen >= 0) {
      row[i] = seen;
      continue;
    }
    if (count >= capacity) {  // an output site past the capacity: flagged, so the caller never loses it unnoticed
      err |= kCapacityOverflow;
      continue;
    }
    int32_t* o = oc + 4 * count;
    o[0] = static_cast<int32_t>(b), o[1] = static_cast<int32_t>(x), o[2] = static_cast<int32_t>(y),
    o[3] = static_cast<int32_t>(z);
    row[i] = count++;
  }
  *out_valid->typed_data() = count;
  *errors->typed_data() = err;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseCompact, CompactImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Table>()
                                  .Arg<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Scalar>()
                                  .Ret<Scalar>()
                                  .Attr<int64_t>("block_size")
                                  .Attr<int64_t>("rows_are_dst"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseQueryMap, QueryMapImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Coords>()
                                  .Arg<Scalar>()
                                  .Arg<Coords>()
                                  .Arg<Scalar>()
                                  .Arg<Coords>()
                                  .Arg<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Ints>()
                                  .Ret<Scalar>()
                                  .Ret<Scalar>()
                                  .Ret<Scalar>()
                                  .Attr<int64_t>("block_size"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseDownsample, DownsampleImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Coords>()
                                  .Arg<Scalar>()
                                  .Ret<Coords>()
                                  .Ret<Scalar>()
                                  .Ret<Ints>()
                                  .Ret<Scalar>()
                                  .Attr<int64_t>("fx")
                                  .Attr<int64_t>("fy")
                                  .Attr<int64_t>("fz"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsparseQueryRows, QueryRowsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<Coords>()
                                  .Arg<Scalar>()
                                  .Arg<Coords>()
                                  .Ret<Ints>()
                                  .Ret<Scalar>());
