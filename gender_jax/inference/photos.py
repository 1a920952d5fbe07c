"""Photos of people → every face found, aligned, and classified by the bundle's Predictor.

  from gender_jax.inference.photos import classify_photos
  classify_photos("RUN/bundle", ["group.jpg", pil_image, uint8_array])  # → per photo its faces

Three stages, each jitted at fixed shapes, so compiles are few and counted (`compiles`):

1. detection (`faces.detect.Detector`): each photo letterboxed to the detector's side (128 or
   192 px), `batch_size` photos a call, weighted NMS into `max_faces` slots and a validity mask;
2. the faces found, and only those: a second look at each small face's keypoints (refine.py)
   and the similarity warp onto the bundle's face template, from a larger square canvas of its
   photo (640 px by default, so crops come from near-original resolution), in batches padded to
   the Predictor's batch sizes;
3. the Predictor that whole crops use: the aligned faces (and, with `auto`, photos that already
   are a crop, whole) in its fixed batch sizes, with its padding, its TTA views, raw logits
   and the bundle's probabilities. A one-face photo costs one classifier pass (two with flip).

The host letterboxes each photo twice with PIL (antialiased, cheap in C) on threads. A
near-square image (long/short side ≤ 1.2, as face crops are) gets a black margin of a quarter
of the side all round: BlazeFace misses faces that fill the whole frame (UTKFace crops: 94%
found by short range without it, 100% with it, full range 10% → 100%); where that margin left
no face, the photo is looked at once more without it. A photo at least 640 px long is also cut
into overlapping windows, each detected as a photo, and the faces merged (tiles.py): the small
faces of a group photo. Every face found is answered; a photo whose detection filled all
`max_faces` slots is listed in `capped` (far above group sizes: 64 by default).
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gender_jax.data.preprocess import ImageError, pad_batch
from gender_jax.data.schema import record_meta
from gender_jax.faces import align as align_lib
from gender_jax.faces import anchors
from gender_jax.faces import refine as refine_lib
from gender_jax.faces import tiles as tiles_lib
from gender_jax.faces.blazeface import create_detector
from gender_jax.faces.detect import (CANVAS, MAX_FACES, Detector, faces_of,
                                     framed_like_crop)
from gender_jax.faces.letterbox import Letterbox, letterbox, margin_for
from gender_jax.inference.bundle import Bundle
from gender_jax.inference.predictor import Outputs, Predictor, to_array

FACE_TTA = ("none", "flip")  # crops TTA would cut into an aligned face's own framing
FACE_MODES = ("auto", "detect")
# Compiled sizes of the warp and the classifier, in faces: one for a photo alone, 8 for the
# rest. Larger batches are slower per face on CPU (dlib's ResNet at 150 px, 2 cores: 11 ms a
# face at 8, 18 at 32: the activations leave the cache).
FACE_BATCH_SIZES = (1, 8)


def tta_flag_problem(tta: str) -> str | None:
  """What is wrong with `--tta TTA` beside `--faces`, or None: predict's and evaluate's check."""
  if tta in FACE_TTA:
    return None
  return f"--tta {tta} works with --faces off only; with faces, --tta {' or '.join(FACE_TTA)}"


class Prepared(NamedTuple):
  small: Letterbox        # the detector's input
  big: Letterbox          # the canvas faces are warped from
  to_canvas: np.ndarray   # (2, 2): detector pixels → canvas pixels, scale and shift per axis


class FacePipeline:
  """A bundle's Predictor behind BlazeFace and alignment.

  `faces="auto"` (the default everywhere) classifies a photo that is already one face crop
  framed like the training crops (one face, on the template within CROP_FRAMING) whole, as the
  training crops were, and aligned faces otherwise; `faces="detect"` classifies every face
  aligned. Either can be asked of any pipeline per call.

  `bundle`: a Bundle, its directory, or a Predictor (serve shares its own, so the classifier
  is compiled once for both paths); `face_batch_sizes` are the Predictor's batch sizes when
  one is made here.
  """

  def __init__(self, bundle, *, detector: str = "full", max_faces: int = MAX_FACES,
               batch_size: int = 8, face_batch_sizes: Sequence[int] = FACE_BATCH_SIZES,
               canvas: int = CANVAS, min_score: float = anchors.MIN_SCORE,
               margin: float | None = None, faces: str = "auto", detector_side: int | None = None,
               tta: str = "none", refine: bool = True, tiles: str = "auto", threads: int = 4):
    if faces not in FACE_MODES:
      raise ValueError(f"faces={faces!r}: choose auto or detect")
    if isinstance(bundle, Predictor):
      self.predictor = bundle
      tta = bundle.tta
    else:
      self.predictor = Predictor(bundle, tta=tta if tta in FACE_TTA else "none",
                                 batch_sizes=face_batch_sizes, batch_size=max(face_batch_sizes))
    if tta not in FACE_TTA:
      raise ValueError(f"tta={tta!r}: with faces, choose {' or '.join(FACE_TTA)}")
    self.bundle: Bundle = self.predictor.bundle
    self.kind, self.max_faces, self.batch_size = detector, max_faces, batch_size
    self.canvas, self.margin, self.faces = canvas, margin, faces
    self.tiles = tiles_lib.check_mode(tiles)
    self.detector = Detector(detector, max_faces=max_faces, batch_size=batch_size,
                             min_score=min_score, side=detector_side, threads=threads)
    self.size = self.detector.size
    self.template = self.bundle.face_template
    self.capped: list[int] = []  # photos of the last call whose detection filled every slot
    self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="letterbox")
    self._align_traces = 0
    crop_size = self.bundle.image_size
    tpl = jnp.asarray(align_lib.template_points(self.template, crop_size))
    # The second look (refine.py) sees each face as `faces.template` saw the training crops;
    # only faces the first look saw small take it (the rest would keep their keypoints), so
    # they go through a program of their own.
    ref_graph, ref_state = None, None
    if refine:  # the short-range model: the first look's own where that is short range too
      second = (self.detector.model if detector == refine_lib.KIND
                else create_detector(refine_lib.KIND))
      ref_graph, ref_state = nnx.split(second)
      self._view_eyes = refine_lib.view_eyes(self.template, second.input_size)
    else:
      self._view_eyes = 0.0

    def align_faces(ref_state, canvases, photo, keypoints, first_eyes, valid, look_again):
      """Found faces only: canvases (B, C, C, 3) of a batch of photos, per face its photo's
      row, canvas keypoints (K, 6, 2), the first look's eye distance and whether the row is a
      face (not padding) → keypoints (K, 6, 2) (refined with `look_again`), aligned crops
      (K, S, S, 3)."""
      self._align_traces += 1
      own = canvases[photo]  # (K, C, C, 3): each face with its photo
      kp = keypoints[:, None]
      if look_again:
        kp = refine_lib.refine(nnx.merge(ref_graph, ref_state), own, kp, valid[:, None],
                               first_eyes[:, None], self.template, min_score=min_score)
      crops = align_lib.align_batch(own, kp, tpl, (crop_size, crop_size))
      return kp[:, 0], crops[:, 0]
    self._align = jax.jit(align_faces, static_argnums=6)
    self._ref_state = ref_state

  @property
  def compiles(self) -> int:
    """Programs traced so far: detector, warp and classifier, one per batch size each."""
    return self.detector.traces + self._align_traces + self.predictor.traces

  def prepare(self, image: np.ndarray, margin: float | None = None) -> Prepared:
    """Host side of one image: detector input, canvas, and the detector → canvas map."""
    margin = self.margin if margin is None else margin
    small = letterbox(image, self.size, margin)
    big = letterbox(image, self.canvas, margin)
    scale = np.asarray(big.scale) / np.asarray(small.scale)
    to_canvas = np.stack([scale, np.asarray(big.offset) - np.asarray(small.offset) * scale])
    return Prepared(small, big, to_canvas.astype(np.float32))

  def __call__(self, images: Sequence[np.ndarray], crops: bool = False, faces: str | None = None
               ) -> list[list[dict[str, Any]]]:
    """Decoded uint8 images → per image its faces {index, box, keypoints, score, label, p_*,
    abstained, aligned, logits (raw, temperature 1)}; with `crops`, each aligned crop too.
    `faces` overrides the pipeline's mode for this call."""
    mode = faces or self.faces
    if mode not in FACE_MODES:
      raise ValueError(f"faces={mode!r}: choose auto or detect")
    capped: set[int] = set()
    found = self._find(images, None, capped)
    # A near-square photo is letterboxed with a margin (a tight crop's face must not fill the
    # detector's input); where that left no face, its face may be small: once more without.
    again = [i for i, f in enumerate(found) if not f and margin_for(images[i].shape, self.margin)]
    if again:
      for i, faces_i in zip(again, self._find([images[i] for i in again], 0.0, set())):
        found[i] = faces_i
    for i, f in enumerate(found):  # a photo that already is a crop is classified whole
      if mode == "auto" and len(f) == 1 and framed_like_crop(f[0], images[i].shape,
                                                             self.template):
        f[0]["aligned"] = False
    # A large photo's small faces: its overlapping windows, each looked at as a photo; the
    # detector alone first tells which windows hold a face worth aligning. Every face found
    # is kept (no cap on the merge).
    found = tiles_lib.add_tiled(
        images, found, lambda views: self._find(views, 0.0, set()), self.tiles, None,
        skip=lambda faces: any(not f["aligned"] for f in faces),
        locate_views=lambda views: self.detector.detect(views, 0.0))
    self.capped = sorted(capped)
    self._classify(images, found, crops)
    return [left_to_right(faces) for faces in found]

  def warm(self, side: int | None = None) -> None:
    """Compiles every program a request can reach: the detector, and the warp and the
    classifier at each of the Predictor's batch sizes."""
    del side  # every program's shapes are fixed: no photo size reaches them
    self.detector.raw(np.zeros((self.batch_size, self.size, self.size, 3), np.uint8))
    canvases = np.zeros((self.batch_size, self.canvas, self.canvas, 3), np.uint8)
    for n in self.predictor.batch_sizes:
      for look_again in {False, self._view_eyes > 0}:
        jax.block_until_ready(self._align(
            self._ref_state, canvases, np.zeros(n, np.int32), np.zeros((n, 6, 2), np.float32),
            np.zeros(n, np.float32), np.zeros(n, bool), look_again))
    self.predictor.warm()

  def _find(self, images, margin, capped: set[int]) -> list[list[dict[str, Any]]]:
    """Each image seen whole: its faces found, with keypoints refined and aligned crops."""
    prepared = list(self._pool.map(lambda im: self.prepare(im, margin), images))
    out = []
    for lo in range(0, len(images), self.batch_size):
      chunk = prepared[lo:lo + self.batch_size]
      det = self.detector.raw(pad_batch([p.small.image for p in chunk], self.batch_size))
      found = [[dict(f, aligned=True) for f in faces_of(det, i, p.small, images[lo + i].shape)]
               for i, p in enumerate(chunk)]
      capped.update(lo + i for i in range(len(chunk)) if det.valid[i].all())
      flat = [(i, f) for i, faces in enumerate(found) for f in faces]
      if flat:
        canvases = pad_batch([p.big.image for p in chunk], self.batch_size)
        top = self.predictor.batch_sizes[-1]
        small = np.asarray([_eyes(det.keypoints[i, f["slot"]]) < self._view_eyes
                            for i, f in flat])
        for look_again in (False, True):
          group = [face for face, s in zip(flat, small) if s == look_again]
          for start in range(0, len(group), top):
            self._align_some(canvases, chunk, det, group[start:start + top], look_again)
      for faces in found:
        for f in faces:
          del f["slot"]
      out += found
    return out

  def _align_some(self, canvases, chunk: list[Prepared], det, flat, look_again: bool) -> None:
    """≤ the largest batch size of found faces (photo row, face) → their refined keypoints
    (in the photo's pixels) and aligned crops, in place."""
    n = next(s for s in self.predictor.batch_sizes if s >= len(flat))
    rows = np.zeros(n, np.int32)
    kps = np.zeros((n, 6, 2), np.float32)
    valid = np.zeros(n, bool)
    for k, (i, f) in enumerate(flat):
      scale, shift = chunk[i].to_canvas
      rows[k], valid[k] = i, True
      kps[k] = det.keypoints[i, f["slot"]] * scale + shift
    eyes = np.zeros(n, np.float32)  # in the first look's (detector) pixels
    eyes[:len(flat)] = [_eyes(det.keypoints[i, f["slot"]]) for i, f in flat]
    refined, crops = jax.device_get(self._align(self._ref_state, canvases, rows, kps, eyes,
                                                valid, look_again))
    for k, (i, f) in enumerate(flat):
      scale, shift = chunk[i].to_canvas
      small = chunk[i].small
      # Canvas → detector → photo pixels, as the box was mapped: the answers report these.
      f["keypoints"] = ((refined[k] - shift) / scale - np.asarray(small.offset)) / np.asarray(
          small.scale)
      f["crop"] = crops[k]

  def _classify(self, images, found, crops: bool) -> None:
    """Every face's answer through the Predictor, in place: one pass per face (a photo that
    already is a crop, its one face not `aligned`, is classified whole)."""
    faces = [(i, f) for i, fs in enumerate(found) for f in fs]
    if not faces:
      return
    logits = self.predictor.crop_logits(
        [f["crop"] if f["aligned"] else images[i] for i, f in faces])
    answers = self.bundle.decide(self.predictor.probabilities(logits))
    for (_, f), raw, answer in zip(faces, logits, answers):
      f.update(answer, logits=raw)
      if not crops:
        f.pop("crop", None)

  # ---------------------------------------------------------------- records (evaluation)
  def logits_for_records(self, records, chunk: int = 64) -> tuple[Outputs, list[str]]:
    """Labelled photos → raw logits of each one's most confident face (one person per
    labelled photo), as `Predictor.logits_for_records` gives for crops; and the keys of the
    photos where no face was found (left out of the outputs)."""
    values, labels, metas, errors, missed = [], [], [], [], []
    for lo in range(0, len(records), chunk):
      images, kept = [], []
      for i in range(lo, min(lo + chunk, len(records))):
        meta = record_meta(records, i)
        try:
          images.append(to_array(records[i]["image"]))
          kept.append(meta)
        except ImageError as e:
          errors.append((str(meta.get("key", i)), str(e)))
      for meta, found in zip(kept, self(images) if images else []):
        if not found:
          missed.append(str(meta.get("key", "")))
          continue
        values.append(max(found, key=lambda f: f["score"])["logits"])
        labels.append(int(meta.get("label", -1)))
        metas.append(meta)
    values = np.stack(values).astype(np.float32) if values else np.zeros((0, 2), np.float32)
    return Outputs(values, np.asarray(labels, np.int64), metas, errors), missed


