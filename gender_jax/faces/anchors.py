"""SSD anchors, box/keypoint decoding and weighted NMS of BlazeFace, as MediaPipe does them.

The settings are those of mediapipe/modules/face_detection/face_detection_{short,full}_range
.pbtxt (SsdAnchorsCalculator, TensorsToDetectionsCalculator, NonMaxSuppressionCalculator with
the WEIGHTED algorithm). Everything after the anchors is jittable with fixed shapes: a detector
call yields exactly `max_faces` slots per image and a validity mask, vmapped over the batch.

Coordinates are normalised to the detector input ([0, 1] across the letterboxed square).
Keypoints, in MediaPipe's order (the subject's right is the image's left): 0 right eye, 1 left
eye, 2 nose tip, 3 mouth centre, 4 right ear tragion, 5 left ear tragion.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_KEYPOINTS = 6
# kind → (input side, anchor strides); both use one aspect ratio (1.0), fixed-size anchors,
# offset 0.5; short range adds an interpolated anchor per layer (scale aspect ratio 1.0).
CONFIGS = {"short": dict(size=128, strides=(8, 16, 16, 16), interpolated=True),
           "full": dict(size=192, strides=(4,), interpolated=False)}
MIN_SCORE = 0.5            # min_score_thresh of both graphs
IOU_THRESHOLD = 0.3        # min_suppression_threshold
RAW_SCORE_LIMIT = 100.0    # score_clipping_thresh


def ssd_anchors(kind: str, size: int | None = None) -> np.ndarray:
  """(A, 2) anchor centres (x, y) in MediaPipe's order: layer groups, rows, columns, anchors.

  `size` is the detector input side (default the model's own)."""
  config = CONFIGS[kind]
  size, strides = size or config["size"], config["strides"]
  out, layer = [], 0
  while layer < len(strides):
    per_cell, last = 0, layer
    while last < len(strides) and strides[last] == strides[layer]:  # same-stride layers share a grid
      per_cell += 1 + int(config["interpolated"])
      last += 1
    cells = math.ceil(size / strides[layer])
    ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells,
                         indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], -1)
    out.append(np.repeat(grid, per_cell, axis=0))
    layer = last
  return np.concatenate(out).astype(np.float32)


class Detections(NamedTuple):
  boxes: jax.Array      # (..., F, 4) x0, y0, x1, y1
  keypoints: jax.Array  # (..., F, 6, 2) x, y
  scores: jax.Array     # (..., F)
  valid: jax.Array      # (..., F) bool: a real face in this slot


def decode(raw_boxes, raw_scores, anchors, size: int):
  """Raw regressors (..., A, 16) and logits (..., A) → boxes, keypoints, sigmoid scores."""
  raw = raw_boxes.astype(jnp.float32) / size
  centre = raw[..., 0:2] + anchors
  half = raw[..., 2:4] / 2  # fixed-size anchors: w = h = 1, so the regressor is the size
  boxes = jnp.concatenate([centre - half, centre + half], axis=-1)
  keypoints = raw[..., 4:4 + 2 * NUM_KEYPOINTS].reshape(*raw.shape[:-1], NUM_KEYPOINTS, 2)
  keypoints = keypoints + anchors[:, None, :]
  scores = jax.nn.sigmoid(jnp.clip(raw_scores.astype(jnp.float32), -RAW_SCORE_LIMIT,
                                   RAW_SCORE_LIMIT))
  return boxes, keypoints, scores


def pairwise_iou(a, b):
  """(N, 4) x (M, 4) → (N, M) intersection over union (0 where the union is empty)."""
  lo = jnp.maximum(a[:, None, :2], b[None, :, :2])
  hi = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = jnp.prod(jnp.clip(hi - lo, 0.0), axis=-1)
  area = lambda x: jnp.prod(jnp.clip(x[:, 2:] - x[:, :2], 0.0), axis=-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes, keypoints, scores, *, max_faces: int, min_score: float = MIN_SCORE,
                 iou_threshold: float = IOU_THRESHOLD, top_k: int = 256) -> Detections:
  """MediaPipe's WEIGHTED non-maximum suppression for one image, with fixed shapes.

  Greedy on score: the best remaining detection and every remaining one overlapping it by
  IoU > threshold form a cluster; the cluster's boxes and keypoints are averaged weighted by
  score, under the best one's score, and all of it leaves the pool. Only the `top_k` best
  anchors enter (a face lights up a few dozen at most), so the IoU matrix stays small.
  """
  top_k = min(top_k, scores.shape[-1])
  s, idx = jax.lax.top_k(scores, top_k)
  b, k = boxes[idx], keypoints[idx]
  iou = pairwise_iou(b, b)
  data = jnp.concatenate([b, k.reshape(top_k, -1)], axis=-1)

  def step(alive, _):
    first = jnp.argmax(alive)  # candidates are sorted: the first alive one is the best
    found = alive[first]
    cluster = alive & ((iou[first] > iou_threshold) | (jnp.arange(top_k) == first))
    w = jnp.where(cluster, s, 0.0)
    merged = (w @ data) / jnp.maximum(w.sum(), 1e-12)
    return alive & ~cluster, (merged, jnp.where(found, s[first], 0.0), found)

  _, (merged, best, found) = jax.lax.scan(step, s >= min_score, None, length=max_faces)
  merged = jnp.where(found[:, None], merged, 0.0)
  return Detections(merged[:, :4], merged[:, 4:].reshape(max_faces, NUM_KEYPOINTS, 2), best,
                    found)


def detect(raw_boxes, raw_scores, kind: str, *, max_faces: int, min_score: float = MIN_SCORE,
           iou_threshold: float = IOU_THRESHOLD, top_k: int = 256,
           size: int | None = None) -> Detections:
  """A batch of raw detector outputs (N, A, 16), (N, A) → N x max_faces detections.

  `size`: the side the detector ran at; regressors are in its pixels."""
  size = size or CONFIGS[kind]["size"]
  anchors = jnp.asarray(ssd_anchors(kind, size))
  boxes, keypoints, scores = decode(raw_boxes, raw_scores, anchors, size)
  nms = lambda b, k, s: weighted_nms(b, k, s, max_faces=max_faces, min_score=min_score,  # noqa: E731
                                     iou_threshold=iou_threshold, top_k=top_k)
  return jax.vmap(nms)(boxes, keypoints, scores)


def detect_images(model, images, kind: str, max_faces: int, min_score: float):
  """uint8 (N, side, side, 3) → Detections with boxes and keypoints in input pixels."""
  side = images.shape[1]
  raw_boxes, raw_scores = model(images.astype(jnp.float32) / 127.5 - 1.0)
  det = detect(raw_boxes, raw_scores, kind, max_faces=max_faces, min_score=min_score, size=side)
  return det._replace(boxes=det.boxes * side, keypoints=det.keypoints * side)
