"""Checkpoints: the training-state manager, weight files, and the inference bundle.

Three on-disk things, all Orbax:
- `WORKDIR/checkpoints/<step>/`: the full train state (params, batch stats, optimizer state,
  step) plus JSON metadata, saved async, keep-N latest plus the best on validation.
- a weights directory (`weights/` + `meta.json`): params and batch stats as a flat
  `{"layer1/0/conv1/kernel": array}` dict — what `convert` writes and `config.init_from` reads.
- the inference bundle (`WORKDIR/bundle/`): a weights directory plus `bundle.json` (model
  config, preprocessing, class names, calibration) — what predict, serve and export load.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gender_jax import CLASS_NAMES

BUNDLE_VERSION = 1


# ----------------------------------------------------------------------------- flat weights
def flat_key(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def to_flat(state: nnx.State) -> dict[str, np.ndarray]:
  """nnx.State → {"a/0/b": array}: a layout-free form for files and ports."""
  return {flat_key(path): np.asarray(jax.device_get(v.get_value()))
          for path, v in nnx.to_flat_state(state)}


def load_flat(model: nnx.Module, flat: dict[str, Any], *, collections=(nnx.Param, nnx.BatchStat),
              skip_prefixes: tuple[str, ...] = (), strict: bool = True) -> list[str]:
  """Writes `flat` into the model's variables in place; returns the keys left at init.

  With `strict`, every model variable outside `skip_prefixes` must be present with the right
  shape and every entry of `flat` must be used; all problems are reported in one error.
  """
  state = nnx.state(model, nnx.Any(*collections))
  problems, left, used = [], [], set()
  for path, var in nnx.to_flat_state(state):
    key = flat_key(path)
    if key.startswith(skip_prefixes):
      left.append(key)
      continue
    if key not in flat:
      problems.append(f"missing: {key} {tuple(var.get_value().shape)}")
      continue
    value = np.asarray(flat[key])
    used.add(key)
    if value.shape != var.get_value().shape:
      problems.append(f"shape: {key} has {value.shape}, model wants {tuple(var.get_value().shape)}")
      continue
    var.set_value(jax.numpy.asarray(value, var.get_value().dtype))
  unused = sorted(k for k in flat if k not in used and not k.startswith(skip_prefixes))
  problems += [f"unexpected: {k} {np.shape(flat[k])}" for k in unused]
  if strict and problems:
    raise ValueError(f"{len(problems)} weight mismatch(es):\n  " + "\n  ".join(problems))
  return left


def save_weights(directory: str, flat: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "weights"), flat, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:  # every process joins Orbax's save; one writes the JSON
    with open(os.path.join(directory, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2)


def read_meta(directory: str) -> dict[str, Any]:
  """A weights directory's or bundle's meta.json, without loading the weights."""
  path = os.path.join(os.path.abspath(directory), "meta.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} is not a weights directory or bundle (no meta.json; "
                            "write one with `python -m gender_jax.convert` or by training)")
  with open(path) as f:
    return json.load(f)


def load_weights(directory: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  directory = os.path.abspath(directory)
  meta = read_meta(directory)
  with ocp.StandardCheckpointer() as ckptr:
    flat = ckptr.restore(os.path.join(directory, "weights"))
  return {k: np.asarray(v) for k, v in flat.items()}, meta


# ----------------------------------------------------------------------------- bundle
def save_bundle(directory: str, model: nnx.Module, *, model_config: dict, preprocessing: dict,
                calibration: dict | None = None, extra: dict | None = None) -> None:
  """Writes the inference bundle. Every process calls it (Orbax saves collectively)."""
  flat = to_flat(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  meta = dict(
      format_version=BUNDLE_VERSION, model=dict(model_config), preprocessing=preprocessing,
      class_names=list(CLASS_NAMES),
      calibration=calibration or dict(temperature=1.0, abstain_threshold=0.0),
      **(extra or {}))
  save_weights(directory, flat, meta)


class Bundle:
  """A loaded inference bundle: the eval-mode model plus its contract."""

  def __init__(self, directory: str, compute_dtype: str | None = None):
    """`compute_dtype` overrides the training dtype (e.g. float32 for CPU serving/export)."""
    import ml_collections
    from gender_jax.models import create_model
    flat, self.meta = load_weights(directory)
    if self.meta.get("format_version") != BUNDLE_VERSION:
      raise ValueError(f"{directory}: bundle format {self.meta.get('format_version')!r}, "
                       f"this version reads {BUNDLE_VERSION}")
    self.directory = directory
    self.model_config = ml_collections.ConfigDict(self.meta["model"])
    if compute_dtype:
      self.model_config.compute_dtype = compute_dtype
    # Shapes only, then the stored values: a random init would compile one kernel per shape.
    self.model = nnx.eval_shape(lambda: create_model(self.model_config))
    load_flat(self.model, flat)
    self.model.eval()
    self.preprocessing = self.meta["preprocessing"]
    self.image_size = int(self.preprocessing["image_size"])
    self.class_names = tuple(self.meta["class_names"])
    self.calibration = self.meta["calibration"]

  @property
  def face_template(self) -> dict[str, Any]:
    """Where the eyes and mouth sit on the training crops (meta `face_template`), for
    aligning detected faces; bundles without one were trained on UTKFace-style crops."""
    from gender_jax.faces.align import UTKFACE_TEMPLATE, check_template
    return check_template(self.meta.get("face_template") or UTKFACE_TEMPLATE)

  def logits_fn(self):
    """A pure function (state, uint8 NHWC) → float32 logits, for jit, export and serving."""
    from gender_jax.data.preprocess import normalize
    graphdef, state = nnx.split(self.model)
    spec, dtype = self.preprocessing, self.model_config.compute_dtype

    def logits(state, images):
      model = nnx.merge(graphdef, state)
      return model(normalize(images, spec, dtype))
    return logits, state

  def probs_fn(self):
    """Jitted (uint8 NHWC) → calibrated class probabilities; one compile per batch size."""
    logits, state = self.logits_fn()
    temperature = float(self.calibration.get("temperature", 1.0))

    @jax.jit
    def probs(state, images):
      return jax.nn.softmax(logits(state, images) / temperature, axis=-1)
    return lambda images: probs(state, images)

  def decide(self, probs) -> list[dict[str, Any]]:
    """Calibrated probabilities (N, 2) → per-image answers, with abstention below threshold."""
    threshold = float(self.calibration.get("abstain_threshold", 0.0))
    probs = np.asarray(probs, np.float64)
    out = []
    for p in probs:
      top = int(np.argmax(p))
      out.append({"label": "uncertain" if p[top] < threshold else self.class_names[top],
                  "abstained": bool(p[top] < threshold),
                  **{f"p_{name}": float(p[i]) for i, name in enumerate(self.class_names)}})
    return out


# ----------------------------------------------------------------------------- train state
def create_manager(directory: str, *, keep: int, best_metric: str | None,
                   async_save: bool = True) -> ocp.CheckpointManager:
  policies = [ocp.checkpoint_managers.LatestN(keep)]
  if best_metric:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save, create=True,
      # The best checkpoint is chosen on this metric (`manager.best_step()`).
      best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode="max")
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         metrics: dict | None = None, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics, force=force)


def restore(directory_or_manager, abstract_state, step: int | None = None):
  """Restores (state, meta) into the abstract sharded target (any device count)."""
  manager = directory_or_manager
  if isinstance(manager, str):
    manager = ocp.CheckpointManager(os.path.abspath(manager), item_names=("state", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta
