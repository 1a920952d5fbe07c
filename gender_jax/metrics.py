"""Metrics as (sum, count) pairs, and the writers (TensorBoard + JSONL) for process 0."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """One JSON object per write: {"step": s, "name": value, …}; easy to grep and plot."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, "a", buffering=1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + JSONL on process 0; nothing on the others. No clu LoggingWriter: the
  trainer's progress line is the one place a metric is printed."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
  ])


def summarize(sums: Mapping[str, Any]) -> dict[str, float]:
  """{"loss": (sum, count), …} (device or host) → {"loss": mean}, pulled to the host once.

  Keys ending in `_recall_female`/`_recall_male` are per-class means (count = class count);
  balanced accuracy is their average.
  """
  host = jax.device_get(dict(sums))
  out = {k: float(s) / max(float(c), 1.0) for k, (s, c) in host.items()}
  recalls = [v for k, v in out.items() if k.startswith("recall_")]
  if recalls:
    out["balanced_accuracy"] = float(np.mean(recalls))
  return out


def accumulate(total, new):
  """Adds two {name: (sum, count)} dicts elementwise (either may be None)."""
  if total is None:
    return new
  return jax.tree.map(lambda a, b: a + b, total, new)
