"""Whole networks on CPU: jsparse3d against the same architectures built in spconv 2.3.8, interleaved in one run.

Workloads (kernel maps rebuilt inside every timed call, as in real training):
  uresnet_4x192    UResNet (2.74 M parameters), 4 synthetic LArTPC events at 192^3 (seeds 0-3)
  uresnet_512      UResNet, one synthetic LArTPC event at 512^3
  minkunet_cr0.5   MinkUNet cr 0.5 on the SemanticKITTI scan at 0.05 m (a synthetic LiDAR scan if it is absent)
  minkunet_cr1.0   MinkUNet cr 1.0, same scan
  spvcnn_cr0.5     SPVCNN cr 0.5 on the scan's points (jsparse3d only: no spconv twin of the point branch)

For each workload it prints the forward (training-mode batch norm, no gradient) and training-step (forward, loss,
backward, Adam) medians and their ratios to spconv with 1 thread (its correct configuration) and 2 threads (what
users get; its CPU scatter-add then races), one ratio per round (``--rounds``, and more while an op's rounds have
taken less than ``--min-seconds``), with the median and the range. Each framework runs in a worker process of its
own, as its users run it, and this process drives them in turn (jsparse3d, spconv on 1 thread, on 2 threads; round
after round), so that both see the same load; each turn starts with an untimed call. It also prints the compile
time of the jitted training step; XLA's compiled-memory estimate; and the peak RSS of a fresh process that trains
that network alone. The spconv twins are checked first: equal parameter counts, and logits within 1e-4 of
jsparse3d's with jsparse3d's weights copied in.

Like ``python -m train``, it first restarts itself with glibc's huge-page tunable
(``jsparse3d.training.restart_with_huge_pages``), which the workers of both frameworks inherit
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` opts out, for the default environment).

Needs the ``bench`` extra for the peers (``pip install -e '.[bench]'``); without spconv it times jsparse3d alone
and says so. Run: ``python benchmarks/networks_cpu.py [--only uresnet_4x192,minkunet_cr0.5] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _timing import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
KITTI_ENV = "JSPARSE3D_KITTI_SAMPLE"  # the folder holding SemanticKITTI's velodyne scan 000000.bin
WORKLOADS = ("uresnet_4x192", "uresnet_512", "minkunet_cr0.5", "minkunet_cr1.0", "spvcnn_cr0.5")
VOXEL = 0.05
MAX_ROUNDS = 25


# ------------------------------------------------------------------------------------------------------------
# Inputs: plain numpy, written to a file so that a child process can time one framework without importing the
# other.


def kitti_scan_path() -> Path | None:
  path = Path(os.environ.get(KITTI_ENV, "/nonexistent")) / "000000.bin"
  return path if path.exists() else None


def make_inputs(name: str) -> dict:
  from jsparse3d import data
  if name.startswith("uresnet"):
    size, seeds = (192, range(4)) if name == "uresnet_4x192" else (512, range(1))
    events = [data.synthetic_lartpc_event(s, size=size) for s in seeds]
    coords = np.concatenate([np.c_[np.full(len(e["coords"]), b), e["coords"]] for b, e in enumerate(events)])
    feats = np.concatenate([e["energy"] for e in events])[:, None].astype(np.float32)
    labels = np.concatenate([e["labels"] for e in events]).astype(np.int64)
    return dict(coords=coords.astype(np.int32), feats=feats, labels=labels, points=np.zeros((0, 4), np.float32),
                spatial=np.array([size] * 3), classes=np.array(5), source=np.array(f"synthetic LArTPC {size}^3"))
  path = kitti_scan_path()
  if path is not None:
    scan, source = np.fromfile(path, np.float32).reshape(-1, 4), f"SemanticKITTI {path.name}"
  else:
    scan, source = data.synthetic_lidar_scan(0)["points"].astype(np.float32), "synthetic LiDAR scan (no KITTI scan)"
  vox = np.floor(scan[:, :3] / VOXEL).astype(np.int64)
  vox -= vox.min(axis=0)
  keys, first, inverse = np.unique(vox, axis=0, return_index=True, return_inverse=True)
  counts = np.bincount(inverse.reshape(-1), minlength=len(keys)).astype(np.float32)
  feats = np.stack([np.bincount(inverse.reshape(-1), scan[:, c], len(keys)) for c in range(4)], 1) / counts[:, None]
  rng = np.random.default_rng(0)
  # spconv's strided conv keeps floor((S - 2) / 2) + 1 output cells per axis, so an odd extent S at any level
  # would drop the last cells; multiples of 2^5 keep every voxel through MinkUNet's four downsamplings.
  spatial = -(-(keys.max(axis=0) + 1) // 32) * 32
  return dict(coords=np.c_[np.zeros(len(keys), np.int64), keys].astype(np.int32), feats=feats.astype(np.float32),
              labels=rng.integers(0, 19, len(keys)), points=scan, spatial=spatial, classes=np.array(19),
              source=np.array(source))


# ------------------------------------------------------------------------------------------------------------
# jsparse3d


class JsparseNet:
  """A model, its jitted forward and training step, on one input."""

  def __init__(self, name: str, inputs: dict):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jsparse3d as js
    from jsparse3d import training
    from train import tasks
    self.jax = jax
    n = len(inputs["coords"])
    self.num_events = int(inputs["coords"][:, 0].max()) + 1
    if name.startswith("spvcnn"):
      pts = inputs["points"]
      xyz = pts[:, :3] / VOXEL
      xyz = xyz - np.floor(xyz.min(axis=0))
      self.x = (jnp.asarray(xyz), jnp.zeros(len(pts), jnp.int32), jnp.asarray(pts))
      self.labels = jnp.asarray(np.random.default_rng(0).integers(0, 19, len(pts)), jnp.int32)
      kind, spec = "SPVCNN", dict(cr=0.5)
      forward = lambda model, x: (model(*x), x[1])
    else:
      # Coarse levels sized from the coordinates, as the trainer's collate does.
      self.x = js.SparseTensor.from_coords(inputs["coords"], inputs["feats"], duplicates="error").plan_capacities(
          (2, 4, 8, 16))
      self.labels = jnp.asarray(inputs["labels"], jnp.int32)
      kind, spec = ("UResNet", {}) if name.startswith("uresnet") else ("MinkUNet", dict(cr=float(name.split("cr")[1])))
      forward = training.sparse_logits
    self.model = tasks.init_model(kind, rngs=nnx.Rngs(0), **spec)  # as the trainer builds it
    self.rows = n
    classes = int(inputs["classes"])
    # Adam as the trainer runs it (fused_adam: optax's update in one native call).
    optimizer = nnx.jit(lambda m: nnx.Optimizer(m, training.fused_adam(1e-3), wrt=nnx.Param))(self.model)
    graph, self.state = nnx.split((self.model, optimizer))
    training.release_freed_memory()  # as the trainer does before its first compile
    step = training.make_train_step(graph, num_classes=classes, num_events=self.num_events, forward=forward)
    t0 = time.perf_counter()
    compiled = step.lower(self.state, self.x, self.labels).compile()
    self.compile_s = time.perf_counter() - t0
    training.release_freed_memory()  # as the trainer does after each compile
    mem = compiled.memory_analysis()
    self.xla_bytes = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    self.step = compiled
    mgraph, mstate = nnx.split(self.model)
    self.forward_fn = jax.jit(lambda s, x: forward(nnx.merge(mgraph, s), x)[0])
    self.model_state = mstate
    self.num_params = sum(v.size for v in jax.tree.leaves(nnx.state(self.model, nnx.Param)))

  def logits(self):
    return np.asarray(self.forward_fn(self.model_state, self.x))

  def forward(self):
    self.jax.block_until_ready(self.forward_fn(self.model_state, self.x))

  def train_step(self):
    self.state, loss, _ = self.step(self.state, self.x, self.labels)
    self.jax.block_until_ready(loss)


# ------------------------------------------------------------------------------------------------------------
# spconv twins, layer for layer.


def _spconv_modules():
  from _peers import import_spconv
  torch, spc = import_spconv()
  nn = torch.nn

  class Feats(nn.Module):  # a torch module on the features of a sparse tensor
    def __init__(self, module):
      super().__init__()
      self.module = module

    def forward(self, x):
      return x.replace_feature(self.module(x.features))

  def bn_relu(c):
    return Feats(nn.Sequential(nn.BatchNorm1d(c, momentum=0.1, eps=1e-5), nn.ReLU()))

  class PreAct(nn.Module):
    def __init__(self, cin, cout, key):
      super().__init__()
      self.a1, self.c1 = bn_relu(cin), spc.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
      self.a2, self.c2 = bn_relu(cout), spc.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
      self.skip = nn.Linear(cin, cout, bias=False) if cin != cout else None

    def forward(self, x):
      h = self.c2(self.a2(self.c1(self.a1(x))))
      s = x.features if self.skip is None else self.skip(x.features)
      return h.replace_feature(h.features + s)

  class UResNet(nn.Module):
    def __init__(self, filters=16, depth=5, reps=2, classes=5):
      super().__init__()
      c = [filters * (i + 1) for i in range(depth)]
      self.depth = depth
      self.stem = spc.SubMConv3d(1, c[0], 3, bias=False, indice_key="s0")
      self.enc = nn.ModuleList([nn.ModuleList([PreAct(c[i], c[i], f"s{i}") for _ in range(reps)])
                                for i in range(depth)])
      self.down_act = nn.ModuleList([bn_relu(c[i]) for i in range(depth - 1)])
      self.down = nn.ModuleList([spc.SparseConv3d(c[i], c[i + 1], 2, stride=2, bias=False, indice_key=f"d{i}")
                                 for i in range(depth - 1)])
      self.up_act = nn.ModuleList([bn_relu(c[i + 1]) for i in range(depth - 1)])
      self.up = nn.ModuleList([spc.SparseInverseConv3d(c[i + 1], c[i], 2, bias=False, indice_key=f"d{i}")
                               for i in range(depth - 1)])
      self.dec = nn.ModuleList([nn.ModuleList([PreAct(2 * c[i] if r == 0 else c[i], c[i], f"s{i}")
                                               for r in range(reps)]) for i in range(depth - 1)])
      self.head_act, self.head = bn_relu(c[0]), nn.Linear(c[0], classes)

    def forward(self, x):
      x = self.stem(x)
      skips = []
      for i in range(self.depth):
        for block in self.enc[i]:
          x = block(x)
        if i < self.depth - 1:
          skips.append(x)
          x = self.down[i](self.down_act[i](x))
      for i in reversed(range(self.depth - 1)):
        x = self.up[i](self.up_act[i](x))
        x = x.replace_feature(torch.cat([skips[i].features, x.features], 1))
        for block in self.dec[i]:
          x = block(x)
      return self.head(self.head_act(x).features)

  class ConvBNReLU(nn.Module):
    def __init__(self, conv, c):
      super().__init__()
      self.conv, self.act = conv, bn_relu(c)

    def forward(self, x):
      return self.act(self.conv(x))

  class Residual(nn.Module):
    def __init__(self, cin, cout, key):
      super().__init__()
      self.c1, self.b1 = spc.SubMConv3d(cin, cout, 3, bias=False, indice_key=key), bn_relu(cout)
      self.c2 = spc.SubMConv3d(cout, cout, 3, bias=False, indice_key=key)
      self.b2 = Feats(nn.BatchNorm1d(cout, momentum=0.1, eps=1e-5))
      self.proj = (nn.Sequential(spc.SubMConv3d(cin, cout, 1, bias=False, indice_key=key + "p"),
                                 Feats(nn.BatchNorm1d(cout, momentum=0.1, eps=1e-5))) if cin != cout else None)

    def forward(self, x):
      h = self.b2(self.c2(self.b1(self.c1(x))))
      s = x if self.proj is None else self.proj(x)
      return h.replace_feature(torch.relu(h.features + s.features))

  class MinkUNet(nn.Module):
    def __init__(self, cr, classes=19):
      super().__init__()
      cs = [int(cr * c) for c in (32, 32, 64, 128, 256, 256, 128, 96, 96)]
      self.stem = nn.Sequential(ConvBNReLU(spc.SubMConv3d(4, cs[0], 3, bias=False, indice_key="s0"), cs[0]),
                                ConvBNReLU(spc.SubMConv3d(cs[0], cs[0], 3, bias=False, indice_key="s0"), cs[0]))
      self.stages = nn.ModuleList()
      prev = cs[0]
      for i in range(4):
        self.stages.append(nn.Sequential(
            ConvBNReLU(spc.SparseConv3d(prev, prev, 2, stride=2, bias=False, indice_key=f"d{i}"), prev),
            Residual(prev, cs[i + 1], f"s{i + 1}"), Residual(cs[i + 1], cs[i + 1], f"s{i + 1}")))
        prev = cs[i + 1]
      self.ups = nn.ModuleList()
      skip_channels = (cs[3], cs[2], cs[1], cs[0])
      for j in range(4):
        out = cs[5 + j]
        self.ups.append(nn.ModuleList([
            ConvBNReLU(spc.SparseInverseConv3d(prev, out, 2, bias=False, indice_key=f"d{3 - j}"), out),
            nn.Sequential(Residual(out + skip_channels[j], out, f"s{3 - j}"), Residual(out, out, f"s{3 - j}"))]))
        prev = out
      self.classifier = nn.Linear(cs[8], classes)

    def forward(self, x):
      skips = [self.stem(x)]
      for stage in self.stages:
        skips.append(stage(skips[-1]))
      y = skips[4]
      for j in range(4):
        y = self.ups[j][0](y)
        y = self.ups[j][1](y.replace_feature(torch.cat([y.features, skips[3 - j].features], 1)))
      return self.classifier(y.features)

  return torch, spc, UResNet, MinkUNet


def torch_layout_weights(js_model) -> list[tuple[np.ndarray, str]]:
  """jsparse3d's parameters in the twin's layouts and order (the library's own mapping, which
  ``jsparse3d.nn.import_torch_weights`` inverts; batch-norm statistics stay at their initial values)."""
  from jsparse3d.nn import _weights
  return [(_weights._to_torch(np.asarray(var[...]), kind), kind) for _, var, kind in _weights._torch_slots(js_model)
          if kind not in ("bn_mean", "bn_var")]


def copy_weights(ours: list[tuple[np.ndarray, str]], torch_model) -> None:
  """``torch_layout_weights`` into the twin, checking that every tensor's size (and shape, but for convs) agrees."""
  import torch
  theirs = list(torch_model.parameters())
  if len(ours) != len(theirs):
    raise RuntimeError(f"parameter tensors differ: jsparse3d {len(ours)}, spconv {len(theirs)}")
  with torch.no_grad():
    for (w, kind), p in zip(ours, theirs):
      if w.size != p.numel() or (kind != "conv" and tuple(w.shape) != tuple(p.shape)):
        raise RuntimeError(f"parameter shapes differ: jsparse3d {w.shape}, spconv {tuple(p.shape)}")
      p.copy_(torch.from_numpy(np.ascontiguousarray(w)).reshape(p.shape))


