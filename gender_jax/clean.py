"""Data cleaning: duplicates, duplicates across splits, and likely label errors.

  python -m gender_jax.clean --data FOLDER --out DIR [--bundle RUN/bundle]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from gender_jax import cli
from gender_jax.evaluation import datasets
from gender_jax.evaluation.cleaning import (LABEL_ERROR_FLOOR, THUMB, find_issues,
                                            load_datasets, out_of_fold_accuracy, scan,
                                            write_outputs)
from gender_jax.inference.predictor import Predictor


def main(argv=None):
  parser = cli.Parser("gender_jax.clean", __doc__)
  parser.add_argument("--data", action="append", required=True,
                      help="FOLDER, NAME=FOLDER or source:NAME[:SPLIT], repeatable "
                           "(example: --data photos/)")
  parser.add_argument("--out", required=True,
                      help="folder for the report and exclude list (example: --out clean/)")
  parser.add_argument("--bundle", help="use this model's features for the label-error model "
                      "(example: --bundle runs/demo/bundle)")
  parser.add_argument("--workdir", help="run whose config names source:… data (and bundle) "
                      "(example: --workdir runs/utkface)")
  parser.add_argument("--config", help="config file for source:… data "
                      "(example: --config configs/utkface.py)")
  parser.add_argument("--near-distance", type=int, default=3,
                      help="max differing pHash bits (of 64) for a near duplicate "
                           "(default 3; example: --near-distance 0 for exact copies only)")
  parser.add_argument("--folds", type=int, default=5,
                      help="cross-validation folds of the label-error model (default 5; "
                           "example: --folds 10)")
  parser.add_argument("--exclude-label-errors", action="store_true",
                      help="also put the likely label errors in exclude.txt (by default they "
                           "are only listed); refused when the flagging model's out-of-fold "
                           f"accuracy is under {LABEL_ERROR_FLOOR} (example: "
                           "--exclude-label-errors --bundle runs/utkface/bundle)")
  parser.add_argument("--keep-label-errors", action="store_true", help=argparse.SUPPRESS)
  cli.add_batch_size(parser)
  cli.add_overwrite(parser)
  args = parser.parse_args(argv)
  # Before scanning: the inputs exist and the output can be written.
  cli.require_writable(args.out, "--out")
  cli.require_unwritten(args.out, "--out", "a cleaning report", args.overwrite,
                        inside="summary.json")
  for d in args.data:
    if not d.startswith("source:"):
      cli.require_dir(d.split("=", 1)[-1], "--data")
  if args.bundle:
    cli.require_weights_dir(args.bundle, "--bundle")
  if args.workdir:
    cli.require_dir(args.workdir, "--workdir")
  found_data = load_datasets(args.data, args.workdir, args.config)
  records = datasets.Concat([d.records for d in found_data])
  print(f"scanning {len(records)} images…", file=sys.stderr)
  scanned = scan(records)
  features, kind = None, f"{THUMB}x{THUMB} RGB thumbnails"
  if args.bundle:
    predictor = Predictor(args.bundle, batch_size=args.batch_size)

    class _Readable:  # only the records that decoded, in scan order
      def __len__(self):
        return len(scanned["index"])

      def __getitem__(self, i):
        return records[int(scanned["index"][i])]

      def meta(self, i):
        return scanned["metas"][i]
    features = predictor.features_for_records(_Readable(), progress=True).values
    kind = f"pooled last-stage features of {os.path.abspath(args.bundle)}"
  found = find_issues(scanned, near_distance=args.near_distance, features=features,
                      folds=args.folds)
  accuracy = out_of_fold_accuracy(found)
  if args.exclude_label_errors and (accuracy is None or accuracy < LABEL_ERROR_FLOOR):
    # A weak model's disagreements are mostly its own mistakes, not the labels'.
    shown = "could not be fitted" if accuracy is None else f"is {accuracy:.3f}"
    raise cli.UsageError(
        f"--exclude-label-errors: the label-error model ({kind}) {shown} out-of-fold accuracy, "
        f"under the floor of {LABEL_ERROR_FLOOR}; its flags are listed in the report, not "
        "trusted to exclude images. Give --bundle a trained model, or leave the flag out")
  summary = write_outputs(args.out, found_data, records, scanned, found,
                          label_errors=args.exclude_label_errors, feature_kind=kind)
  print(json.dumps(summary, indent=2))
  label_note = ("excluded" if args.exclude_label_errors else
                "listed in issues.csv, not excluded (--exclude-label-errors to exclude)")
  print(f"wrote {os.path.join(args.out, 'issues.csv')}, summary.json, contact sheets and "
        f"{', '.join(summary['exclude_files'].values())} ({summary['excluded']} images to leave "
        f"out: duplicates and unreadable files); {summary['label_errors']} likely label errors "
        f"{label_note}", file=sys.stderr)


if __name__ == "__main__":
  cli.run(main)
