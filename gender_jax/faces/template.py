"""Measuring a face template on training crops: the median eye and mouth positions that the
detector finds on them, so faces found in photos are warped onto the framing the classifier
was trained on. Training stores it in the bundle (`config.face_template`)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from gender_jax.faces.align import ALIGN_KEYPOINTS
from gender_jax.faces.detect import Detector
from gender_jax.data.preprocess import ImageError, decode

MIN_FACES = 16  # fewer found than this: not face crops (pedestrians, synthetic): no template


def measure(images: Iterable[np.ndarray], *, detector: str = "short", batch_size: int = 64,
            min_faces: int = MIN_FACES) -> dict[str, Any] | None:
  """Decoded uint8 crops → dict(size, points, measured_on, of), or None when fewer than
  `min_faces` have a face. Each crop is run as the pipeline runs photos (letterboxed with a
  margin); points of crops of other sizes are scaled to the median size first."""
  det = Detector(detector, max_faces=1, batch_size=batch_size)
  sizes, points, seen, chunk = [], [], 0, []

  def flush():
    for image, faces in zip(chunk, det(chunk)):
      if faces:
        h, w = image.shape[:2]
        sizes.append((w, h))
        points.append(faces[0]["keypoints"][list(ALIGN_KEYPOINTS)] / np.asarray([w, h]))
  for image in images:
    chunk.append(image)
    seen += 1
    if len(chunk) == batch_size:
      flush()
      chunk = []
  if chunk:
    flush()
  if len(points) < min_faces:
    return None
  size = np.median(np.asarray(sizes, np.float64), axis=0)
  pts = np.median(np.stack(points), axis=0) * size
  return dict(size=[int(round(s)) for s in size], points=np.round(pts, 1).tolist(),
              measured_on=len(points), of=seen)


def measure_records(records: Sequence, *, limit: int = 256, **kwargs) -> dict[str, Any] | None:
  """`measure` over the first `limit` readable records ({"image": bytes}) of a split."""

  def images():
    for i in range(min(limit, len(records))):
      try:
        yield decode(records[i]["image"])
      except ImageError:
        continue
  return measure(images(), **kwargs)
