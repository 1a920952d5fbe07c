"""Batch prediction: files and folders → CSV, and the same as a library call.

  python -m gender_jax.predict --bundle RUN/bundle PATH... --out preds.csv [--sort-into DIR]

Columns: path, label (female | male | uncertain | error), p_female, p_male, abstained, error.
A file that cannot be read or decoded gets label "error" and the reason; the rest go on.
The model is jitted once per batch size: the last batch is padded, never recompiled.
`--sort-into DIR` copies each input into DIR/male, DIR/female or DIR/uncertain for review.

Faces (`--faces`, default auto): photos go through BlazeFace, and every face found is aligned
onto the bundle's face template and classified, all in one jitted program; the CSV gets one
row per face, with its index, detector score, box and six keypoints in the photo's pixels. A
photo without a face gets one row with label "no_face". `auto` classifies a photo that already
is one tight face crop (exactly one face, its box at least half the photo's width) whole, as
the training crops were; `detect` always classifies the aligned face; `off` classifies every
image whole, one row each, with the columns above only. `--save-crops DIR` writes the aligned
faces as PNG.

Library use:
  predictor = Predictor("RUN/bundle")
  predictor.predict([pil_image, uint8_array, jpeg_bytes])  # → [{"label", "p_female", …}]
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import os
import shutil
import sys
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gender_jax.checkpoint import Bundle
from gender_jax.data import preprocess
from gender_jax.data.preprocess import ImageError

TTA_MODES = ("none", "flip", "crops", "flip+crops")
CROP_FRACTION = 0.875  # side of each multi-crop view, relative to the image
CSV_COLUMNS = ("path", "label", "p_female", "p_male", "abstained", "error")
FACE_MODES = ("auto", "detect", "off")
# Keypoints in the detector's order; right/left are the subject's (the right eye is image-left).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
FACE_COLUMNS = ("face", "face_score", "aligned", "box_x0", "box_y0", "box_x1", "box_y1",
                *(f"{k}_{a}" for k in KEYPOINT_NAMES for a in "xy"))


def views(image: np.ndarray, size: int, tta: str = "none") -> list[np.ndarray]:
  """One decoded image → its test-time views at size x size (the first is the plain eval view)."""
  if tta not in TTA_MODES:
    raise ValueError(f"tta={tta!r}: choose from {TTA_MODES}")
  out = [preprocess.resize(image, size)]
  if "crops" in tta:  # centre and four corners, each 87.5% of the side
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
    for y, x in ((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw):
      out.append(preprocess.resize(np.ascontiguousarray(image[y:y + ch, x:x + cw]), size))
  if "flip" in tta:
    out += [np.ascontiguousarray(v[:, ::-1]) for v in out]
  return out


def to_array(item) -> np.ndarray:
  """A PIL image, uint8 array, encoded bytes or a file path → decoded uint8 RGB HxWx3."""
  if isinstance(item, (str, os.PathLike)):
    try:
      with open(item, "rb") as f:
        item = f.read()
    except OSError as e:
      raise ImageError(f"cannot read file: {e.strerror or e}") from None
  elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
    item = np.asarray(item.convert("RGB"))
  return preprocess.decode(item)


class Outputs(NamedTuple):
  values: np.ndarray          # (n_ok, …): logits or features of the readable inputs
  labels: np.ndarray          # (n_ok,) given labels where the inputs have them, else -1
  metas: list[dict[str, Any]]  # per readable input: everything but the image
  errors: list[tuple[str, str]]  # (key, reason) per unreadable input


class Predictor:
  """A bundle's model jitted for fixed-size batches, with test-time augmentation."""

  def __init__(self, bundle: Bundle | str, *, batch_size: int = 64, tta: str = "none",
               compute_dtype: str | None = None, threads: int = 4):
    self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, compute_dtype)
    if tta not in TTA_MODES:
      raise ValueError(f"tta={tta!r}: choose from {TTA_MODES}")
    self.batch_size, self.tta, self.threads = int(batch_size), tta, threads
    self.size = self.bundle.image_size
    self.num_views = len(views(np.zeros((8, 8, 3), np.uint8), self.size, tta))
    self.temperature = float(self.bundle.calibration.get("temperature", 1.0))
    self.traces = 0  # how often jit traced: 1 per distinct batch size
    logits, state = self.bundle.logits_fn()
    self._state = state
    num_views = self.num_views

    def batch_logits(state, images):
      self.traces += 1
      out = logits(state, images)
      # Averaging logits (not probabilities) keeps the fitted temperature meaningful.
      return out.reshape(-1, num_views, out.shape[-1]).mean(axis=1)
    self._logits = jax.jit(batch_logits)
    self._features = None

  # ---------------------------------------------------------------- model calls
  def _features_fn(self):
    """Pooled last-stage activations (the input to the head) per image, averaged over views."""
    if self._features is None:
      graphdef, state = nnx.split(self.bundle.model)
      spec, dtype = self.bundle.preprocessing, self.bundle.model_config.compute_dtype
      num_views = self.num_views

      def features(state, images):
        model = nnx.merge(graphdef, state)
        stages = model.features(preprocess.normalize(images, spec, dtype))
        x = jnp.mean(list(stages.values())[-1].astype(jnp.float32), axis=(1, 2))
        return x.reshape(-1, num_views, x.shape[-1]).mean(axis=1)
      fn = jax.jit(features)
      self._features = lambda images: fn(state, images)
    return self._features

  def _run(self, fn, prepared: list[list[np.ndarray]]) -> np.ndarray:
    """Views of ≤ batch_size images → fn outputs, padding to the one compiled batch size."""
    views = [v for vs in prepared for v in vs]  # each image's views side by side
    batch = preprocess.pad_batch(views, self.batch_size * self.num_views)
    return np.asarray(fn(batch))[:len(prepared)]

  def _iterate(self, n: int, load: Callable[[int], Any], fn, progress: bool = False):
    """Yields (index, output or None, error or None) in order, decoding ahead on threads."""
    from tqdm import tqdm

    def safe(i):
      try:
        return load(i), None
      except ImageError as e:
        return None, str(e)
    chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
    bar = tqdm(total=n, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      pending = collections.deque()
      for k, chunk in enumerate(chunks):
        while len(pending) < 2 and k + len(pending) < len(chunks):  # keep two chunks decoding
          pending.append([pool.submit(safe, i) for i in chunks[k + len(pending)]])
        results = [f.result() for f in pending.popleft()]
        ok = [j for j, (vs, _) in enumerate(results) if vs is not None]
        out = self._run(fn, [results[j][0] for j in ok]) if ok else []
        out_of = dict(zip(ok, out))
        for j, i in enumerate(chunk):
          yield i, out_of.get(j), results[j][1]
        bar.update(len(chunk))
    bar.close()

  def logits_fn(self):
    return lambda images: self._logits(self._state, images)

  # ---------------------------------------------------------------- public calls
  def logits(self, items: Sequence[Any]) -> Outputs:
    """Raw (temperature 1) logits of images given as arrays, PIL images, bytes or paths."""
    return self._collect(len(items), lambda i: to_array(items[i]),
                         lambda i: {"key": str(i)}, self.logits_fn())

  def predict(self, items: Sequence[Any]) -> list[dict[str, Any]]:
    """Images → per image {"label", "p_female", "p_male", "abstained"} or {"error"}."""
    out = self.logits(items)
    answers = iter(self.bundle.decide(self.probabilities(out.values)))
    bad = {int(k): reason for k, reason in out.errors}
    return [{"label": "error", "error": bad[i]} if i in bad else next(answers)
            for i in range(len(items))]

  def probabilities(self, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / the bundle's temperature)."""
    from gender_jax.calibration import softmax
    return softmax(np.asarray(logits).reshape(-1, len(self.bundle.class_names)), self.temperature)

  def logits_for_records(self, records, progress: bool = False) -> Outputs:
    """Logits of labelled records ({"image", "label", …}); unreadable ones are listed, not fatal."""
    return self._records(records, self.logits_fn(), progress)

  def features_for_records(self, records, progress: bool = False) -> Outputs:
    return self._records(records, self._features_fn(), progress)

  def _records(self, records, fn, progress) -> Outputs:
    from gender_jax.eval_data import record_meta
    return self._collect(len(records), lambda i: to_array(records[i]["image"]),
                         lambda i: record_meta(records, i), fn, progress)

  def _collect(self, n, load_image, load_meta, fn, progress=False) -> Outputs:
    values, labels, metas, errors = [], [], [], []
    size, tta = self.size, self.tta
    for i, out, error in self._iterate(n, lambda i: views(load_image(i), size, tta), fn, progress):
      meta = load_meta(i)
      if error is not None:
        errors.append((str(meta.get("key", i)), error))
        continue
      values.append(out)
      labels.append(int(meta.get("label", -1)))
      metas.append(meta)
    values = np.stack(values) if values else np.zeros((0, 2), np.float32)
    return Outputs(values, np.asarray(labels, np.int64), metas, errors)

  def predict_paths(self, paths: Sequence[str], progress: bool = False) -> Iterable[dict[str, Any]]:
    """Yields one CSV row per path, in order."""
    size, tta = self.size, self.tta
    for i, out, error in self._iterate(len(paths), lambda i: views(to_array(paths[i]), size, tta),
                                       self.logits_fn(), progress):
      if error is not None:
        yield dict(path=paths[i], label="error", p_female="", p_male="", abstained="", error=error)
        continue
      [answer] = self.bundle.decide(self.probabilities(out))
      yield dict(path=paths[i], label=answer["label"], p_female=f"{answer['p_female']:.6f}",
                 p_male=f"{answer['p_male']:.6f}", abstained=int(answer["abstained"]), error="")


def face_rows(pipeline, paths: Sequence[str], save_crops: str | None = None,
              progress: bool = False, threads: int = 4) -> Iterable[dict[str, Any]]:
  """Yields CSV rows (CSV_COLUMNS + FACE_COLUMNS) per face of each path, in order; a photo
  without a face gets one "no_face" row, an unreadable one an "error" row."""
  from tqdm import tqdm

  def load(path):
    try:
      return to_array(path), None
    except ImageError as e:
      return None, str(e)
  blank = dict.fromkeys(FACE_COLUMNS, "")
  n = pipeline.batch_size
  bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr,
             dynamic_ncols=True)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for start in range(0, len(paths), n):
      chunk = paths[start:start + n]
      loaded = list(pool.map(load, chunk))
      ok = [i for i, (image, _) in enumerate(loaded) if image is not None]
      found = dict(zip(ok, pipeline([loaded[i][0] for i in ok], crops=bool(save_crops))
                       if ok else []))
      for i, path in enumerate(chunk):
        if i not in found:
          yield dict(path=path, label="error", p_female="", p_male="", abstained="",
                     error=loaded[i][1], **blank)
          continue
        if not found[i]:
          yield dict(path=path, label="no_face", p_female="", p_male="", abstained="",
                     error="", **blank)
        for face in found[i]:
          row = dict(path=path, label=face["label"], p_female=f"{face['p_female']:.6f}",
                     p_male=f"{face['p_male']:.6f}", abstained=int(face["abstained"]), error="",
                     face=face["index"], face_score=f"{face['score']:.4f}",
                     aligned=int(face["aligned"]),
                     **{f"box_{k}": f"{v:.1f}" for k, v in zip(("x0", "y0", "x1", "y1"),
                                                                face["box"])},
                     **{f"{name}_{a}": f"{v:.1f}" for name, xy in
                        zip(KEYPOINT_NAMES, face["keypoints"]) for a, v in zip("xy", xy)})
          if save_crops:
            stem = os.path.splitext(os.path.basename(path))[0]
            os.makedirs(save_crops, exist_ok=True)
            from PIL import Image
            Image.fromarray(face["crop"]).save(os.path.join(
                save_crops, f"{start + i:06d}_{stem}_face{face['index']}.png"))
          yield row
      bar.update(len(chunk))
  bar.close()


def list_files(paths: Iterable[str]) -> list[str]:
  """Files as given, plus every file under each folder (recursively, sorted) but hidden ones
  and labels.csv; a non-image among them becomes an "error" row."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # labels.csv is the folder layout's own annotation file, not an input.
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if not f.startswith(".") and f != "labels.csv"]
    else:
      out.append(p)  # a missing file becomes an "error" row, not a crash
  return out


def sort_into(rows: Iterable[dict[str, Any]], directory: str) -> collections.Counter:
  """Copies each predicted input into directory/<label>/ (errors are left out)."""
  counts, taken, done = collections.Counter(), set(), set()
  for row in rows:
    # With faces, a photo has a row per face: copied once per label it got.
    if row["label"] == "error" or (row["path"], row["label"]) in done:
      continue
    done.add((row["path"], row["label"]))
    folder = os.path.join(directory, row["label"])
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(row["path"]))
    target, k = os.path.join(folder, stem + ext), 1
    while target in taken or os.path.exists(target):  # same name from different folders
      target, k = os.path.join(folder, f"{stem}_{k}{ext}"), k + 1
    taken.add(target)
    shutil.copy2(row["path"], target)
    counts[row["label"]] += 1
  return counts


def main(argv=None):
  from gender_jax import errors
  parser = argparse.ArgumentParser(
      prog="python -m gender_jax.predict", description=__doc__.split("\n\n")[0],
      epilog="Add --debug (or GENDER_JAX_DEBUG=1) to see tracebacks.")
  parser.add_argument("paths", nargs="+", help="image files and folders, searched recursively "
                      "(example: photos/ img.jpg)")
  parser.add_argument("--bundle", help="inference bundle directory (example: runs/demo/bundle)")
  parser.add_argument("--workdir", help="training run; its bundle is WORKDIR/bundle "
                      "(example: runs/demo)")
  parser.add_argument("--out", required=True, help="CSV file to write (example: preds.csv)")
  parser.add_argument("--batch-size", type=int, default=64,
                      help="images per model call; the last batch is padded (default 64; "
                           "example: --batch-size 256 on a GPU)")
  parser.add_argument("--tta", default="none", choices=TTA_MODES,
                      help="test-time augmentation: average over flipped and/or cropped views "
                           "(default none; example: --tta flip)")
  parser.add_argument("--abstain-threshold", type=float,
                      help="override the bundle's threshold: answer 'uncertain' when the top "
                           "probability is below it (example: --abstain-threshold 0.8)")
  parser.add_argument("--compute-dtype", help="override the bundle's compute dtype "
                      "(example: --compute-dtype float32 for a bfloat16 bundle on CPU)")
  parser.add_argument("--sort-into", help="copy inputs into DIR/{male,female,uncertain}/ "
                      "(example: --sort-into sorted/)")
  parser.add_argument("--faces", default="auto", choices=FACE_MODES,
                      help="find faces and classify each, aligned (detect); the same but a "
                           "photo that is one tight face crop is classified whole (auto, the "
                           "default); classify every image whole (off) (example: --faces off)")
  parser.add_argument("--detector", default="full", choices=("full", "short"),
                      help="BlazeFace model: full range (faces up to ~5 m, default) or short "
                           "range (~2 m, faster) (example: --detector short)")
  parser.add_argument("--detector-side", type=int,
                      help="run the full-range detector at this input side, a multiple of 32, "
                           "instead of 192: finds faces half as large at 384, at 4x the cost "
                           "(example: --detector-side 384)")
  parser.add_argument("--max-faces", type=int, default=8,
                      help="most faces reported per photo (default 8; example: --max-faces 16)")
  parser.add_argument("--save-crops", help="write each aligned face as DIR/<n>_<name>_face<i>.png "
                      "(example: --save-crops crops/)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar (example: --quiet)")
  args = parser.parse_args(argv)
  from gender_jax.eval_data import resolve_bundle
  if not (args.bundle or args.workdir):
    raise errors.UsageError("give --bundle DIR or --workdir RUN (whose bundle is RUN/bundle)")
  errors.require_writable(args.out, "--out")
  if args.sort_into:
    errors.require_writable(args.sort_into, "--sort-into")
  if args.batch_size < 1:
    raise errors.UsageError(f"--batch-size {args.batch_size}: must be ≥ 1")
  if args.max_faces < 1:
    raise errors.UsageError(f"--max-faces {args.max_faces}: must be ≥ 1")
  side = None
  if args.detector_side:
    from gender_jax.faces.fused import check_side
    try:
      side = check_side(args.detector, args.detector_side)
    except ValueError as e:
      raise errors.UsageError(f"--detector-side: {e}") from None
  if args.tta != "none" and args.faces != "off":
    raise errors.UsageError(f"--tta {args.tta} works with --faces off only")
  if args.save_crops:
    if args.faces == "off":
      raise errors.UsageError("--save-crops needs faces: drop --faces off")
    errors.require_writable(args.save_crops, "--save-crops")
  bundle_dir = resolve_bundle(args.bundle, args.workdir)
  if args.workdir and not args.bundle:
    errors.require_dir(args.workdir, "--workdir")
    if not os.path.isdir(bundle_dir):
      raise errors.UsageError(f"--workdir {args.workdir!r} has no bundle/ (has training "
                              "finished?); or give --bundle DIR")
  errors.require_weights_dir(bundle_dir, "--bundle")
  paths = list_files(args.paths)
  missing = [p for p in args.paths if not os.path.exists(p)]
  if not paths or len(missing) == len(args.paths):
    what = f"{', '.join(missing)} does not exist" if missing else "no image files in it"
    print(f"error: read 0 images from {' '.join(args.paths)}: {what}", file=sys.stderr)
    return 1
  bundle = errors.load_bundle(bundle_dir, args.compute_dtype)
  if args.abstain_threshold is not None:
    bundle.calibration = dict(bundle.calibration, abstain_threshold=args.abstain_threshold)
  if args.faces == "off":
    predictor = Predictor(bundle, batch_size=args.batch_size, tta=args.tta)
    columns, source = CSV_COLUMNS, predictor.predict_paths(paths, progress=not args.quiet)
  else:
    from gender_jax.faces.fused import FacePipeline
    # Faces multiply the classifier's batch: images per call is batch_size / max_faces.
    pipeline = FacePipeline(bundle, detector=args.detector, max_faces=args.max_faces,
                            detector_side=side,
                            batch_size=max(1, args.batch_size // args.max_faces),
                            faces=args.faces)
    columns = CSV_COLUMNS + FACE_COLUMNS
    source = face_rows(pipeline, paths, args.save_crops, progress=not args.quiet)
  rows = []
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in source:
      writer.writerow(row)
      rows.append(row)
  counts = collections.Counter(r["label"] for r in rows)
  inputs = len({r["path"] for r in rows}) if args.faces != "off" else len(rows)
  faces = f" ({len(rows)} rows, one per face)" if args.faces != "off" else ""
  print(f"read {inputs} inputs → {args.out}{faces}: " +
        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=sys.stderr)
  for r in rows:
    if r["label"] == "error":
      print(f"  unreadable: {r['path']}: {r['error']}", file=sys.stderr)
  if counts["error"] == inputs:
    print(f"error: none of the {inputs} inputs could be read", file=sys.stderr)
    return 1
  if args.sort_into:
    copied = sort_into(rows, args.sort_into)
    print(f"copied into {args.sort_into}: " + ", ".join(f"{k}/ {v}" for k, v in sorted(copied.items())),
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  from gender_jax import errors
  errors.run(main)