class SpconvNet:
  def __init__(self, name: str, inputs: dict, weights: list[tuple[np.ndarray, str]] | None = None):
    torch, spc, UResNet, MinkUNet = _spconv_modules()
    self.torch, self.spc = torch, spc
    self.model = UResNet() if name.startswith("uresnet") else MinkUNet(float(name.split("cr")[1]))
    if weights is not None:
      copy_weights(weights, self.model)
    self.model.train()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.indices = torch.from_numpy(inputs["coords"]).contiguous()
    self.feats = torch.from_numpy(inputs["feats"])
    self.labels = torch.from_numpy(inputs["labels"])
    self.shape = [int(s) for s in inputs["spatial"]]
    self.batch = int(inputs["coords"][:, 0].max()) + 1
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

  def tensor(self):  # a fresh tensor: every call rebuilds the index pairs, as a training step does
    return self.spc.SparseConvTensor(self.feats, self.indices, self.shape, self.batch)

  def logits(self):
    with self.torch.no_grad():
      return self.model(self.tensor()).numpy()

  def forward(self):
    with self.torch.no_grad():
      self.model(self.tensor())

  def train_step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.torch.nn.functional.cross_entropy(self.model(self.tensor()), self.labels)
    loss.backward()
    self.opt.step()


# ------------------------------------------------------------------------------------------------------------


