"""Evaluation reports: overall, per source and per subgroup, with calibration and abstention.

  python -m gender_jax.evaluate --workdir RUN [--data …] --out REPORT_DIR
  python -m gender_jax.evaluate --bundle DIR --data FOLDER [--data NAME=FOLDER …] --out REPORT_DIR

`--data`: a male/ female/ folder (with an optional labels.csv of subgroup columns), NAME=FOLDER,
or source:NAME[:SPLIT] of the run's config; with none, the run's configured sources (test split).
Every number comes with its 95% CI and sample count. Writes report.json, report.md and PNGs
(reliability diagram, accuracy vs coverage, one bar chart per subgroup field, and with several
bundles or sources a cross-dataset matrix). `--calibrate-on DATA` fits the temperature on held-out
data first; `--write-calibration` stores it (and `--target-accuracy`'s threshold) in the bundle.
`--faces detect` evaluates photos of people: each photo's most confident face is found,
aligned to the bundle's template and classified (`gender_jax.inference.photos`); photos without
a face are listed and left out of the numbers, the share found is reported. `--calibrate-on`
fits as `calibrate` does, through the same door (with `--faces`, on the detected faces).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from gender_jax import CLASS_NAMES, cli
from gender_jax.evaluation import datasets as eval_data
from gender_jax.evaluation import calibration
from gender_jax.evaluation import stats
from gender_jax.inference.bundle import Bundle
from gender_jax.evaluation.report import write_report

MIN_GROUP = 1  # groups are reported at any size; the CI says how little a small one tells
ADULTS = "20-69 adults"  # subgroups.age_group's name for the band reported apart
INFANTS = "0-2 infants (of 0-9)"
AGE_FIELDS = ("age_group", "age_band")


def _metrics(probs, labels, *, bootstrap: int, seed: int) -> dict[str, Any]:
  return stats.classification_metrics(probs, labels, class_names=CLASS_NAMES,
                                      bootstrap=bootstrap, seed=seed)


def subgroups(metas: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """{field: per-record value array} for every subgroup field with 2..MAX distinct values."""
  per_record = [eval_data.subgroup_fields(m) for m in metas]
  fields = sorted({k for r in per_record for k in r})
  out = {}
  for field in fields:
    values = np.array([r.get(field, "unknown") for r in per_record], dtype=object)
    if 2 <= len(set(values)) <= eval_data.MAX_SUBGROUP_VALUES:
      out[field] = values
  return out


def _sort_key(value: str):
  head = value.split("-")[0].split(" ")[0].rstrip("+")
  return (0, float(head), value) if head.replace(".", "", 1).isdigit() else (1, 0.0, value)


def evaluate_outputs(logits: np.ndarray, labels: np.ndarray, metas: Sequence[dict[str, Any]], *,
                     temperature: float = 1.0, abstain_threshold: float = 0.0,
                     bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
  """Logits + labels + per-record fields → the report's numbers (no files)."""
  labels = np.asarray(labels).astype(int)
  probs = calibration.softmax(logits, temperature)
  raw = calibration.softmax(logits)
  report: dict[str, Any] = {"count": int(len(labels))}
  report["overall"] = _metrics(probs, labels, bootstrap=bootstrap, seed=seed)
  report["calibration"] = dict(
      temperature=temperature,
      ece_uncalibrated=stats.classification_metrics(raw, labels, bootstrap=bootstrap,
                                                    seed=seed)["ece"] if len(labels) else None,
      ece_calibrated=report["overall"].get("ece"),
      nll_uncalibrated=calibration.nll(logits, labels) if len(labels) else None,
      nll_calibrated=calibration.nll(logits, labels, temperature) if len(labels) else None,
      reliability_uncalibrated=stats.reliability_bins(raw, labels),
      reliability_calibrated=stats.reliability_bins(probs, labels))
  conf, correct = probs.max(1), probs.argmax(1) == labels
  answered = conf >= abstain_threshold
  report["abstention"] = dict(
      threshold=abstain_threshold, coverage=float(answered.mean()) if len(labels) else None,
      answered=int(answered.sum()),
      accuracy_answered=float(correct[answered].mean()) if answered.any() else None,
      accuracy_answered_ci=list(stats.wilson(int(correct[answered].sum()), int(answered.sum()))),
      curve=stats.coverage_curve(probs, labels))
  sources = np.array([str(m.get("source", "data")) for m in metas], dtype=object)
  report["by_source"] = {s: _metrics(probs[sources == s], labels[sources == s],
                                          bootstrap=bootstrap, seed=seed)
                         for s in sorted(set(sources))}
  report["subgroups"] = {}
  fields = subgroups(metas)
  for field, values in fields.items():
    report["subgroups"][field] = {
        v: _metrics(probs[values == v], labels[values == v], bootstrap=bootstrap, seed=seed)
        for v in sorted(set(values), key=_sort_key) if (values == v).sum() >= MIN_GROUP}
  def within(mask):  # every non-age field's groups, restricted to `mask`
    return {field: {v: _metrics(probs[mask & (values == v)], labels[mask & (values == v)],
                                     bootstrap=bootstrap, seed=seed)
                    for v in sorted(set(values[mask]), key=_sort_key)}
            for field, values in fields.items() if field not in AGE_FIELDS and mask.any()}
  gap_masks = {"race_gap": np.ones(len(labels), bool)}  # headline gap → the records it covers
  if "age_group" in fields:
    # The race groups differ in their share of children (UTKFace: Asian 26% aged 0-9, Black
    # 3%), whose gender is hardest to tell; within adults the groups are compared like for like.
    gap_masks["race_gap_adults"] = fields["age_group"] == ADULTS
    report["within_adults"] = within(gap_masks["race_gap_adults"])
    # Infants most of all: without them, what is left of a gap is the model's.
    years = np.array([np.nan if (y := eval_data.age_years(m.get("age"))) is None else y
                      for m in metas], float)  # NaN (unknown) is neither an infant nor older
    infants = years <= eval_data.INFANT_MAX_AGE
    if infants.any():
      report["infants"] = _metrics(probs[infants], labels[infants], bootstrap=bootstrap,
                                        seed=seed)
      gap_masks["race_gap_without_infants"] = years > eval_data.INFANT_MAX_AGE
      report["without_infants"] = within(gap_masks["race_gap_without_infants"])
    # Each group over the same age mix (the whole set's): the gap that remains once the
    # groups' different shares of children are taken out (direct standardisation).
    groups = fields["age_group"]
    known = groups != "unknown"
    shares = {a: float((groups[known] == a).mean()) for a in set(groups[known])}
    report["age_standardised"] = {
        field: {v: stats.standardised_balanced_accuracy(
                    correct[values == v], labels[values == v], groups[values == v], shares,
                    bootstrap=bootstrap, seed=seed)
                for v in sorted(set(values), key=_sort_key)}
        for field, values in fields.items() if field not in AGE_FIELDS and known.any()}
    # The other way round: what each group would score with the whole set's accuracy in every
    # age group and only its own age mix. The spread of these is the part of the plain gap
    # that the age mix alone explains.
    by_age = {a: report["subgroups"]["age_group"].get(a, {}).get("balanced_accuracy", {})
              .get("value") for a in shares}
    report["age_mix_expected"] = {
        field: {v: dict(value=_weighted(by_age, groups[(values == v) & known]))
                for v in sorted(set(values), key=_sort_key)}
        for field, values in fields.items() if field not in AGE_FIELDS and known.any()}
    # Who the threshold leaves unanswered: children first, adults kept.
    def coverage(mask):
      return dict(count=int(mask.sum()), coverage=float(answered[mask].mean()),
                  accuracy_answered=float(correct[mask & answered].mean())
                  if (mask & answered).any() else None)
    report["abstention"]["by_age_group"] = {v: coverage(groups == v)
                                            for v in sorted(set(groups), key=_sort_key)}
    if infants.any():
      report["abstention"]["by_age_group"][INFANTS] = coverage(infants)
  report["headline"] = headline(report)
  # A gap between two groups of a few hundred is itself uncertain: its CI, each of the two
  # named groups resampled on its own.
  for key, mask in gap_masks.items():
    gap = report["headline"].get(key)
    if gap and "race" in fields and bootstrap:
      best, worst = (mask & (fields["race"] == gap[end]) for end in ("best", "worst"))
      ci = stats.difference_ci(correct[best], labels[best], correct[worst], labels[worst],
                               bootstrap=bootstrap, seed=seed)
      gap["ci"] = [None if x is None else round(100 * x, 2) for x in ci]
  return report


