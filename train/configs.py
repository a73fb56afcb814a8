"""Training configurations: plain dicts, each with a ``_smoke`` variant that tests run in seconds.

Override any key from the command line with ``--set key=value`` (dotted keys reach nested dicts; values are
parsed as Python literals when they look like one).
"""

from __future__ import annotations

import ast
import copy


def uresnet_lartpc() -> dict:
  """The main job: the sparse U-ResNet on synthetic 192^3 LArTPC events (uresnet5 classes)."""
  return dict(
      name="uresnet_lartpc",
      model=dict(kind="UResNet", in_features=1, num_classes=5, filters=16, depth=5, reps=2),
      data=dict(kind="synthetic_lartpc", size=192, scheme="uresnet5", train_events=1_000_000, eval_events=48,
                train_seed=0, eval_seed=1),
      batch_size=4,
      steps=1200,
      optimizer=dict(kind="adam", learning_rate=1e-3, warmup_steps=50, decay="cosine", final_fraction=0.05),
      class_weights=None,
      log_every=25,
      eval_every=400,
      checkpoint_every=200,
      seed=0,
  )


def uresnet_lartpc_smoke() -> dict:
  cfg = uresnet_lartpc()
  cfg.update(name="uresnet_lartpc_smoke", batch_size=2, steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  cfg["model"].update(filters=4, depth=3, reps=1)
  cfg["data"].update(size=64, train_events=64, eval_events=4)
  return cfg


CONFIGS = {f.__name__: f for f in (uresnet_lartpc, uresnet_lartpc_smoke)}


def get_config(name: str, overrides=()) -> dict:
  """The named config with ``key=value`` overrides applied; clear errors for unknown names and keys."""
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; available: {sorted(CONFIGS)}.")
  cfg = copy.deepcopy(CONFIGS[name]())
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r} must look like key=value (e.g. steps=100 or optimizer.learning_rate=3e-4).")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node, parts = cfg, key.split(".")
    for part in parts[:-1]:
      if not isinstance(node.get(part), dict):
        raise ValueError(f"override {key!r}: {part!r} is not a section of config {name!r}.")
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"override {key!r}: config {name!r} has no key {parts[-1]!r}; it has {sorted(node)}.")
    if node[parts[-1]] is not None and value is not None and type(value) is not type(node[parts[-1]]) and not (
        isinstance(node[parts[-1]], float) and isinstance(value, int)):
      raise ValueError(f"override {key!r}: expected a {type(node[parts[-1]]).__name__}, got {raw!r}.")
    node[parts[-1]] = value
  validate(cfg)
  return cfg


def validate(cfg: dict) -> None:
  for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
    if not isinstance(cfg[key], int) or cfg[key] < 1:
      raise ValueError(f"config {cfg['name']!r}: {key} must be a positive int, got {cfg[key]!r}.")
  if cfg["optimizer"]["learning_rate"] <= 0:
    raise ValueError(f"config {cfg['name']!r}: optimizer.learning_rate must be positive.")
  if cfg["class_weights"] not in (None, "inverse_frequency"):
    raise ValueError(f"config {cfg['name']!r}: class_weights must be None or 'inverse_frequency'.")
