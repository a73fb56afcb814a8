"""The Python snippets of README.md run as written, and the repository refers to nothing outside itself."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md"])
def test_snippets_run_as_written(doc, tmp_path):
  blocks = _python_blocks(ROOT / doc)
  assert blocks, f"{doc} has no python snippet"
  for i, code in enumerate(blocks):
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{doc} snippet {i} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_nothing_refers_to_files_outside_the_repository():
  pattern = re.compile(r"\.\./shared")
  offenders = []
  for folder in ("README.md", "docs", "jsparse3d", "pallas_kernels", "train"):
    for path in [ROOT / folder] if (ROOT / folder).is_file() else (ROOT / folder).rglob("*"):
      if path.suffix in (".py", ".md", ".cc", ".toml") and pattern.search(path.read_text(errors="ignore")):
        offenders.append(str(path.relative_to(ROOT)))
  assert not offenders, f"these refer to ../shared: {offenders}"
