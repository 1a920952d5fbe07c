"""The evaluation report as files: report.json, report.md and the PNG plots; the matrix.

evaluate.py computes the numbers; this module only lays them out.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from gender_jax import CLASS_NAMES


def fmt(m: dict | None, digits: int = 3) -> str:
  if not m or m.get("value") is None:
    return "–"
  lo, hi = m.get("ci") or (None, None)
  ci = "" if lo is None or hi is None or np.isnan(lo) else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
  return f"{m['value']:.{digits}f}{ci}"


GROUP_COLUMNS = ("accuracy", "balanced_accuracy", "recall_female", "recall_male", "roc_auc", "ece")


def _group_table(groups: dict[str, dict], label: str) -> list[str]:
  lines = [f"| {label} | n | " + " | ".join(c.replace("_", " ") for c in GROUP_COLUMNS) + " |",
           "|---|---:|" + "---|" * len(GROUP_COLUMNS)]
  for name, m in groups.items():
    lines.append(f"| {name} | {m['count']} | " + " | ".join(fmt(m.get(c)) for c in GROUP_COLUMNS)
                 + " |")
  return lines


def write_report(report: dict[str, Any], out_dir: str) -> None:
  from gender_jax.evaluation import plots
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2, default=float)
  cal, abst = report["calibration"], report["abstention"]
  plots.reliability({f"uncalibrated (ECE {cal['ece_uncalibrated']['value']:.3f})":
                     cal["reliability_uncalibrated"],
                     f"T={cal['temperature']:.2f} (ECE {cal['ece_calibrated']['value']:.3f})":
                     cal["reliability_calibrated"]},
                    os.path.join(out_dir, "reliability.png"),
                    title=f"Reliability — {report['trained_on']} on {', '.join(report['data'])}")
  plots.coverage({"all images": abst["curve"]}, os.path.join(out_dir, "coverage.png"),
                 point=dict(threshold=abst["threshold"], coverage=abst["coverage"],
                            accuracy=abst["accuracy_answered"]))
  pngs = ["reliability.png", "coverage.png"]
  if len(report["by_source"]) > 1:
    plots.subgroup_bars("source", report["by_source"], os.path.join(out_dir, "by_source.png"))
    pngs.append("by_source.png")
  for field, groups in report["subgroups"].items():
    plots.subgroup_bars(field, groups, os.path.join(out_dir, f"subgroup_{field}.png"))
    pngs.append(f"subgroup_{field}.png")

  o = report["overall"]
  md = [f"# Evaluation: {report['trained_on']} → {', '.join(report['data'])}", "",
        f"Bundle `{report['bundle']}`; {report['count']} images"
        + (f" ({len(report['unreadable'])} unreadable, listed below)" if report["unreadable"]
           else "") + f"; test-time augmentation: {report['tta']}. Intervals are 95%: Wilson "
        f"for proportions, percentile bootstrap ({report['bootstrap']} resamples) for balanced "
        "accuracy, ROC AUC and ECE.", "",
        "Labels are the dataset's binary labels of perceived gender; appearance is not identity.",
        "", "## Overall", "", "| metric | value [95% CI] | n |", "|---|---|---:|"]
  for key in ("accuracy", "balanced_accuracy", "recall_female", "recall_male", "roc_auc", "ece"):
    md.append(f"| {key.replace('_', ' ')} | {fmt(o.get(key))} | {o.get(key, {}).get('count', '')} |")
  cm = o["confusion"]["matrix"]
  md += ["", "Confusion matrix (rows: true, columns: predicted):", "",
         "| | " + " | ".join(CLASS_NAMES) + " |", "|---|---:|---:|"]
  md += [f"| {CLASS_NAMES[i]} | {cm[i][0]} | {cm[i][1]} |" for i in range(2)]
  h = report["headline"]
  md += ["", "## Headline", ""]
  md += [f"- {name}: balanced accuracy {fmt(h[key]['balanced_accuracy'])} (n={h[key]['count']})"
         for key, name in (("adults_20_69", "Adults 20-69"), ("children_0_9", "Children 0-9"),
                           ("infants_0_2", "Infants 0-2 (of the children)"))
         if key in h]
  for key, within in (("race_gap", ""), ("race_gap_adults", ", adults 20-69 only"),
                      ("race_gap_without_infants", ", aged 3 and over"),
                      ("race_gap_age_standardised", ", each over the whole set's age mix"),
                      ("race_gap_from_age_mix", " expected from their age mixes alone (the "
                       "whole set's accuracy per age group)")):
    if key in h:
      g = h[key]
      ci = f" [{g['ci'][0]:.1f}, {g['ci'][1]:.1f}]" if None not in g.get("ci", [None]) else ""
      md.append(f"- Race groups{within}: best − worst balanced accuracy {g['points']:.1f} "
                f"points{ci} ({g['best']} − {g['worst']})")
  if len(report["by_source"]) > 1:
    md += ["", "## Per source", ""] + _group_table(report["by_source"], "source")
  for field, groups in report["subgroups"].items():
    md += ["", f"## By {field}", ""] + _group_table(groups, field)
    md += ["", f"![{field}](subgroup_{field}.png)"]
  for key, within in (("within_adults", "adults 20-69 only"),
                      ("without_infants", "aged 3 and over")):
    for field, groups in report.get(key, {}).items():
      md += ["", f"## By {field}, {within}", ""] + _group_table(groups, field)
  for field, groups in report.get("age_standardised", {}).items():
    md += ["", f"## By {field}, age-standardised", "",
           "Each group's balanced accuracy over the whole set's age-group mix (its own age "
           "groups reweighted), so groups with more children are compared like for like.", "",
           "The last column is the other way round: the whole set's accuracy in each age group, "
           "over the group's own age mix — what its age mix alone would make of it.", "",
           f"| {field} | age-standardised [95% CI] | n | share of the age mix covered | "
           "expected from its age mix |", "|---|---|---:|---:|---:|"]
    expected = report.get("age_mix_expected", {}).get(field, {})
    md += [f"| {v} | {fmt(g)} | {g['count']} | {g['coverage']:.2f} | "
           f"{fmt(expected.get(v))} |" for v, g in groups.items()]
  md += ["", "## Calibration", "",
         f"Temperature {cal['temperature']:.4f} ({cal['source']}"
         + (f", fitted on {cal['fitted']['data']}, {cal['fitted']['count']} images" if cal["fitted"]
            else "") + ").", "",
         "| | ECE [95% CI] | NLL |", "|---|---|---|",
         f"| uncalibrated (T=1) | {fmt(cal['ece_uncalibrated'])} | {cal['nll_uncalibrated']:.4f} |",
         f"| calibrated (T={cal['temperature']:.2f}) | {fmt(cal['ece_calibrated'])} | "
         f"{cal['nll_calibrated']:.4f} |", "", "![reliability](reliability.png)", "",
         "## Abstention", "",
         f"At the bundle's threshold {abst['threshold']:.3f}: {abst['answered']} of {report['count']}"
         f" answered (coverage {abst['coverage']:.3f}), accuracy on answered "
         + (f"{abst['accuracy_answered']:.3f} [{abst['accuracy_answered_ci'][0]:.3f}, "
            f"{abst['accuracy_answered_ci'][1]:.3f}]." if abst["accuracy_answered"] is not None
            else "–."), "",
         "| threshold | coverage | accuracy on answered |", "|---:|---:|---:|"]
  by_age = abst.get("by_age_group")
  if by_age:
    md[-2:-2] = ["Coverage at that threshold by age group:", "",
                 "| age group | n | coverage | accuracy on answered |", "|---|---:|---:|---:|"] + [
        f"| {k} | {g['count']} | {g['coverage']:.3f} | "
        + ("–" if g["accuracy_answered"] is None else f"{g['accuracy_answered']:.3f}") + " |"
        for k, g in by_age.items()] + [""]
  for c in abst["curve"]:
    if round(c["threshold"] * 20, 6) % 1 == 0:  # every 0.05
      acc = "–" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
      md.append(f"| {c['threshold']:.2f} | {c['coverage']:.3f} | {acc} |")
  md += ["", "![coverage](coverage.png)"]
  if report.get("faces"):
    fc = report["faces"]
    md += ["", "## Faces", "",
           f"Faces found ({fc['mode']}, BlazeFace {fc['detector']} range) in "
           f"{fc['images'] - len(fc['no_face'])} of {fc['images']} images "
           f"({fc['found_fraction']:.3f}); the numbers above are over those. No face found in:"]
    md += [f"- {e['source']}: `{e['key']}`" for e in fc["no_face"][:50]]
  if report["unreadable"]:
    md += ["", "## Unreadable inputs", ""]
    md += [f"- {e['source']}: `{e['key']}`: {e['reason']}" for e in report["unreadable"][:50]]
    if len(report["unreadable"]) > 50:
      md.append(f"- … {len(report['unreadable']) - 50} more in report.json")
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write("\n".join(md) + "\n")


def write_matrix(reports: dict[str, dict], out_dir: str) -> dict[str, Any]:
  """Trained-on × tested-on accuracy and balanced accuracy, from per-bundle reports."""
  from gender_jax.evaluation import plots
  rows = list(reports)
  cols = sorted({s for r in reports.values() for s in r["by_source"]})
  out = {}
  for metric in ("accuracy", "balanced_accuracy"):
    values = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
      for j, c in enumerate(cols):
        m = reports[r]["by_source"].get(c, {}).get(metric)
        if m and m["value"] is not None:
          values[i, j] = m["value"]
    plots.matrix(rows, cols, values, os.path.join(out_dir, f"matrix_{metric}.png"),
                 f"Cross-dataset {metric.replace('_', ' ')}")
    out[metric] = dict(rows=rows, cols=cols, values=[[None if np.isnan(v) else float(v) for v in row]
                                                     for row in values])
  with open(os.path.join(out_dir, "matrix.json"), "w") as f:
    json.dump(out, f, indent=2)
  md = ["# Cross-dataset matrix", "", "Rows: trained on; columns: tested on.", ""]
  for metric, m in out.items():
    md += [f"## {metric.replace('_', ' ')}", "", "| trained on | " + " | ".join(cols) + " |",
           "|---|" + "---:|" * len(cols)]
    md += [f"| {r} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in row) + " |"
           for r, row in zip(rows, m["values"])]
    md += ["", f"![{metric}](matrix_{metric}.png)", ""]
  with open(os.path.join(out_dir, "matrix.md"), "w") as f:
    f.write("\n".join(md))
  return out