def median_ms(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - t0))
  return statistics.median(times)


def child_peak_rss(name: str, framework: str, inputs_path: Path) -> float:
  """Peak RSS (MB) of a fresh process that builds the network and runs 3 training steps."""
  out = subprocess.run([sys.executable, __file__, "--memory-child", name, framework, str(inputs_path)],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1" if framework.endswith(
                           "1t") else "2"))
  if out.returncode != 0:
    raise RuntimeError(f"memory child {name}/{framework} failed:\n{out.stderr[-3000:]}")
  return float(out.stdout.strip().splitlines()[-1])


def memory_child(name: str, framework: str, inputs_path: str) -> None:
  inputs = dict(np.load(inputs_path))
  if framework == "jsparse3d":
    net = JsparseNet(name, inputs)
  else:
    net = SpconvNet(name, inputs)
    net.torch.set_num_threads(1 if framework.endswith("1t") else 2)
  for _ in range(3):
    net.train_step()
  print(peak_rss_mb())


# ------------------------------------------------------------------------------------------------------------
# Timing: one worker process per framework, as each framework's users run it, driven in turn by this process.
# (Both frameworks in one process slowed jsparse3d's U-ResNet step from about 75 ms to 110-150 ms and spread it:
# torch's frees made glibc hand back, and XLA fault in again, the heap that jsparse3d's temporaries reuse.)