def _weighted(values: dict[str, float | None], strata: np.ndarray) -> float | None:
  """The mean of values[stratum] over `strata` (None where a stratum has no value)."""
  got = [values.get(s) for s in strata]
  return None if not got or None in got else round(float(np.mean(got)), 6)


def headline(report: dict[str, Any]) -> dict[str, Any]:
  """The figures a reader looks for first: balanced accuracy overall, for adults and for
  children apart, the gap between the best and worst race group, calibrated ECE."""
  def value(m):
    return None if not m else dict(value=m.get("value"), ci=m.get("ci"))
  out = dict(balanced_accuracy=value(report["overall"].get("balanced_accuracy")),
             ece_calibrated=value(report["calibration"]["ece_calibrated"]))
  ages = report["subgroups"].get("age_group", {})
  by_age = {key: ages.get(name) for key, name in (("adults_20_69", "20-69 adults"),
                                                    ("children_0_9", "0-9 children"))}
  by_age["infants_0_2"] = report.get("infants")
  for key, m in by_age.items():
    if m:
      out[key] = dict(balanced_accuracy=value(m.get("balanced_accuracy")), count=m["count"])
  for key, groups in (("race_gap", report["subgroups"].get("race", {})),
                      ("race_gap_adults", report.get("within_adults", {}).get("race", {})),
                      ("race_gap_without_infants",
                       report.get("without_infants", {}).get("race", {})),
                      ("race_gap_age_standardised",
                       report.get("age_standardised", {}).get("race", {})),
                      ("race_gap_from_age_mix",
                       report.get("age_mix_expected", {}).get("race", {}))):
    gap = _gap(groups)
    if gap:
      out[key] = gap
  return out


