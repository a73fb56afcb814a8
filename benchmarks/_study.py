"""What the model-study scripts share: each measurement in a fresh process, training runs through the trainer, and
one JSON of results kept part by part (a part run again replaces only its own entry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(script: str, spec: dict, shown=()) -> dict:
  """``python script --child SPEC`` in a fresh process; returns the JSON its last output line holds. Prints the
  spec (without its bulky keys) and, after the run, the result's ``shown`` keys."""
  print(f"  {json.dumps({k: v for k, v in spec.items() if k not in ('model', 'networks', 'variants')})} ...",
        flush=True)
  t = time.perf_counter()
  proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
  if proc.returncode != 0:
    raise RuntimeError(f"configuration {spec} failed:\n{proc.stderr[-4000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"    {time.perf_counter() - t:.0f} s" + "".join(
      f", {k} {result[k]:.1f}" for k in shown if isinstance(result.get(k), (int, float))), flush=True)
  return result


def run_trainer(config: str, workdir: Path, sets, log: Path) -> float:
  """Trains (or, for a finished run, reports) ``python -m train --config config --workdir workdir --set ...``,
  its output appended to ``log``; returns the process's wall time in seconds."""
  t = time.perf_counter()
  with log.open("a") as out:
    subprocess.run([sys.executable, "-m", "train", "--config", config, "--workdir", str(workdir),
                    *[arg for s in sets for arg in ("--set", s)]], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                   check=True)
  return time.perf_counter() - t


def run_parts(names: str, known, out: Path, *, quick: bool, cfg: dict, run) -> dict:
  """Runs the comma-separated parts ``names`` (each ``run(part, previous result of that part)``), writing ``out``
  after each; the other parts' results are kept from ``out`` (not in quick mode, which starts afresh)."""
  parts = names.split(",")
  unknown = set(parts) - set(known)
  if unknown:
    raise SystemExit(f"unknown parts {sorted(unknown)}; choose from {', '.join(known)}.")
  results = json.loads(out.read_text()) if out.exists() and not quick else {}
  results["config"] = cfg
  for part in parts:
    print(f"{part}:", flush=True)
    results[part] = run(part, results.get(part))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
  return results
