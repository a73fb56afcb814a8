"""``python -m train --config uresnet_lartpc [--workdir DIR] [--set key=value ...] [--devices N]``: train, resuming
by default.

Multi-host: start one process per host with the same ``--coordinator_address host:port`` and ``--num_processes``,
each with its ``--process_id``; they join through ``jax.distributed.initialize`` and split every global batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path


def _parser():
  ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="uresnet_lartpc")
  ap.add_argument("--workdir", default=None, help="default: runs/<config>")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
  ap.add_argument("--devices", type=int, default=1,
                  help="local devices to pmap over (on CPU, this many host devices are created)")
  ap.add_argument("--no-resume", action="store_true",
                  help="start from scratch, removing the workdir's earlier checkpoints, metrics.jsonl and TensorBoard "
                       "files")
  ap.add_argument("--no-progress", action="store_true")
  ap.add_argument("--compile-cache", default=None, metavar="DIR",
                  help="XLA's persistent compilation cache, so that a rerun does not compile its steps again "
                       "(default: $JSPARSE3D_CACHE_DIR/xla or ~/.cache/jsparse3d/xla; 'off' disables it)")
  ap.add_argument("--coordinator_address", default=None, help="host:port of process 0, for multi-host training")
  ap.add_argument("--num_processes", type=int, default=None)
  ap.add_argument("--process_id", type=int, default=None)
  return ap


def _init_distributed(ap, args):
  given = [args.coordinator_address is not None, args.num_processes is not None, args.process_id is not None]
  if not any(given):
    return
  if not all(given):
    ap.error("multi-host training needs all of --coordinator_address, --num_processes and --process_id.")
  if not 0 <= args.process_id < args.num_processes:
    ap.error(f"--process_id must be in 0..{args.num_processes - 1}, got {args.process_id}.")
  import jax
  jax.distributed.initialize(args.coordinator_address, num_processes=args.num_processes,
                             process_id=args.process_id)


def _setup(ap, args) -> None:
  """What every entry point does before its config: host devices, multi-host, the compilation cache."""
  if args.devices < 1:
    ap.error(f"--devices must be positive, got {args.devices}.")
  if args.devices > 1 and "jax" not in sys.modules:  # on CPU, create the host devices before jax starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
  _init_distributed(ap, args)
  from train import train_lib
  if args.compile_cache != "off":
    train_lib.enable_compilation_cache(args.compile_cache)


def main(argv=None):
  ap = _parser()
  args = ap.parse_args(argv)
  _setup(ap, args)
  from train import configs
  from train import train_lib
  try:
    cfg = configs.get_config(args.config, args.set)
  except ValueError as e:
    ap.error(str(e))
  workdir = args.workdir or f"runs/{cfg['name']}"
  print(f"config {cfg['name']}: {cfg['steps']} steps of {cfg['batch_size']} events, workdir {workdir}", flush=True)
  try:
    result = train_lib.train(cfg, workdir, resume=not args.no_resume, progress=not args.no_progress,
                             devices=args.devices)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  ev = result["eval"]
  if result.get("complete"):
    print(f"the run in {workdir} is already complete (step {result['step']} of {cfg['steps']}); its final metrics "
          "follow. To train again, pass --no-resume or a fresh --workdir.")
  if result.get("test") is not None:
    t = result["test"]
    print(f"final: step {result['step']}, test non-zero accuracy {t['nonzero_accuracy']:.2%} (validation "
          f"{ev['nonzero_accuracy']:.2%}), test mIoU {t['miou']:.3f}")
  elif ev is not None:
    print(f"final: step {result['step']}, held-out non-zero accuracy {ev['nonzero_accuracy']:.2%}, "
          f"mIoU {ev['miou']:.3f}")
  if result["stopped"] is not None:
    print(f"stopped by signal {result['stopped']} at step {result['step']}; run again to resume.")
    return 128 + int(result["stopped"])
  return 0


def _restart_with_huge_pages() -> None:
  """``jsparse3d.training.restart_with_huge_pages()`` before jax is imported, which would cost 2.4 s twice: its
  module needs only the standard library, so it is loaded from its file without running the package's imports."""
  spec = importlib.util.find_spec("jsparse3d")
  path = Path(spec.origin).parent / "training" / "_memory.py"
  memory_spec = importlib.util.spec_from_file_location("_jsparse3d_memory", path)
  memory = importlib.util.module_from_spec(memory_spec)
  memory_spec.loader.exec_module(memory)
  memory.restart_with_huge_pages()


if __name__ == "__main__":
  _restart_with_huge_pages()  # XLA's temporaries on 2 MiB pages: see jsparse3d/training/_memory.py
  sys.exit(main())
