"""Regression tests for bugs found by reading (issue 13), each cheap and without training."""
from __future__ import annotations

import threading
import time
import types

import jax
import pytest

from gender_jax import parallel
from gender_jax.train import schedule as config_lib
from gender_jax.train import steps, validation
from tests.helpers import tiny_config


def test_mixture_headline_accuracy_excludes_balanced_accuracy():
  per_source = {"a": dict(accuracy=0.9, balanced_accuracy=0.5, loss=0.2),
                "b": dict(accuracy=0.7, balanced_accuracy=0.5, loss=0.4)}
  results = validation.validation_results(per_source)
  assert results["val_accuracy"] == pytest.approx(0.8)  # was 0.65: the balanced ones mixed in
  assert results["val_balanced_accuracy"] == pytest.approx(0.5)
  assert results["val_loss"] == pytest.approx(0.3)
  assert results["val_a_accuracy"] == 0.9 and results["val_b_balanced_accuracy"] == 0.5
  assert validation.validation_results({"a": per_source["a"]}) == {
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


def test_warmup_in_epochs_is_that_many_epochs_of_steps():
  """optimizer.warmup_epochs was turned into steps with one example and a batch of one: 0.5
  epochs became a 1-step warmup in every AdamW config (configs.common.use_adamw), and
  configs/resnet.py's 1-epoch SGD warmup too."""
  from gender_jax.train import steps
  config = tiny_config(**{"optimizer.warmup_steps": None, "optimizer.warmup_epochs": 0.5,
                          "data.batch_size": 10})
  _, schedule = steps.create_optimizer(config, {"w": "lr_x1.0"}, total_steps=100,
                                       num_train=200)  # 20 steps an epoch: warm up for 10
  lr = config.optimizer.lr
  assert float(schedule(5)) == pytest.approx(lr / 2, rel=1e-3)
  assert float(schedule(10)) == pytest.approx(lr, rel=1e-3)


def test_two_step_units_are_a_config_error_not_a_traceback():
  """configs/utkface.py counts in epochs; `--config.total_steps=2` on top of it used to end in
  a ValueError traceback from deep in the input setup, after the data was opened."""
  with pytest.raises(ValueError, match="total_steps and total_epochs are both set.*"
                                       "--config.total_epochs=0"):
    config_lib.validate(tiny_config(**{"total_epochs": 3.0}))
  config_lib.validate(tiny_config(**{"total_epochs": 0.0}))


def test_frozen_gradients_are_outside_clipping_and_grad_norm():
  """Head mode: the logged grad_norm is the head's own and clipping scales by it alone.
  Reference: the head's gradient from an `all`-mode SGD step (update = −lr·g, same forward)."""
  import numpy as np
  from gender_jax.models.weights import to_flat
  from flax import nnx
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  mesh = parallel.create_mesh()
  rng = np.random.default_rng(0)
  batch = parallel.put_batch(dict(image=rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
                                  label=rng.integers(0, 2, 32).astype(np.int32)), mesh)

  def one_step(mode, clip, bn="train"):
    config = tiny_config(**{"finetune.mode": mode, "model.bn": bn, "optimizer.name": "sgd",
                            "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
                            "optimizer.warmup_steps": 0, "optimizer.end_lr_fraction": 1.0,
                            "optimizer.lr": 0.1, "optimizer.grad_clip_norm": clip})
    spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
    setup = steps.create_train_setup(config, mesh, 10, spec)
    # A random head (it starts at zero): else no gradient reaches the backbone in `all` mode.
    model = create_model(config.model, rngs=nnx.Rngs(config.seed))
    model.fc.kernel.value = 0.3 * jax.random.normal(jax.random.key(1), model.fc.kernel.shape)
    state = jax.device_put(setup.init_state(model), setup.state_sharding)
    before = to_flat(state["params"])
    state, metrics = setup.train_step(state, batch)
    after = to_flat(state["params"])
    grad_norm = float(jax.device_get(metrics["grad_norm"][0]))
    return {k: before[k] - after[k] for k in before}, grad_norm

  # The reference runs every BN on its statistics, as head mode runs the frozen backbone's.
  delta_all, norm_all = one_step("all", 0.0, bn="frozen")
  head_grad = {k: d / 0.1 for k, d in delta_all.items() if k.startswith("fc/")}
  head_norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in head_grad.values())))
  clip = head_norm / 4
  delta_head, norm_head = one_step("head", clip)
  assert norm_head == pytest.approx(head_norm, rel=1e-4) and norm_head < norm_all
  for k, d in delta_head.items():
    if k.startswith("fc/"):  # clipped by the head's norm, not the whole network's
      np.testing.assert_allclose(d, 0.1 * head_grad[k] / 4, rtol=1e-3, atol=1e-7, err_msg=k)
    else:
      assert not np.any(d), k


def test_inception_refuses_inputs_below_its_minimum():
  from configs import inception
  cfg = inception.get_config()
  cfg.data.image_size = 48
  with pytest.raises(ValueError, match="data.image_size=48 is too small for inception_v3"):
    config_lib.validate(cfg)
  cfg.data.image_size = 75
  config_lib.validate(cfg)
