"""Saving and loading a model's weights outside the trainer: parameters and batch statistics, with orbax."""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_SAVED = (nnx.Param, nnx.BatchStat)  # what a model's weights are; RNG state and optimizer moments are not


def save_weights(model: nnx.Module, path) -> Path:
  """Writes ``model``'s parameters and batch-norm statistics to the folder ``path`` (orbax; must not exist).

  Example:
    >>> from jsparse3d.models import UResNet
    >>> path = save_weights(UResNet(in_features=1, num_classes=5, rngs=nnx.Rngs(0)), "uresnet_weights")
    >>> model = load_weights(UResNet(in_features=1, num_classes=5, rngs=nnx.Rngs(1)), path)
  """
  path = Path(path).absolute()
  if path.exists():
    raise FileExistsError(f"{path} exists; save to a new folder (orbax never overwrites one).")
  import orbax.checkpoint as ocp  # on use: with tensorstore it adds 27 MB and 0.5 s to importing jsparse3d
  state = nnx.to_pure_dict(nnx.state(model, _SAVED))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, jax.tree.map(np.asarray, state))
  return path


def load_weights(model: nnx.Module, path) -> nnx.Module:
  """Loads weights written by :func:`save_weights` into ``model`` (in place; returns it).

  The model must have the same architecture: a missing or differently shaped weight is an error naming it.
  """
  path = Path(path).absolute()
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; it should be a folder written by save_weights.")
  import orbax.checkpoint as ocp  # on use, as in save_weights
  state = nnx.state(model, _SAVED)
  like = nnx.to_pure_dict(state)
  with ocp.StandardCheckpointer() as ckpt:
    stored = ckpt.metadata(path)
    stored = getattr(stored, "item_metadata", stored)
    stored_shapes = {_name(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(stored)}
    wanted = {_name(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(like)}
    if stored_shapes != wanted:
      diff = sorted(set(stored_shapes.items()) ^ set(wanted.items()))[:6]
      raise ValueError(f"{path} holds weights of another architecture: (name, shape) differences {diff}. Build the "
                       "model with the configuration that saved them.")
    restored = ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model


def _name(path) -> str:
  """``decoder/0/bn1/norm/scale``: a leaf's path with list indices and dict keys alike (orbax stores keys as
  strings)."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


# -- PyTorch state dicts (spconv layout) ----------------------------------------------------------------------
#
# A torch module's state dict lists, module by module in the order the modules were built, each module's
# parameters and then its buffers. jsparse3d's models build their layers in the same order as their spconv twins
# (benchmarks/networks_cpu.py builds them layer for layer), so a state dict maps onto the model position by
# position. Layouts, spconv 2.3 against jsparse3d:
#   SubMConv3d / SparseConv3d / SparseInverseConv3d weight [C_out, kx, ky, kz, C_in] -> kernel [kx, ky, kz, C_in,
#     C_out]; the kernel offsets are enumerated in the same order (x slowest), so no permutation. A 1x1x1 conv
#     reads its weight's memory as [C_in, C_out] whatever the declared shape.
#   BatchNorm1d weight, bias, running_mean, running_var (num_batches_tracked is skipped) -> scale, bias, mean, var.
#   Linear weight [out, in] -> kernel [in, out]; bias.


@functools.cache
def _build_order(cls) -> dict[str, int]:
  """Attribute name -> position in the order ``cls`` builds its layers: its declared ``state_dict_order`` if it has
  one (a model whose layers a shared driver builds), else the order of their first assignments in
  ``cls.__init__`` (bases first).

  The build order cannot be read from the instance: ``nnx.split`` and ``nnx.merge`` (so ``nnx.jit``, and every
  model rebuilt from a train step's state) sort a module's attributes by name. An ``__init__`` whose source
  cannot be read gives no positions, and then the attributes keep the instance's order.
  """
  declared = getattr(cls, "state_dict_order", None)
  if declared is not None:
    return {name: i for i, name in enumerate(declared)}
  names: list[str] = []
  for klass in reversed(cls.__mro__):
    init = vars(klass).get("__init__")
    if init is None or not klass.__module__.startswith("jsparse3d"):
      continue
    try:
      tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
      continue
    targets = [t for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    attrs = [t for t in targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and
             t.value.id == "self"]
    names += [t.attr for t in sorted(attrs, key=lambda t: (t.lineno, t.col_offset)) if t.attr not in names]
  return {name: i for i, name in enumerate(names)}


def _torch_slots(module) -> list[tuple[str, nnx.Variable, str]]:
  """``(our name, variable, torch kind)`` in state-dict order; kind is one of conv, bn_scale, bn_bias, bn_mean,
  bn_var, linear, bias."""
  from jsparse3d.nn import _layers
  if isinstance(module, (_layers.SparseConv3d, _layers.SparseConvTranspose3d)):
    return [("kernel", module.kernel, "conv")] + ([("bias", module.bias, "bias")] if module.bias is not None else [])
  if isinstance(module, _layers.BatchNorm):
    n = module.norm
    return [("scale", n.scale, "bn_scale"), ("bias", n.bias, "bn_bias"), ("mean", n.mean, "bn_mean"),
            ("var", n.var, "bn_var")]
  if isinstance(module, _layers.Linear):
    lin = module.linear
    return [("kernel", lin.kernel, "linear")] + ([("bias", lin.bias, "bias")] if lin.bias is not None else [])
  out = []
  if isinstance(module, nnx.List):
    children = list(enumerate(module))
  else:
    order = _build_order(type(module))
    children = sorted(((k, v) for k, v in vars(module).items() if isinstance(v, (nnx.Module, nnx.List))),
                      key=lambda kv: order.get(kv[0], len(order)))
  for key, child in children:
    out += [(f"{key}.{name}", var, kind) for name, var, kind in _torch_slots(child)]
  return out


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    if value.shape[:3] == (1, 1, 1):
      return value.reshape(value.shape[3], value.shape[4])
    return np.moveaxis(value, 4, 0)
  return value.T if kind == "linear" else value


def _from_torch(value: np.ndarray, like: tuple, kind: str) -> np.ndarray:
  if kind == "conv":
    if like[:3] == (1, 1, 1):
      return value.reshape(like)  # the memory is [C_in, C_out]
    return np.moveaxis(value, 0, 4)
  return value.T if kind == "linear" else value


def export_torch_weights(model: nnx.Module, path) -> Path:
  """Writes ``model``'s weights as an ``.npz`` state dict in spconv's layout, in its twin's order (see
  :func:`import_torch_weights`); entry names are jsparse3d's module paths. Returns the file's path."""
  path = Path(path)
  entries = {f"{i:04d}.{name}": _to_torch(np.asarray(var[...]), kind)
             for i, (name, var, kind) in enumerate(_torch_slots(model))}
  np.savez(path, **entries)
  return path


def import_torch_weights(model: nnx.Module, path) -> nnx.Module:
  """Loads an ``.npz`` state dict of the model's spconv twin into ``model`` (in place; returns it).

  Export it from PyTorch without pickle: ``np.savez(path, **{k: v.cpu().numpy() for k, v in
  net.state_dict().items()})``. Entries are taken in order (``num_batches_tracked`` skipped) and converted:
  conv weights ``[C_out, kx, ky, kz, C_in]`` to ``[kx, ky, kz, C_in, C_out]`` with the same offset order (a 1x1x1
  conv's memory as ``[C_in, C_out]``), batch-norm weight, bias, running mean and variance, and linear weights
  transposed. A count or shape that does not fit is an error naming both entries.

  Example:
    >>> from jsparse3d.models import MinkUNet
    >>> path = export_torch_weights(MinkUNet(cr=0.5, rngs=nnx.Rngs(1)), "minkunet_spconv.npz")  # or spconv's
    >>> model = import_torch_weights(MinkUNet(cr=0.5, rngs=nnx.Rngs(0)), path)
  """
  with np.load(path, allow_pickle=False) as z:
    entries = [(k, z[k]) for k in z.files if not k.endswith("num_batches_tracked")]
  slots = _torch_slots(model)
  if len(entries) != len(slots):
    raise ValueError(f"{path} holds {len(entries)} tensors (besides num_batches_tracked) but the model has "
                     f"{len(slots)} weights; is it the state dict of this model's twin, with the same width?")
  for (key, value), (name, var, kind) in zip(entries, slots):
    like = tuple(var[...].shape)
    if value.size != np.prod(like, dtype=np.int64):
      raise ValueError(f"{path}: entry {key!r} {value.shape} does not fit {name} {like} ({kind}).")
    var.set_value(jnp.asarray(_from_torch(value, like, kind).reshape(like), var[...].dtype))
  return model
