"""PNG plots for evaluation reports (matplotlib, headless). Needs the `report` extra."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability(curves: dict[str, list[dict]], path: str, title: str = "Reliability") -> None:
  """Reliability diagram: accuracy vs confidence per bin (one line per curve), with bin counts."""
  fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
  for (name, bins), marker in zip(curves.items(), "os^D"):
    pts = [(b["confidence"], b["accuracy"]) for b in bins if b["count"]]
    if pts:
      ax.plot(*zip(*pts), marker=marker, label=name)
  first = next(iter(curves.values()))
  ax_n.bar([(b["lo"] + b["hi"]) / 2 for b in first], [b["count"] for b in first],
           width=first[0]["hi"] - first[0]["lo"], color="0.6", edgecolor="k", lw=0.5)
  ax.set(ylabel="accuracy in bin", title=title, xlim=(0.45, 1.0), ylim=(0, 1.02))
  ax.legend(loc="upper left", fontsize=8)
  ax.grid(alpha=0.3)
  ax_n.set(xlabel="top-class confidence", ylabel="images")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def coverage(curves: dict[str, list[dict]], path: str, point: dict | None = None) -> None:
  """Accuracy on answered images vs coverage as the abstain threshold rises.

  `point`: the bundle's operating point {threshold, coverage, accuracy}, marked on the curve.
  """
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, curve in curves.items():
    pts = [(c["coverage"], c["accuracy"]) for c in curve if c["accuracy"] is not None]
    ax.plot(*zip(*pts), marker=".", label=name)
  if point and point.get("accuracy") is not None:
    ax.plot(point["coverage"], point["accuracy"], "r*", ms=12,
            label=f"bundle threshold {point['threshold']:.3f}")
  ax.set(xlabel="coverage (fraction answered)", ylabel="accuracy on answered",
         title="Accuracy vs coverage (abstain below threshold)")
  ax.invert_xaxis()
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def subgroup_bars(field: str, groups: dict[str, dict], path: str,
                  metrics=("accuracy", "recall_female", "recall_male")) -> None:
  """Grouped bars per subgroup value with 95% CI whiskers and n under each group."""
  names = list(groups)
  x = np.arange(len(names))
  width = 0.8 / len(metrics)
  fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(names) + 2), 4.2))
  for k, metric in enumerate(metrics):
    vals = [groups[g][metric]["value"] for g in names]
    lo = [groups[g][metric]["ci"][0] for g in names]
    hi = [groups[g][metric]["ci"][1] for g in names]
    v = np.array([np.nan if a is None else a for a in vals], float)
    err = np.array([[0 if a is None or l is None or np.isnan(l) else a - l for a, l in zip(vals, lo)],
                    [0 if a is None or h is None or np.isnan(h) else h - a for a, h in zip(vals, hi)]])
    ax.bar(x + (k - (len(metrics) - 1) / 2) * width, v, width, yerr=np.maximum(err, 0), capsize=2,
           label=metric.replace("_", " "))
  ax.set_xticks(x, [f"{g}\nn={groups[g]['count']}" for g in names], fontsize=8)
  ax.set(ylim=(0, 1.05), ylabel="value (95% CI)", title=f"By {field}")
  ax.axhline(1.0, color="k", lw=0.5)
  ax.legend(fontsize=8, loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def matrix(rows: list[str], cols: list[str], values: np.ndarray, path: str, title: str) -> None:
  """A heatmap with the numbers written in (the cross-dataset matrix)."""
  fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2.5, 0.8 * len(rows) + 1.8))
  im = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis")
  for i in range(len(rows)):
    for j in range(len(cols)):
      if np.isfinite(values[i, j]):
        ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color="w")
  ax.set_xticks(range(len(cols)), cols, rotation=20)
  ax.set_yticks(range(len(rows)), rows)
  ax.set(xlabel="tested on", ylabel="trained on", title=title)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
