"""A second look at every found face: its keypoints measured again on a face-sized view.

A person in a photo is often 30-60 px wide in the detector's input (a 250-px photo
letterboxed to 192 with its margin), where BlazeFace's keypoints land a pixel or two off: a
few percent of the face, and the aligned crop moves with them. UTKFace test crops pasted into
250-px grey photos at 0.3-0.6 of the side scored 0.925 balanced through detect → align, against
0.939 for the same crops only shrunk to the pasted size and back: the loss was the keypoints,
not the pixels.

So each found face is warped, by its first keypoints, into the view the face template was
measured in (`faces.template`: the training crop's frame, letterboxed with the detector's
margin, short range at 128 px), detected again there, and its keypoints mapped back to the
photo. The shapes are fixed: every slot gets its second look, empty ones too, and a slot keeps
its first keypoints where the second look finds no face near them.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gender_jax.faces import anchors
from gender_jax.faces.align import ALIGN_KEYPOINTS, check_template, resample, similarity
from gender_jax.faces.letterbox import letterbox_fit

KIND = "short"  # as `faces.template` measured the training crops
SUPERSAMPLE = 2  # the view shrinks the canvas's face ~1.5-3x: 2x2 samples keep it unaliased
# A second look whose face centre lies further than this (in inter-eye distances of the view's
# template) from where the first keypoints put it has found something else: keep the first.
MAX_SHIFT = 0.5


def eye_distance(keypoints):
  """(..., 6, 2) keypoints → (...) distance between the eyes, in their pixels."""
  return jnp.linalg.norm(keypoints[..., 1, :] - keypoints[..., 0, :], axis=-1)


def _nearest(det, centre, reach):
  """Per view, the detection whose eyes-and-mouth centre is nearest `centre`: (keypoints
  (V, 6, 2), found (V,) where it lies within `reach`)."""
  dist = jnp.linalg.norm(det.keypoints[..., jnp.asarray(ALIGN_KEYPOINTS), :].mean(-2)
                         - centre[:, None], axis=-1)
  dist = jnp.where(det.valid, dist, jnp.inf)
  best = jnp.argmin(dist, axis=-1)
  kp = jnp.take_along_axis(det.keypoints, best[:, None, None, None], axis=1)[:, 0]
  return kp, jnp.min(dist, axis=-1) <= reach


def view_geometry(template: dict[str, Any], side: int):
  """Where the template's frame sits in a `side`-px view, letterboxed as `letterbox` places
  an image of the frame's size: (pixels per frame pixel, (x, y) offset)."""
  tw, th = template["size"]
  fit = letterbox_fit((th, tw), side)
  return fit, np.asarray([(side - tw * fit) / 2, (side - th * fit) / 2], np.float32)


def view_eyes(template: dict[str, Any], side: int) -> float:
  """The template face's eye distance in the second look's `side`-px view: a face the first
  look saw with its eyes this far apart or more takes nothing from a second look."""
  points = np.asarray(check_template(template)["points"], np.float64)
  fit, _ = view_geometry(check_template(template), side)
  return float(fit * np.linalg.norm(points[1] - points[0]))


def view_matrices(keypoints, frame_pts, fit: float, offset):
  """Keypoints (..., 6, 2) in canvas pixels → (..., 2, 3) maps from view pixels to canvas
  pixels: view → template frame (the letterbox undone) → canvas (the first look's fit)."""
  to_canvas = similarity(jnp.broadcast_to(frame_pts, keypoints[..., :3, :].shape),
                         keypoints[..., jnp.asarray(ALIGN_KEYPOINTS), :])
  lin = to_canvas[..., :2] / fit
  shift = to_canvas[..., 2] - jnp.einsum("...ij,j->...i", lin, jnp.asarray(offset))
  return jnp.concatenate([lin, shift[..., None]], axis=-1)


def refine(model, canvases, keypoints, valid, first_eyes, template: dict[str, Any], *,
           min_score: float = anchors.MIN_SCORE, supersample: int = SUPERSAMPLE):
  """canvases (N, H, W, 3) uint8, first keypoints (N, F, 6, 2) in canvas pixels, valid (N, F),
  first_eyes (N, F): the eyes' distance in the first look's own pixels
  → keypoints (N, F, 6, 2). `model` is the short-range BlazeFace.
  Only faces the view shows larger than the first look did take the second look's keypoints:
  a face the first look saw at the view's size or larger is measured as well already."""
  side = model.input_size
  n, f = keypoints.shape[:2]
  template = check_template(template)
  frame_pts = jnp.asarray(template["points"], jnp.float32)
  fit, offset = view_geometry(template, side)
  view_eyes = fit * eye_distance(frame_pts)  # the face's eyes in the view
  mats = view_matrices(keypoints, frame_pts, fit, offset)  # (N, F, 2, 3)
  views = jax.vmap(jax.vmap(lambda img, m: resample(img, m, (side, side), supersample),
                            in_axes=(None, 0)))(canvases, mats)
  centre = jnp.asarray(fit * frame_pts.mean(0) + offset)  # where this face's centre should be
  reach = MAX_SHIFT * view_eyes
  # Two slots: a neighbour's face at the view's edge must not displace this one's.
  det = anchors.detect_images(model, views.reshape(n * f, side, side, 3), KIND, 2, min_score)
  kp, found = _nearest(det, jnp.broadcast_to(centre, (n * f, 2)), reach)
  kp, found = kp.reshape(n, f, 6, 2), found.reshape(n, f)
  ok = valid & found & (first_eyes < view_eyes)
  lin, shift = mats[..., None, :, :2], mats[..., None, :, 2]
  back = jnp.einsum("...ij,...j->...i", lin, kp) + shift
  return jnp.where(ok[..., None, None], back, keypoints)
