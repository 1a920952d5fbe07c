"""Data cleaning: duplicates, duplicates across splits, and likely label errors.

  python -m gender_jax.clean --data FOLDER --out DIR [--bundle RUN/bundle]
"""
from __future__ import annotations

import json
import os
import sys

from gender_jax import cli
from gender_jax.evaluation import datasets
from gender_jax.evaluation.cleaning import (THUMB, find_issues, load_datasets, scan,
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
  parser.add_argument("--keep-label-errors", action="store_true",
                      help="list likely label errors but do not exclude them "
                           "(example: --keep-label-errors)")
  cli.add_batch_size(parser)
  args = parser.parse_args(argv)
  # Before scanning: the inputs exist and the output can be written.
  cli.require_writable(args.out, "--out")
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
  summary = write_outputs(args.out, found_data, records, scanned, found,
                          label_errors=not args.keep_label_errors, feature_kind=kind)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  cli.run(main)
