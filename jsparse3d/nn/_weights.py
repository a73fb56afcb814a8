"""Saving and loading a model's weights outside the trainer: parameters and batch statistics, with orbax."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

_SAVED = (nnx.Param, nnx.BatchStat)  # what a model's weights are; RNG state and optimizer moments are not


def save_weights(model: nnx.Module, path) -> Path:
  """Writes ``model``'s parameters and batch-norm statistics to the folder ``path`` (orbax; must not exist).

  Example:
    >>> save_weights(model, "uresnet_weights")
    >>> load_weights(UResNet(in_features=1, num_classes=5, rngs=nnx.Rngs(0)), "uresnet_weights")
  """
  path = Path(path).absolute()
  if path.exists():
    raise FileExistsError(f"{path} exists; save to a new folder (orbax never overwrites one).")
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
