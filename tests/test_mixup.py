"""Mixup in the train step: inputs and targets blended with the batch rolled by one, with a
λ ~ Beta(α, α) that is a pure function of (seed, step)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gender_jax import parallel
from gender_jax.train import schedule as config_lib
from gender_jax.train import mixup
from gender_jax.train import steps
from gender_jax.data import preprocess
from gender_jax.models import create_model
from tests.helpers import tiny_config


def test_mix_blends_inputs_and_targets_with_the_rolled_batch():
  x = jax.random.normal(jax.random.key(0), (6, 4, 4, 3))
  y = jax.nn.one_hot(jnp.array([0, 1, 1, 0, 1, 0]), 2)
  key = mixup.step_key(0, 3)
  mx, my, lam = mixup.mix(x, y, key, 0.4)
  lam = float(lam)
  assert 0.0 < lam < 1.0
  np.testing.assert_allclose(mx, lam * x + (1 - lam) * np.roll(x, 1, axis=0), rtol=1e-6)
  np.testing.assert_allclose(my, lam * y + (1 - lam) * np.roll(y, 1, axis=0), rtol=1e-6)
  np.testing.assert_allclose(my.sum(-1), 1.0, rtol=1e-6)  # still a distribution per example
  # (seed, step) decides λ: the same again, another at the next step or seed.
  assert float(mixup.mix(x, y, mixup.step_key(0, 3), 0.4)[2]) == lam
  assert float(mixup.mix(x, y, mixup.step_key(0, 4), 0.4)[2]) != lam
  assert float(mixup.mix(x, y, mixup.step_key(1, 3), 0.4)[2]) != lam
  # bfloat16 inputs stay bfloat16.
  assert mixup.mix(x.astype(jnp.bfloat16), y, key, 0.4)[0].dtype == jnp.bfloat16


def test_the_step_trains_on_the_mixed_batch_and_is_deterministic():
  """The step's loss is the cross-entropy of the model on mix(inputs) against the mixed
  targets, with the step's own key; the same state and batch give the same step."""
  mesh = parallel.create_mesh()
  config = tiny_config(**{"mixup_alpha": 0.4, "label_smoothing": 0.0, "model.dropout": 0.0})
  spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
  setup = steps.create_train_setup(config, mesh, 10, spec)
  rng = np.random.default_rng(0)
  host = dict(image=rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
              label=rng.integers(0, 2, 32).astype(np.int32))

  def start(setup):
    # A random head: the model's own starts at zero, where every input gives the same loss.
    def init():
      model = create_model(config.model, rngs=nnx.Rngs(config.seed))
      model.fc.kernel[...] = jax.random.normal(jax.random.key(1), model.fc.kernel.shape)
      return setup.init_state(model)
    return jax.jit(init, out_shardings=setup.state_sharding)()

  def fresh():
    return start(setup)

  state = fresh()
  params, stats = jax.device_get((state["params"], state["batch_stats"]))

  @jax.jit
  def expected_loss(params, stats, images, labels):
    inputs = preprocess.normalize(images, spec, jnp.float32)
    targets = jax.nn.one_hot(labels, 2)
    inputs, targets, _ = mixup.mix(inputs, targets, mixup.step_key(config.seed, 0), 0.4)
    model = nnx.merge(setup.train_graphdef, params, stats, copy=True)
    return optax.softmax_cross_entropy(model(inputs), targets).mean()

  want = float(expected_loss(params, stats, host["image"], host["label"]))
  _, sums = setup.train_step(state, parallel.put_batch(host, mesh))
  loss = float(sums["loss"][0] / sums["loss"][1])
  assert loss == pytest.approx(want, rel=1e-5)
  _, again = setup.train_step(fresh(), parallel.put_batch(host, mesh))
  assert float(again["loss"][0]) == float(sums["loss"][0])
  # Off, the same batch gives another loss: the mixing is what changed it.
  plain = tiny_config(**{"label_smoothing": 0.0, "model.dropout": 0.0})
  off = steps.create_train_setup(plain, mesh, 10, spec)
  _, unmixed = off.train_step(start(off), parallel.put_batch(host, mesh))
  assert abs(float(unmixed["loss"][0] / unmixed["loss"][1]) - loss) > 1e-3


def test_negative_alpha_is_a_config_error():
  with pytest.raises(ValueError, match="mixup_alpha"):
    config_lib.validate(tiny_config(mixup_alpha=-0.1))
