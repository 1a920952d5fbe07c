"""Letterboxing: an image fitted, aspect kept, into a black square, and points mapped back.

A near-square image (long/short side ≤ SQUARE_ASPECT, as face crops are) gets a margin of
CROP_MARGIN of the side all round: BlazeFace misses faces that fill the whole frame.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

CROP_MARGIN = 0.25   # letterbox margin on each side of a near-square image, of the target side
SQUARE_ASPECT = 1.2  # long side / short side up to which an image counts as near-square


class Letterbox(NamedTuple):
  image: np.ndarray  # (side, side, 3) uint8
  scale: tuple[float, float]  # target pixels per original pixel, x and y
  offset: tuple[float, float]  # where the original's (0, 0) lands, in target pixels


def margin_for(shape, margin: float | None = None) -> float:
  """The letterbox margin of an image: `margin` if given, else CROP_MARGIN when near-square."""
  if margin is not None:
    return margin
  h, w = shape[:2]
  return CROP_MARGIN if max(h, w) <= SQUARE_ASPECT * min(h, w) else 0.0


def letterbox_fit(shape, side: int, margin: float | None = None) -> float:
  """Target pixels per original pixel of `letterbox` (before rounding to whole pixels)."""
  return side * (1 - 2 * margin_for(shape, margin)) / max(shape[:2])


def letterbox(image: np.ndarray, side: int, margin: float | None = None) -> Letterbox:
  """Fits an HxWx3 uint8 image, aspect kept, inside a side x side black square (+ margin)."""
  h, w = image.shape[:2]
  fit = letterbox_fit(image.shape, side, margin)
  nw, nh = max(1, round(w * fit)), max(1, round(h * fit))
  x0, y0 = (side - nw) // 2, (side - nh) // 2
  out = np.zeros((side, side, 3), np.uint8)
  resized = image if (nw, nh) == (w, h) else np.asarray(
      Image.fromarray(image).resize((nw, nh), Image.BILINEAR, reducing_gap=None))
  out[y0:y0 + nh, x0:x0 + nw] = resized
  return Letterbox(out, (nw / w, nh / h), (float(x0), float(y0)))


def unbox(points: np.ndarray, lb: Letterbox) -> np.ndarray:
  """Target-pixel (..., 2) coordinates → original-image pixels."""
  return (points - np.asarray(lb.offset)) / np.asarray(lb.scale)
