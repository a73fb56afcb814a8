"""Training configurations: plain dicts, each with a ``_smoke`` variant that tests run in seconds.

Override any key from the command line with ``--set key=value`` (dotted keys reach nested dicts; values are
parsed as Python literals when they look like one).
"""

from __future__ import annotations

import ast
import copy


def _optimizer(kind="adam", learning_rate=1e-3, *, warmup_steps=0, decay="cosine", final_fraction=0.0,
               momentum=0.9, nesterov=False, weight_decay=0.0) -> dict:
  return dict(kind=kind, learning_rate=learning_rate, warmup_steps=warmup_steps, decay=decay,
              final_fraction=final_fraction, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _common(**kw) -> dict:
  """Keys every config has; ``init_weights``: a folder of nn.save_weights to start from (fine-tuning)."""
  return dict(class_weights=None, focal_gamma=0.0, instance_loss=None, log_every=25, eval_every=400,
              checkpoint_every=200, seed=0, init_weights="") | kw


def _instance_loss(weight=1.0, max_instances=32, delta_v=0.5, delta_d=1.5, bandwidth=1.5) -> dict:
  """The instance head's discriminative loss (training.discriminative_loss) and its clustering radius at inference
  (training.cluster_embeddings)."""
  return dict(weight=weight, max_instances=max_instances, delta_v=delta_v, delta_d=delta_d, bandwidth=bandwidth)


def uresnet_lartpc() -> dict:
  """The main job: the sparse U-ResNet on synthetic 192^3 LArTPC events (uresnet5 classes).

  Three disjoint synthetic splits: training (seed 0), validation (seed 1, 48 events, evaluated during training
  and the only split used to choose settings) and test (seed 2, 500 events, evaluated once at the end: the
  reported accuracy).

  ``--set data.kind=larcv3 data.train_path=... data.eval_path=... data.scheme=larcv5`` trains on PILArNet files.
  The learning rate is 4x the study's 1e-3 because the run is short (1200 steps of 4 events, to finish in minutes
  on a 2-core CPU): held-out non-zero accuracy 89.3% / 90.5% / 91.4% at 1e-3 / 2e-3 / 4e-3.
  """
  return _common(
      name="uresnet_lartpc",
      model=dict(kind="UResNet", in_features=1, num_classes=5, filters=16, depth=5, reps=2),
      data=dict(kind="synthetic_lartpc", size=192, scheme="uresnet5",
                synthetic=dict(train_events=1_000_000, eval_events=48, train_seed=0, eval_seed=1,
                               test_events=500, test_seed=2),
                train_path="", eval_path="", sparse3d="data", labels="fivetypes",
                level_fractions=(0.7, 0.42, 0.24, 0.125)),
      batch_size=4,
      steps=1200,
      optimizer=_optimizer("adam", 4e-3, warmup_steps=50, final_fraction=0.05),
  )


def uresnet_pilarnet() -> dict:
  """The U-ResNet on PILArNet-M (768^3 voxels of 3 mm) with the motif labels, as the PoLAr-MAE and Panda papers
  prepare the data (points above 0.13 MeV, events of at least 1024 points, log-scaled energy as the feature). Point
  it at the files:
  ``--set data.train_path=.../train data.eval_path=.../val data.test_path=.../test`` (a folder of ``.h5`` files or
  one file). ``--set model.filters=32`` gives SPINE's canonical width. Without paths it trains on synthetic events
  written in the same layout (``data.synthetic``; at 768^3 only the smoke variant's sizes are practical here)."""
  return _common(
      name="uresnet_pilarnet",
      model=dict(kind="UResNet", in_features=1, num_classes=5, filters=16, depth=5, reps=2),
      data=dict(kind="pilarnet", size=768, train_path="", eval_path="", test_path="", features=["log_energy"],
                pilarnet=dict(labels="motif", energy_threshold=0.13, min_points=1024, remove_low_energy_scatters=False),
                michel=dict(energy_threshold=0.13, min_points=0),  # data.kind=michel: the INSS2025 challenge's files
                synthetic=dict(train_events=0, eval_events=0, test_events=0, train_seed=0, eval_seed=1, test_seed=2),
                level_fractions=None),
      batch_size=4,
      steps=20_000,
      optimizer=_optimizer("adam", 1e-3, warmup_steps=200, final_fraction=0.05),
      log_every=50, eval_every=2000, checkpoint_every=1000,
  )


def uresnet_pilarnet_pid() -> dict:
  """As ``uresnet_pilarnet``, segmenting by particle id (PILArNet-M v2: photon, electron, muon, pion, proton,
  none)."""
  cfg = uresnet_pilarnet()
  cfg.update(name="uresnet_pilarnet_pid")
  cfg["model"].update(num_classes=6)
  cfg["data"]["pilarnet"].update(labels="pid")
  return cfg


def _pilarnet_smoke(cfg) -> dict:
  cfg.update(name=cfg["name"] + "_smoke", batch_size=2, steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  cfg["model"].update(filters=4, depth=3, reps=1)
  cfg["data"].update(size=64)
  cfg["data"]["pilarnet"].update(min_points=0)
  cfg["data"]["synthetic"].update(train_events=16, eval_events=4, test_events=4)
  return cfg


def uresnet_pilarnet_smoke() -> dict:
  return _pilarnet_smoke(uresnet_pilarnet())


def uresnet_pilarnet_pid_smoke() -> dict:
  return _pilarnet_smoke(uresnet_pilarnet_pid())


def uresnet_lartpc_smoke() -> dict:
  cfg = uresnet_lartpc()
  cfg.update(name="uresnet_lartpc_smoke", batch_size=2, steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  cfg["model"].update(filters=4, depth=3, reps=1)
  cfg["data"].update(size=64, level_fractions=(0.75, 0.5))
  cfg["data"]["synthetic"].update(train_events=64, eval_events=4, test_events=4)
  return cfg


def _kitti(name, model) -> dict:
  """SemanticKITTI as SPVNAS trains it: 0.05 m voxels, 19 classes (255 ignored), rotation and scaling
  augmentation, SGD with Nesterov momentum 0.9, weight decay 1e-4, cosine decay over 15 epochs; its learning rate
  0.24 at 16 scans per step, scaled to 2 here."""
  return _common(
      name=name,
      model=model,
      data=dict(kind="semantickitti", root="data/semantickitti", voxel_size=0.05, augment=True,
                synthetic=dict(train_events=100_000, eval_events=8, test_events=0, train_seed=0, eval_seed=1,
                               test_seed=2, beams=64, azimuths=1024)),
      batch_size=2,
      steps=15 * 19130 // 2,
      optimizer=_optimizer("sgd", 0.03, nesterov=True, weight_decay=1e-4),
      log_every=50, eval_every=5000, checkpoint_every=2000,
  )


def _kitti_smoke(cfg) -> dict:
  cfg.update(name=cfg["name"] + "_smoke", steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  cfg["model"].update(cr=0.25)
  cfg["data"].update(kind="synthetic_lidar")
  cfg["data"]["synthetic"].update(train_events=16, eval_events=2, beams=32, azimuths=128)
  return cfg


def minkunet_kitti() -> dict:
  """MinkUNet (cr 1.0) on SemanticKITTI; ``--set data.kind=synthetic_lidar`` trains on synthetic scans."""
  return _kitti("minkunet_kitti", dict(kind="MinkUNet", in_features=4, num_classes=19, cr=1.0))


def minkunet_kitti_smoke() -> dict:
  return _kitti_smoke(minkunet_kitti())


def spvcnn_kitti() -> dict:
  """SPVCNN (cr 1.0) on SemanticKITTI; ``--set data.kind=synthetic_lidar`` trains on synthetic scans."""
  return _kitti("spvcnn_kitti", dict(kind="SPVCNN", in_features=4, num_classes=19, cr=1.0, dropout=0.3))


def spvcnn_kitti_smoke() -> dict:
  return _kitti_smoke(spvcnn_kitti())


def pvcnn_shapenet() -> dict:
  """PVCNN on ShapeNet-part (2048 points, 50 parts), Adam 1e-3 with cosine decay over 200 epochs of batch 8;
  ``--set data.kind=synthetic_shapes`` trains on synthetic part shapes."""
  return _common(
      name="pvcnn_shapenet",
      model=dict(kind="PVCNN", task="shapenet_part", width=1.0, num_classes=50),
      data=dict(kind="shapenet_part", root="data/shapenet_part", num_points=2048,
                synthetic=dict(train_events=100_000, eval_events=64, train_seed=0, eval_seed=1)),
      batch_size=8,
      steps=200 * 12137 // 8,
      optimizer=_optimizer("adam", 1e-3),
      log_every=50, eval_every=5000, checkpoint_every=2000,
  )


def pvcnn_shapenet_smoke() -> dict:
  cfg = pvcnn_shapenet()
  cfg.update(name="pvcnn_shapenet_smoke", batch_size=4, steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  cfg["model"].update(width=0.125)
  cfg["data"].update(kind="synthetic_shapes", num_points=256)
  cfg["data"]["synthetic"].update(train_events=32, eval_events=4)
  return cfg


def pointnet_shapenet() -> dict:
  """PointNet, PVCNN's point-only baseline, trained as ``pvcnn_shapenet`` is (xyz and normals in, the T-Nets on)."""
  cfg = pvcnn_shapenet()
  cfg.update(name="pointnet_shapenet", model=dict(kind="PointNet", in_features=6, num_classes=50, width=1.0))
  return cfg


def pointnet_shapenet_smoke() -> dict:
  cfg = pvcnn_shapenet_smoke()
  cfg.update(name="pointnet_shapenet_smoke", model=dict(kind="PointNet", in_features=6, num_classes=50, width=0.125))
  return cfg


def _nas(**kw) -> dict:
  """The search after the supernet's training (train/nas.py): ``budget`` is ``"macs"`` or ``"latency"``, at
  ``budget_fraction`` of the largest subnet's; each of ``search_seeds`` runs an evolution and a random search of
  ``evaluations`` subnets each; subnets are recalibrated on ``calibration_batches`` training batches and scored on
  the validation split; ``latency_subnets`` exports are timed to fit and check the latency table;
  ``finetune_steps`` > 0 fine-tunes the chosen subnet's export and, as its reference, the largest subnet's, with
  the normal trainer."""
  return dict(budget="macs", budget_fraction=0.25, evaluations=40, population=10, parents=4, mutation_probability=0.25,
              crossover_share=0.5, search_seeds=[0, 1, 2], calibration_batches=4, latency_subnets=6,
              latency_repeats=5, finetune_steps=0) | kw


def uresnet_nas_lartpc() -> dict:
  """3D-NAS of the sparse U-ResNet on the main job's synthetic LArTPC events: a supernet (each level's width
  among 1/2, 3/4 and all of the U-ResNet's, 1 or 2 blocks per level and side) trained on a uniformly drawn subnet
  per step, then evolution against random search for the best non-zero accuracy at a quarter of the largest
  subnet's MACs. Choices use the validation split only; the test split scores the chosen and the largest subnet."""
  cfg = uresnet_lartpc()
  cfg.update(name="uresnet_nas_lartpc", steps=2400, eval_every=2400, checkpoint_every=400, nas=_nas())
  cfg["model"] = dict(kind="ElasticUResNet", in_features=1, num_classes=5, filters=16, depth=5, reps=2,
                      width_fractions=[0.5, 0.75, 1.0], sampling="uniform", seed=0)
  return cfg


def uresnet_nas_lartpc_smoke() -> dict:
  cfg = uresnet_nas_lartpc()
  smoke = uresnet_lartpc_smoke()
  cfg.update(name="uresnet_nas_lartpc_smoke", data=smoke["data"], batch_size=2, steps=4, log_every=2, eval_every=4,
             checkpoint_every=2)
  cfg["model"].update(filters=4, depth=3, reps=2, width_fractions=[0.5, 1.0])
  cfg["nas"].update(evaluations=4, population=2, parents=2, search_seeds=[0], calibration_batches=1,
                    latency_subnets=3, latency_repeats=1, finetune_steps=2, budget_fraction=0.5)
  return cfg


def spvnas_lidar() -> dict:
  """3D-NAS of SPVCNN on SemanticKITTI (SPVNAS): a supernet of the cr 1.0 SPVCNN (each stage's width among 1/2,
  3/4 and all of it, 1 or 2 residual blocks per stage), then evolution against random search for the best mIoU at a
  quarter of the largest subnet's MACs (``--set nas.budget=latency`` for a latency budget on this machine).
  ``--set data.kind=synthetic_lidar`` searches on synthetic scans."""
  cfg = spvcnn_kitti()
  cfg.update(name="spvnas_lidar", nas=_nas(evaluations=40))
  cfg["model"] = dict(kind="ElasticSPVCNN", in_features=4, num_classes=19, cr=1.0, blocks=2,
                      width_fractions=[0.5, 0.75, 1.0], dropout=0.3, sampling="uniform", seed=0)
  return cfg


def spvnas_lidar_smoke() -> dict:
  cfg = _kitti_smoke(spvnas_lidar())
  cfg["nas"].update(evaluations=4, population=2, parents=2, search_seeds=[0], calibration_batches=1,
                    latency_subnets=3, latency_repeats=2, budget="latency",
                    budget_fraction=0.8)  # the smallest subnet of this tiny net measures 0.5-0.6 of the largest
  cfg["data"]["synthetic"].update(test_events=2)
  return cfg


# Feature normalisation of the calorimeter configs (data.calo_features): x, y, z over the detector's half extents
# around its centre, log(E / energy_unit), time around the middle of the 25 ns bunch crossing.
HGCAL_NORMALISE = dict(centre=(0.0, 0.0, 403.4, 12.5), scale=(40.0, 40.0, 82.2, 12.5), energy_unit=1.0)
HCAL_NORMALISE = dict(centre=(0.0, 0.0, 0.0, 12.5), scale=(265.0, 265.0, 500.0, 12.5), energy_unit=1.0)


def _calo(name, model, kind, normalise, display, steps, **data) -> dict:
  return _common(
      name=name,
      model=model,
      data=dict(kind=kind, synthetic=dict(train_events=1_000_000, eval_events=48, test_events=200, train_seed=0,
                                          eval_seed=1, test_seed=2, options={}),
                train_path="", eval_path="", test_path="", class_names=[], normalise=normalise, display=display,
                **data),
      batch_size=4,
      steps=steps,
      optimizer=_optimizer("adam", 2e-3, warmup_steps=50, final_fraction=0.05),
      instance_loss=_instance_loss(),
      log_every=25, eval_every=steps // 3, checkpoint_every=steps // 4,
  )


def hgcal_pvcnn() -> dict:
  """PVCNN (``task="calo"`` at width 0.5, in a fixed detector frame) segmenting the hits of the HGCAL-like
  calorimeter (``data.synthetic_hgcal_event``) into noise, HAD, EM and MIP, and clustering them into particles
  (an 8-dimensional instance head, ``instance_loss``). Synthetic splits: training (seed
  0), validation (seed 1, 48 events, the only split used for choices) and test (seed 2, 200 events, reported).
  ``--set data.kind=calo_files data.train_path=... data.eval_path=... data.test_path=...
  'data.class_names=[noise,HAD,EM,MIP]'`` trains on hit tables (``data.CaloEvents``)."""
  return _calo("hgcal_pvcnn", dict(kind="PVCNN", task="calo", width=0.5, num_classes=4, in_features=5, embed_dim=8),
               "synthetic_hgcal", HGCAL_NORMALISE, "endcap", 1200)


def hgcal_pvcnn_smoke() -> dict:
  cfg = hgcal_pvcnn()
  cfg.update(name="hgcal_pvcnn_smoke", batch_size=2, steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  cfg["model"].update(width=0.125)
  cfg["data"]["synthetic"].update(train_events=16, eval_events=2, test_events=2, options=dict(half_width=12.0))
  return cfg


def hcal_spvcnn() -> dict:
  """SPVCNN (cr 0.5) filtering the noise from the particle deposits of the HCAL-like barrel
  (``data.synthetic_hcal_event``), hits voxelized at 10 cm, with the instance head; splits as in
  ``hgcal_pvcnn``."""
  return _calo("hcal_spvcnn", dict(kind="SPVCNN", in_features=5, num_classes=2, cr=0.5, embed_dim=8),
               "synthetic_hcal", HCAL_NORMALISE, "barrel", 3000, voxel_size=10.0)


def hcal_spvcnn_smoke() -> dict:
  cfg = hcal_spvcnn()
  cfg.update(name="hcal_spvcnn_smoke", batch_size=2, steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  cfg["model"].update(cr=0.25)
  cfg["data"]["synthetic"].update(train_events=16, eval_events=2, test_events=2)
  return cfg


CONFIGS = {f.__name__: f for f in (uresnet_lartpc, uresnet_lartpc_smoke, uresnet_pilarnet, uresnet_pilarnet_smoke,
                                   uresnet_pilarnet_pid, uresnet_pilarnet_pid_smoke, minkunet_kitti,
                                   minkunet_kitti_smoke,
                                   spvcnn_kitti, spvcnn_kitti_smoke, pvcnn_shapenet, pvcnn_shapenet_smoke,
                                   pointnet_shapenet, pointnet_shapenet_smoke, hgcal_pvcnn, hgcal_pvcnn_smoke,
                                   hcal_spvcnn, hcal_spvcnn_smoke, uresnet_nas_lartpc, uresnet_nas_lartpc_smoke,
                                   spvnas_lidar, spvnas_lidar_smoke)}


def get_config(name: str, overrides=()) -> dict:
  """The named config with ``key=value`` overrides applied; clear errors for unknown names and keys."""
  if name not in CONFIGS:
    raise ValueError(f"unknown config {name!r}; available: {sorted(CONFIGS)}.")
  cfg = copy.deepcopy(CONFIGS[name]())
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r} must look like key=value (e.g. steps=100 or optimizer.learning_rate=3e-4).")
    key, raw = item.split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node, parts = cfg, key.split(".")
    for part in parts[:-1]:
      if not isinstance(node.get(part), dict):
        raise ValueError(f"override {key!r}: {part!r} is not a section of config {name!r}.")
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f"override {key!r}: config {name!r} has no key {parts[-1]!r}; it has {sorted(node)}.")
    if node[parts[-1]] is not None and value is not None and type(value) is not type(node[parts[-1]]) and not (
        isinstance(node[parts[-1]], float) and isinstance(value, int)):
      raise ValueError(f"override {key!r}: expected a {type(node[parts[-1]]).__name__}, got {raw!r}.")
    node[parts[-1]] = value
  validate(cfg)
  return cfg


def validate(cfg: dict) -> None:
  for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
    if not isinstance(cfg[key], int) or cfg[key] < 1:
      raise ValueError(f"config {cfg['name']!r}: {key} must be a positive int, got {cfg[key]!r}.")
  o = cfg["optimizer"]
  if o["learning_rate"] <= 0:
    raise ValueError(f"config {cfg['name']!r}: optimizer.learning_rate must be positive.")
  if o["kind"] not in ("adam", "sgd"):
    raise ValueError(f"config {cfg['name']!r}: optimizer.kind must be 'adam' or 'sgd', got {o['kind']!r}.")
  if o["decay"] not in ("cosine", "constant"):
    raise ValueError(f"config {cfg['name']!r}: optimizer.decay must be 'cosine' or 'constant', got {o['decay']!r}.")
  w, k = cfg["class_weights"], cfg["model"].get("num_classes")
  fixed = isinstance(w, (list, tuple)) and len(w) == k and all(isinstance(v, (int, float)) and v >= 0 for v in w)
  if w not in (None, "inverse_frequency") and not fixed:
    raise ValueError(f"config {cfg['name']!r}: class_weights must be None, 'inverse_frequency' (per batch) or a list "
                     f"of {k} non-negative weights, one per class (e.g. --set 'class_weights=[1,1,2,4,8]'); got {w!r}.")
  spec = cfg["instance_loss"]
  if spec is not None:
    keys = set(_instance_loss())
    if not isinstance(spec, dict) or set(spec) != keys or not cfg["model"].get("embed_dim"):
      raise ValueError(f"config {cfg['name']!r}: instance_loss must be None or a dict with {sorted(keys)}, and needs "
                       f"a model with an instance head (model.embed_dim > 0); got {spec!r} and embed_dim "
                       f"{cfg['model'].get('embed_dim')!r}.")
  if not cfg["focal_gamma"] >= 0:
    raise ValueError(f"config {cfg['name']!r}: focal_gamma must be >= 0 (0: cross-entropy), got "
                     f"{cfg['focal_gamma']!r}.")
