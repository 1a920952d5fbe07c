"""Photos with faces at known places, made from tight face crops, for tests and benchmarks.

Each face crop (e.g. a UTKFace 200x200 image) is scaled, slightly rotated and pasted onto a
larger background — noise, a gradient, stripes, or a blurred patch of another crop — so the
ground truth (where each crop went) is exact. Group photos paste the crops with a soft
elliptical edge (the face and hair, for detection); `in_the_wild` keeps the whole crop with a
feathered border, as a person in a photo keeps the hair and shoulders a crop shows.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BACKGROUNDS = ("noise", "gradient", "stripes", "blur")


class Photo(NamedTuple):
  image: np.ndarray      # (H, W, 3) uint8
  squares: np.ndarray    # (n, 4) x0, y0, x1, y1 of each pasted crop (before rotation)
  angles: np.ndarray     # (n,) degrees


def background(rng: np.random.Generator, size: tuple[int, int], kind: str,
               others: Sequence[np.ndarray] = ()) -> np.ndarray:
  """A (h, w, 3) uint8 background of one kind; "blur" needs `others` (source images)."""
  w, h = size
  if kind == "noise":
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))
  if kind == "gradient":
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w)[None, :, None] * 0.6 + np.linspace(0, 1, h)[:, None, None] * 0.4
    return (a + (b - a) * t).clip(0, 255).astype(np.uint8) * np.ones((h, 1, 1), np.uint8)
  if kind == "stripes":
    period, angle = rng.uniform(8, 40), rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    v = 0.5 + 0.5 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a + (b - a) * v[..., None]).astype(np.uint8)
  if kind == "blur":  # a corner of another image (hair, wall), enlarged and blurred: no face
    if not len(others):
      return background(rng, size, "noise")
    src = others[rng.integers(len(others))]
    side = max(8, min(src.shape[:2]) // 5)
    patch = Image.fromarray(np.ascontiguousarray(src[:side, :side]))
    return np.asarray(patch.resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(4)))
  raise ValueError(f"background {kind!r}: choose from {BACKGROUNDS}")


def _mask(side: int, shape: str = "ellipse") -> Image.Image:
  """A soft ellipse just inside the square (the face and hair, not the crop's corners), or
  the whole square with a feathered border."""
  m = Image.new("L", (side * 4, side * 4), 0)
  inset = side * 4 * 0.04
  box = [inset, inset, side * 4 - inset, side * 4 - inset]
  if shape == "ellipse":
    ImageDraw.Draw(m).ellipse(box, fill=255)
  else:
    ImageDraw.Draw(m).rectangle(box, fill=255)
  return m.resize((side, side), Image.BILINEAR).filter(ImageFilter.GaussianBlur(max(1, side / 40)))


def paste(canvas: Image.Image, crop: np.ndarray, x0: int, y0: int, side: int, angle: float,
          shape: str = "ellipse"):
  face = Image.fromarray(crop).resize((side, side), Image.BILINEAR)
  mask = _mask(side, shape)
  if angle:
    face = face.rotate(angle, Image.BILINEAR)
    mask = mask.rotate(angle, Image.BILINEAR)
  canvas.paste(face, (x0, y0), mask)


def group_photo(rng: np.random.Generator, crops: Sequence[np.ndarray], size=(320, 240),
                sides=(40, 120), max_angle: float = 10.0, kind: str | None = None,
                others: Sequence[np.ndarray] = ()) -> Photo:
  """The crops pasted at random, non-overlapping places (as many as fit) on one background."""
  w, h = size
  kind = kind or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  canvas = Image.fromarray(background(rng, size, kind, others))
  squares, angles = [], []
  for crop in crops:
    for _ in range(50):  # rejection sampling for a free spot
      side = int(rng.integers(sides[0], sides[1] + 1))
      if side >= min(w, h):
        continue
      x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
      box = np.asarray([x0, y0, x0 + side, y0 + side])
      if all(box[0] >= s[2] or box[2] <= s[0] or box[1] >= s[3] or box[3] <= s[1]
             for s in squares):
        angle = float(rng.uniform(-max_angle, max_angle))
        paste(canvas, crop, x0, y0, side, angle)
        squares.append(box)
        angles.append(angle)
        break
  return Photo(np.asarray(canvas), np.asarray(squares, np.float32).reshape(-1, 4),
               np.asarray(angles, np.float32))


def in_the_wild(rng: np.random.Generator, crop: np.ndarray, others: Sequence[np.ndarray],
                side: int = 250, scale=(0.3, 0.6)) -> Photo:
  """One face crop as a person in a photo: 0.3–0.6 of a square frame, random place, context."""
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  canvas = Image.fromarray(background(rng, (side, side), kind, others))
  s = int(round(side * rng.uniform(*scale)))
  x0, y0 = int(rng.integers(0, side - s + 1)), int(rng.integers(0, side - s + 1))
  angle = float(rng.uniform(-8, 8))
  paste(canvas, crop, x0, y0, s, angle, shape="square")
  return Photo(np.asarray(canvas), np.asarray([[x0, y0, x0 + s, y0 + s]], np.float32),
               np.asarray([angle], np.float32))


def match(squares: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """For each pasted square, whether one detected box is its face: the box centre lies in the
  square's middle half and the box is 0.3–1.2 of the square wide. (n,) bool."""
  found = np.zeros(len(squares), bool)
  for i, (x0, y0, x1, y1) in enumerate(squares):
    side = x1 - x0
    for b in boxes:
      cx, cy, bw = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0]
      if (abs(cx - (x0 + x1) / 2) < side / 4 and abs(cy - (y0 + y1) / 2) < side / 4 and
              0.3 * side <= bw <= 1.2 * side):
        found[i] = True
  return found
