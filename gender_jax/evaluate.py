"""Evaluation reports: overall, per source and per subgroup, with calibration and abstention.

  python -m gender_jax.evaluate --workdir RUN [--data …] --out REPORT_DIR
  python -m gender_jax.evaluate --bundle DIR --data FOLDER [--data NAME=FOLDER …] --out REPORT_DIR

What the report holds: `gender_jax.evaluation.scoring`.
"""
from __future__ import annotations

import os
import sys

from gender_jax import cli
from gender_jax.evaluation import datasets
from gender_jax.evaluation.report import fmt, write_matrix
from gender_jax.evaluation.scoring import bundle_name, evaluate_bundle
from gender_jax.inference.photos import tta_flag_problem
from gender_jax.inference.predictor import TTA_MODES


def main(argv=None):
  parser = cli.Parser("gender_jax.evaluate", __doc__)
  cli.add_bundle_options(parser, repeat=True)
  parser.add_argument("--data", action="append", default=[],
                      help="FOLDER, NAME=FOLDER or source:NAME[:SPLIT], repeatable "
                           "(example: --data photos/ --data source:folder:validation)")
  parser.add_argument("--config", help="config file for source:… data without a --workdir "
                      "(example: --config configs/utkface.py)")
  parser.add_argument("--split", default="test",
                      help="split of configured sources (default test; example: --split validation)")
  parser.add_argument("--out", required=True, help="report directory (example: --out report/)")
  parser.add_argument("--calibrate-on", help="held-out data to fit the temperature on "
                      "(same forms as --data); default: the bundle's stored calibration "
                      "(example: --calibrate-on source:folder:validation)")
  parser.add_argument("--write-calibration", action="store_true",
                      help="store the fitted temperature (and threshold) in the bundle "
                           "(example: --write-calibration)")
  parser.add_argument("--target-accuracy", type=float,
                      help="with --calibrate-on: abstain threshold reaching this accuracy "
                           "(example: --target-accuracy 0.95)")
  parser.add_argument("--tta", default="none", choices=TTA_MODES,
                      help="test-time augmentation (default none; example: --tta flip)")
  cli.add_batch_size(parser)
  parser.add_argument("--bootstrap", type=int, default=1000,
                      help="bootstrap resamples for the 95%% CIs (default 1000; example: "
                           "--bootstrap 200 for a quick look)")
  cli.add_compute_dtype(parser)
  cli.add_face_options(parser, default="off")
  cli.add_quiet(parser)
  cli.add_overwrite(parser)
  args = parser.parse_args(argv)
  # Before any data is read: every bundle is there and complete, the report can be written.
  runs = cli.bundles(args)
  if args.faces != "off" and tta_flag_problem(args.tta):
    raise cli.UsageError(tta_flag_problem(args.tta))
  face_options = cli.face_options(args)
  datasets.require_split(args.split)
  cli.require_target_accuracy(args.target_accuracy)
  if os.path.isfile(args.out):
    raise cli.UsageError(f"--out {args.out!r} is a file; the report is a folder (report.md, "
                         "report.json, plots): give a folder name")
  cli.require_writable(args.out, "--out")
  for written in ("report.json", "matrix.json"):  # one bundle's report; several bundles' matrix
    cli.require_unwritten(args.out, "--out", "a report", args.overwrite, inside=written)
  if args.write_calibration:  # the bundle is rewritten at the end: refuse now, not after the work
    for bundle_dir, _ in runs:
      cli.require_writable(os.path.join(bundle_dir, "meta.json"), "--write-calibration: bundle")
  reports = {}
  for bundle_dir, workdir in runs:
    data = datasets.load(args.data, workdir=workdir, config_file=args.config, split=args.split)
    calibrate_on = (datasets.load_one(args.calibrate_on, workdir=workdir, config_file=args.config,
                                      split="validation") if args.calibrate_on else None)
    name = bundle_name(bundle_dir)
    while name in reports:
      name += "'"
    out_dir = args.out if len(runs) == 1 else os.path.join(args.out, name.replace("/", "_"))
    reports[name] = evaluate_bundle(
        bundle_dir, data, out_dir, calibrate_on=calibrate_on,
        write_calibration=args.write_calibration, target_accuracy=args.target_accuracy,
        tta=args.tta, batch_size=args.batch_size, bootstrap=args.bootstrap,
        compute_dtype=args.compute_dtype, progress=not args.quiet, faces=args.faces,
        face_options=face_options)
    o = reports[name]["overall"]
    given = ", ".join(d.description for d in data)
    print(f"{name} on {given}: n={o['count']} accuracy {fmt(o['accuracy'])} balanced "
          f"{fmt(o.get('balanced_accuracy'))} → {out_dir}/report.md", file=sys.stderr)
  if len(reports) > 1 or len(next(iter(reports.values()))["by_source"]) > 1:
    write_matrix(reports, args.out)


if __name__ == "__main__":
  cli.run(main)
