"""The inference bundle: a weights directory plus the contract predict, serve and export load.

`WORKDIR/bundle/` = weights.py's directory whose meta.json also holds the model config, the
preprocessing spec, the class names, the calibration (temperature, abstain threshold) and the
face template. The temperature is applied here and nowhere else (`Bundle.calibrated`).
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from gender_jax import CLASS_NAMES, cli
from gender_jax.data.preprocess import normalize
from gender_jax.faces.align import UTKFACE_TEMPLATE, check_template
from gender_jax.models import create_model
from gender_jax.models.weights import load_flat, load_weights, save_weights, to_flat

BUNDLE_VERSION = 1


def bundle_meta(model_config: dict, preprocessing: dict, calibration: dict | None = None,
                extra: dict | None = None) -> dict[str, Any]:
  return dict(format_version=BUNDLE_VERSION, model=dict(model_config),
              preprocessing=preprocessing, class_names=list(CLASS_NAMES),
              calibration=calibration or dict(temperature=1.0, abstain_threshold=0.0),
              **(extra or {}))


def save_bundle(directory: str, model: nnx.Module, *, model_config: dict, preprocessing: dict,
                calibration: dict | None = None, extra: dict | None = None) -> None:
  """Writes the inference bundle. Every process calls it (Orbax saves collectively)."""
  flat = to_flat(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  save_weights(directory, flat, bundle_meta(model_config, preprocessing, calibration, extra))


class NonFiniteWeights(cli.UsageError):
  """A bundle holding NaN or inf: a diverged run's output, refused rather than served."""


def check_finite(flat: dict[str, Any], directory: str) -> None:
  bad = sorted(k for k, v in flat.items()
               if np.issubdtype(np.asarray(v).dtype, np.inexact) and not np.isfinite(v).all())
  if bad:
    raise NonFiniteWeights(f"bundle {directory!r} holds NaN or inf weights ({len(bad)} of "
                           f"{len(flat)} arrays, e.g. {bad[0]}): the run that wrote it diverged; "
                           "retrain with a lower optimizer.lr")


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
  """softmax(logits / T) on the host, in float64 (calibration fits and reports use it too)."""
  z = np.asarray(logits, np.float64) / temperature
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


