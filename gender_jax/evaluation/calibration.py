"""Temperature scaling and the abstain threshold, fitted on held-out data and kept in the bundle.

A network trained with cross-entropy is usually over-confident; dividing its logits by one
fitted temperature T fixes most of that without changing a single prediction (Guo et al. 2017).
The abstain threshold turns the calibrated top probability into "uncertain" below it.

The maths, the bundle's calibration record, and `calibrate_bundle`: a bundle run over held-out
data (through the Predictor, or with faces through the photo path) and the fit written into
it — what `python -m gender_jax.calibrate` and `evaluate --calibrate-on` both call.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize, special

from gender_jax.evaluation import stats
from gender_jax.inference.bundle import Bundle, softmax
from gender_jax.inference.predictor import Outputs, Predictor
from gender_jax.models.weights import read_meta, update_meta


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood of `labels` under softmax(logits / T)."""
  logp = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
  return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
  """The T minimising validation NLL. NLL(log T) is smooth and unimodal here: a bounded 1-D search."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(int)
  if len(labels) == 0:
    raise ValueError("cannot fit a temperature on 0 examples")
  result = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)),
                                    bounds=np.log(bounds), method="bounded",
                                    options=dict(xatol=1e-6))
  return float(np.exp(result.x))


def threshold_for_accuracy(probs: np.ndarray, labels: np.ndarray, target: float) -> float:
  """The lowest abstain threshold whose answered images reach `target` accuracy (most coverage).

  Returns the top-probability cut-off; 0.0 when every image can be answered, and 1.0 (answer
  almost nothing) when no threshold reaches the target.
  """
  probs = np.asarray(probs, np.float64)
  conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
  order = np.argsort(-conf, kind="stable")
  conf, correct = conf[order], correct[order]
  acc = np.cumsum(correct) / np.arange(1, len(conf) + 1)  # accuracy of the k most confident
  # A threshold must answer all images sharing a confidence value, so only cut between values.
  last_of_value = np.r_[conf[1:] != conf[:-1], True]
  ok = np.flatnonzero((acc >= target) & last_of_value)
  if not len(ok):
    return 1.0
  k = ok[-1]
  return 0.0 if k == len(conf) - 1 else float(conf[k])


def write_calibration(bundle_dir: str, temperature: float | None = None,
                      abstain_threshold: float | None = None, fitted_on: dict | None = None) -> dict:
  """Rewrites the "calibration" entry of the bundle's meta.json; the weights are untouched."""
  meta = read_meta(bundle_dir)
  calibration = dict(meta.get("calibration") or {})
  calibration.setdefault("temperature", 1.0)
  calibration.setdefault("abstain_threshold", 0.0)
  if temperature is not None:
    calibration["temperature"] = float(temperature)
  if abstain_threshold is not None:
    if not 0.0 <= abstain_threshold <= 1.0:
      raise ValueError(f"abstain_threshold must be in [0, 1], got {abstain_threshold}")
    calibration["abstain_threshold"] = float(abstain_threshold)
  if fitted_on is not None:
    calibration["fitted_on"] = fitted_on
  update_meta(bundle_dir, calibration=calibration)
  return calibration


def runner(bundle: Bundle, *, faces: str = "off", face_options: dict | None = None,
           tta: str = "none", batch_size: int = 64):
  """What answers labelled records as the bundle will be asked: the Predictor (`faces="off"`,
  whole images) or the photo pipeline over it (each photo's detected, aligned faces). Build
  one per bundle: building compiles."""
  if faces == "off":
    return Predictor(bundle, batch_size=batch_size, tta=tta)
  from gender_jax.inference.photos import FacePipeline, face_batch_sizes
  return FacePipeline(bundle, **dict(face_options or {}, faces=faces, tta=tta,
                                     face_batch_sizes=face_batch_sizes()))


def held_out_logits(run, records, progress: bool = False) -> tuple[Outputs, list[str]]:
  """Raw (temperature 1) logits of labelled `records` through `run` (a `runner`): with faces,
  each photo's most confident face; and the keys of the photos without a face."""
  if isinstance(run, Predictor):
    return run.logits_for_records(records, progress=progress), []
  return run.logits_for_records(records)


def fit(logits: np.ndarray, labels: np.ndarray, *, target_accuracy: float | None = None,
        abstain_threshold: float | None = None) -> dict[str, Any]:
  """Temperature (and threshold) fitted on raw logits: the summary `calibrate` prints.

  The threshold is `abstain_threshold` if given, else the one reaching `target_accuracy`,
  else None (the bundle's current one is kept)."""
  if len(labels) == 0:
    raise ValueError("no readable images with a label to fit the calibration on")
  temperature = fit_temperature(logits, labels)
  probs = softmax(logits, temperature)
  if abstain_threshold is None and target_accuracy is not None:
    abstain_threshold = threshold_for_accuracy(probs, labels, target_accuracy)
  answered = probs.max(axis=-1) >= (abstain_threshold or 0.0)
  return dict(
      count=int(len(labels)), temperature=temperature,
      nll_before=nll(logits, labels), nll_after=nll(logits, labels, temperature),
      ece_before=float(stats.ece(softmax(logits), labels)[0]),
      ece_after=float(stats.ece(probs, labels)[0]), abstain_threshold=abstain_threshold,
      # What the threshold implies on this data: the share answered, and their accuracy.
      coverage=float(answered.mean()),
      answered_accuracy=float((probs.argmax(-1) == labels)[answered].mean())
      if answered.any() else None)


def calibrate_bundle(bundle_dir: str, records, *, target_accuracy: float | None = None,
                     abstain_threshold: float | None = None, batch_size: int = 64,
                     description: str = "", faces: str = "off", face_options: dict | None = None,
                     tta: str = "none", write: bool = True, run=None,
                     progress: bool = False) -> dict[str, Any]:
  """Fits the bundle's temperature on held-out `records` and stores it (and a threshold):
  what `python -m gender_jax.calibrate` and `evaluate --calibrate-on` both call.

  `records`: a random-access sequence of {"image", "label"} (a validation source or folder),
  answered through the door the bundle will be asked by (`faces`, `tta`; or `run`, a `runner`
  already built): with faces, the fit is on the detected, aligned faces' raw logits.
  `write=False` fits without storing. Returns the fit summary, with the counts of unreadable
  photos and of photos without a face."""
  run = run or runner(Bundle(bundle_dir), faces=faces, face_options=face_options, tta=tta,
                      batch_size=batch_size)
  outputs, missed = held_out_logits(run, records, progress)
  if len(outputs.labels) == 0:
    raise ValueError(f"no readable images{' with a face' if faces != 'off' else ''} to "
                     f"calibrate {bundle_dir} on")
  summary = fit(outputs.values, outputs.labels, target_accuracy=target_accuracy,
                abstain_threshold=abstain_threshold)
  summary.update(unreadable=len(outputs.errors), no_face=len(missed))
  if write:
    write_calibration(bundle_dir, summary["temperature"], summary["abstain_threshold"],
                      fitted_on=dict(data=description, count=summary["count"],
                                     target_accuracy=target_accuracy,
                                     **({"faces": faces} if faces != "off" else {})))
  return summary
