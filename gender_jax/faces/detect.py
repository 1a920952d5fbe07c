"""BlazeFace alone, jitted at one batch size: photos → per photo the faces found (box,
keypoints, score) in the photo's own pixels, with a large photo also looked at in windows.

Each photo is letterboxed to the detector's side (128 or 192 px), keeping its aspect ratio. A
near-square image (long/short side ≤ 1.2, as face crops are) also gets a black margin of a
quarter of the side all round: BlazeFace misses faces that fill the whole frame (UTKFace
crops: 94% found by short range without it, 100% with it, full range 10% → 100%).
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from gender_jax.data.preprocess import pad_batch
from gender_jax.faces import align as align_lib
from gender_jax.faces import anchors
from gender_jax.faces import tiles as tiles_lib
from gender_jax.faces.anchors import detect_images
from gender_jax.faces.blazeface import create_detector
from gender_jax.faces.letterbox import Letterbox, letterbox, unbox

CANVAS = 640
# Detection slots per photo (and per window of a large one): far above group sizes, so a
# crowd of 50 comes back as 50; NMS costs a few microseconds a slot. A photo that fills them
# all is named (`FacePipeline.capped`).
MAX_FACES = 64
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


class Detector:
  """BlazeFace alone, jitted at one batch size: images → per image a list of faces."""

  def __init__(self, kind: str = "short", *, max_faces: int = MAX_FACES, batch_size: int = 8,
               min_score: float = anchors.MIN_SCORE, margin: float | None = None,
               side: int | None = None, tiles: str = "off", threads: int = 4):
    self.kind, self.max_faces, self.batch_size, self.margin = kind, max_faces, batch_size, margin
    self.tiles = tiles_lib.check_mode(tiles)
    self.model = create_detector(kind)
    self.size = check_side(kind, side or self.model.input_size)
    self.traces = 0
    self.threads = threads
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
    found = self.detect(images, self.margin)
    return tiles_lib.add_tiled(images, found, lambda views: self.detect(views, 0.0),
                               self.tiles, None)

  def detect(self, images, margin: float | None = None) -> list[list[dict[str, Any]]]:
    """Each image seen whole (no windows), letterboxed with `margin` (default: per image)."""
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      boxes = list(pool.map(lambda im: letterbox(im, self.size, margin), images))
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = boxes[start:start + self.batch_size]
      det = self.raw(pad_batch([b.image for b in chunk], self.batch_size))
      for i, lb in enumerate(chunk):
        faces = faces_of(det, i, lb, images[start + i].shape)
        for f in faces:
          del f["slot"]
        out.append(faces)
    return out


def check_side(kind: str, side: int) -> int:
  """The detector input side: the model's own, or for the full range any multiple of 32
  (e.g. 384 finds faces half as large, at 4x the cost)."""
  native = anchors.CONFIGS[kind]["size"]
  if side != native and (kind != "full" or side % 32 or side < 64):
    raise ValueError(f"detector side {side}: the {kind} range model runs at {native}"
                     + (" or a multiple of 32" if kind == "full" else ""))
  return side


def faces_of(det, i: int, lb: Letterbox, shape) -> list[dict[str, Any]]:
  """Row i of a detections batch → its valid faces, coordinates in the HxW photo's pixels
  (boxes clipped to the photo: BlazeFace's reach past an edge is no pixel of it), each with
  its detection `slot`."""
  faces = []
  h, w = shape[:2]
  for f in np.flatnonzero(det.valid[i]):
    box = unbox(np.asarray(det.boxes[i, f]).reshape(2, 2), lb).ravel()
    box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
    faces.append(dict(index=len(faces), box=box, score=float(det.scores[i, f]),
                      keypoints=unbox(np.asarray(det.keypoints[i, f]), lb), slot=int(f)))
  return faces


