"""Data throughput on CPU: event generation, larcv3 reading and batching, in events per second.

  lartpc_192 / lartpc_512   synthetic_lartpc_event at 192^3 and 512^3 (one core; target >= 50/s at 192^3)
  hgcal, hcal               synthetic_hgcal_event, synthetic_hcal_event
  larcv3_read               Larcv3Dataset[i] with labels and clusters, from a file written first
  collate_192               collate of batches of 8 events at 192^3 (already generated)
  loader_192                Loader over SyntheticLArTPC, batch 8, with and without prefetch (generation included)

Each is the median of repeated timed passes; the ratio column is events/s over the issue's 50 events/s target
for generation (it is context for the others). Run: ``python benchmarks/data_cpu.py [--reps 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jsparse3d import data

ROOT = Path(__file__).resolve().parents[1]
TARGET = 50.0


def rate(fn, count, reps):
  """Median events/s of ``fn()`` processing ``count`` events."""
  fn()  # warm-up
  samples = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    samples.append(count / (time.perf_counter() - t0))
  return statistics.median(samples)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default=str(ROOT / "results" / "data_cpu.json"))
  args = ap.parse_args()
  results = {}
  results["lartpc_192"] = rate(lambda: [data.synthetic_lartpc_event((1, s)) for s in range(40)], 40, args.reps)
  results["lartpc_512"] = rate(lambda: [data.synthetic_lartpc_event((1, s), size=512) for s in range(8)], 8,
                               args.reps)
  results["hgcal"] = rate(lambda: [data.synthetic_hgcal_event(s) for s in range(100)], 100, args.reps)
  results["hcal"] = rate(lambda: [data.synthetic_hcal_event(s) for s in range(100)], 100, args.reps)
  events = [data.synthetic_lartpc_event((2, s)) for s in range(64)]
  for ev in events:
    ev["cluster"] = np.where(ev["labels"] == 2, 0, -1).astype(np.int32)
  with tempfile.TemporaryDirectory() as tmp:
    path = data.write_larcv3(Path(tmp) / "bench.h5", events, cluster3d="pcluster")
    ds = data.Larcv3Dataset(path, labels="semantics", cluster3d="pcluster")
    results["larcv3_read"] = rate(lambda: [ds[i] for i in range(len(ds))], len(ds), args.reps)
  results["collate_192"] = rate(lambda: [data.collate(events[i:i + 8]) for i in range(0, 64, 8)], 64, args.reps)
  synthetic = data.SyntheticLArTPC(10_000, seed=3)
  for prefetch in (0, 2):
    loader = data.Loader(synthetic, 8, seed=0, num_steps=5, prefetch=prefetch)
    results[f"loader_192_prefetch{prefetch}"] = rate(lambda loader=loader: list(loader), 40, args.reps)

  print(f"{'op':<24}{'events/s':>10}{'/ 50 target':>13}")
  for op, r in results.items():
    print(f"{op:<24}{r:>10.1f}{r / TARGET:>13.2f}")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"events_per_second": results, "reps": args.reps}, indent=2) + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  sys.exit(main())
