"""Exporting a model's forward: serialised here, deserialised and run in a fresh process, the same outputs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jsparse3d as js
from jsparse3d import data


def _forward_and_inputs():
  model = js.models.UResNet(in_features=1, num_classes=3, filters=4, depth=3, reps=1, rngs=nnx.Rngs(0))
  model.eval()
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)  # a list of arrays: what jax.export serialises
  ev = data.synthetic_lartpc_event(seed=1, size=32)
  x = js.SparseTensor.from_coords(ev["coords"], ev["energy"][:, None], capacity=len(ev["coords"]) + 50)

  def forward(leaves, coords, feats, num_valid):
    x = js.SparseTensor(coords, feats, num_valid, jnp.zeros((), jnp.int32), {}, (1, 1, 1))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x).feats

  return forward, (leaves, x.coords, x.feats, x.num_valid)


@pytest.mark.parametrize("path", ["native", pytest.param("xla", marks=pytest.mark.slow)])  # a minute each
def test_an_exported_forward_runs_in_a_fresh_process(tmp_path, path, native_kernels):
  script = textwrap.dedent(f"""
      import sys, numpy as np, jax
      sys.path.insert(0, {str(Path(__file__).parent)!r})
      from test_export import _forward_and_inputs
      import jsparse3d as js
      forward, args = _forward_and_inputs()
      if sys.argv[1] == "export":
        exported = js.export(jax.jit(forward))(*args)
        open(sys.argv[2], "wb").write(exported.serialize())
        np.save(sys.argv[3], np.asarray(jax.jit(forward)(*args)))
      else:
        exported = js.deserialize(open(sys.argv[2], "rb").read())
        np.save(sys.argv[3], np.asarray(exported.call(*args)))
  """)
  env = dict(os.environ, JSPARSE3D_NATIVE="1" if path == "native" else "0")
  blob, want, got = tmp_path / "f.bin", tmp_path / "want.npy", tmp_path / "got.npy"
  for mode, out in (("export", want), ("call", got)):
    proc = subprocess.run([sys.executable, "-c", script, mode, str(blob), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_array_equal(np.load(got), np.load(want))
  program = js.deserialize(blob.read_bytes()).mlir_module()
  assert ("jsparse3d_conv_v1" in program) == (path == "native")


def test_plain_jax_export_names_the_undeclared_custom_call(native_kernels):
  forward, args = _forward_and_inputs()
  with pytest.raises(ValueError, match="jsparse3d_"):
    jax.export.export(jax.jit(forward))(*args)
