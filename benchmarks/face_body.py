"""Face + body on person crops: where a crop holds a detectable face, the face model's and the
body model's answers combined (late fusion of calibrated log-odds, as MiVOLO combines face
and body, here without retraining either model).

  python benchmarks/face_body.py --body RUN_PERSONS/bundle --face RUN_FACES/bundle \
      --manual-dir PETA_DIR [--data-dir DIR] --json face_body.json

The crops: PETA's validation and test splits (prepared as `configs/peta.py` trains on them).
Each crop goes through BlazeFace (full range); where a face scores over the detector's
threshold it is aligned onto the face bundle's template and classified by the face bundle.
The body bundle classifies every crop whole (flip TTA). The face's weight w in
  log-odds = w · face + (1 − w) · body
is chosen on the validation crops with a face (grid 0, 0.1, …, 1) and applied once to the
test crops with a face: balanced accuracy with 95% CIs for body alone, face alone and the two
combined on that subset, and the share of crops where a face was found.
"""
from __future__ import annotations

import argparse
import json
import sys

import common  # noqa: F401,I001 — sets the environment before JAX starts
import numpy as np

WEIGHTS = np.round(np.linspace(0, 1, 11), 2)


def _log_odds(p_male):
  p = np.clip(np.asarray(p_male, np.float64), 1e-6, 1 - 1e-6)
  return np.log(p / (1 - p))


def _balanced(p_male, labels) -> float:
  """Mean of the two classes' recalls (for the weight search; reports use stats')."""
  pred, labels = (np.asarray(p_male) > 0.5).astype(int), np.asarray(labels)
  return float(np.mean([(pred[labels == c] == c).mean() for c in (0, 1) if (labels == c).any()]))


def answers(body, face, records, batch: int = 8) -> dict[str, np.ndarray]:
  """Per crop: the body's p(male), the face's p(male) (NaN where no face) and the label."""
  from gender_jax.data.preprocess import decode
  from gender_jax.inference.photos import FacePipeline
  from gender_jax.inference.predictor import Predictor
  predictor = Predictor(body, batch_size=32, tta="flip")
  out = predictor.logits_for_records(records)
  body_p = predictor.probabilities(out.values)[:, 1]
  labels = np.asarray(out.labels)
  pipeline = FacePipeline(face, max_faces=1, batch_size=batch, faces="detect", tta="flip")
  face_p = np.full(len(records), np.nan)
  for start in range(0, len(records), batch):
    images = [decode(records[i]["image"]) for i in range(start, min(start + batch, len(records)))]
    for k, found in enumerate(pipeline(images)):
      if found:
        face_p[start + k] = found[0]["p_male"]
    print(f"\r  faces: {start + len(images)}/{len(records)} crops, "
          f"{int(np.isfinite(face_p).sum())} with a face", end="", file=sys.stderr, flush=True)
  print(file=sys.stderr)
  return dict(body=body_p, face=face_p, labels=labels)


def fuse(a: dict[str, np.ndarray], w: float) -> np.ndarray:
  z = w * _log_odds(a["face"]) + (1 - w) * _log_odds(a["body"])
  return 1 / (1 + np.exp(-z))


def main(argv=None) -> int:
  from gender_jax.evaluation import stats
  from gender_jax.inference.bundle import Bundle
  from gender_jax.data import prepare
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--body", required=True, help="bundle that classifies person crops whole")
  parser.add_argument("--face", required=True, help="bundle that classifies aligned faces")
  parser.add_argument("--manual-dir", dest="manual_dir", required=True,
                      help="PETA as published")
  parser.add_argument("--data-dir", dest="data_dir", default=None, help="where it is prepared")
  parser.add_argument("--json", default=None, help="write the results here too")
  parser.add_argument("--limit", type=int, default=0,
                      help="the first N crops of each split only, for a quick look")
  args = parser.parse_args(argv)
  b = prepare.prepare("peta", args.manual_dir, args.data_dir)
  body, face = Bundle(args.body), Bundle(args.face)
  result = {}
  split_answers = {}
  for split in ("validation", "test"):
    print(f"{split}:", file=sys.stderr)
    records = prepare.open_split(b, split, "peta")
    if args.limit:
      records = [records[i] for i in range(min(args.limit, len(records)))]
    split_answers[split] = answers(body, face, records)
  val = split_answers["validation"]
  found = np.isfinite(val["face"])
  scores = {float(w): _balanced(fuse({k: v[found] for k, v in val.items()}, w),
                                val["labels"][found]) for w in WEIGHTS}
  w = max(scores, key=lambda k: (scores[k], -abs(k - 0.5)))
  test = split_answers["test"]
  found = np.isfinite(test["face"])
  sub = {k: v[found] for k, v in test.items()}

  def metrics(p_male):
    m = stats.classification_metrics(np.stack([1 - p_male, p_male], 1), sub["labels"])
    return dict(balanced_accuracy=m["balanced_accuracy"]["value"],
                ci=m["balanced_accuracy"]["ci"])
  result = dict(
      face_weight=w, validation_balanced_by_weight=scores,
      validation_faces_found=[int(np.isfinite(val["face"]).sum()), len(val["face"])],
      test_faces_found=[int(found.sum()), len(found)],
      test_with_face=dict(body=metrics(sub["body"]), face=metrics(sub["face"]),
                          fused=metrics(fuse(sub, w))),
      test_all_crops=dict(
          body=_balanced(test["body"], test["labels"]),
          fused_where_face=_balanced(np.where(found, fuse(test, w), test["body"]),
                                     test["labels"])))
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
