"""Reading MATLAB annotation files (RAP, PA-100K) with errors that name the file and field."""
from __future__ import annotations

import os

import numpy as np

from gender_jax.data import schema


def load(path: str) -> dict:
  from scipy.io import loadmat
  if not os.path.exists(path):
    raise schema.AnnotationError(path, None, "file not found")
  try:
    return loadmat(path, squeeze_me=True, struct_as_record=False)
  except Exception as e:  # scipy raises several unrelated types for a damaged file
    raise schema.AnnotationError(path, None, f"not a readable .mat file: {e}") from None


def field(path: str, obj, name: str, where: str):
  value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
  if value is None:
    raise schema.AnnotationError(path, where, f"missing field {name!r}")
  return value


def strings(path: str, value, where: str) -> list[str]:
  """A cell array of strings (any nesting scipy produces) → list of str."""
  out = []
  for v in np.ravel(np.asarray(value, dtype=object)):
    while isinstance(v, np.ndarray) and v.size == 1:
      v = v.item() if v.dtype != object else v.ravel()[0]
    if not isinstance(v, str):
      raise schema.AnnotationError(path, where, f"expected strings, found {type(v).__name__}")
    out.append(v)
  return out


def matrix(path: str, value, rows: int, where: str) -> np.ndarray:
  m = np.atleast_2d(np.asarray(value))
  if m.shape[0] != rows and m.shape[1] == rows:
    m = m.T
  if m.shape[0] != rows:
    raise schema.AnnotationError(path, where, f"shape {m.shape} does not match {rows} images")
  return m


def indices(path: str, value, n: int, where: str) -> np.ndarray:
  """1-based MATLAB indices → 0-based, checked against n."""
  idx = np.ravel(np.asarray(value)).astype(np.int64) - 1
  if idx.size and (idx.min() < 0 or idx.max() >= n):
    raise schema.AnnotationError(path, where, f"index out of range 1..{n}")
  return idx
