"""Everything the first GPU should tell us, in one command that prints as it goes.

  python -m pallas_kernels.gpu_check --out results.json [--inputs DIR] [--budget-s 420]

Four steps, each recorded in ``--out`` (rewritten after every result, so a run cut short still reports):

1. ``correctness``: every kernel compiled for the backend (Triton on a GPU) against its pure-jnp reference at
   every channel tier and dtype (conv forward, input gradient on the transposed map, weight gradient, in both
   dataflows: output-stationary and pair-compacted), and the ops with ``implementation="pallas"`` against
   ``"xla"`` (conv3d with gradients, index build and query, voxel_to_point with gradients).
2. ``timing``: index build and query, conv forward / input gradient / weight gradient (both dataflows) and
   devoxelize, Pallas against the XLA path, and a plain GEMM of the same multiply-adds (cuBLAS on a GPU), on the
   LArTPC and LiDAR benchmark inputs (``DIR/lartpc_coords.npy``, ``DIR/lidar_coords.npy``; generated when absent).
3. ``networks``: a U-ResNet and a MinkUNet training step with every conv on each dataflow, then on XLA.
4. ``autotune``: a short block-size search of the conv kernels of both dataflows per channels and dtype (each
   candidate's result checked against the reference before it is timed), then the faster dataflow at the tuned
   sizes, written to the tuning file (:mod:`pallas_kernels._tuning`).

On a CPU backend the same steps run at toy sizes with the kernels in Pallas interpret mode (a test runs it), so
the command cannot rot before a GPU shows up. ``--budget-s`` bounds the wall time: steps that would start after
it are recorded as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import _tuning

DTYPES = ("float32", "bfloat16", "float16")
# max |error| / max |reference| allowed per dtype (float32 runs with TF32 products, as cuDNN does by default)
TOLERANCE = {"float32": 5e-3, "bfloat16": 2e-2, "float16": 5e-3, "float32 exact": 2e-5}
STEPS = ("correctness", "timing", "networks", "autotune")


class Report:
  """Results under named keys, printed as they come and written to ``path`` after each."""

  def __init__(self, path: Path | None, deadline: float, select: tuple[str, ...] = ()):
    self.path, self.deadline, self.select, self.data = path, deadline, select, {}

  def add(self, step: str, name: str, value) -> None:
    self.data.setdefault(step, {})[name] = value
    print(f"[{step}] {name}: {json.dumps(value, default=str)}", flush=True)
    if self.path is not None:
      self.path.write_text(json.dumps(self.data, indent=1, default=str))

  def out_of_time(self) -> bool:
    return time.monotonic() > self.deadline

  def guarded(self, step: str, name: str, fn) -> None:
    """Runs ``fn()`` and records its result, or its error, or that the budget ran out first; items that match
    none of ``select`` (substrings of ``"step name"``) are left out."""
    if self.select and not any(s in f"{step} {name}" for s in self.select):
      return
    if self.out_of_time():
      self.add(step, name, "skipped: out of time budget")
      return
    t0 = time.monotonic()
    try:
      value = fn()
    except Exception as e:  # noqa: BLE001 - every failure is a finding to record, not a reason to stop
      value = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
    if isinstance(value, dict):
      value.setdefault("seconds", round(time.monotonic() - t0, 2))
    self.add(step, name, value)


def _environment() -> dict:
  device = jax.devices()[0]
  versions = {}
  for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "triton"):
    try:
      versions[mod] = __import__(mod).__version__
    except Exception:  # noqa: BLE001 - absent modules are part of the report
      versions[mod] = None
  return dict(backend=jax.default_backend(), device=device.device_kind, devices=jax.device_count(),
              python=platform.python_version(), **versions)


# ------------------------------------------------------------------------------------------------------------
# Inputs


def _coords(name: str, toy: bool, inputs: Path | None) -> np.ndarray:
  """``int32[N, 4]`` (batch, x, y, z) of one benchmark input; a small blob at toy sizes."""
  if toy:
    rng = np.random.default_rng(0 if name == "lartpc" else 1)
    c = np.unique(rng.integers(0, 6, (120, 3)), axis=0)
  elif inputs is not None and (inputs / f"{name}_coords.npy").exists():
    c = np.load(inputs / f"{name}_coords.npy", allow_pickle=False)
  else:
    from jsparse3d import data
    if name == "lartpc":
      c = np.concatenate([data.synthetic_lartpc_event(s, size=512)["coords"] for s in range(6)])
    else:
      pts = data.synthetic_lidar_scan(0, azimuths=2048)["points"][:, :3]
      c = np.floor(pts / 0.05).astype(np.int64)
      c -= c.min(axis=0)
    c = np.unique(c, axis=0)
  return np.c_[np.zeros(len(c), np.int64), c].astype(np.int32)


def _tensor(coords: np.ndarray, channels: int, dtype="float32", seed: int = 0):
  import jsparse3d as js
  feats = np.random.default_rng(seed).standard_normal((len(coords), channels)).astype(np.float32)
  return js.SparseTensor.from_coords(coords, jnp.asarray(feats, dtype), duplicates="error")


def _maps(coords: np.ndarray) -> dict:
  """The 3^3 submanifold kernel map of ``coords``, its neighbour table ``[N, 27]`` and the transposed table (the
  input gradient's)."""
  import jsparse3d as js
  kmap = js.ops.kernel_map(_tensor(coords, 1), 3)[0].with_tables()
  return dict(kmap=kmap, nbr=kmap.table, nbr_t=kmap.table_t, pairs=int(kmap.num_pairs))


def _pair_args(m, allow_tf32: bool = True):
  """A kernel map as the pair-compacted kernels take it: ``(arrays, keyword arguments)``."""
  return (m.src, m.dst, m.block_offset, m.num_blocks, m.center_mask), dict(
      pairs_per_block=m.block_size, center=m.center, mirrored=m.mirrored, allow_tf32=allow_tf32)


def _dataflows(maps: dict, allow_tf32: bool = True) -> dict:
  """``{dataflow: (forward(x, w), dgrad(dy, w_t), wgrad(x, dy))}``, jitted, for both dataflows on one map."""
  from pallas_kernels.conv import api
  kmap, nbr, nbr_t = maps["kmap"], maps["nbr"], maps["nbr_t"]
  (a, kw), (a_t, kw_t) = _pair_args(kmap, allow_tf32), _pair_args(kmap.T, allow_tf32)
  return {
      "output_stationary": (
          jax.jit(lambda x, w: api.conv_forward(x, w, nbr, allow_tf32=allow_tf32)),
          jax.jit(lambda dy, w_t: api.conv_forward(dy, w_t, nbr_t, allow_tf32=allow_tf32)),
          jax.jit(lambda x, dy: api.conv_wgrad(x, dy, nbr, allow_tf32=allow_tf32))),
      "pairs": (
          jax.jit(lambda x, w: api.pairs_forward(x, w, *a, num_out=kmap.num_dst, **kw)),
          jax.jit(lambda dy, w_t: api.pairs_forward(dy, w_t, *a_t, num_out=kmap.num_src, **kw_t)),
          jax.jit(lambda x, dy: api.pairs_wgrad(x, dy, *a, num_offsets=kmap.num_offsets, **kw))),
  }


def _rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12)) if want.size else 0.0


