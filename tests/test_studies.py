"""The model-study scripts run end to end in their quick modes and write sane results and figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # about 70 s on 2 cores
def test_uresnet_study_quick(tmp_path):
  out, figs = tmp_path / "study.json", tmp_path / "figs"
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "uresnet_study.py"), "--quick", "--out", str(out),
                         "--figures", str(figs)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  cfg = r["config"]
  timed = {(row["kind"], row["size"]): row for row in r["scaling"] if not row.get("compile_only")}
  assert set(timed) == {("sparse", s) for s in cfg["sparse"]} | {("dense", s) for s in cfg["dense"]}
  for row in timed.values():
    assert row["forward_ms"] > 0 and row["step_ms"] > 0 and row["peak_rss_mb"] > 100 and row["xla_mb"] > 0
    assert row["voxels"] > 0
  # The study's point: at the same image the dense network needs more memory and more time than the sparse one.
  size = cfg["dense"][0]
  assert timed["dense", size]["xla_mb"] > 3 * timed["sparse", size]["xla_mb"]
  assert timed["dense", size]["step_ms"] > 3 * timed["sparse", size]["step_ms"]
  computed = [row for row in r["scaling"] if row.get("compile_only")]
  assert [row["size"] for row in computed] == list(cfg["dense_compile_only"])
  assert all(row["xla_mb"] > timed["dense", size]["xla_mb"] and "step_ms" not in row for row in computed)
  v = r["voxels"]
  assert len(v["rows"]) == len(cfg["voxel_sizes"]) * cfg["voxel_events"]
  assert v["fit"]["ms_per_kvoxel"] == v["fit"]["ms_per_kvoxel"]  # not NaN
  b = {(row["kind"], row["batch"], bool(row.get("compile_only"))): row for row in r["batch2d"]}
  full, small = cfg["batch2d"]["batch"], cfg["batch2d"]["timed_batch"]
  assert set(b) == {("sparse", full, False), ("dense", full, True), ("sparse", small, False), ("dense", small, False)}
  assert b["dense", full, True]["xla_mb"] > b["sparse", full, False]["xla_mb"]
  for name in ("uresnet_scaling_time", "uresnet_scaling_memory", "uresnet_time_vs_voxels"):
    data = (figs / f"{name}.png").read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, name