def _gap(groups: dict[str, dict]) -> dict[str, Any] | None:
  """Best − worst balanced accuracy over the named groups (not "unknown"), in points."""
  values = {k: m.get("balanced_accuracy", m).get("value") for k, m in groups.items()}
  values = {k: v for k, v in values.items() if k != "unknown" and v is not None}
  if len(values) < 2:
    return None
  best, worst = max(values, key=values.get), min(values, key=values.get)
  return dict(points=round(100 * (values[best] - values[worst]), 2), best=best, worst=worst)


def bundle_name(bundle_dir: str) -> str:
  """What a bundle was trained on (its run's config.json), for the cross-dataset matrix."""
  run = os.path.dirname(os.path.abspath(bundle_dir))
  if os.path.exists(os.path.join(run, "config.json")):
    names = list(cli.run_config(run).get("data", {}).get("sources", {}))
    if names:
      return "+".join(names)
  return os.path.basename(os.path.abspath(bundle_dir).rstrip("/"))


def evaluate_bundle(bundle_dir: str, datasets: Sequence[eval_data.Dataset], out_dir: str, *,
                    calibrate_on: eval_data.Dataset | None = None, write_calibration: bool = False,
                    target_accuracy: float | None = None, tta: str = "none", batch_size: int = 64,
                    bootstrap: int = 1000, compute_dtype: str | None = None,
                    progress: bool = True, faces: str = "off",
                    face_options: dict | None = None) -> dict[str, Any]:
  """Runs the bundle over the datasets; writes report.json, report.md and plots to out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  bundle = Bundle(bundle_dir, compute_dtype)
  temperature = bundle.temperature
  threshold = float(bundle.calibration.get("abstain_threshold", 0.0))
  fitted = None
  run = calibration.runner(bundle, faces=faces, face_options=face_options, tta=tta,
                           batch_size=batch_size)
  if calibrate_on is not None:
    # What `calibrate` does, through the same door the data below is answered by.
    summary = calibration.calibrate_bundle(
        bundle_dir, calibrate_on.records, target_accuracy=target_accuracy, batch_size=batch_size,
        description=calibrate_on.description, faces=faces, face_options=face_options, tta=tta,
        write=write_calibration, run=run, progress=progress)
    temperature = summary["temperature"]
    if summary["abstain_threshold"] is not None:
      threshold = summary["abstain_threshold"]
    fitted = dict(data=calibrate_on.description, count=summary["count"],
                  temperature=temperature, abstain_threshold=threshold,
                  target_accuracy=target_accuracy, unreadable=summary["unreadable"],
                  **({"no_face": summary["no_face"]} if faces != "off" else {}))
  logits, labels, metas, errors = [], [], [], []
  no_face: list[dict[str, str]] = []
  for ds in datasets:
    out, missed = calibration.held_out_logits(run, ds.records, progress)
    no_face += [dict(source=ds.name, key=k) for k in missed]
    logits.append(out.values)
    labels.append(out.labels)
    metas += out.metas
    errors += [dict(source=ds.name, key=k, reason=r) for k, r in out.errors]
  logits, labels = np.concatenate(logits), np.concatenate(labels)
  report = dict(bundle=os.path.abspath(bundle_dir), trained_on=bundle_name(bundle_dir),
                data={ds.name: ds.description for ds in datasets}, tta=tta, bootstrap=bootstrap,
                **evaluate_outputs(logits, labels, metas, temperature=temperature,
                                   abstain_threshold=threshold, bootstrap=bootstrap))
  report["calibration"]["fitted"] = fitted
  report["calibration"]["source"] = "fitted now" if fitted else "stored in the bundle"
  report["unreadable"] = errors
  if faces != "off":
    total = report["count"] + len(no_face)
    report["faces"] = dict(mode=faces, detector=dict(face_options or {}).get("detector", "full"),
                           images=total, no_face=no_face,
                           found_fraction=report["count"] / total if total else None)
  write_report(report, out_dir)
  return report
