"""MAC counting: layers report the multiply-accumulates they do on real data while :func:`count_macs` runs.

Sparse convolutions count their real kernel-map pairs (``pairs x C_in x C_out``), layers on rows count valid rows
only, dense layers count every output element. The count is taken in a scoped context (a ``contextvars``
variable), so nothing global changes and concurrent counts do not mix.
"""

from __future__ import annotations

import contextvars

_ACTIVE: contextvars.ContextVar[list | None] = contextvars.ContextVar("jsparse3d_macs", default=None)


def record(kind: str, macs) -> None:
  """Adds ``macs`` (a concrete number) under ``kind`` if a count is running; a no-op otherwise."""
  tally = _ACTIVE.get()
  if tally is not None:
    tally.append((kind, int(macs)))


def counting() -> bool:
  return _ACTIVE.get() is not None


def count_macs(model, *args, **kwargs) -> dict:
  """MACs of one eager forward pass of ``model(*args, **kwargs)``, over real data.

  Call it eagerly (not under ``jit``: it needs concrete pair counts), with the model in eval mode if its
  batch-norm statistics must not move (``model.eval()``).

  Returns:
    ``{"total": int, "by_kind": {kind: int}}`` with kinds such as ``"sparse_conv"``, ``"linear"``,
    ``"dense_conv"``.
  """
  tally = []
  token = _ACTIVE.set(tally)
  try:
    model(*args, **kwargs)
  finally:
    _ACTIVE.reset(token)
  by_kind = {}
  for kind, macs in tally:
    by_kind[kind] = by_kind.get(kind, 0) + macs
  return {"total": sum(by_kind.values()), "by_kind": by_kind}