# ------------------------------------------------------------------------------------------------------------
# 1. correctness


def _conv_tier(maps, c, dtype, exact=False) -> dict:
  """Both dataflows' forward, input gradient and weight gradient against the reference, and a bitwise repeat."""
  from pallas_kernels.conv import reference
  rng = np.random.default_rng(c)
  n, k = maps["nbr"].shape
  x = jnp.asarray(rng.standard_normal((n, c)), dtype)
  w = jnp.asarray(rng.standard_normal((k, c, c)) / np.sqrt(k * c), dtype)
  dy = jnp.asarray(rng.standard_normal((n, c)), dtype)
  w_t = jnp.swapaxes(w, 1, 2)
  with jax.default_matmul_precision("highest"):
    want = (reference.conv_forward(x, w, maps["nbr"]), reference.conv_forward(dy, w_t, maps["nbr_t"]),
            reference.conv_wgrad(x, dy, maps["nbr"]))
  errors, deterministic = {}, True
  for flow, (fwd, dgrad, wgrad) in _dataflows(maps, allow_tf32=not exact).items():
    got = (fwd(x, w), dgrad(dy, w_t), wgrad(x, dy))
    prefix = "" if flow == "output_stationary" else "pairs "
    errors.update({prefix + name: _rel_error(g, r) for name, g, r in zip(("forward", "dgrad", "wgrad"), got, want)})
    deterministic &= all(np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
                         for a, b in zip(got, (fwd(x, w), dgrad(dy, w_t), wgrad(x, dy))))
  tol = TOLERANCE["float32 exact" if exact else np.dtype(dtype).name]
  return dict(errors=errors, tolerance=tol, deterministic=bool(deterministic),
              ok=bool(max(errors.values()) <= tol and deterministic))


