"""``python -m train --config uresnet_lartpc [--workdir DIR] [--set key=value ...]``: train, resuming by default."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m train", description=__doc__)
  ap.add_argument("--config", default="uresnet_lartpc")
  ap.add_argument("--workdir", default=None, help="default: runs/<config>")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
  ap.add_argument("--no-resume", action="store_true", help="start from scratch even if the workdir has checkpoints")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)

  from train import configs
  from train import train_lib
  try:
    cfg = configs.get_config(args.config, args.set)
  except ValueError as e:
    ap.error(str(e))
  workdir = args.workdir or f"runs/{cfg['name']}"
  print(f"config {cfg['name']}: {cfg['steps']} steps of {cfg['batch_size']} events, workdir {workdir}", flush=True)
  result = train_lib.train(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress)
  ev = result["eval"]
  if ev is not None:
    print(f"final: step {result['step']}, held-out non-zero accuracy {ev['nonzero_accuracy']:.2%}, "
          f"mIoU {ev['miou']:.3f}")
  if result["stopped"] is not None:
    print(f"stopped by signal {result['stopped']} at step {result['step']}; run again to resume.")
    return 128 + int(result["stopped"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
