"""The cost of elasticity: a supernet's training step (a subnet drawn per step, weights masked) against the plain
model's at the largest config, interleaved in one run.

Workloads:
  uresnet   UResNet (filters 16, depth 5, reps 2) and ElasticUResNet, 4 synthetic LArTPC events at 192^3
  spvcnn    SPVCNN cr 0.5 and ElasticSPVCNN cr 0.5 on a synthetic LiDAR scan (64 beams x 1024 azimuths)

Both start from the same weights; each round times ``--reps`` steps of one, then of the other (A B A B ...), and
the ratio supernet / plain of each round's medians is printed with the median and range over rounds, with the
compile times. Run: ``python benchmarks/nas_cpu.py [--only uresnet] [--rounds 5] [--reps 5] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

from _timing import times_ms
from jsparse3d import data
from jsparse3d import models
from jsparse3d import nas
from jsparse3d import training


def _uresnet():
  ds = data.SyntheticLArTPC(4, seed=0, size=192)
  x, y = data.collate([ds[i] for i in range(4)], features=("energy",), level_strides=(2, 4, 8, 16))
  build = dict(in_features=1, num_classes=5, filters=16, depth=5, reps=2)
  return (lambda: models.UResNet(**build, rngs=nnx.Rngs(0)), lambda: nas.ElasticUResNet(**build, rngs=nnx.Rngs(0)),
          x, y, 5, 4, training.sparse_logits)


def _spvcnn():
  scan = data.SyntheticLidar(1, seed=0, beams=64, azimuths=1024)[0]
  x, y = data.collate_points([scan], voxel_size=0.05)
  forward = lambda model, inputs: (model(*inputs), inputs[1])
  return (lambda: models.SPVCNN(cr=0.5, rngs=nnx.Rngs(0)), lambda: nas.ElasticSPVCNN(cr=0.5, rngs=nnx.Rngs(0)),
          x, y, 19, 1, forward)


WORKLOADS = {"uresnet": _uresnet, "spvcnn": _spvcnn}


def _step(model, x, y, num_classes, num_events, forward):
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  graph, state = nnx.split((model, optimizer))
  step = training.make_train_step(graph, num_classes=num_classes, num_events=num_events, forward=forward,
                                  ignore_index=255 if num_classes == 19 else None)
  t0 = time.perf_counter()
  compiled = step.lower(state, x, y).compile()
  return compiled, state, time.perf_counter() - t0


def run(name, rounds, reps):
  make_plain, make_super, x, y, k, events, forward = WORKLOADS[name]()
  plain, plain_state, plain_compile = _step(make_plain(), x, y, k, events, forward)
  elastic, elastic_state, elastic_compile = _step(make_super(), x, y, k, events, forward)
  holder = {"plain": plain_state, "super": elastic_state}

  def timed(which, fn):
    def call():
      holder[which], loss, _ = fn(holder[which], x, y)
      return loss
    return statistics.median(times_ms(call, warmup=1, reps=reps))

  ratios, plain_ms, super_ms = [], [], []
  for _ in range(rounds):
    a = timed("plain", plain)
    b = timed("super", elastic)
    plain_ms.append(a)
    super_ms.append(b)
    ratios.append(b / a)
  out = dict(workload=name, rounds=rounds, reps=reps, plain_step_ms=plain_ms, supernet_step_ms=super_ms,
             ratio_median=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)],
             plain_compile_s=plain_compile, supernet_compile_s=elastic_compile)
  print(f"{name}: supernet / plain training step {out['ratio_median']:.3f} (range {min(ratios):.3f}-"
        f"{max(ratios):.3f} over {rounds} rounds; plain {statistics.median(plain_ms):.0f} ms, supernet "
        f"{statistics.median(super_ms):.0f} ms); compile {plain_compile:.1f} s / {elastic_compile:.1f} s", flush=True)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--only", default=",".join(WORKLOADS))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  results = [run(name, args.rounds, args.reps) for name in args.only.split(",")]
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(jax=jax.__version__, results=results, numpy=np.__version__), f, indent=1)


if __name__ == "__main__":
  main()