def _ops_against_xla(coords, dtype) -> dict:
  import jsparse3d as js
  x = _tensor(coords, 16, dtype)
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 16, 16)) / np.sqrt(27 * 16), dtype)
  w2 = jnp.asarray(rng.standard_normal((2, 2, 2, 16, 16)) / np.sqrt(8 * 16), dtype)

  def loss(f, w, w2, impl):
    y = js.ops.conv3d(x.replace(feats=f), w, implementation=impl)
    z = js.ops.conv3d(y, w2, stride=2, implementation=impl)
    back = js.ops.conv_transpose3d(z, jnp.swapaxes(w2, -1, -2), stride=2, target=y, implementation=impl)
    return jnp.sum(back.feats.astype(jnp.float32) ** 2), (y.feats, back.feats)

  res = {}
  value_and_grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)
  with jax.default_matmul_precision("highest"):
    want = value_and_grad(x.feats, w, w2, "xla")
  got = value_and_grad(x.feats, w, w2, "pallas")
  (_, (y_g, b_g)), grads_g = got
  (_, (y_w, b_w)), grads_w = want
  res["conv3d"] = _rel_error(y_g, y_w)
  res["conv3d stride 2 + transposed"] = _rel_error(b_g, b_w)
  for name, a, b in zip(("grad x", "grad w", "grad w stride 2"), grads_g, grads_w):
    res[name] = _rel_error(a, b)
  tol = TOLERANCE[np.dtype(dtype).name] * 4  # three layers deep
  ok = max(res.values()) <= tol
  c = jnp.asarray(coords)
  pal = js.ops.build_index(c, len(c), implementation="pallas")
  xla = js.ops.build_index(c, len(c), implementation="xla")
  shifts = jnp.asarray(rng.integers(-1, 2, (len(c), 3)), jnp.int32)
  q = jnp.concatenate([c[:, :1], c[:, 1:] + shifts], 1)
  same = bool(np.array_equal(np.asarray(js.ops.query_index(pal, q)), np.asarray(js.ops.query_index(xla, q))))
  res["index query equal"] = same
  xyz = jnp.asarray(coords[:, 1:] + rng.uniform(-0.5, 0.5, (len(coords), 3)), jnp.float32)
  batch = jnp.zeros(len(coords), jnp.int32)
  devox = {impl: jax.value_and_grad(lambda f, impl=impl: jnp.sum(js.ops.voxel_to_point(
      x.replace(feats=f), xyz, batch, implementation=impl).astype(jnp.float32) ** 2))(x.feats)
      for impl in ("pallas", "xla")}
  res["voxel_to_point grad"] = _rel_error(devox["pallas"][1], devox["xla"][1])
  res["voxel_to_point loss"] = _rel_error(devox["pallas"][0], devox["xla"][0])
  ok = ok and same and res["voxel_to_point grad"] <= tol
  return dict(errors=res, tolerance=tol, ok=bool(ok))


def correctness(report: Report, toy: bool, inputs: Path | None) -> None:
  coords = _coords("lartpc", toy, inputs)
  if not toy:
    coords = coords[:20000]  # a 27-offset reference gather at 256 channels stays under 1 GB
  maps = _maps(coords)
  tiers = (16, 32) if toy else (16, 32, 64, 128, 256)
  for dtype in DTYPES:
    for c in tiers:
      report.guarded("correctness", f"conv {dtype} {c}x{c}", lambda c=c, dtype=dtype: _conv_tier(maps, c, dtype))
  report.guarded("correctness", "conv float32 16x16 without TF32", lambda: _conv_tier(
      maps, 16, "float32", exact=True))
  for dtype in DTYPES:
    report.guarded("correctness", f"ops pallas vs xla {dtype}", lambda dtype=dtype: _ops_against_xla(coords, dtype))


# ------------------------------------------------------------------------------------------------------------
# 2. timing


