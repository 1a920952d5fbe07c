"""Classification metrics: the one home of the figures validation and evaluation report.

`point_metrics` gives the plain figures (loss, accuracy, per-class recall, balanced accuracy)
that training's validation logs; `classification_metrics` puts 95% intervals around the same
figures (and adds ROC AUC and ECE) for evaluation reports, so both count alike.

Proportions (accuracy, per-class recall) get Wilson score intervals: exact enough at small
counts, never outside [0, 1], and reproducible. Statistics that are not proportions (balanced
accuracy, ROC AUC, ECE) get percentile bootstrap intervals from a fixed seed, so the same
predictions always give the same report.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from gender_jax import CLASS_NAMES

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion; (nan, nan) when n is 0."""
  if n <= 0:
    return float("nan"), float("nan")
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return round(float(max(0.0, centre - half)), 6), round(float(min(1.0, centre + half)), 6)


def roc_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """ROC AUC of `scores` for labels==1, ties counted half; `weights` (B, n) gives B AUCs at once.

  Weighted form (counts of a bootstrap resample as weights) so the resamples share one sort.
  """
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  w = np.ones((1, len(scores))) if weights is None else np.atleast_2d(weights).astype(np.float64)
  order = np.argsort(scores, kind="stable")
  s, pos, w = scores[order], labels[order], w[:, order]
  # Tie groups: for each sorted element, the first and one-past-last index of its group.
  starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
  group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
  first, end = starts[group], np.r_[starts[1:], len(s)][group]
  neg_cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * ~pos, axis=1)], axis=1)
  below = neg_cum[:, first]
  tied = neg_cum[:, end] - below
  w_pos, w_neg = (w * pos).sum(1), (w * ~pos).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    auc = ((w * pos) * (below + 0.5 * tied)).sum(1) / (w_pos * w_neg)
  return auc if weights is not None else auc[:1]


