"""Detect → align → classify as one jitted program over fixed-size batches.

The host decodes and letterboxes each photo twice with PIL (antialiased, cheap in C): to the
detector's side (128 or 192 px) and to a larger square canvas (640 px by default) that the
faces are warped from, so crops come from near-original resolution, not from the detector
input. Both keep the aspect ratio. A near-square image (long/short side ≤ 1.2, as face crops
are) also gets a black margin of a quarter of the side all round: BlazeFace misses faces that
fill the whole frame (UTKFace crops: 94% found by short range without it, 100% with it, full
range 10% → 100%), and a wider photo keeps all of the detector's resolution.

The device program: detector → decode → weighted NMS (`max_faces` slots per image and a
validity mask) → a second look at each small face's keypoints (refine.py) → similarity warp
of every slot onto the bundle's face template → classifier → calibrated probabilities.
Batches are padded to `batch_size`, so one compile serves all. A photo at least 640 px long
is also cut into overlapping windows, each answered as a photo by the same program and the
faces merged (tiles.py): the small faces of a group photo.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gender_jax.data.preprocess import resize
from gender_jax.faces import align as align_lib
from gender_jax.faces import anchors
from gender_jax.faces import refine as refine_lib
from gender_jax.faces import tiles as tiles_lib
from gender_jax.faces.anchors import detect_images
from gender_jax.faces.blazeface import create_detector
from gender_jax.faces.detect import (CANVAS, Detector, _faces, _pad, check_side,
                                     framed_like_crop)
from gender_jax.faces.letterbox import letterbox, margin_for
from gender_jax.inference.bundle import Bundle

FACE_TTA = ("none", "flip")  # crops TTA would cut into an aligned face's own framing


def tta_flag_problem(tta: str) -> str | None:
  """What is wrong with `--tta TTA` beside `--faces`, or None: predict's and evaluate's check."""
  if tta in FACE_TTA:
    return None
  return f"--tta {tta} works with --faces off only; with faces, --tta {' or '.join(FACE_TTA)}"


class FacePipeline:
  """A bundle's classifier behind BlazeFace and alignment, as one jitted program.

  `faces="detect"` classifies every aligned face; `faces="auto"` classifies a photo that is
  already one face crop framed like the training crops (one face, on the template within
  CROP_FRAMING) whole,
  as the training crops were, and aligned faces otherwise.
  """

  def __init__(self, bundle, *, detector: str = "full", max_faces: int = 8, batch_size: int = 8,
               canvas: int = CANVAS, min_score: float = anchors.MIN_SCORE,
               margin: float | None = None, faces: str = "detect", detector_side: int | None = None,
               tta: str = "none", refine: bool = True, tiles: str = "auto"):
    if faces not in ("auto", "detect"):
      raise ValueError(f"faces={faces!r}: choose auto or detect")
    if tta not in FACE_TTA:
      raise ValueError(f"tta={tta!r}: with faces, choose {' or '.join(FACE_TTA)}")
    self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    self.kind, self.max_faces, self.batch_size = detector, max_faces, batch_size
    self.canvas, self.margin, self.faces = canvas, margin, faces
    self.tiles = tiles_lib.check_mode(tiles)
    self.min_score, self._locator = min_score, None
    self.model = create_detector(detector)
    self.size = check_side(detector, detector_side or self.model.input_size)
    self.crop_size = self.bundle.image_size
    self.template = self.bundle.face_template
    self.traces = 0
    tpl = jnp.asarray(align_lib.template_points(self.template, self.crop_size))
    det_graph, det_state = nnx.split(self.model)
    # The second look (refine.py) sees each face as `faces.template` saw the training crops.
    ref_graph, ref_state = None, None
    if refine:  # the short-range model: the first look's own where that is short range too
      ref_graph, ref_state = nnx.split(
          self.model if detector == refine_lib.KIND else create_detector(refine_lib.KIND))
    logits, cls_state = self.bundle.logits_fn()
    calibrated = self.bundle.probs_from_logits
    out_hw = (self.crop_size, self.crop_size)

    def classify(cls_state, images):
      """Calibrated probabilities; with flip TTA the mean logits of each face and its mirror
      image (as the Predictor averages its views), in the same program."""
      out = logits(cls_state, images)
      if tta == "flip":
        out = (out + logits(cls_state, images[:, :, ::-1])) / 2
      return calibrated(out)

    def program(det_state, cls_state, ref_state, det_in, canvases, to_canvas, whole):
      self.traces += 1
      det = detect_images(nnx.merge(det_graph, det_state), det_in, detector, max_faces, min_score)
      # Detector pixels → canvas pixels, per image: the two letterboxes differ by rounding.
      scale, shift = to_canvas[:, None, None, 0], to_canvas[:, None, None, 1]
      keypoints = det.keypoints * scale + shift
      if refine:
        keypoints = refine_lib.refine(
            nnx.merge(ref_graph, ref_state), canvases, keypoints, det.valid,
            refine_lib.eye_distance(det.keypoints), self.template, min_score=min_score)
        det = det._replace(keypoints=(keypoints - shift) / scale)  # answers report these
      crops = align_lib.align_batch(canvases, keypoints, tpl, out_hw)
      n = crops.shape[0]
      flat = crops.reshape(n * max_faces, *crops.shape[2:])
      probs = classify(cls_state, flat).reshape(n, max_faces, -1)
      whole_probs = None if whole is None else classify(cls_state, whole)
      return det, probs, whole_probs, crops
    self._program = jax.jit(program)
    self._state = (det_state, cls_state, ref_state)

  def run_batch(self, det_in, canvases, to_canvas, whole=None):
    """The jitted program on one padded batch; results stay on the device."""
    return self._program(*self._state, det_in, canvases, to_canvas, whole)

  def prepare(self, image: np.ndarray, margin: float | None = None):
    """Host side of one image: detector input, canvas, detector → canvas map, whole view."""
    margin = self.margin if margin is None else margin
    small = letterbox(image, self.size, margin)
    big = letterbox(image, self.canvas, margin)
    scale = np.asarray(big.scale) / np.asarray(small.scale)
    to_canvas = np.stack([scale, np.asarray(big.offset) - np.asarray(small.offset) * scale])
    whole = resize(image, self.crop_size) if self.faces == "auto" else None
    return small, big, to_canvas.astype(np.float32), whole

  def __call__(self, images: Sequence[np.ndarray], crops: bool = False, faces: str | None = None
               ) -> list[list[dict[str, Any]]]:
    """Decoded uint8 images → per image its faces {box, keypoints, score, index, label, p_*}.

    `faces` overrides the mode for this call: a pipeline built with faces="auto" computes
    the whole-image answers too, so one compiled program serves both modes (as serve does)."""
    mode = faces or self.faces
    if mode not in ("auto", "detect") or (mode == "auto" and self.faces != "auto"):
      raise ValueError(f"faces={mode!r}: this pipeline answers "
                       f"{'auto or detect' if self.faces == 'auto' else 'detect'}")
    out = self._answer(images, mode, crops)
    # A near-square photo is letterboxed with a margin (a tight crop's face must not fill the
    # detector's input); where that left no face, its face may be small: once more without.
    again = [i for i, f in enumerate(out) if not f and margin_for(images[i].shape, self.margin)]
    if again:
      for i, faces in zip(again, self._answer([images[i] for i in again], mode, crops, 0.0)):
        out[i] = faces
    # A large photo's small faces: its overlapping windows, each looked at as a photo; the
    # detector alone first tells which windows hold a face worth the whole program.
    return tiles_lib.add_tiled(images, out, lambda views: self._answer(views, "detect", crops, 0.0),
                               self.tiles, self.max_faces,
                               skip=lambda faces: any(not f["aligned"] for f in faces),
                               locate_views=lambda views: self.locator()._detect(views, 0.0))

  def warm(self, side: int) -> None:
    """Compiles every program a request can reach: the pipeline, and the windows' locator."""
    self([np.zeros((side, side, 3), np.uint8)])
    if self.tiles != "off":
      self.locator()._detect([np.zeros((side, side, 3), np.uint8)], 0.0)

  def locator(self) -> Detector:
    """The first look alone (same model, side and threshold), compiled at its first use."""
    if self._locator is None:
      self._locator = Detector(self.kind, max_faces=self.max_faces, batch_size=self.batch_size,
                               min_score=self.min_score, side=self.size)
    return self._locator

  def _answer(self, images, mode: str, crops: bool, margin: float | None = None):
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      prepared = [self.prepare(im, margin) for im in chunk]
      n = self.batch_size
      det, probs, whole_probs, aligned = jax.device_get(self.run_batch(
          _pad([p[0].image for p in prepared], n), _pad([p[1].image for p in prepared], n),
          _pad([p[2] for p in prepared], n),
          _pad([p[3] for p in prepared], n) if self.faces == "auto" else None))
      for i, (image, (small, *_)) in enumerate(zip(chunk, prepared)):
        faces = _faces(det, i, small)
        whole = (mode == "auto" and len(faces) == 1 and
                 framed_like_crop(faces[0], image.shape, self.template))
        for face in faces:
          p = whole_probs[i] if whole else probs[i, face["slot"]]
          [answer] = self.bundle.decide(p[None])
          face.update(answer, aligned=not whole)
          if crops:
            face["crop"] = aligned[i, face["slot"]]
          del face["slot"]
        out.append(faces)
    return out
