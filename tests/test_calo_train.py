"""The calorimeter configs through the trainer: training, the report of every test hit, and config errors."""

import json

import numpy as np
import pytest

from jsparse3d import data
from train import configs
from train import tasks
from train import train_lib


@pytest.mark.parametrize("name", ["hcal_spvcnn_smoke", pytest.param("hgcal_pvcnn_smoke", marks=pytest.mark.slow)])
def test_calorimeter_configs_train_and_report_every_test_hit(name, tmp_path):
  cfg = configs.get_config(name)
  result = train_lib.train(cfg, tmp_path, progress=False)
  report = json.loads((tmp_path / "calo_test.json").read_text())
  test = result["test"]
  # The report predicts every hit again, outside the trainer's jitted evaluation: the same hits, the same counts.
  task = tasks.build_task(cfg)
  events = [task.test_set[i] for i in range(len(task.test_set))]
  assert report["hits"] == test["counted"] == sum(len(ev["labels"]) for ev in events)
  for got, want in zip(report["by_hits"]["per_class_accuracy"].values(), test["per_class_accuracy"]):
    if want is not None:
      assert got == pytest.approx(want, abs=1e-12)
  energy = np.asarray(report["by_energy"]["confusion"]).sum()
  assert energy == pytest.approx(sum(float(ev["points"][:, 3].astype(np.float64).sum()) for ev in events), rel=1e-9)
  assert 0.0 <= report["by_hits"]["noise_vs_signal_auc"] <= 1.0
  for figure in ("confusion", "roc", "event"):
    assert (tmp_path / f"calo_test_{figure}.png").stat().st_size > 10_000


def test_calorimeter_configs_say_what_is_missing(tmp_path):
  with pytest.raises(ValueError, match="calorimeter hits"):
    tasks.build_task(configs.get_config("pvcnn_shapenet_smoke", ["model.task=calo"]))
  with pytest.raises(ValueError, match="needs model.task='calo'"):
    tasks.build_task(configs.get_config("hgcal_pvcnn_smoke", ["model.task=s3dis"]))
  path = data.write_calo_events(tmp_path / "hits.h5", [data.synthetic_hcal_event(s) for s in range(4)])
  files = ["data.kind=calo_files", f"data.train_path={path}", f"data.eval_path={path}"]
  with pytest.raises(ValueError, match="data.class_names"):
    tasks.build_task(configs.get_config("hcal_spvcnn_smoke", files))
  task = tasks.build_task(configs.get_config("hcal_spvcnn_smoke", files + ["data.class_names=['noise','signal']"]))
  assert task.class_names == ("noise", "signal") and len(task.train_set) == 4 and task.test_set is None
