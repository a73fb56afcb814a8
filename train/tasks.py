"""What a config's ``model`` and ``data`` sections build: the model, the datasets, how events become batches, and
how a batch becomes per-row logits and event ids for the loss.

Model kinds: UResNet, MinkUNet (voxel events), SPVCNN (point clouds, calorimeter hits), PVCNN (fixed-size
part-segmentation clouds, or padded calorimeter hits with ``task="calo"``) and PointNet; the supernets
ElasticUResNet and ElasticSPVCNN (:mod:`jsparse3d.nas`) train on their plain model's data.
Data kinds: synthetic_lartpc, larcv3 (PILArNet files), pilarnet (PILArNet-M files), michel (the INSS2025 Michel
challenge's files), semantickitti, synthetic_lidar, shapenet_part, synthetic_shapes, synthetic_hgcal, synthetic_hcal,
calo_files (hit tables: ``data.CaloEvents``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jsparse3d import data
from jsparse3d import models
from jsparse3d import nas
from jsparse3d import training
from jsparse3d.data import _kitti
from jsparse3d.data import _shapes
from jsparse3d.nn import _layers

# model kind -> the data kinds it can train on
_DATA_FOR = {
    "UResNet": ("synthetic_lartpc", "larcv3", "pilarnet", "michel"),
    "MinkUNet": ("semantickitti", "synthetic_lidar"),
    "SPVCNN": ("semantickitti", "synthetic_lidar", "synthetic_hcal", "synthetic_hgcal", "calo_files"),
    "PVCNN": ("shapenet_part", "synthetic_shapes", "synthetic_hgcal", "synthetic_hcal", "calo_files"),
    "PointNet": ("shapenet_part", "synthetic_shapes"),
}
# supernets (jsparse3d.nas) -> the plain model whose data, batching and forward they share
_PLAIN = {"ElasticUResNet": "UResNet", "ElasticSPVCNN": "SPVCNN"}
_DATA_FOR.update({kind: _DATA_FOR[plain] for kind, plain in _PLAIN.items()})
CALO_KINDS = ("synthetic_hgcal", "synthetic_hcal", "calo_files")


@dataclasses.dataclass(frozen=True)
class Task:
  """Everything model- and data-specific that the trainer needs."""
  train_set: object
  eval_set: object
  class_names: tuple
  collate_fn: Callable
  collate_kwargs: dict
  forward: Callable  # (model, x) -> (logits [N, K], events int [N])
  transform: Callable | None = None  # per-event, applied by the loader
  test_set: object = None  # evaluated once, after training (None: the data kind has no test split configured)
  ignore_index: int | None = None  # the label of unlabelled points, counted apart (SemanticKITTI's 255)
  augment: Callable | None = None  # per-event training augmentation ``fn(event, rng)``, before ``transform``
  # Evaluation batching and forward where they differ from training's (MinkUNet: scored per point).
  eval_collate_fn: Callable | None = None
  eval_collate_kwargs: dict | None = None
  eval_forward: Callable | None = None
  # Writes the data kind's own report of a split after training: ``report(predict, dataset, workdir, split)``
  # with ``predict(x) -> (logits [rows, K], events [rows])`` of the trained model in eval mode.
  report: Callable | None = None

  def batching(self, training: bool) -> tuple[Callable, dict]:
    """The collate function and its arguments of the training or evaluation loader."""
    if training or self.eval_collate_fn is None:
      return self.collate_fn, self.collate_kwargs
    return self.eval_collate_fn, self.eval_collate_kwargs or {}

  def transform_for(self, training: bool) -> Callable | None:
    """The per-event transform of the training (augmented) or evaluation loader."""
    if not training or self.augment is None:
      return self.transform
    if self.transform is None:
      return self.augment
    return lambda event, rng: self.transform(self.augment(event, rng), rng)


_JITTED: dict = {}


def jitted_once(key, fn, jit=nnx.jit):
  """``jit(fn)``, one per ``key`` for the process, so that building the same model or optimizer again (a resumed
  run, the tests' many runs) reuses its compiled initialiser."""
  if key not in _JITTED:
    _JITTED[key] = jit(fn)
  return _JITTED[key]


# Models whose initialiser runs under one jit. PVCNN and PointNet draw with flax's initialisers, which eagerly
# compile a program per operation and shape (hgcal_pvcnn's model: 6.3 s eagerly, 1.8 s under jit). The sparse
# models draw every kernel through nn.he_normal's one program per shape, so they build eagerly in the time a jitted
# initialiser takes to compile (4.3-5.3 s), without that compile's memory: under jit the process peaked 260 MB
# (U-ResNet) to 370 MB (MinkUNet cr 1.0) higher, for the same values bit for bit.
_BUILT_UNDER_JIT = ("PVCNN", "PointNet")


def init_model(kind: str, *, rngs: nnx.Rngs, **spec):
  """A new model of ``kind`` (a class of :mod:`jsparse3d.models` or :mod:`jsparse3d.nas`) with keyword arguments
  ``spec``, initialised as the trainer does it (``_BUILT_UNDER_JIT``); jitted initialisers do not advance
  ``rngs``, eager ones do.

  Example:
    >>> model = init_model("UResNet", rngs=nnx.Rngs(0), filters=8, depth=3)
  """
  build = lambda r: getattr(nas if kind in _PLAIN else models, kind)(**spec, rngs=r)
  if kind not in _BUILT_UNDER_JIT:
    return build(rngs)
  # Plain jax.jit (NNX modules are pytrees; nnx.jit takes no compile options), without optimisations: the program
  # runs once.
  return jitted_once(("model", kind, repr(sorted(spec.items()))), build,
                     functools.partial(jax.jit, compiler_options=_layers.ONE_SHOT_COMPILE))(rngs)


def build_model(cfg, *, rngs):
  spec = dict(cfg["model"])
  kind = spec.pop("kind")
  if kind not in _DATA_FOR:
    raise ValueError(f"config {cfg['name']!r}: model.kind {kind!r} is not one of {sorted(_DATA_FOR)}.")
  try:
    return init_model(kind, rngs=rngs, **spec)
  except TypeError as e:
    raise ValueError(f"config {cfg['name']!r}: the model section does not fit {kind} ({e}).") from None


def _points_forward(model, x):
  xyz, batch, feats = x
  return model(xyz, batch, feats), batch


def _shapes_forward(model, x):
  points, one_hot = x
  logits = model(points, one_hot)
  b, n, k = logits.shape
  return logits.reshape(b * n, k), jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)


