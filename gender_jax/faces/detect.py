"""BlazeFace alone, jitted at one batch size: photos → per photo the faces found (box,
keypoints, score) in the photo's own pixels, with a large photo also looked at in windows.

Each photo is letterboxed to the detector's side (128 or 192 px), keeping its aspect ratio. A
near-square image (long/short side ≤ 1.2, as face crops are) also gets a black margin of a
quarter of the side all round: BlazeFace misses faces that fill the whole frame (UTKFace
crops: 94% found by short range without it, 100% with it, full range 10% → 100%).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from gender_jax.faces import align as align_lib
from gender_jax.faces import anchors
from gender_jax.faces import tiles as tiles_lib
from gender_jax.faces.anchors import detect_images
from gender_jax.faces.blazeface import create_detector
from gender_jax.faces.letterbox import Letterbox, letterbox, unbox

CANVAS = 640
# `faces="auto"`: a photo with one face that sits where the template puts it (scale, roll and
# shift of the whole photo's framing against the template within these) is already a crop
# like the training crops: it is classified whole, as they were. 90% of UTKFace crops fit
# their template within 12% of scale; a photo framed wider (a portrait, 250-px photos with
# the face at 0.7-0.95 of a crop's framing) is aligned instead: classified whole, such photos
# lose 6 points (0.840 against 0.900 aligned).
CROP_FRAMING = dict(scale=0.12, degrees=10.0, shift=0.08)


def framed_like_crop(face: dict[str, Any], shape, template: dict[str, Any]) -> bool:
  scale, degrees, shift = align_lib.framing(face["keypoints"], shape, template)
  return (abs(scale - 1) <= CROP_FRAMING["scale"] and abs(degrees) <= CROP_FRAMING["degrees"]
          and shift <= CROP_FRAMING["shift"])


def _pad(arrays: list[np.ndarray], n: int) -> np.ndarray:
  out = np.zeros((n, *arrays[0].shape), arrays[0].dtype)
  out[:len(arrays)] = arrays
  return out


class Detector:
  """BlazeFace alone, jitted at one batch size: images → per image a list of faces."""

  def __init__(self, kind: str = "short", *, max_faces: int = 8, batch_size: int = 8,
               min_score: float = anchors.MIN_SCORE, margin: float | None = None,
               side: int | None = None, tiles: str = "off"):
    self.kind, self.max_faces, self.batch_size, self.margin = kind, max_faces, batch_size, margin
    self.tiles = tiles_lib.check_mode(tiles)
    self.model = create_detector(kind)
    self.size = check_side(kind, side or self.model.input_size)
    self.traces = 0
    graphdef, state = nnx.split(self.model)
    self._state = state

    def run(state, images):
      self.traces += 1
      return detect_images(nnx.merge(graphdef, state), images, kind, max_faces, min_score)
    self._run = jax.jit(run)

  def raw(self, batch: np.ndarray) -> anchors.Detections:
    """A (batch_size, side, side, 3) uint8 letterboxed batch → detections in its pixels."""
    return jax.device_get(self._run(self._state, batch))

  def __call__(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
    found = self._detect(images, self.margin)
    return tiles_lib.add_tiled(images, found, lambda views: self._detect(views, 0.0),
                               self.tiles, self.max_faces)

  def _detect(self, images, margin):
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      boxes = [letterbox(im, self.size, margin) for im in chunk]
      det = self.raw(_pad([b.image for b in boxes], self.batch_size))
      for i, lb in enumerate(boxes):
        out.append(_faces(det, i, lb))
    return out


def check_side(kind: str, side: int) -> int:
  """The detector input side: the model's own, or for the full range any multiple of 32
  (e.g. 384 finds faces half as large, at 4x the cost)."""
  native = anchors.CONFIGS[kind]["size"]
  if side != native and (kind != "full" or side % 32 or side < 64):
    raise ValueError(f"detector side {side}: the {kind} range model runs at {native}"
                     + (" or a multiple of 32" if kind == "full" else ""))
  return side


def _faces(det, i: int, lb: Letterbox) -> list[dict[str, Any]]:
  """Slot i of a detections batch → its valid faces, coordinates in original pixels."""
  faces = []
  for f in np.flatnonzero(det.valid[i]):
    box = unbox(np.asarray(det.boxes[i, f]).reshape(2, 2), lb).ravel()
    faces.append(dict(index=len(faces), box=box, score=float(det.scores[i, f]),
                      keypoints=unbox(np.asarray(det.keypoints[i, f]), lb), slot=int(f)))
  return faces


