"""Temperature scaling and the abstain threshold, fitted on held-out data and kept in the bundle.

A network trained with cross-entropy is usually over-confident; dividing its logits by one
fitted temperature T fixes most of that without changing a single prediction (Guo et al. 2017).
The abstain threshold turns the calibrated top probability into "uncertain" below it.

The maths, the bundle's calibration record, and `calibrate_bundle`: a bundle run over held-out
data (through the Predictor) and the fit written into it — what `python -m gender_jax.calibrate`
and `evaluate --calibrate-on` both call.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize, special

from gender_jax.evaluation import stats
from gender_jax.inference.bundle import Bundle, softmax
from gender_jax.inference.predictor import Predictor
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


def calibrate_bundle(bundle_dir: str, records, *, target_accuracy: float | None = None,
                     abstain_threshold: float | None = None, batch_size: int = 64,
                     description: str = "") -> dict[str, Any]:
  """Fits the bundle's temperature on held-out `records` and stores it (and a threshold).

  `records`: a random-access sequence of {"image", "label"} (a validation source or folder).
  The threshold is `abstain_threshold` if given, else the one reaching `target_accuracy` on
  the same records, else the bundle's current one is kept. Returns the fit summary.
  """
  bundle = Bundle(bundle_dir)
  predictor = Predictor(bundle, batch_size=batch_size)
  logits, labels, _, _ = predictor.logits_for_records(records)
  if len(labels) == 0:
    raise ValueError(f"no readable images to calibrate {bundle_dir} on")
  temperature = fit_temperature(logits, labels)
  probs = softmax(logits, temperature)
  if abstain_threshold is None and target_accuracy is not None:
    abstain_threshold = threshold_for_accuracy(probs, labels, target_accuracy)
  summary = dict(
      count=int(len(labels)), temperature=temperature,
      nll_before=nll(logits, labels), nll_after=nll(logits, labels, temperature),
      ece_before=float(stats.ece(softmax(logits), labels)[0]),
      ece_after=float(stats.ece(probs, labels)[0]))
  write_calibration(bundle_dir, temperature, abstain_threshold,
                    fitted_on=dict(data=description, count=int(len(labels)),
                                   target_accuracy=target_accuracy))
  summary["abstain_threshold"] = abstain_threshold
  answered = probs.max(axis=-1) >= (abstain_threshold or 0.0)
  summary["coverage"] = float(answered.mean())  # what the threshold implies on this data
  summary["answered_accuracy"] = (float((probs.argmax(-1) == labels)[answered].mean())
                                  if answered.any() else None)
  return summary
