"""Fit a bundle's temperature (and abstain threshold) on held-out data and store it in the bundle.

  python -m gender_jax.calibrate --workdir RUN [--target-accuracy 0.95]
  python -m gender_jax.calibrate --bundle RUN/bundle --data VAL_FOLDER

The maths is `gender_jax.calibration`; this module adds the model run (through `Predictor`)
and the data loading, so the layers below never import upward.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from gender_jax import eval_data, stats
from gender_jax.predictor import Predictor
from gender_jax.calibration import (fit_temperature, nll, softmax, threshold_for_accuracy,
                                    write_calibration)
from gender_jax.bundle import Bundle


def calibrate_bundle(bundle_dir: str, records, *, target_accuracy: float | None = None,
                     abstain_threshold: float | None = None, batch_size: int = 64,
                     description: str = "") -> dict[str, Any]:
  """Fits the bundle's temperature on held-out `records` and stores it (and a threshold).

  `records`: a random-access sequence of {"image", "label"} (a validation source or folder).
  The threshold is `abstain_threshold` if given, else the one reaching `target_accuracy` on
  the same records, else the bundle's current one is kept. Returns the fit summary.
  """
  bundle = Bundle(bundle_dir)
  predictor = Predictor(bundle, batch_size=batch_size)
  logits, labels, _, _ = predictor.logits_for_records(records)
  if len(labels) == 0:
    raise ValueError(f"no readable images to calibrate {bundle_dir} on")
  temperature = fit_temperature(logits, labels)
  probs = softmax(logits, temperature)
  if abstain_threshold is None and target_accuracy is not None:
    abstain_threshold = threshold_for_accuracy(probs, labels, target_accuracy)
  summary = dict(
      count=int(len(labels)), temperature=temperature,
      nll_before=nll(logits, labels), nll_after=nll(logits, labels, temperature),
      ece_before=float(stats.ece(softmax(logits), labels)[0]),
      ece_after=float(stats.ece(probs, labels)[0]))
  write_calibration(bundle_dir, temperature, abstain_threshold,
                    fitted_on=dict(data=description, count=int(len(labels)),
                                   target_accuracy=target_accuracy))
  summary["abstain_threshold"] = abstain_threshold
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--bundle", help="inference bundle directory")
  parser.add_argument("--workdir", help="training run; its bundle is WORKDIR/bundle")
  parser.add_argument("--data", help="held-out data: a male/ female/ folder, NAME=FOLDER, or "
                      "source:NAME[:SPLIT] (default: the run's validation split)")
  parser.add_argument("--target-accuracy", type=float,
                      help="set the abstain threshold to reach this accuracy on answered images")
  parser.add_argument("--abstain-threshold", type=float, help="set this threshold explicitly")
  parser.add_argument("--batch-size", type=int, default=64)
  args = parser.parse_args(argv)
  bundle_dir = eval_data.resolve_bundle(args.bundle, args.workdir)
  datasets = eval_data.load(args.data and [args.data], workdir=args.workdir, split="validation")
  summary = calibrate_bundle(bundle_dir, eval_data.Concat([d.records for d in datasets]),
                             target_accuracy=args.target_accuracy,
                             abstain_threshold=args.abstain_threshold, batch_size=args.batch_size,
                             description=", ".join(d.description for d in datasets))
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
