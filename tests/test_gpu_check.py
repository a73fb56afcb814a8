"""The one-command GPU check at toy sizes in interpret mode (so it cannot rot before a GPU runs it), and the
tuning file it writes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import _tuning
from pallas_kernels import gpu_check
from pallas_kernels.conv import api as conv_api


def _failures(results: dict) -> list[str]:
  bad = []
  for step, items in results.items():
    for name, value in items.items():
      if isinstance(value, dict) and ("error" in value or value.get("ok") is False):
        bad.append(f"{step} {name}: {value.get('error') or value.get('errors')}")
      if isinstance(value, str) and value.startswith("skipped"):
        bad.append(f"{step} {name}: {value}")
  return bad


def _run(tmp_path, *extra):
  out = tmp_path / "results.json"
  results = gpu_check.main(["--out", str(out), "--tuning-file", str(tmp_path / "tuning.json"), "--budget-s", "3600",
                            *extra])  # interpret mode on a loaded CPU can take longer than a GPU's default budget
  assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))  # the file holds it all
  return results


@pytest.mark.slow  # 35-50 s on 2 cores
def test_gpu_check_runs_one_item_of_every_step_at_toy_sizes(tmp_path):
  results = _run(tmp_path, "--select", "conv float32 16x16 without TF32,index lartpc,uresnet xla,"
                 "conv_forward float32 16x16,dataflow float32 16x16")
  assert results["environment"]["sizes"].startswith("toy")
  assert not _failures(results)
  conv = results["correctness"]["conv float32 16x16 without TF32"]
  assert conv["ok"] and {"forward", "pairs forward", "pairs wgrad"} <= conv["errors"].keys()
  timing = results["timing"]["index lartpc"]
  assert timing["pallas build ms"] > 0 and timing["xla 27-offset query ms"] > 0
  nets = results["networks"]
  assert np.isfinite(nets["uresnet xla"]["loss"]) and nets["uresnet xla"]["step_ms"] > 0
  assert set(nets) == {"uresnet xla"}  # --select left the others out (the slow test runs them)
  tuned = results["autotune"]["conv_forward float32 16x16"]
  candidates = gpu_check._candidates(16, 16, True)
  assert tuned["best"] in [json.loads(json.dumps(c.__dict__)) for c in candidates]
  written = json.loads((tmp_path / "tuning.json").read_text())
  assert written[_tuning.device_key()]["conv_forward float32 16x16"] == tuned["best"]
  flow = results["autotune"]["dataflow float32 16x16"]
  assert written[_tuning.device_key()]["conv_dataflow float32 16x16"] == {"dataflow": flow["best"]}


@pytest.mark.slow
def test_gpu_check_runs_every_item_at_toy_sizes(tmp_path):
  results = _run(tmp_path)
  assert not _failures(results)
  assert set(results) == {"environment", *gpu_check.STEPS}
  nets = results["networks"]
  for name in ("pallas", "pallas pairs"):  # the same network and data, every conv on another path
    assert nets[f"uresnet {name}"]["loss"] == pytest.approx(nets["uresnet xla"]["loss"], rel=1e-4)
    assert nets[f"minkunet {name}"]["loss"] == pytest.approx(nets["minkunet xla"]["loss"], rel=1e-4)


def test_gpu_check_rejects_unknown_steps(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_check.main(["--steps", "correctness,speed"])
  assert "unknown steps ['speed']" in capsys.readouterr().err


def test_the_tuning_file_is_used_on_a_gpu_only_and_merged_on_write(tmp_path, monkeypatch):
  file = tmp_path / "tuning.json"
  monkeypatch.setenv(_tuning.ENV, str(file))
  fields = dict(rows=128, out_channels=16, in_channels=16, wgrad_splits=2, num_warps=8, num_stages=3)
  _tuning.record("conv_forward", jnp.float32, 16, 16, fields)
  _tuning.record("conv_wgrad", jnp.float32, 16, 16, dict(fields, rows=64))
  data = json.loads(file.read_text())
  assert set(data[_tuning.device_key()]) == {"conv_forward float32 16x16", "conv_wgrad float32 16x16"}
  assert _tuning.lookup("conv_forward", jnp.float32, 16, 16) is None  # a CPU backend never uses it
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _tuning.lookup("conv_forward", jnp.float32, 16, 16) == fields
  assert conv_api.BlockSizes.choose("conv_forward", jnp.float32, 16, 16) == conv_api.BlockSizes(**fields)
  assert conv_api.BlockSizes.choose("conv_forward", jnp.float32, 32, 32) == conv_api.BlockSizes.for_channels(32, 32)
  best, results = _tuning.search([1, 2, 3], lambda c: (lambda: jnp.full(3, c)), check=lambda out: out[0] != 2,
                                 reps=1, inner=1)
  assert best in (1, 3) and results[1] == (2, "rejected: wrong result")  # a wrong kernel is never chosen
  file.write_text("{not json")
  with pytest.raises(ValueError, match="delete it or point JSPARSE3D_PALLAS_TUNING"):
    _tuning.lookup("conv_forward", jnp.float32, 16, 16)


def test_the_mosaic_gpu_probe_lowers_the_row_copies_a_port_would_use():
  from pallas_kernels import mosaic_probe
  results = mosaic_probe.probes()
  if set(results.values()) == {"AssertionError"}:  # jax's bare `assert rule is not None` in pallas_call's lowering
    pytest.skip(f"jax {jax.__version__} here registers no Mosaic GPU lowering for pallas_call (seen with jax "
                "0.11.2's CPU wheels; the probe runs on jax 0.10.2): nothing to probe.")
  assert results["copy rows global -> shared one at a time by scalar indices (TMA)"] == "lowers"
  assert len(results) == 6 and all(isinstance(v, str) and v for v in results.values())