def _median_ms(fn, toy: bool) -> float:
  return 1e3 * _tuning.median_seconds(fn, reps=3 if toy else 15, inner=1 if toy else 10)


def _conv_timings(coords, c_in, c_out, dtype, toy) -> dict:
  import jsparse3d as js
  maps = _maps(coords)
  kmap, pairs = maps["kmap"], maps["pairs"]
  rng = np.random.default_rng(0)
  n = len(coords)
  x = jnp.asarray(rng.standard_normal((n, c_in)), dtype)
  dy = jnp.asarray(rng.standard_normal((n, c_out)), dtype)
  w = jnp.asarray(rng.standard_normal((27, c_in, c_out)) / np.sqrt(27 * c_in), dtype)
  st = _tensor(coords, c_in, dtype)
  w5 = w.reshape(3, 3, 3, c_in, c_out)
  w_t = jnp.swapaxes(w, 1, 2)

  def op(impl):
    f = jax.jit(lambda feats, w: js.ops.conv3d(st.replace(feats=feats), w, kmap=kmap, implementation=impl).feats)
    step = jax.jit(lambda feats, w, ct: jax.vjp(f, feats, w)[1](ct))
    return (lambda: f(st.feats, w5)), (lambda: step(st.feats, w5, dy))

  pal_f, pal_b = op("pallas")
  xla_f, xla_b = op("xla")
  a = jnp.asarray(rng.standard_normal((pairs, c_in)), dtype)
  b = jnp.asarray(rng.standard_normal((c_in, c_out)), dtype)
  gemm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  res = dict(rows=n, pairs=pairs, macs=pairs * c_in * c_out)
  timings = {"pallas conv3d forward": pal_f, "xla conv3d forward": xla_f,
             "pallas conv3d backward": pal_b, "xla conv3d backward": xla_b, "gemm of the same MACs": lambda: gemm(a, b)}
  for flow, (fwd, dgrad, wgrad) in _dataflows(maps).items():
    name = "pallas" if flow == "output_stationary" else "pairs"
    timings.update({f"{name} forward kernel": lambda fwd=fwd: fwd(x, w),
                    f"{name} dgrad kernel": lambda dgrad=dgrad: dgrad(dy, w_t),
                    f"{name} wgrad kernel": lambda wgrad=wgrad: wgrad(x, dy)})
  for name, fn in timings.items():
    res[name + " ms"] = _median_ms(fn, toy)
  for name in ("forward", "backward"):
    res[f"pallas / xla {name}"] = res[f"pallas conv3d {name} ms"] / res[f"xla conv3d {name} ms"]
  res["pallas forward kernel / gemm"] = res["pallas forward kernel ms"] / res["gemm of the same MACs ms"]
  total = lambda name: sum(res[f"{name} {k} kernel ms"] for k in ("forward", "dgrad", "wgrad"))
  res["pairs / output-stationary, forward + dgrad + wgrad"] = total("pairs") / total("pallas")
  return res


def _index_timings(coords, toy) -> dict:
  import jsparse3d as js
  c = jnp.asarray(coords)
  offsets = jnp.asarray(np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3),
                        jnp.int32)
  q = jnp.concatenate([jnp.broadcast_to(c[:, None, :1], (len(c), 27, 1)), c[:, None, 1:] + offsets[None]], 2)
  res = dict(rows=len(coords))
  for impl in ("pallas", "xla"):
    build = jax.jit(lambda c, impl=impl: js.ops.build_index(c, c.shape[0], implementation=impl))
    index = build(c)
    query = jax.jit(lambda index, q, impl=impl: js.ops.query_index(index, q, implementation=impl))
    res[f"{impl} build ms"] = _median_ms(lambda build=build: build(c), toy)
    res[f"{impl} 27-offset query ms"] = _median_ms(lambda query=query, index=index: query(index, q), toy)
  st = _tensor(coords, 1).without_cache()
  kmap = jax.jit(lambda st: js.ops.kernel_map(st, 3)[0].src)
  res["kernel map build ms"] = _median_ms(lambda: kmap(st), toy)
  return res