def _eyes(keypoints: np.ndarray) -> float:
  """One face's (6, 2) keypoints → the distance between its eyes."""
  return float(np.linalg.norm(keypoints[1] - keypoints[0]))


def face_batch_sizes(largest: int | None = None) -> tuple[int, ...]:
  """The compiled face batch sizes for a `--batch-size` (default FACE_BATCH_SIZES): it, and
  one for a photo alone."""
  return FACE_BATCH_SIZES if largest is None else tuple(sorted({1, largest}))


def classify_photos(bundle, images: Sequence[Any], *, faces: str = "auto",
                    **options) -> list[list[dict[str, Any]]]:
  """Photos (paths, bytes, PIL images or uint8 arrays) → per photo its faces, each
  {index, box [x0, y0, x1, y1], keypoints, score, label, p_female, p_male, abstained,
  aligned}, numbered left to right; what predict, evaluate and the HTTP endpoint answer.

  `bundle`: a bundle directory, a Bundle, a Predictor or a FacePipeline (reuse one: building
  it compiles). `faces`: auto (the default everywhere) or detect; `options`: FacePipeline's
  (detector, max_faces, tiles, refine, tta, …)."""
  pipeline = bundle if isinstance(bundle, FacePipeline) else FacePipeline(bundle, **options)
  answers = pipeline([to_array(im) for im in images], faces=faces)
  return [[{k: v for k, v in f.items() if k != "logits"} for f in fs] for fs in answers]


def left_to_right(faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The faces of one photo renumbered by their boxes' left edges, as people read a photo."""
  ordered = sorted(faces, key=lambda f: (float(f["box"][0]), float(f["box"][1])))
  return [dict(f, index=i) for i, f in enumerate(ordered)]
