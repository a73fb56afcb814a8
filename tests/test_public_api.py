"""The public surface, pinned: every public name of ``jsparse3d`` and its subpackages with its signature.

A change to the API shows up here as a diff against ``public_api.txt``; when it is intended, regenerate the file
with ``python tests/test_public_api.py`` and commit it with the change.
"""

import inspect
import re
import sys
from pathlib import Path

import jsparse3d as js

PINNED = Path(__file__).with_name("public_api.txt")
MODULES = ("", "ops", "nn", "models", "data", "training", "nas")


def _describe(name, obj) -> list[str]:
  if inspect.isclass(obj):
    lines = [f"class {name}{_signature(obj)}"]
    for attr, member in sorted(vars(obj).items()):
      if attr.startswith("_") and attr != "__call__":
        continue
      if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
      if inspect.isfunction(member):
        lines.append(f"  {name}.{attr}{_signature(member)}")
      elif isinstance(member, property):
        lines.append(f"  {name}.{attr} (property)")
    return lines
  if callable(obj):
    return [f"def {name}{_signature(obj)}"]
  if inspect.ismodule(obj):
    return [f"module {name}"]
  return [f"{name}: {type(obj).__name__}"]


def _signature(obj) -> str:
  try:
    return re.sub(r" at 0x[0-9a-f]+", "", str(inspect.signature(obj)))  # function defaults print their address
  except (TypeError, ValueError):
    return "(...)"


def surface() -> str:
  lines = []
  for sub in MODULES:
    module = getattr(js, sub) if sub else js
    prefix = f"jsparse3d.{sub}" if sub else "jsparse3d"
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in sorted(names):
      obj = getattr(module, name)
      if inspect.ismodule(obj) and sub:
        continue
      lines += _describe(f"{prefix}.{name}", obj)
  return "\n".join(lines) + "\n"


def test_public_surface_is_pinned():
  # Regression: js.models, js.nn and js.training were not attributes of the package.
  assert {"models", "nn", "training", "ops", "data"} <= set(vars(js))
  got = surface()
  want = PINNED.read_text()
  if got != want:
    import difflib
    diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "pinned", "now", lineterm=""))
    raise AssertionError(f"the public API changed; if intended, run `python tests/test_public_api.py` and commit "
                         f"tests/public_api.txt:\n{diff}")


if __name__ == "__main__":
  PINNED.write_text(surface())
  print(f"wrote {PINNED} ({len(PINNED.read_text().splitlines())} lines)", file=sys.stderr)
