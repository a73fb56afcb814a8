"""The code passes the project's lint configuration (``[tool.ruff]`` in pyproject.toml), so CI enforces it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
  proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert "No module named ruff" not in proc.stderr, "ruff is part of the dev extra: pip install -e '.[dev]'"
  assert proc.returncode == 0, f"ruff check . (fix with: ruff check --fix .):\n{proc.stdout[-5000:]}"
