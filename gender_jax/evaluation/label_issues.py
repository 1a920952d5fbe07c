"""Likely label errors by confident learning (Northcutt et al. 2021) over out-of-fold
probabilities of a cheap classifier (L2 logistic regression fitted by Newton's method)."""
from __future__ import annotations

from typing import Any

import numpy as np


def logistic_regression(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 25) -> np.ndarray:
  """L2-regularised binary logistic regression by Newton's method; returns [w…, b]."""
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  w = np.zeros(xb.shape[1])
  reg = np.full(xb.shape[1], l2)
  reg[-1] = 0.0  # the bias is not shrunk
  for _ in range(iters):
    p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
    grad = xb.T @ (p - y) + reg * w
    hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(reg) + 1e-9 * np.eye(len(w))
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-7:
      break
  return w


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, l2: float = 1.0,
                      max_dims: int = 128, seed: int = 0) -> np.ndarray:
  """(n, 2) probabilities, each image's from a model fitted on the other folds (stratified)."""
  x = np.asarray(features, np.float64)
  labels = np.asarray(labels).astype(int)
  rng = np.random.default_rng(seed)
  fold = np.zeros(len(labels), int)
  for c in (0, 1):  # stratified: each fold gets its share of each class
    idx = np.flatnonzero(labels == c)
    fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
  probs = np.zeros((len(labels), 2))
  for k in range(folds):
    train, test = fold != k, fold == k
    if not test.any():
      continue
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    xt, xs = (x[train] - mean) / std, (x[test] - mean) / std
    if x.shape[1] > max_dims:  # PCA on the training folds keeps Newton's Hessian small
      _, _, vt = np.linalg.svd(xt - xt.mean(0), full_matrices=False)
      xt, xs = xt @ vt[:max_dims].T, xs @ vt[:max_dims].T
    w = logistic_regression(xt, labels[train].astype(np.float64), l2)
    p1 = 1 / (1 + np.exp(-np.clip(np.concatenate([xs, np.ones((len(xs), 1))], 1) @ w, -30, 30)))
    probs[test] = np.stack([1 - p1, p1], axis=1)
  return probs


def confident_label_issues(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
  """Confident learning: i is an issue when its confidently-assigned class differs from its label.

  Per-class threshold t_j = mean p_j over images labelled j; image i's candidate classes are
  those with p_ij ≥ t_j, its assigned class the most likely candidate. Sorted by the given
  label's probability, lowest (most likely wrong) first.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels).astype(int)
  t = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(2)])
  above = probs >= t[None, :]
  assigned = np.where(above.any(1), np.argmax(np.where(above, probs, -1.0), axis=1), labels)
  out = [dict(index=int(i), given=int(labels[i]), suggested=int(assigned[i]),
              p_given=float(probs[i, labels[i]]))
         for i in np.flatnonzero(assigned != labels)]
  return sorted(out, key=lambda r: r["p_given"])