def _sets_forward(model, x):
  """Padded point sets (``collate_point_sets``) through PVCNN: per-point logits (and embeddings, with an instance
  head) and event ids (-1 on padding)."""
  points, mask = x
  out = model(points, point_mask=mask)
  b, n = mask.shape
  events = jnp.where(mask, jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(-1)
  flat = lambda v: v.reshape(b * n, v.shape[-1])
  return (tuple(map(flat, out)) if isinstance(out, tuple) else flat(out)), events


def _calo_inputs(event, rng, *, normalise):
  del rng
  return data.calo_features(event, **normalise)


def _voxels(scan, rng, *, voxel_size):
  del rng
  return _kitti.scan_to_voxels(scan, voxel_size)


def _existing(cfg, key) -> Path:
  value = cfg["data"].get(key)
  if not value:
    raise ValueError(f"config {cfg['name']!r}: data kind {cfg['data']['kind']!r} needs data.{key} (a path); set "
                     f"it with --set data.{key}=PATH, or train on synthetic data with --set data.kind=...")
  path = Path(value)
  if not path.exists():
    raise FileNotFoundError(f"config {cfg['name']!r}: data.{key} = {value} does not exist; point it at the data "
                            f"with --set data.{key}=PATH (or use the synthetic data kind of this model).")
  return path


def build_task(cfg) -> Task:
  """The datasets and batching of ``cfg`` (clear errors for mismatched kinds and missing paths)."""
  d, kind, model = cfg["data"], cfg["data"]["kind"], cfg["model"]["kind"]
  allowed = _DATA_FOR.get(model, ())
  if kind not in allowed:
    raise ValueError(f"config {cfg['name']!r}: model {model} trains on data kinds {list(allowed)}, not {kind!r}.")
  model = _PLAIN.get(model, model)
  syn = d.get("synthetic", {})
  test_set = None
  if kind == "synthetic_lartpc":
    kw = dict(size=d["size"], scheme=d["scheme"])
    sets = (data.SyntheticLArTPC(syn["train_events"], seed=syn["train_seed"], **kw),
            data.SyntheticLArTPC(syn["eval_events"], seed=syn["eval_seed"], **kw))
    if syn.get("test_events"):
      test_set = data.SyntheticLArTPC(syn["test_events"], seed=syn["test_seed"], **kw)
  elif kind == "pilarnet":
    options = dict(d["pilarnet"])
    paths = {key: _existing(cfg, key) if d.get(key) else synthetic_pilarnet_file(cfg, split)
             for key, split in (("train_path", "train"), ("eval_path", "eval"), ("test_path", "test"))}
    for key in ("train_path", "eval_path"):
      if paths[key] is None:
        _existing(cfg, key)  # raises, saying which path to set
    sets = (data.PILArNetM(paths["train_path"], **options), data.PILArNetM(paths["eval_path"], **options))
    if paths["test_path"] is not None:
      test_set = data.PILArNetM(paths["test_path"], **options)
  elif kind == "michel":
    options = dict(d.get("michel", {}))
    sets = tuple(data.MichelChallenge(_existing(cfg, key), **options) for key in ("train_path", "eval_path"))
    if d.get("test_path"):
      test_set = data.MichelChallenge(_existing(cfg, "test_path"), **options)
  elif kind == "larcv3":
    kw = dict(sparse3d=d["sparse3d"], labels=d["labels"])
    sets = (data.Larcv3Dataset(_existing(cfg, "train_path"), **kw),
            data.Larcv3Dataset(_existing(cfg, "eval_path"), **kw))
  elif kind == "semantickitti":
    root = _existing(cfg, "root")
    sets = (data.SemanticKittiDataset(root, "train", label_map="spvnas"),
            data.SemanticKittiDataset(root, "val", label_map="spvnas"))
  elif kind == "synthetic_lidar":
    kw = dict(beams=syn["beams"], azimuths=syn["azimuths"])
    sets = (data.SyntheticLidar(syn["train_events"], seed=syn["train_seed"], **kw),
            data.SyntheticLidar(syn["eval_events"], seed=syn["eval_seed"], **kw))
    if syn.get("test_events"):
      test_set = data.SyntheticLidar(syn["test_events"], seed=syn["test_seed"], **kw)
  elif kind == "shapenet_part":
    root = _existing(cfg, "root")
    sets = (data.ShapeNetPart(root, "train", num_points=d["num_points"]),
            data.ShapeNetPart(root, "val", num_points=d["num_points"]))
  elif kind in ("synthetic_hgcal", "synthetic_hcal"):
    make = data.SyntheticHGCAL if kind == "synthetic_hgcal" else data.SyntheticHCAL
    options = dict(syn.get("options", {}))
    sets = (make(syn["train_events"], seed=syn["train_seed"], **options),
            make(syn["eval_events"], seed=syn["eval_seed"], **options))
    if syn.get("test_events"):
      test_set = make(syn["test_events"], seed=syn["test_seed"], **options)
  elif kind == "calo_files":
    sets = (data.CaloEvents(_existing(cfg, "train_path")), data.CaloEvents(_existing(cfg, "eval_path")))
    if d.get("test_path"):
      test_set = data.CaloEvents(_existing(cfg, "test_path"))
  else:  # synthetic_shapes
    sets = (data.SyntheticShapeParts(syn["train_events"], seed=syn["train_seed"], num_points=d["num_points"]),
            data.SyntheticShapeParts(syn["eval_events"], seed=syn["eval_seed"], num_points=d["num_points"]))

  if model == "UResNet":
    names = sets[0].class_names if kind in ("pilarnet", "michel") else data.class_names(d["scheme"])
    strides = tuple(2 ** i for i in range(1, cfg["model"].get("depth", 5)))
    fractions = d.get("level_fractions")
    if fractions is not None and len(fractions) != len(strides):
      raise ValueError(f"config {cfg['name']!r}: data.level_fractions {fractions} needs one share per coarser level "
                       f"of the depth-{len(strides) + 1} U-ResNet (strides {strides}).")
    return Task(*sets, names, data.collate,
                dict(features=tuple(d.get("features", ("energy",))), level_strides=strides, level_fractions=fractions),
                training.sparse_logits, test_set=test_set)
  if kind in CALO_KINDS:
    return _calo_task(cfg, sets, test_set)
  if model == "PVCNN" and cfg["model"].get("task") == "calo":
    raise ValueError(f"config {cfg['name']!r}: PVCNN(task='calo') trains on calorimeter hits (data kinds "
                     f"{list(CALO_KINDS)}), not {kind!r}.")
  augment = data.augment_lidar if d.get("augment") else None
  if model == "MinkUNet":
    transform = functools.partial(_voxels, voxel_size=d["voxel_size"])
    levels = dict(features=("feats",), level_strides=(2, 4, 8, 16))
    return Task(*sets, _kitti.CLASS_NAMES, data.collate, levels, training.sparse_logits, transform,
                ignore_index=data.ignore_index("spvnas"), augment=augment,
                eval_collate_fn=data.collate_voxel_points, eval_collate_kwargs=levels,
                eval_forward=training.voxel_point_logits, test_set=test_set)
  if model == "SPVCNN":
    return Task(*sets, _kitti.CLASS_NAMES, data.collate_points, dict(voxel_size=d["voxel_size"]), _points_forward,
                ignore_index=data.ignore_index("spvnas"), augment=augment, test_set=test_set)
  names = tuple(f"{_shapes.CATEGORIES[c]}/{j}" for c, n in enumerate(_shapes.PARTS_PER_CATEGORY) for j in range(n))
  return Task(*sets, names, data.collate_shapes, {}, _shapes_forward)


def synthetic_pilarnet_file(cfg, split: str):
  """For a ``pilarnet`` config without files: synthetic events written once in PILArNet-M's layout
  (``data.synthetic``'s counts and seeds, ``data.size``), under jsparse3d's cache folder; None when the config asks
  for none (a split without events)."""
  from jsparse3d.ops import _native
  syn, size = cfg["data"]["synthetic"], cfg["data"]["size"]
  count, seed = syn.get(f"{split}_events", 0), syn.get(f"{split}_seed", 0)
  if not count:
    return None
  path = _native.cache_dir() / "pilarnet_synthetic" / f"v2_size{size}_seed{seed}_{count}.h5"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    data.write_pilarnet(partial, [data.synthetic_pilarnet_event((seed, i), size=size) for i in range(count)])
    os.replace(partial, path)  # whole, or not there: processes that race write the same file
  return path


def _calo_task(cfg, sets, test_set) -> Task:
  """Calorimeter hits: features normalised by ``data.normalise`` (see ``data.calo_features``); PVCNN takes padded
  hit sets, SPVCNN hits voxelized at ``data.voxel_size`` (cm)."""
  from train import calo_report
  d, model = cfg["data"], cfg["model"]["kind"]
  names = tuple(d.get("class_names") or getattr(sets[0], "class_names", ()))
  if not names:
    raise ValueError(f"config {cfg['name']!r}: calorimeter files need data.class_names (one name per semantic id, "
                     "noise first), e.g. --set 'data.class_names=[noise,signal]'.")
  transform = functools.partial(_calo_inputs, normalise=d["normalise"])
  targets = dict(instances="instances") if cfg.get("instance_loss") else {}
  report = functools.partial(calo_report.write, class_names=names, display=d.get("display", "endcap"),
                             clustering=cfg.get("instance_loss"))
  if model == "PVCNN":
    if cfg["model"].get("task") != "calo":
      raise ValueError(f"config {cfg['name']!r}: PVCNN on calorimeter hits needs model.task='calo' (hits in a "
                       f"fixed detector frame, padded with a mask), got {cfg['model'].get('task')!r}.")
    return Task(*sets, names, data.collate_point_sets, dict(features=("feats",), **targets), _sets_forward,
                transform, test_set=test_set, report=report)
  return Task(*sets, names, data.collate_points, dict(voxel_size=d["voxel_size"], features=("feats",), **targets),
              _points_forward, transform, test_set=test_set, report=report)


def check_classes(cfg, task: Task) -> None:
  if cfg["model"]["num_classes"] != len(task.class_names):
    raise ValueError(f"config {cfg['name']!r}: model.num_classes is {cfg['model']['num_classes']} but the data has "
                     f"{len(task.class_names)} classes.")

