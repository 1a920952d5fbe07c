"""Fit a bundle's temperature (and abstain threshold) on held-out data and store it in the bundle.

  python -m gender_jax.calibrate --workdir RUN [--target-accuracy 0.95]
  python -m gender_jax.calibrate --bundle RUN/bundle --data VAL_FOLDER
  python -m gender_jax.calibrate --bundle RUN/bundle --data VAL_PHOTOS --faces detect

With `--faces`, the temperature is fitted on each photo's detected, aligned face (its raw
logits), as predict and evaluate answer photos of people.
"""
from __future__ import annotations

import json
import os
import sys

from gender_jax import cli
from gender_jax.evaluation import datasets
from gender_jax.evaluation.calibration import calibrate_bundle
from gender_jax.inference.photos import tta_flag_problem
from gender_jax.inference.predictor import TTA_MODES


def main(argv=None):
  parser = cli.Parser("gender_jax.calibrate", __doc__)
  cli.add_bundle_options(parser)
  parser.add_argument("--data", help="held-out data: a male/ female/ folder, NAME=FOLDER, or "
                      "source:NAME[:SPLIT] (default: the run's validation split; example: "
                      "--data val_photos/)")
  parser.add_argument("--target-accuracy", type=float,
                      help="set the abstain threshold to reach this accuracy on answered images "
                           "(example: --target-accuracy 0.95)")
  parser.add_argument("--abstain-threshold", type=float,
                      help="set this threshold explicitly (example: --abstain-threshold 0.7)")
  parser.add_argument("--tta", default="none", choices=TTA_MODES,
                      help="fit on the test-time views the bundle will be asked with "
                           "(default none; example: --tta flip)")
  cli.add_batch_size(parser)
  cli.add_face_options(parser, default="off")
  args = parser.parse_args(argv)
  bundle_dir = cli.bundle(args)
  cli.require_target_accuracy(args.target_accuracy)
  if args.abstain_threshold is not None and not 0 <= args.abstain_threshold < 1:
    raise cli.UsageError(f"--abstain-threshold {args.abstain_threshold}: give a top "
                         "probability in [0, 1) (0: never abstain; e.g. 0.7)")
  if args.abstain_threshold is not None and args.target_accuracy is not None:
    raise cli.UsageError("give --target-accuracy or --abstain-threshold, not both")
  if not args.data and not (args.workdir and
                            os.path.exists(os.path.join(args.workdir, "config.json"))):
    where = (f"--workdir {args.workdir!r} has no config.json, so no validation split"
             if args.workdir else "no held-out data given")
    raise cli.UsageError(f"{where}: give --data FOLDER (held-out images to fit on), or "
                         "--workdir RUN to use the run's validation split")
  if args.faces != "off" and tta_flag_problem(args.tta):
    raise cli.UsageError(tta_flag_problem(args.tta))
  face_options = cli.face_options(args)
  found = datasets.load(args.data and [args.data], workdir=args.workdir, split="validation")
  summary = calibrate_bundle(bundle_dir, datasets.Concat([d.records for d in found]),
                             target_accuracy=args.target_accuracy,
                             abstain_threshold=args.abstain_threshold, batch_size=args.batch_size,
                             description=", ".join(d.description for d in found),
                             faces=args.faces, face_options=face_options, tta=args.tta)
  print(json.dumps(summary, indent=2))
  print(_written(summary, bundle_dir), file=sys.stderr)


def _written(summary: dict, bundle_dir: str) -> str:
  """What was stored, and what the threshold means for the next predictions."""
  line = (f"wrote temperature {summary['temperature']:.3f}"
          + (f" and abstain threshold {summary['abstain_threshold']:.3f}"
             if summary.get("abstain_threshold") is not None else "")
          + f" into {os.path.join(bundle_dir, 'meta.json')}")
  coverage, accuracy = summary.get("coverage"), summary.get("answered_accuracy")
  if coverage is not None:
    line += (f"; on these {summary['count']} images it answers {coverage:.0%}"
             + (f" (accuracy {accuracy:.3f})" if accuracy is not None else "")
             + f" and says 'uncertain' for {1 - coverage:.0%}")
  if coverage is not None and coverage < 0.5:
    line += ("; most images will get no answer: lower --target-accuracy, or recalibrate "
             "with --abstain-threshold 0 to answer every image")
  return line

if __name__ == "__main__":
  cli.run(main)
