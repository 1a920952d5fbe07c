"""Metrics as (sum, count) pairs, and the writers (TensorBoard + JSONL) for process 0."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np


class JsonlWriter:
  """One JSON object per write: {"step": s, "name": value, …}; easy to grep and plot."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, "a", buffering=1)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class TensorBoardWriter:
  """Scalars as TensorBoard event files, written with tensorboard's own protos and event
  writer: no TensorFlow import (seconds at start-up, and absent from GPU images)."""

  def __init__(self, logdir: str):
    import sys
    import types
    # tensorboard's file layer uses TensorFlow's gfile when TensorFlow is importable (5 s of
    # start-up: TF, then Keras, then matplotlib); `tensorboard.compat.notf` present is its
    # own switch to the pure-Python stub, which writes the same event files.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self._writer = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                         for k, v in scalars.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class MultiWriter:
  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def create_writer(workdir: str) -> MultiWriter:
  """TensorBoard + JSONL on process 0; nothing on the others. The trainer's progress line is
  the one place a metric is printed."""
  if jax.process_index() != 0:
    return MultiWriter([])
  writers = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
  try:
    writers.append(TensorBoardWriter(workdir))
  except ImportError:  # tensorboard not installed: metrics.jsonl still has every scalar
    pass
  return MultiWriter(writers)


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