def ece(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15,
        weights: np.ndarray | None = None) -> np.ndarray:
  """Expected calibration error of the top-class confidence, equal-width bins on [0, 1].

  ECE = Σ_bins (n_b / n) |accuracy_b − mean confidence_b|. With `weights` (B, n): B values.
  """
  probs = np.asarray(probs, np.float64)
  conf, correct = probs.max(1), (probs.argmax(1) == np.asarray(labels)).astype(np.float64)
  w = np.ones((1, len(conf))) if weights is None else np.atleast_2d(weights).astype(np.float64)
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)  # (a, b] bins
  onehot = np.eye(num_bins)[bins]                         # (n, bins)
  count = w @ onehot
  gap = np.abs((w * correct) @ onehot - (w * conf) @ onehot)  # |Σ correct − Σ conf| per bin
  return gap.sum(1) / count.sum(1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> list[dict]:
  """Per-bin count, mean confidence and accuracy (the reliability diagram's data)."""
  probs = np.asarray(probs, np.float64)
  conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  out = []
  for b in range(num_bins):
    m = bins == b
    out.append(dict(lo=b / num_bins, hi=(b + 1) / num_bins, count=int(m.sum()),
                    confidence=float(conf[m].mean()) if m.any() else None,
                    accuracy=float(correct[m].mean()) if m.any() else None))
  return out


def coverage_curve(probs: np.ndarray, labels: np.ndarray,
                   thresholds=np.round(np.arange(0.5, 1.0, 0.025), 3)) -> list[dict]:
  """Accuracy on the answered images vs the fraction answered, per abstain threshold."""
  probs = np.asarray(probs, np.float64)
  conf, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
  out = []
  for t in thresholds:
    answered = conf >= t
    k = int(answered.sum())
    out.append(dict(threshold=float(t), coverage=k / max(len(conf), 1), answered=k,
                    accuracy=float(correct[answered].mean()) if k else None))
  return out


def _ci(draws) -> list:
  """The 95% percentile interval of bootstrap draws (non-finite draws left out)."""
  draws = draws[np.isfinite(draws)]
  lo, hi = (np.percentile(draws, [2.5, 97.5]) if len(draws) else (np.nan, np.nan))
  return [_f(lo), _f(hi)]


def _value(point, draws) -> dict[str, Any]:
  return dict(value=_f(point), ci=_ci(draws), ci_method="bootstrap")


def _unbiased_draws(point: float, draws: np.ndarray) -> np.ndarray:
  """Draws of a statistic the bootstrap inflates, shifted by the bootstrap's estimate of that
  bias (their mean − the point estimate), floored at 0. Binned ECE is one: each bin's |gap|
  only grows with resampling noise, so the draws sit above the estimate and their plain
  percentile interval can exclude it (0.068 [0.070, 0.202] on 100 images)."""
  finite = draws[np.isfinite(draws)]
  if not len(finite) or not np.isfinite(point):
    return draws
  return np.maximum(draws - (finite.mean() - point), 0.0)


def _f(x):
  x = float(x)
  return None if not np.isfinite(x) else round(x, 6)


def resample_counts(n: int, bootstrap: int, seed: int) -> np.ndarray:
  """(bootstrap, n) counts of each example in each resample: the bootstrap as weights."""
  rng = np.random.default_rng(seed)
  return rng.multinomial(n, np.full(n, 1 / n), size=bootstrap).astype(np.float64)


def balanced_accuracy_draws(correct: np.ndarray, labels: np.ndarray,
                            weights: np.ndarray) -> np.ndarray:
  """Balanced accuracy (the mean of the per-class recalls, resampled together) under each row
  of resample `weights`; NaN where a resample lacks a class."""
  per_class = []
  for c in range(2):
    m = labels == c
    with np.errstate(invalid="ignore", divide="ignore"):
      per_class.append((weights[:, m] * correct[m]).sum(1) / weights[:, m].sum(1))
  return np.mean(per_class, axis=0)


def difference_ci(correct_a, labels_a, correct_b, labels_b, *, bootstrap: int = 1000,
                  seed: int = 0) -> list:
  """95% percentile bootstrap CI of balanced accuracy(a) − balanced accuracy(b), two disjoint
  groups resampled independently."""
  draws = [balanced_accuracy_draws(np.asarray(c, np.float64), np.asarray(y).astype(int),
                                   resample_counts(len(y), bootstrap, seed + i))
           for i, (c, y) in enumerate(((correct_a, labels_a), (correct_b, labels_b)))]
  return _ci(draws[0] - draws[1])


def class_recalls(correct: np.ndarray, labels: np.ndarray, num_classes: int = 2) -> list[float]:
  """Each class's share of its examples answered right (nan for a class with none)."""
  return [float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
          for c in range(num_classes)]


def point_metrics(logits: np.ndarray, labels: np.ndarray,
                  class_names=CLASS_NAMES) -> dict[str, float]:
  """{loss (mean NLL of softmax(logits)), accuracy, recall_<class>, balanced_accuracy}:
  validation's figures, and the values `classification_metrics` puts intervals around."""
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(int)
  if not len(labels):
    return {}
  logp = special.log_softmax(logits, axis=-1)
  correct = logits.argmax(-1) == labels
  recalls = class_recalls(correct, labels, len(class_names))
  out = {"loss": float(-logp[np.arange(len(labels)), labels].mean()),
         "accuracy": float(correct.mean()),
         **{f"recall_{name}": r for name, r in zip(class_names, recalls)}}
  # the mean over the classes present: a one-class split gets that class's recall
  out["balanced_accuracy"] = float(np.nanmean(recalls))
  return out


def classification_metrics(probs: np.ndarray, labels: np.ndarray, *, class_names=("female", "male"),
                           num_bins: int = 15, bootstrap: int = 1000, seed: int = 0) -> dict:
  """Every headline metric of a binary classifier, each with a 95% CI and its sample count.

  `probs` (n, 2) class probabilities, `labels` (n,) in {0, 1}.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(int)
  n = len(labels)
  pred = probs.argmax(1) if n else np.zeros(0, int)
  correct = pred == labels
  out: dict[str, Any] = {"count": n}
  out["accuracy"] = dict(value=_f(correct.mean()) if n else None, ci=list(wilson(correct.sum(), n)),
                         count=n, ci_method="wilson")
  recalls = class_recalls(correct, labels, len(class_names))
  for c, name in enumerate(class_names):
    m = labels == c
    k = int(m.sum())
    out[f"recall_{name}"] = dict(value=_f(recalls[c]), ci=list(wilson(int(correct[m].sum()), k)),
                                 count=k, ci_method="wilson")
  out["confusion"] = dict(rows="true " + "/".join(class_names),
                          cols="predicted " + "/".join(class_names),
                          matrix=[[int(((labels == t) & (pred == p)).sum()) for p in range(2)]
                                  for t in range(2)])
  if n == 0:
    return out
  weights = resample_counts(n, bootstrap, seed)
  both = labels.min() != labels.max()
  out["balanced_accuracy"] = dict(
      **_value(np.nanmean(recalls) if both else np.nan,
               balanced_accuracy_draws(correct, labels, weights)), count=n)
  out["roc_auc"] = dict(**_value(roc_auc(probs[:, 1], labels)[0] if both else np.nan,
                                 roc_auc(probs[:, 1], labels, weights) if both else np.array([])),
                        count=n)
  point = ece(probs, labels, num_bins)[0]
  out["ece"] = dict(**_value(point, _unbiased_draws(point, ece(probs, labels, num_bins, weights))),
                    count=n, bins=num_bins)
  out["mean_confidence"] = _f(probs.max(1).mean())
  return out


def standardised_balanced_accuracy(correct: np.ndarray, labels: np.ndarray, strata: np.ndarray,
                                   shares: dict[str, float], *, bootstrap: int = 1000,
                                   seed: int = 0) -> dict:
  """Balanced accuracy of one group as if its strata (age bands) had the reference `shares`.

  Direct standardisation: each stratum's examples together weigh its reference share, so groups with different age mixes are compared over the same mix. Strata the group
  lacks are left out and the reference renormalised over the rest (`coverage` says how much of
  it remains). 95% percentile bootstrap over the group's examples.
  """
  correct, labels = np.asarray(correct, np.float64), np.asarray(labels).astype(int)
  strata = np.asarray(strata, dtype=object)
  n = len(labels)
  present = sorted(set(strata) & set(shares))
  coverage = float(sum(shares[s] for s in present))
  if n == 0 or not present or labels.min() == labels.max():
    return dict(value=None, ci=[None, None], count=n, coverage=coverage)

  def standardised(counts):  # (..., n) resample counts → weights with the reference mix
    w = np.zeros_like(counts)
    for s in present:
      m = strata == s
      with np.errstate(invalid="ignore", divide="ignore"):
        w[..., m] = counts[..., m] / counts[..., m].sum(-1, keepdims=True) * shares[s]
    return w

  def balanced(w):
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.mean([(w[..., labels == c] * correct[labels == c]).sum(-1)
                      / w[..., labels == c].sum(-1) for c in range(2)], axis=0)

  counts = resample_counts(n, bootstrap, seed)
  return dict(**_value(balanced(standardised(np.ones(n))), balanced(standardised(counts))),
              count=n, coverage=_f(coverage))
