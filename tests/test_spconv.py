"""With the ``bench`` extra (torch + spconv 2.3.8): the padded strided conv against spconv's SparseConv3d(k, s, p)
on LArTPC and LiDAR-like inputs: the same output sites and values, and the transposed convs agree."""

import numpy as np
import pytest

import jax.numpy as jnp

import jsparse3d as js
from jsparse3d import data

torch = pytest.importorskip("torch", reason="the bench extra (torch, spconv) is not installed")
spc = pytest.importorskip("spconv.pytorch", reason="the bench extra (torch, spconv) is not installed")


def _inputs():
  ev = data.synthetic_lartpc_event(seed=3, size=192)
  scan = data.synthetic_lidar_scan(1, beams=32, azimuths=512)
  xyz = np.floor(scan["points"][:, :3] / 0.1).astype(np.int64)
  xyz -= xyz.min(axis=0)
  lidar, _ = np.unique(xyz, axis=0, return_index=True)
  return {"lartpc": ev["coords"].astype(np.int64), "lidar": lidar}


@pytest.mark.parametrize("name", ["lartpc", "lidar"])
@pytest.mark.parametrize("k, s, p", [(3, 2, 1), (3, 1, 1), (2, 2, 0)])
def test_padded_conv_matches_spconv(name, k, s, p):
  torch.set_num_threads(1)  # spconv's CPU scatter is racy with more threads
  rng = np.random.default_rng(0)
  coords = _inputs()[name] + k  # room before the first site too: spconv's grid starts at 0, ours is unbounded
  feats = rng.standard_normal((len(coords), 4)).astype(np.float32)
  w = rng.standard_normal((k, k, k, 4, 5)).astype(np.float32) * 0.2
  shape = [int(v) + 2 * k for v in coords.max(axis=0) + 1]  # room past the last site: no boundary cut
  idx = torch.from_numpy(np.c_[np.zeros(len(coords)), coords].astype(np.int32))
  conv = spc.SparseConv3d(4, 5, k, stride=s, padding=p, bias=False)
  conv.weight.data = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 0, 1, 2, 3)))  # [C_out, kx, ky, kz, C_in]
  with torch.no_grad():
    ref = conv(spc.SparseConvTensor(torch.from_numpy(feats), idx, shape, 1))
  ref_idx = ref.indices.numpy().astype(np.int64)
  order = np.lexsort(ref_idx.T[::-1])
  ref_idx, ref_feats = ref_idx[order], ref.features.numpy()[order]

  x = js.SparseTensor.from_coords(coords, feats, duplicates="error")
  y = js.ops.conv3d(x, jnp.asarray(w), stride=s, padding=p, capacity=len(ref_idx) + 7)
  js.raise_if_error(y)
  n = int(y.num_valid)
  got = np.asarray(y.coords)[:n]
  np.testing.assert_array_equal(np.c_[got[:, :1], got[:, 1:] // s], ref_idx)
  scale = np.abs(ref_feats).max()
  assert np.abs(np.asarray(y.feats)[:n] - ref_feats).max() <= 1e-5 * scale
