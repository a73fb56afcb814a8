"""With the ``bench`` extra (torch + spconv 2.3.8): the padded strided conv against spconv's SparseConv3d(k, s, p)
on LArTPC and LiDAR-like inputs: the same output sites and values, and the transposed convs agree."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

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
  bench = np.load(Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "lartpc_coords.npy")
  return {"lartpc": ev["coords"].astype(np.int64), "lidar": lidar, "bench_lartpc": bench.astype(np.int64)}


@pytest.mark.parametrize("name", ["lartpc", "lidar", "bench_lartpc"])
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


def _randomised(twin, path):
  """``twin`` with random weights and batch statistics, in eval mode; its state dict saved to ``path`` (.npz)."""
  torch.manual_seed(0)
  with torch.no_grad():
    for name, t in twin.state_dict().items():
      if name.endswith("running_mean"):
        t.copy_(torch.randn_like(t) * 0.1)
      elif name.endswith("running_var"):
        t.copy_(torch.rand_like(t) + 0.5)
      elif t.is_floating_point():
        t.copy_(torch.randn_like(t) * 0.1)
  twin.eval()
  np.savez(path, **{k: v.numpy() for k, v in twin.state_dict().items()})
  return twin


def _twins():
  import sys
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
  import networks_cpu
  torch.set_num_threads(1)
  return networks_cpu._spconv_modules()


def test_an_spconv_uresnet_state_dict_imports_with_the_same_forward(tmp_path):
  # The state-dict order is the order the model's __init__ builds its layers (jsparse3d.nn._weights reads it from
  # the source): a U-ResNet whose layers were built elsewhere exported its weights out of order, and only the
  # MinkUNet was checked against its twin.
  from flax import nnx
  _, _, TwinUResNet, _ = _twins()
  twin = _randomised(TwinUResNet(), tmp_path / "twin.npz")
  # Rebuilt by nnx.split / merge (as nnx.jit and a train step's state do), which sorts the attributes by name.
  model = nnx.merge(*nnx.split(js.models.UResNet(rngs=nnx.Rngs(1))))
  js.nn.import_torch_weights(model, tmp_path / "twin.npz")
  model.eval()
  ev = data.synthetic_lartpc_event(3, size=64)
  x = js.SparseTensor.from_coords(np.c_[np.zeros(len(ev["coords"]), np.int32), ev["coords"]], ev["energy"][:, None])
  ours = np.asarray(model(x).feats)[:int(x.num_valid)]
  idx = torch.from_numpy(np.asarray(x.coords)[:int(x.num_valid)].astype(np.int32))
  with torch.no_grad():
    theirs = twin(spc.SparseConvTensor(torch.from_numpy(ev["energy"][:, None]), idx, [64] * 3, 1)).numpy()
  assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_an_spconv_minkunet_state_dict_imports_with_the_same_forward(tmp_path):
  # A state dict of the spconv twin (benchmarks/networks_cpu.py builds it layer for layer), with random weights and
  # batch statistics, saved to .npz without pickle: jsparse3d's MinkUNet loaded from it gives the same logits.
  from flax import nnx
  _, _, _, TwinMinkUNet = _twins()
  twin = _randomised(TwinMinkUNet(0.5), tmp_path / "twin.npz")
  model = js.nn.import_torch_weights(js.models.MinkUNet(cr=0.5, rngs=nnx.Rngs(1)), tmp_path / "twin.npz")
  model.eval()

  from test_data_readers import KITTI_SAMPLE
  real = KITTI_SAMPLE / "000000.bin"
  scan = (data.read_semantickitti(real) if real.exists() else  # the real scan where it is available
          data.synthetic_lidar_scan(2, beams=32, azimuths=512))
  ev = data.scan_to_voxels(scan, 0.05)
  coords = ev["coords"].astype(np.int64) - ev["coords"].min(axis=0)
  x = js.SparseTensor.from_coords(coords, ev["feats"], duplicates="error")
  ours = np.asarray(model(x).feats)[:int(x.num_valid)]
  shape = [int(v) + (-int(v)) % 32 + 32 for v in coords.max(axis=0) + 1]
  idx = torch.from_numpy(np.c_[np.zeros(len(coords)), np.asarray(x.coords)[:int(x.num_valid), 1:]].astype(np.int32))
  with torch.no_grad():
    feats = torch.from_numpy(np.array(x.feats[:int(x.num_valid)]))
    theirs = twin(spc.SparseConvTensor(feats, idx, shape, 1)).numpy()
  assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


def test_the_networks_benchmark_times_each_framework_in_its_own_process(tmp_path):
  # benchmarks/networks_cpu.py runs jsparse3d and the spconv twin in worker processes of their own, checks the twin
  # on jsparse3d's weights, and times them in turn: each round's ratio is its jsparse3d time over its spconv time.
  import json
  import subprocess
  import sys
  script = Path(__file__).resolve().parents[1] / "benchmarks" / "networks_cpu.py"
  out = tmp_path / "networks.json"
  run = subprocess.run([sys.executable, str(script), "--only", "uresnet_4x192", "--rounds", "2", "--reps", "1",
                        "--min-seconds", "0", "--no-memory", "--out", str(out)], capture_output=True, text=True,
                       timeout=900)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  res = json.loads(out.read_text())["results"]["uresnet_4x192"]
  assert res["params"] == 2_741_477 and res["compile_s"] > 0
  assert res["logit_max_abs_diff"] <= 1e-4 * 25
  for op in ("forward", "train_step"):
    for threads in ("1t", "2t"):
      assert res[op]["rounds"] == 2
      ratio, ours, theirs = (res[op][k] for k in (f"ratio_vs_spconv_{threads}", "jsparse3d_ms", f"spconv_{threads}_ms"))
      # two rounds: the mean of the times' ratio lies between the rounds' ratios
      assert 0 < ratio["min"] <= ours["median"] / theirs["median"] * (1 + 1e-9)
      assert ours["median"] / theirs["median"] <= ratio["max"] * (1 + 1e-9)
  assert "leaked" not in run.stderr  # the workers skip the interpreter's teardown
