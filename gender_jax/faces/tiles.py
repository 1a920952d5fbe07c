"""Tiles: a large photo looked at in overlapping windows as well as whole, for small faces.

BlazeFace sees the whole photo at 128 or 192 px, so a face of 1/16 of a 640-px group photo is
12 px there and mostly missed (full range: 26% of 40-80 px faces found in 640x480 photos).
Each window is detected as a photo of its own (same compiled program) and its faces mapped
back; a face cut by a window's inner border loses to a whole one of another window, so the
windows overlap by half: every face up to half a window wide lies whole in one of them. Faces
larger than that are the whole photo's to find.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

TILES = ("auto", "off")
MIN_TILE = 320    # px: a window's smallest side; 0.6 of it reaches a 192-px detector input
TILES_ACROSS = 3  # a photo's long side spans at most this many windows (plus the overlaps)
OVERLAP = 0.5     # of a window's side
IOU_SAME = 0.3    # two boxes this close (or one mostly inside the other) are one face
INSIDE_SAME = 0.6


def check_mode(mode: str) -> str:
  if mode not in TILES:
    raise ValueError(f"tiles={mode!r}: choose from {', '.join(TILES)}")
  return mode


def windows(shape, mode: str = "auto") -> list[tuple[int, int, int, int]]:
  """The (x0, y0, x1, y1) windows of an HxW photo, besides the whole photo; none for a
  photo under two windows long (a portrait, a face crop) or with mode 'off'."""
  check_mode(mode)
  h, w = shape[:2]
  side = max(MIN_TILE, math.ceil(max(h, w) / TILES_ACROSS))
  if mode == "off" or max(h, w) < 2 * side:
    return []

  def starts(length):
    if length <= side:
      return [0]
    n = math.ceil((length - side) / (side * (1 - OVERLAP))) + 1
    return [round(s) for s in np.linspace(0, length - side, n)]
  return [(x, y, min(x + side, w), min(y + side, h)) for y in starts(h) for x in starts(w)]


def _iou_inside(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
  union, smaller = area(a) + area(b) - inter, min(area(a), area(b))
  return (inter / union if union else 0.0), (inter / smaller if smaller else 0.0)


def merge(views: Sequence[Sequence[dict[str, Any]]], origins: Sequence[tuple[int, int, int, int]],
          shape, max_faces: int | None = None) -> list[dict[str, Any]]:
  """The faces of one photo's views (each in its window's pixels) → one list in the photo's
  pixels, duplicates dropped, best first, at most `max_faces` (None: all), indexed again.

  A face touching an inner border of its window (not the photo's edge) may be cut: it ranks
  after every whole face, so the whole one of the neighbouring window is kept."""
  h, w = shape[:2]
  candidates = []
  for faces, (x0, y0, x1, y1) in zip(views, origins):
    shift = np.asarray([x0, y0], np.float32)
    for face in faces:
      box = np.asarray(face["box"], np.float32) + np.tile(shift, 2)
      cut = ((x0 > 0 and box[0] <= x0 + 1) or (y0 > 0 and box[1] <= y0 + 1)
             or (x1 < w and box[2] >= x1 - 1) or (y1 < h and box[3] >= y1 - 1))
      candidates.append((cut, -face["score"], len(candidates),
                         dict(face, box=box, keypoints=np.asarray(face["keypoints"]) + shift)))
  kept: list[dict[str, Any]] = []
  for *_, face in sorted(candidates, key=lambda c: c[:3]):
    if len(kept) == max_faces:
      break
    if all(iou <= IOU_SAME and inside <= INSIDE_SAME
           for iou, inside in (_iou_inside(face["box"], k["box"]) for k in kept)):
      kept.append(face)
  kept.sort(key=lambda f: -f["score"])
  return [dict(f, index=i) for i, f in enumerate(kept)]


def add_tiled(images: Sequence[np.ndarray], found: list[list[dict[str, Any]]], detect_views,
              mode: str, max_faces: int | None = None, skip=lambda faces: False,
              locate_views=None) -> list[list[dict[str, Any]]]:
  """`found` (each image's faces, seen whole) with the faces of its windows merged in.

  `detect_views(views)`: crops → their faces, as for whole photos; `skip(faces)`: an image
  whose whole view already settled it (a face crop classified whole) is not tiled.
  `locate_views(views)`: the same detector alone (the same boxes and scores, none of the
  classifying): where given, only the windows that hold a face surviving the merge go through
  `detect_views`. The answer is the same: a face that loses the merge suppresses no other."""
  plans = [(i, wins) for i, image in enumerate(images)
           if (wins := windows(image.shape, mode)) and not skip(found[i])]
  if not plans:
    return found
  crop = lambda i, win: np.ascontiguousarray(images[i][win[1]:win[3], win[0]:win[2]])  # noqa: E731
  if locate_views is not None:
    located = iter(locate_views([crop(i, win) for i, wins in plans for win in wins]))
    chosen = []
    for i, wins in plans:
      keep = _winning_views(images[i].shape, found[i], [next(located) for _ in wins], wins,
                            max_faces)
      chosen.append((i, [win for k, win in enumerate(wins) if k in keep]))
    plans = chosen
  faces = iter(detect_views([crop(i, win) for i, wins in plans for win in wins]))
  out = list(found)
  for i, wins in plans:
    h, w = images[i].shape[:2]
    out[i] = merge([found[i]] + [next(faces) for _ in wins], [(0, 0, w, h)] + wins,
                   images[i].shape, max_faces)
  return out


def _winning_views(shape, whole, located, wins, max_faces) -> set[int]:
  """Which windows (by index) contribute a face to the merge of `whole` and `located`."""
  h, w = shape[:2]
  tagged = [[dict(f, view=k) for f in faces] for k, faces in enumerate(located)]
  kept = merge([[dict(f, view=-1) for f in whole]] + tagged, [(0, 0, w, h)] + list(wins),
               shape, max_faces)
  return {f["view"] for f in kept} - {-1}