def worker(framework: str, name: str, inputs_path: str, weights_path: str) -> None:
  """Builds one framework's network and answers the parent's commands, a JSON line each way: ``logits`` (saved
  to a file), ``time`` (the median of ``reps`` calls of ``forward`` or ``train_step`` on ``threads``, after one
  untimed call)."""
  replies = os.fdopen(os.dup(1), "w")
  os.dup2(2, 1)  # anything the libraries print goes to stderr, not into the replies

  def reply(**kw):
    replies.write(json.dumps(kw) + "\n")
    replies.flush()

  inputs = dict(np.load(inputs_path))
  if framework == "jsparse3d":
    net = JsparseNet(name, inputs)
    if weights_path:  # for the twin, in its layouts
      weights = torch_layout_weights(net.model)
      np.savez(weights_path, *[w for w, _ in weights], kinds=np.array([k for _, k in weights]))
    reply(params=int(net.num_params), compile_s=net.compile_s, xla_mb=net.xla_bytes / 2 ** 20)
  else:
    saved = np.load(weights_path)
    net = SpconvNet(name, inputs, [(saved[f"arr_{i}"], str(k)) for i, k in enumerate(saved["kinds"])])
    reply(params=int(net.num_params))
  gc.collect()  # the objects alive now stay out of the garbage collector's walks, as in the trainer's loop
  gc.freeze()
  for line in sys.stdin:
    cmd = json.loads(line)
    if framework == "spconv":
      net.torch.set_num_threads(cmd.get("threads", 1))
    if cmd["op"] == "logits":
      np.save(cmd["path"], net.logits())
      reply()
    else:  # one untimed call first: a call after the other framework's turn pays for waking threads and caches
      getattr(net, cmd["fn"])()
      reply(ms=median_ms(getattr(net, cmd["fn"]), cmd["reps"]))
  replies.close()
  os._exit(0)  # skips the interpreter's teardown, where triton's bindings print their leaks


