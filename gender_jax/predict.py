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
is one face crop framed like the training crops (exactly one face, its eyes and mouth where
the bundle's template puts them, within 12% of scale) whole, as the training crops were;
`detect` always classifies the aligned face; `off` classifies every image whole, one row
each, with the columns above only. `--save-crops DIR` writes the aligned
faces as PNG.

Library use: gender_jax.predictor.Predictor.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import os
import shutil
import sys
from typing import Any, Iterable, Sequence

from gender_jax.data.preprocess import ImageError
from gender_jax.faces.tiles import TILES
from gender_jax.predictor import TTA_MODES, Predictor, to_array

CSV_COLUMNS = ("path", "label", "p_female", "p_male", "abstained", "error")
FACE_MODES = ("auto", "detect", "off")
# Keypoints in the detector's order; right/left are the subject's (the right eye is image-left).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
FACE_COLUMNS = ("face", "face_score", "aligned", "box_x0", "box_y0", "box_x1", "box_y1",
                *(f"{k}_{a}" for k in KEYPOINT_NAMES for a in "xy"))


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
                           "photo framed like the training crops is classified whole (auto, the "
                           "default); classify every image whole (off) (example: --faces off)")
  parser.add_argument("--detector", default="full", choices=("full", "short"),
                      help="BlazeFace model: full range (faces up to ~5 m, default) or short "
                           "range (~2 m, faster) (example: --detector short)")
  parser.add_argument("--detector-side", type=int,
                      help="run the full-range detector at this input side, a multiple of 32, "
                           "instead of 192: finds faces half as large at 384, at 4x the cost "
                           "(example: --detector-side 384)")
  parser.add_argument("--refine-keypoints", default="on", choices=("on", "off"),
                      help="look again at each small face to place its keypoints before "
                           "aligning it (on, the default: +0.7 points on 250-px photos); off "
                           "is ~1.4x faster on CPU (example: --refine-keypoints off)")
  parser.add_argument("--tiles", default="auto", choices=TILES,
                      help="a photo at least 640 px long is also looked at in overlapping "
                           "windows, for the small faces of a group photo (auto, the default; "
                           "several times the detection work); off looks at it whole only "
                           "(example: --tiles off)")
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
  from gender_jax.faces.fused import tta_flag_problem
  if args.faces != "off" and tta_flag_problem(args.tta):
    raise errors.UsageError(tta_flag_problem(args.tta))
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
                            faces=args.faces, tta=args.tta,
                            refine=args.refine_keypoints == "on", tiles=args.tiles)
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