class Bundle:
  """A loaded inference bundle: the eval-mode model plus its contract."""

  def __init__(self, directory: str, compute_dtype: str | None = None):
    """`compute_dtype` overrides the training dtype (e.g. float32 for CPU serving/export)."""
    flat, meta = load_weights(directory)
    check_finite(flat, directory)
    if meta.get("format_version") != BUNDLE_VERSION:
      raise ValueError(f"{directory}: bundle format {meta.get('format_version')!r}, "
                       f"this version reads {BUNDLE_VERSION}")
    model_config = ml_collections.ConfigDict(meta["model"])
    if compute_dtype:
      model_config.compute_dtype = compute_dtype
    # Shapes only, then the stored values: a random init would compile one kernel per shape.
    model = nnx.eval_shape(lambda: create_model(model_config))
    load_flat(model, flat)
    self._set(directory, meta, model_config, model)

  @classmethod
  def from_model(cls, model: nnx.Module, *, model_config: dict, preprocessing: dict,
                 calibration: dict | None = None) -> "Bundle":
    """The bundle a model in memory would be (the trainer's weights, for validation)."""
    self = cls.__new__(cls)
    self._set(None, bundle_meta(model_config, preprocessing, calibration),
              ml_collections.ConfigDict(dict(model_config)), model)
    return self

  def _set(self, directory, meta, model_config, model):
    self.directory, self.meta, self.model_config, self.model = directory, meta, model_config, model
    self.model.eval()
    self.preprocessing = meta["preprocessing"]
    self.image_size = int(self.preprocessing["image_size"])
    self.class_names = tuple(meta["class_names"])
    self.calibration = meta["calibration"]

  @property
  def inputs(self) -> tuple[str, ...]:
    """The kinds of input the model was trained on ("faces", "persons"; meta `inputs`):
    bundles from before it was recorded were trained on face crops."""
    return tuple(self.meta.get("inputs") or ("faces",))

  def faces_mode(self, requested: str) -> str:
    """The `faces` mode a request gets: `auto` on a model trained on person crops alone is
    `off` (each image one person, classified whole, as in training; hunting it for a face
    would answer "no face" for most)."""
    return "off" if requested == "auto" and self.inputs == ("persons",) else requested

  @property
  def face_template(self) -> dict[str, Any]:
    """Where the eyes and mouth sit on the training crops (meta `face_template`), for
    aligning detected faces; bundles without one were trained on UTKFace-style crops."""
    return check_template(self.meta.get("face_template") or UTKFACE_TEMPLATE)

  def logits_fn(self):
    """A pure function (state, uint8 NHWC) → float32 logits, for jit, export and serving."""
    graphdef, state = nnx.split(self.model)
    spec, dtype = self.preprocessing, self.model_config.compute_dtype

    def logits(state, images):
      model = nnx.merge(graphdef, state)
      return model(normalize(images, spec, dtype))
    return logits, state

  @property
  def temperature(self) -> float:
    return float(self.calibration.get("temperature", 1.0))

  def probs_from_logits(self, logits):
    """softmax(logits / T), in jax (traced or not) or numpy: the one place T is applied."""
    if isinstance(logits, np.ndarray):
      return softmax(logits, self.temperature)
    return jax.nn.softmax(logits / self.temperature, axis=-1)

  def probs_fn(self):
    """Jitted (uint8 NHWC) → calibrated class probabilities; one compile per batch size."""
    logits, state = self.logits_fn()

    @jax.jit
    def probs(state, images):
      return self.probs_from_logits(logits(state, images))
    return lambda images: probs(state, images)

  def decide(self, probs) -> list[dict[str, Any]]:
    """Calibrated probabilities (N, 2) → per-image answers, with abstention below threshold."""
    threshold = float(self.calibration.get("abstain_threshold", 0.0))
    probs = np.asarray(probs, np.float64)
    if not np.isfinite(probs).all():  # never an answer with p=nan
      raise FloatingPointError("the model gave NaN or inf probabilities")
    out = []
    for p in probs:
      top = int(np.argmax(p))
      out.append({"label": "uncertain" if p[top] < threshold else self.class_names[top],
                  "abstained": bool(p[top] < threshold),
                  **{f"p_{name}": float(p[i]) for i, name in enumerate(self.class_names)}})
    return out


def load_bundle(path: str, compute_dtype: str | None = None, what: str = "bundle"):
  """Bundle(path), with an incomplete copy answered in one line, not by tensorstore."""
  cli.require_weights_dir(path, what)
  if cli.debug_requested():
    return Bundle(path, compute_dtype)
  # A damaged checkpoint makes tensorstore's callbacks into Orbax's closed event loop print
  # dozens of thread tracebacks straight to fd 2; hold that output back, and replay it only
  # when the load succeeds (then it is whatever the libraries meant to say).
  sys.stderr.flush()
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  os.dup2(held.fileno(), 2)
  try:
    bundle = Bundle(path, compute_dtype)
  except cli.UsageError:  # the files loaded, and say something the user must fix
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    held.close()
    raise
  except Exception as failure:  # noqa: BLE001 — tensorstore/zarr internals: files damaged
    # fd 2 stays on the held file until exit (the callbacks keep firing); our own messages
    # go to the real stderr.
    _HELD.append(held)
    sys.stderr = os.fdopen(saved, "w")
    # The same callbacks also raise in Python threads, whose tracebacks would go through the
    # real sys.stderr now; the process is about to exit with the one line below.
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda unraisable: None
    first = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:120]
    raise cli.UsageError(f"{what} {path!r} could not be loaded ({first}); its weights files are "
                     "missing or damaged: copy the whole directory again") from None
  sys.stderr.flush()
  os.dup2(saved, 2)
  os.close(saved)
  held.seek(0)
  sys.stderr.write(held.read().decode(errors="replace"))
  held.close()
  return bundle


_HELD: list = []