class Worker:
  """The parent's end of a ``worker`` process."""

  def __init__(self, framework: str, name: str, inputs_path: Path, weights_path: Path | str):
    self.label = f"{name}/{framework}"
    self.proc = subprocess.Popen([sys.executable, __file__, "--worker", framework, name, str(inputs_path),
                                  str(weights_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._reply()

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the {self.label} worker exited with status {self.proc.wait()} (its errors are above)")
    return json.loads(line)

  def __call__(self, **cmd) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._reply()

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def check_twin(name: str, js: Worker, sp: Worker, tmp: Path) -> float:
  """Max |logit difference| of the twins on the workload's input (spconv on 1 thread); raises beyond float32
  rounding, which grows through the training-mode batch norms of a deep network to about 1e-5 of the logits."""
  js(op="logits", path=str(tmp / "js.npy"))
  sp(op="logits", path=str(tmp / "sp.npy"), threads=1)
  theirs = np.load(tmp / "sp.npy")
  ours = np.load(tmp / "js.npy")[:len(theirs)]
  err, scale = float(np.abs(theirs - ours).max()), float(np.abs(ours).max())
  print(f"  spconv twin: equal parameter counts; logits max |diff| {err:.2e} (max |logit| {scale:.1f})", flush=True)
  if err > 1e-4 * max(1.0, scale):
    raise RuntimeError(f"{name}: the spconv twin's logits differ by {err}")
  return err


def spread(values) -> dict:
  return dict(median=statistics.median(values), min=min(values), max=max(values))


def run(name: str, args, tmp: Path, have_spconv: bool) -> dict:
  inputs = make_inputs(name)
  path = tmp / f"{name}.npz"
  np.savez(path, **inputs)
  print(f"\n{name}: {len(inputs['coords'])} voxels ({inputs['source']})", flush=True)
  peer = have_spconv and not name.startswith("spvcnn")
  weights = tmp / f"{name}_weights.npz"
  js = Worker("jsparse3d", name, path, weights if peer else "")
  res = dict(voxels=len(inputs["coords"]), source=str(inputs["source"]), params=js.info["params"],
             compile_s=js.info["compile_s"], xla_mb=js.info["xla_mb"])
  print(f"  jsparse3d: {res['params']:,} parameters; training step compiles in {res['compile_s']:.1f} s; "
        f"XLA memory {res['xla_mb']:.0f} MB", flush=True)
  sp = None
  try:
    if peer:
      sp = Worker("spconv", name, path, weights)
      if sp.info["params"] != res["params"]:
        raise RuntimeError(f"{name}: spconv twin has {sp.info['params']:,} parameters, jsparse3d {res['params']:,}")
      res["logit_max_abs_diff"] = check_twin(name, js, sp, tmp)
    for op in ("forward", "train_step"):
      rows = {"jsparse3d": [], "spconv_1t": [], "spconv_2t": []}
      t0 = time.perf_counter()
      while len(rows["jsparse3d"]) < args.rounds or (  # in turn: jsparse3d, spconv on 1 thread, on 2 threads
          time.perf_counter() - t0 < args.min_seconds and len(rows["jsparse3d"]) < MAX_ROUNDS):
        rows["jsparse3d"].append(js(op="time", fn=op, reps=args.reps)["ms"])
        if peer:
          for threads in (1, 2):
            rows[f"spconv_{threads}t"].append(sp(op="time", fn=op, reps=args.reps, threads=threads)["ms"])
      r = {"rounds": len(rows["jsparse3d"]), "jsparse3d_ms": spread(rows["jsparse3d"])}
      line = f"  {op:<10} {r['rounds']:2d} rounds: jsparse3d {r['jsparse3d_ms']['median']:8.1f} ms"
      if peer:
        for t in ("1t", "2t"):
          r[f"spconv_{t}_ms"] = spread(rows[f"spconv_{t}"])
          ratio = spread([a / b for a, b in zip(rows["jsparse3d"], rows[f"spconv_{t}"])])
          r[f"ratio_vs_spconv_{t}"] = ratio
          line += (f" | spconv {t} {r[f'spconv_{t}_ms']['median']:8.1f} ms, ratio {ratio['median']:.2f} "
                   f"({ratio['min']:.2f}-{ratio['max']:.2f})")
      print(line, flush=True)
      res[op] = r
  finally:
    for w in (js, sp):
      if w is not None:
        w.close()
  if not args.no_memory:
    res["peak_rss_mb"] = {fw: child_peak_rss(name, fw, path)
                          for fw in ["jsparse3d"] + (["spconv_1t", "spconv_2t"] if peer else [])}
    mem = res["peak_rss_mb"]
    line = f"  peak RSS  jsparse3d {mem['jsparse3d']:.0f} MB"
    if peer:
      line += f" | spconv 1t {mem['spconv_1t']:.0f} MB (ratio {mem['jsparse3d'] / mem['spconv_1t']:.2f})"
      line += f" | spconv 2t {mem['spconv_2t']:.0f} MB"
    print(line, flush=True)
  return res


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
    return memory_child(*sys.argv[2:5])
  if len(sys.argv) > 1 and sys.argv[1] == "--worker":
    return worker(*sys.argv[2:6])
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(WORKLOADS)}")
  ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (one ratio each), at least")
  ap.add_argument("--min-seconds", type=float, default=20.0,
                  help=f"more rounds (up to {MAX_ROUNDS}) while an op's rounds took less than this in all: a short "
                  "step's median then spans more of the host's load")
  ap.add_argument("--reps", type=int, default=3, help="timed calls per round and framework, after an untimed one "
                  "(their median is the round's time)")
  ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
  ap.add_argument("--out", default=str(ROOT / "results" / "networks_cpu.json"))
  args = ap.parse_args()
  names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
  unknown = sorted(set(names) - set(WORKLOADS))
  if unknown:
    ap.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
  try:
    import spconv  # noqa: F401
    have_spconv = True
  except ImportError:
    have_spconv = False
    print("spconv is not installed (pip install -e '.[bench]'): timing jsparse3d alone, without ratios.")
  if any(n.startswith(("minkunet", "spvcnn")) for n in names) and kitti_scan_path() is None:
    print(f"No SemanticKITTI scan (set {KITTI_ENV} to the folder holding 000000.bin): the LiDAR workloads use a "
          "synthetic scan instead.")
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      results[name] = run(name, args, Path(tmp), have_spconv)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(results=results, min_rounds=args.rounds, min_seconds=args.min_seconds,
                                 reps=args.reps, glibc_tunables=os.environ.get("GLIBC_TUNABLES", "")), indent=1))
  print(f"\nwrote {out}")


if __name__ == "__main__":
  if "--memory-child" not in sys.argv and "--worker" not in sys.argv:  # (a child inherits the environment)
    from jsparse3d import training
    training.restart_with_huge_pages()  # as `python -m train` runs; spconv's processes inherit the tunable too
  main()
