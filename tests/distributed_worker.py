"""One process of the two-process test: joins through jax.distributed, trains, saves its parameters.

Usage: python tests/distributed_worker.py CONFIG PROCESS_ID PORT WORKDIR [KEY=VALUE ...] (config overrides).
"""

import sys

import jax
import numpy as np
from flax import nnx


def main():
  name, pid, port, workdir, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.device_count())
  from train import configs
  from train import train_lib
  result = train_lib.train(configs.get_config(name, overrides), workdir, progress=False)
  leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(result["state"]))[0]
  np.savez(f"{workdir}/state_{pid}.npz", **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})


if __name__ == "__main__":
  main()
