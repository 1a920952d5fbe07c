"""Regression tests for bugs found by reading (issue 13), each cheap and without training."""
from __future__ import annotations

import threading
import time
import types

import jax
import pytest

from gender_jax import config as config_lib, parallel, trainer
from tests.helpers import tiny_config


def test_mixture_headline_accuracy_excludes_balanced_accuracy():
  per_source = {"a": dict(accuracy=0.9, balanced_accuracy=0.5, loss=0.2),
                "b": dict(accuracy=0.7, balanced_accuracy=0.5, loss=0.4)}
  results = trainer.validation_results(per_source)
  assert results["val_accuracy"] == pytest.approx(0.8)  # was 0.65: the balanced ones mixed in
  assert results["val_balanced_accuracy"] == pytest.approx(0.5)
  assert results["val_loss"] == pytest.approx(0.3)
  assert results["val_a_accuracy"] == 0.9 and results["val_b_balanced_accuracy"] == 0.5
  assert trainer.validation_results({"a": per_source["a"]}) == {
      "val_accuracy": 0.9, "val_balanced_accuracy": 0.5, "val_loss": 0.2}


class _GrowingStore:
  """A coordination-service stand-in whose directory gains new peers on every read."""

  def __init__(self):
    self.reads = 0

  def key_value_set(self, *args, **kwargs):
    pass

  def key_value_dir_get(self, prefix):
    self.reads += 1
    return [(f"{prefix}{p}", "1") for p in range(self.reads * 50, self.reads * 50 + 50)]


def test_peer_watchdog_survives_a_growing_peer_table(monkeypatch):
  errors = []
  monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
  dog = parallel.PeerWatchdog(timeout=1000, client=_GrowingStore())
  dog.interval = 0  # both threads in tight loops: the check iterates while the table grows
  check = threading.Thread(target=dog._check, daemon=True)
  beat = threading.Thread(target=dog._beat, daemon=True)
  check.start(), beat.start()
  time.sleep(1.5)
  alive = check.is_alive()
  dog._stop.set()
  check.join(5), beat.join(5)
  assert not errors, errors  # was: RuntimeError("dictionary changed size during iteration")
  assert alive and len(dog.last_seen) > 1000


def test_create_mesh_takes_devices_from_every_process(monkeypatch):
  # 2 processes × 4 devices; jax.devices() lists process 0's first.
  fake = [types.SimpleNamespace(id=i, process_index=i // 4) for i in range(8)]
  monkeypatch.setattr(jax, "devices", lambda: fake)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(parallel, "Mesh", lambda devices, *a, **k: list(devices))
  assert [d.id for d in parallel.create_mesh(4)] == [0, 1, 4, 5]  # was [0, 1, 2, 3]
  assert [d.id for d in parallel.create_mesh()] == list(range(8))
  with pytest.raises(ValueError, match="multiple of the 2 processes"):
    parallel.create_mesh(3)


def test_float16_compute_is_rejected():
  with pytest.raises(ValueError, match="float16.*loss scaling"):
    config_lib.validate(tiny_config(**{"model.compute_dtype": "float16"}))
  config_lib.validate(tiny_config(**{"model.compute_dtype": "bfloat16"}))
