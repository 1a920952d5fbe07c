"""After training: the steps a config lists in `config.after_training`, run in that order on
the bundle just written.

  precise_bn     every BatchNorm's running statistics recomputed on `precise_bn_batches`
                 training batches (precise_bn.py): what a short or from-scratch MobileNet needs
  face_template  where the face detector puts eyes and mouth on this run's validation crops,
                 so photos' faces are aligned the way this model saw faces (none is stored when
                 the crops hold too few faces: person crops, synthetic images)
  calibrate      the temperature (and, with `abstain_target_accuracy`, the abstain threshold)
                 fitted on the validation splits, through `calibrate_bundle`

Every process runs every step (same data, same result); process 0 writes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from gender_jax.data import pipeline
from gender_jax.data.sources import input_kind, input_kinds
from gender_jax.evaluation import datasets
from gender_jax.evaluation.calibration import calibrate_bundle
from gender_jax.faces import template
from gender_jax.models.weights import update_meta
from gender_jax.train import precise_bn, schedule


def run(config, bundle_dir: str, *, step: int, val_sources: dict) -> dict[str, Any]:
  """Runs the listed steps; returns {step name: what it found or fitted}."""
  done = {}
  for name in schedule.after_training(config):
    done[name] = STEPS[name](config, bundle_dir, step=step, val_sources=val_sources)
    logging.info("after training, %s: %s", name, done[name])
  return done


def _precise_bn(config, bundle_dir: str, *, step: int, val_sources: dict) -> dict:
  # The training stream from the step after the last one trained: new shuffles, the same
  # augmentation the statistics were gathered under.
  batches = int(config.get("precise_bn_batches", 40))
  stream = (b["image"] for b in pipeline.train_dataset(config, start_step=step))
  return precise_bn.recalibrate_bundle(bundle_dir, stream, max_batches=batches)


def _face_template(config, bundle_dir: str, *, step: int, val_sources: dict) -> dict | None:
  # Faces only: in a mix of face and person sources, the person crops would blur the template.
  kinds = input_kinds(config)
  faces = {n: s for n, s in val_sources.items() if (kinds.get(n) or input_kind(n)) == "faces"}
  if not faces:
    return "no face source; none (the bundle classifies persons whole)"
  found = template.measure_records(datasets.Concat(list(faces.values())))
  if found:
    update_meta(bundle_dir, face_template=found)
  return found or "too few faces in the validation crops; the bundle uses the UTKFace framing"


def _calibrate(config, bundle_dir: str, *, step: int, val_sources: dict) -> dict:
  fit = calibrate_bundle(bundle_dir, datasets.Concat(list(val_sources.values())),
                         target_accuracy=config.get("abstain_target_accuracy") or None,
                         batch_size=config.data.eval_batch_size, description="validation")
  return {k: v for k, v in fit.items() if not isinstance(v, dict)}


STEPS: dict[str, Callable[..., Any]] = dict(precise_bn=_precise_bn,
                                            face_template=_face_template, calibrate=_calibrate)
assert tuple(STEPS) == schedule.AFTER_TRAINING