def _devoxelize_timings(coords, channels, toy) -> dict:
  import jsparse3d as js
  rng = np.random.default_rng(0)
  x = _tensor(coords, channels)
  xyz = jnp.asarray(np.repeat(coords[:, 1:], 2, 0) + rng.uniform(-0.5, 0.5, (2 * len(coords), 3)), jnp.float32)
  batch = jnp.zeros(len(xyz), jnp.int32)
  ct = jnp.asarray(rng.standard_normal((len(xyz), channels)), jnp.float32)
  res = dict(points=len(xyz), channels=channels)
  for impl in ("pallas", "xla"):
    f = jax.jit(lambda feats, impl=impl: js.ops.voxel_to_point(x.replace(feats=feats), xyz, batch,
                                                               implementation=impl))
    b = jax.jit(lambda feats, f=f: jax.vjp(f, feats)[1](ct))
    res[f"{impl} forward ms"] = _median_ms(lambda f=f: f(x.feats), toy)
    res[f"{impl} backward ms"] = _median_ms(lambda b=b: b(x.feats), toy)
  return res


def timing(report: Report, toy: bool, inputs: Path | None) -> None:
  lartpc, lidar = _coords("lartpc", toy, inputs), _coords("lidar", toy, inputs)
  report.guarded("timing", "index lartpc", lambda: _index_timings(lartpc, toy))
  report.guarded("timing", "index lidar", lambda: _index_timings(lidar, toy))
  cases = [("lartpc", lartpc, 16, 16, "float32"), ("lidar", lidar, 32, 32, "float32"),
           ("lidar", lidar, 32, 32, "bfloat16")]
  if not toy:
    cases += [("lartpc", lartpc, c, c, dt) for c in (64, 128, 256) for dt in ("float32", "bfloat16")]
  for name, coords, c_in, c_out, dtype in cases:
    report.guarded("timing", f"conv {name} {c_in}x{c_out} {dtype}", lambda coords=coords, c_in=c_in, c_out=c_out,
                   dtype=dtype: _conv_timings(coords, c_in, c_out, dtype, toy))
  report.guarded("timing", "devoxelize lidar 32", lambda: _devoxelize_timings(lidar, 32, toy))


# ------------------------------------------------------------------------------------------------------------
# 3. networks


def use_implementation(model, implementation: str | None):
  """Sets ``implementation`` on every convolution of ``model``."""
  from flax import nnx

  from jsparse3d import nn
  for _, node in nnx.iter_graph(model):
    if isinstance(node, (nn.SparseConv3d, nn.SparseConvTranspose3d)):
      node.implementation = implementation
  return model


def _network(kind: str, implementation: str, toy: bool, inputs: Path | None) -> dict:
  import optax
  from flax import nnx

  import jsparse3d as js
  from jsparse3d import data
  from jsparse3d import models
  from jsparse3d import training
  if kind == "uresnet":
    size = 32 if toy else 192
    events = [data.synthetic_lartpc_event(s, size=size) for s in range(1 if toy else 4)]
    coords = np.concatenate([np.c_[np.full(len(e["coords"]), b), e["coords"]] for b, e in enumerate(events)])
    feats = np.concatenate([e["energy"] for e in events])[:, None]
    labels = np.concatenate([e["labels"] for e in events])
    classes, make = 5, (lambda rngs: models.UResNet(filters=4, depth=2, rngs=rngs) if toy else
                        models.UResNet(rngs=rngs))
  else:
    coords = _coords("lidar", toy, inputs)
    feats = np.random.default_rng(0).standard_normal((len(coords), 4))
    labels = np.random.default_rng(1).integers(0, 19, len(coords))
    classes, make = 19, (lambda rngs: models.MinkUNet(cr=0.125 if toy else 1.0, rngs=rngs))
  x = js.SparseTensor.from_coords(coords.astype(np.int32), jnp.asarray(feats, jnp.float32),
                                  duplicates="error").plan_capacities((2, 4, 8, 16))
  y = jnp.asarray(labels, jnp.int32)
  model = use_implementation(make(nnx.Rngs(0)), implementation)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  graph, state = nnx.split((model, optimizer))
  step = training.make_train_step(graph, num_classes=classes, num_events=int(coords[:, 0].max()) + 1)
  t0 = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  compile_s = time.perf_counter() - t0
  first = compiled(state, x, y)
  box = {"state": first[0]}

  def run():
    box["state"], loss, _ = compiled(box["state"], x, y)
    return loss

  ms = 1e3 * _tuning.median_seconds(run, reps=3 if toy else 10, inner=1 if toy else 3)
  return dict(voxels=len(coords), compile_s=round(compile_s, 2), step_ms=ms, loss=float(first[1]))


@contextlib.contextmanager
def _environ(name: str, value: str | None):
  """``$name`` set to ``value`` inside the block (left as it is for None), and restored after it."""
  saved = os.environ.get(name)
  if value is not None:
    os.environ[name] = value
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = saved


def _with_dataflow(flow: str | None, fn):
  """``fn()`` with every Pallas convolution on ``flow`` (traced afresh: the dataflow is chosen at trace time)."""
  from pallas_kernels.conv import api
  with _environ(api.DATAFLOW_ENV, flow):
    jax.clear_caches()
    try:
      return fn()
    finally:
      jax.clear_caches()


def networks(report: Report, toy: bool, inputs: Path | None) -> None:
  variants = (("pallas", "pallas", "output_stationary"), ("pallas pairs", "pallas", "pairs"), ("xla", "xla", None))
  for kind in ("uresnet", "minkunet"):
    for name, impl, flow in variants:
      report.guarded("networks", f"{kind} {name}", lambda kind=kind, impl=impl, flow=flow: _with_dataflow(
          flow, lambda: _network(kind, impl, toy, inputs)))
    runs = report.data.get("networks", {})
    for name in ("pallas", "pallas pairs"):
      a, b = runs.get(f"{kind} {name}"), runs.get(f"{kind} xla")
      if isinstance(a, dict) and isinstance(b, dict) and "step_ms" in a and "step_ms" in b:
        report.add("networks", f"{kind} {name} / xla step", a["step_ms"] / b["step_ms"])


# ------------------------------------------------------------------------------------------------------------
# 4. autotune


def _candidates(c_in: int, c_out: int, toy: bool):
  from pallas_kernels.conv import api
  default = api.BlockSizes.for_channels(c_in, c_out)
  if toy:
    return [default, api.BlockSizes(rows=16, out_channels=16)]
  out = [default]
  wide = max(c_in, c_out) > 64
  for rows in (64, 128) if wide else (32, 64, 128):
    for bn in (32, 64) if wide else sorted({16, 32, 64} & set(range(16, max(c_out, 16) + 1))):
      for bk in (32, 64, 128) if wide else (64,):
        for warps in (4, 8):
          bs = api.BlockSizes(rows=rows, out_channels=bn, in_channels=bk, num_warps=warps)
          if bs not in out:
            out.append(bs)
  return out


def autotune(report: Report, toy: bool, inputs: Path | None, tuning_file: Path | None) -> None:
  import dataclasses

  from pallas_kernels.conv import api
  from pallas_kernels.conv import reference
  coords = _coords("lartpc", toy, inputs)
  maps = _maps(coords)
  nbr = maps["nbr"]
  pair_arrays, pair_kw = _pair_args(maps["kmap"])
  n = len(coords)
  shapes = [(16, "float32"), (32, "float32")] if toy else [(16, "float32"), (32, "float32"), (64, "float32"),
                                                            (128, "float32"), (32, "bfloat16"), (128, "bfloat16")]
  for c, dtype in shapes:
    for kernel in ("conv_forward", "conv_wgrad", "conv_pairs", "conv_pairs_wgrad"):
      def one(c=c, dtype=dtype, kernel=kernel):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((n, c)), dtype)
        w = jnp.asarray(rng.standard_normal((27, c, c)) / np.sqrt(27 * c), dtype)
        def run(bs):
          if kernel == "conv_forward":
            f = jax.jit(lambda x, w, t: api.conv_forward(x, w, t, block_sizes=bs))
            return lambda: f(x, w, nbr)
          if kernel == "conv_wgrad":
            f = jax.jit(lambda x, t: api.conv_wgrad(x, x, t, block_sizes=bs))
            return lambda: f(x, nbr)
          if kernel == "conv_pairs":
            f = jax.jit(lambda x, w: api.pairs_forward(x, w, *pair_arrays, num_out=maps["kmap"].num_dst,
                                                       block_sizes=bs, **pair_kw))
            return lambda: f(x, w)
          f = jax.jit(lambda x: api.pairs_wgrad(x, x, *pair_arrays, num_offsets=27, block_sizes=bs, **pair_kw))
          return lambda: f(x)

        default = api.BlockSizes.for_channels(c, c)
        cands = _candidates(c, c, toy)
        with jax.default_matmul_precision("highest"):
          want = (reference.conv_forward(x, w, nbr) if kernel in ("conv_forward", "conv_pairs") else
                  reference.conv_wgrad(x, x, nbr))
        tol = TOLERANCE[np.dtype(dtype).name]
        best, results = _tuning.search(cands, run, reps=3 if toy else 7, inner=1 if toy else 5,
                                       check=lambda got: _rel_error(got, want) <= tol)
        timed = {str(dataclasses.astuple(bs)): (t * 1e3 if isinstance(t, float) else t) for bs, t in results}
        res = dict(default=dataclasses.asdict(default), candidates=len(cands), ms=timed)
        if best is not None:
          res["best"] = dataclasses.asdict(best)
          t_best = dict(results)[best]
          t_default = dict(results).get(default)
          if isinstance(t_default, float):
            res["default / best"] = t_default / t_best
          if tuning_file is not None or not toy:  # toy sizes tune nothing worth keeping
            res["file"] = str(_tuning.record(kernel, dtype, c, c, dataclasses.asdict(best), file=tuning_file))
        return res
      report.guarded("autotune", f"{kernel} {dtype} {c}x{c}", one)

    def choose_dataflow(c=c, dtype=dtype):
      rng = np.random.default_rng(1)
      x = jnp.asarray(rng.standard_normal((n, c)), dtype)
      w = jnp.asarray(rng.standard_normal((27, c, c)) / np.sqrt(27 * c), dtype)
      ms = {}
      for flow, (fwd, dgrad, wgrad) in _dataflows(maps).items():  # each with its (tuned) block sizes
        calls = (lambda f=fwd: f(x, w), lambda f=dgrad: f(x, w), lambda f=wgrad: f(x, x))
        ms[flow] = sum(_median_ms(fn, toy) for fn in calls)
      best = min(ms, key=ms.get)
      res = {"forward + dgrad + wgrad ms": ms, "best": best}
      if tuning_file is not None or not toy:
        res["file"] = str(_tuning.record("conv_dataflow", dtype, c, c, {"dataflow": best}, file=tuning_file))
      return res
    report.guarded("autotune", f"dataflow {dtype} {c}x{c}", choose_dataflow)


# ------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", type=Path, help="JSON file of results (rewritten after each)")
  parser.add_argument("--inputs", type=Path, default=os.environ.get("JSPARSE3D_BENCH_DIR"),
                      help="folder with lartpc_coords.npy and lidar_coords.npy (default $JSPARSE3D_BENCH_DIR; "
                           "generated inputs when absent)")
  parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
  parser.add_argument("--budget-s", type=float, default=420.0, help="no step starts after this many seconds")
  parser.add_argument("--select", default="", help="comma-separated substrings: run only the items whose "
                      "'step name' contains one (e.g. 'minkunet pallas,256x256')")
  parser.add_argument("--toy", action="store_true", help="toy sizes (the default on a CPU backend)")
  parser.add_argument("--tuning-file", type=Path, help="where the autotuner writes and the kernels read block sizes "
                      "for the rest of the run (default: the tuning file)")
  args = parser.parse_args(argv)
  steps = [s.strip() for s in args.steps.split(",") if s.strip()]
  unknown = sorted(set(steps) - set(STEPS))
  if unknown:
    parser.error(f"unknown steps {unknown}; choose from {','.join(STEPS)}")
  toy = args.toy or jax.default_backend() == "cpu"
  select = tuple(s for s in args.select.split(",") if s)
  report = Report(args.out, time.monotonic() + args.budget_s, select)
  report.add("environment", "versions", _environment())
  report.add("environment", "sizes", "toy (interpret mode)" if toy else "full")
  t0 = time.monotonic()
  # What the kernels read is what the autotuner records, so its dataflow choice times each at its tuned sizes.
  with _environ(_tuning.ENV, None if args.tuning_file is None else str(args.tuning_file)):
    for step in steps:
      if step == "autotune":
        autotune(report, toy, args.inputs, args.tuning_file)
      else:
        globals()[step](report, toy, args.inputs)
      report.add("environment", f"{step} seconds", round(time.monotonic() - t0, 1))
  return report.data


if __name__ == "__main__":
  main(sys.argv[1:])
