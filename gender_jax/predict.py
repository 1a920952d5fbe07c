"""Batch prediction: files and folders → CSV.

  python -m gender_jax.predict --bundle RUN/bundle PATH... --out preds.csv [--sort-into DIR]

Columns, faces and `--sort-into`: `gender_jax.inference.folders`. From Python:
`gender_jax.inference.photos.classify_photos` (photos of people, the same answers) and
`gender_jax.inference.predictor.Predictor` (crops).
"""
from __future__ import annotations

import collections
import csv
import os
import sys

from gender_jax import cli
from gender_jax.faces.detect import check_side
from gender_jax.inference import bundle as bundle_lib
from gender_jax.inference.folders import (CSV_COLUMNS, FACE_COLUMNS, face_rows, list_files,
                                          sort_into)
from gender_jax.inference.photos import FacePipeline, face_batch_sizes, tta_flag_problem
from gender_jax.inference.predictor import TTA_MODES, Predictor


def main(argv=None):
  parser = cli.Parser("gender_jax.predict", __doc__)
  parser.add_argument("paths", nargs="+", help="image files and folders, searched recursively "
                      "(example: photos/ img.jpg)")
  cli.add_bundle_options(parser)
  parser.add_argument("--out", required=True, help="CSV file to write (example: preds.csv)")
  parser.add_argument("--batch-size", type=int,
                      help="images per model call; the last batch is padded (default 64 whole "
                           "images, or 8 faces with --faces auto|detect: larger is slower per "
                           "face on CPU; example: --batch-size 256 on a GPU)")
  parser.add_argument("--tta", default="none", choices=TTA_MODES,
                      help="test-time augmentation: average over flipped and/or cropped views "
                           "(default none; example: --tta flip)")
  parser.add_argument("--abstain-threshold", type=float,
                      help="override the bundle's threshold: answer 'uncertain' when the top "
                           "probability is below it (example: --abstain-threshold 0.8)")
  cli.add_compute_dtype(parser)
  parser.add_argument("--sort-into", help="copy inputs into DIR/{male,female,uncertain}/ "
                      "(example: --sort-into sorted/)")
  cli.add_face_options(parser, default="auto")
  parser.add_argument("--save-crops", help="write each aligned face as DIR/<n>_<name>_face<i>.png "
                      "(example: --save-crops crops/)")
  cli.add_quiet(parser)
  cli.add_overwrite(parser)
  args = parser.parse_args(argv)
  bundle_dir = cli.bundle(args)
  cli.require_writable(args.out, "--out")
  cli.require_unwritten(args.out, "--out", "predictions", args.overwrite)
  if args.sort_into:
    cli.require_writable(args.sort_into, "--sort-into")
  face_options = cli.face_options(args)
  if args.detector_side:
    try:
      check_side(args.detector, args.detector_side)
    except ValueError as e:
      raise cli.UsageError(f"--detector-side: {e}") from None
  if args.faces != "off" and tta_flag_problem(args.tta):
    raise cli.UsageError(tta_flag_problem(args.tta))
  if args.save_crops:
    if args.faces == "off":
      raise cli.UsageError("--save-crops needs faces: drop --faces off")
    cli.require_writable(args.save_crops, "--save-crops")
  paths = list_files(args.paths)
  missing = [p for p in args.paths if not os.path.exists(p)]
  if not paths or len(missing) == len(args.paths):
    what = f"{', '.join(missing)} does not exist" if missing else "no image files in it"
    print(f"error: read 0 images from {' '.join(args.paths)}: {what}", file=sys.stderr)
    return 1
  bundle = bundle_lib.load_bundle(bundle_dir, args.compute_dtype)
  if args.abstain_threshold is not None:
    bundle.calibration = dict(bundle.calibration, abstain_threshold=args.abstain_threshold)
  if bundle.faces_mode(args.faces) != args.faces:
    args.faces = bundle.faces_mode(args.faces)
    print("the bundle was trained on person crops: --faces auto classifies each image whole",
          file=sys.stderr)
  if args.faces == "off":
    predictor = Predictor(bundle, batch_size=args.batch_size or 64, tta=args.tta)
    columns, source = CSV_COLUMNS, predictor.predict_paths(paths, progress=not args.quiet)
  else:
    # --batch-size is the classifier's, in faces: only the faces found take a pass.
    pipeline = FacePipeline(bundle, **face_options, faces=args.faces, tta=args.tta,
                            face_batch_sizes=face_batch_sizes(args.batch_size))
    columns = CSV_COLUMNS + FACE_COLUMNS
    # A model that also saw person crops answers an image without a face whole.
    whole = (pipeline.predictor
             if args.faces == "auto" and "persons" in bundle.inputs else None)
    source = face_rows(pipeline, paths, args.save_crops, progress=not args.quiet, whole=whole)
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
  cli.run(main)
