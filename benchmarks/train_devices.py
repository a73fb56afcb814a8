"""Training throughput (events/s) of a config on 1, 2 and 4 local devices, as ratios to 1 device in the same run.

Each device count runs in its own process (``python -m train --devices N``; on CPU that many host devices share
the machine's cores), for ``--steps`` steps of the same global batch. The rate is the median of the trainer's
logged windows after the first (which holds the compilation). Rounds interleave the device counts, so that the
machine's noise falls on all of them alike.

    python benchmarks/train_devices.py [--config uresnet_lartpc] [--devices 1 2 4] [--steps 40] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, devices: int, steps: int, log_every: int, workdir: Path) -> float:
  cmd = [sys.executable, "-m", "train", "--config", config, "--workdir", str(workdir), "--no-resume",
         "--no-progress", "--devices", str(devices), "--set", f"steps={steps}", "--set", f"log_every={log_every}",
         "--set", f"eval_every={steps}", "--set", f"checkpoint_every={steps}"]
  if config.startswith("uresnet"):
    cmd += ["--set", "data.synthetic.eval_events=4"]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the trainer sets the host device count itself
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [r["events_per_second"] for r in records if r["split"] == "train"][1:]
  return statistics.median(rates)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="uresnet_lartpc")
  ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
  ap.add_argument("--steps", type=int, default=40)
  ap.add_argument("--log-every", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=1)
  args = ap.parse_args()
  rates = {n: [] for n in args.devices}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for n in args.devices:
        rates[n].append(run(args.config, n, args.steps, args.log_every, Path(tmp) / f"r{r}d{n}"))
        print(f"round {r}: {n} device(s): {rates[n][-1]:.2f} events/s", flush=True)
  base = statistics.median(rates[args.devices[0]])
  print(f"\n{args.config}, {os.cpu_count()} CPU cores, median over {args.rounds} round(s)")
  print(f"{'devices':>8} {'events/s':>9} {'ratio':>6}")
  for n in args.devices:
    rate = statistics.median(rates[n])
    print(f"{n:>8} {rate:>9.2f} {rate / base:>6.2f}")


if __name__ == "__main__":
  main()
