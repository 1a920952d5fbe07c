"""Image samples for calibration and parity checks: a folder, decoded like eval, or synthetic."""
from __future__ import annotations

import os
import pathlib

import numpy as np
from gender_jax.data.preprocess import ImageError, eval_image
from gender_jax.data.preprocess import resize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ExportError(ValueError):
  """Bad export options or inputs; the message says which and why."""


def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
  """Image files under `directory` (recursively, e.g. male/ and female/), sorted."""
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"image folder {root} does not exist")
  files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
  if not files:
    raise ExportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
  return files


def load_images(files, size: int) -> np.ndarray:
  """Decodes and resizes with the eval path every other entry point uses → uint8 NHWC."""
  out = []
  for f in files:
    try:
      out.append(eval_image(pathlib.Path(f).read_bytes(), size))
    except ImageError as e:
      raise ImageError(f"{f}: {e}") from None
  return np.stack(out)


def sample_images(directory, size: int, *, calibration: int, check: int, seed: int = 0):
  """Two disjoint random samples of a folder: calibration images and parity-check images."""
  files = list_images(directory)
  order = np.random.default_rng(seed).permutation(len(files))
  n_cal = min(calibration, max(len(files) - check, len(files) // 2))
  cal = [files[i] for i in order[:n_cal]]
  chk = [files[i] for i in order[n_cal:n_cal + check]] or cal[:check]
  return load_images(cal, size) if cal else None, load_images(chk, size)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Smooth random colour fields (upsampled noise): image-like statistics, no data needed."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  return np.stack([resize(s, size) for s in small])
