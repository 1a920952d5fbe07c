"""Precise BN: the running statistics become the mean over batches of the batch statistics."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gender_jax.train import precise_bn


class TinyBN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.99, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.fc = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    h = self.bn(self.conv(x))
    return self.fc(self.drop(jnp.mean(h, axis=(1, 2))))


class NoBN(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(3, 2, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(self.fc(jnp.mean(x, axis=(1, 2))))


def _batches(n=5, size=8):
  rng = np.random.default_rng(0)
  # Shifted and scaled away from the initial running values (mean 0, var 1).
  return [(rng.normal(size=(size, 6, 6, 3)) * (2.0 + i) + 3.0).astype(np.float32)
          for i in range(n)]


def test_running_stats_are_the_mean_of_batch_stats():
  model = TinyBN(nnx.Rngs(0))
  model.train()
  params_before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  batches = _batches()
  out = precise_bn.recalibrate(model, batches)
  assert out is model
  feats = [np.asarray(model.conv(jnp.asarray(b))).reshape(-1, 4) for b in batches]
  want_mean = np.mean([f.mean(0) for f in feats], axis=0)
  want_var = np.mean([f.var(0) for f in feats], axis=0)  # biased, as BatchNorm's
  np.testing.assert_allclose(np.asarray(model.bn.mean.get_value()), want_mean, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(model.bn.var.get_value()), want_var, rtol=1e-5,
                             atol=1e-5)
  # Parameters, momentum and modes as they were.
  jax.tree.map(np.testing.assert_array_equal, params_before,
               jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
  assert model.bn.momentum == 0.99
  assert model.bn.use_running_average is False and model.drop.deterministic is False
  # max_batches reads only the first ones.
  model2 = TinyBN(nnx.Rngs(0))
  precise_bn.recalibrate(model2, iter(batches), max_batches=2)
  want2 = np.mean([f.mean(0) for f in feats[:2]], axis=0)
  np.testing.assert_allclose(np.asarray(model2.bn.mean.get_value()), want2, rtol=1e-5,
                             atol=1e-5)


def test_model_without_batchnorm_is_unchanged():
  model = NoBN(nnx.Rngs(0))
  model.eval()
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  assert precise_bn.recalibrate(model, _batches(2)) is model
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
  assert model.drop.deterministic is True


def test_recalibrate_bundle(tmp_path):
  from gender_jax.inference.bundle import Bundle
  from tests.helpers import random_bundle
  directory = random_bundle(tmp_path / "bundle", size=16, temperature=1.5)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (8, 16, 16, 3), np.uint8) for _ in range(3)]
  assert precise_bn.recalibrate_bundle(directory, images) == dict(batches=3, examples=24)
  bundle = Bundle(directory)
  assert bundle.calibration["temperature"] == 1.5  # the rest of the meta kept
  assert bundle.meta["precise_bn"] == dict(batches=3, examples=24)
  first = precise_bn.batch_norms(bundle.model)[0]
  assert not np.allclose(np.asarray(first.var.get_value()), 1.0)  # no longer the init


def test_a_config_that_lists_precise_bn_gets_it_after_training(tmp_path):
  """`after_training="precise_bn"` re-estimates the bundle's statistics on training batches
  (configs/mobilenet.py asks for it): the bundle's BatchNorm means move and its meta says so."""
  from gender_jax.inference.bundle import Bundle
  from gender_jax.models.weights import read_meta
  from gender_jax.train import after
  from tests.helpers import random_bundle, tiny_config
  directory = random_bundle(tmp_path / "bundle", size=16)
  means = lambda: [np.asarray(bn.mean[...])
                   for bn in precise_bn.batch_norms(Bundle(directory).model)]
  before = means()
  done = after.run(tiny_config(after_training="precise_bn", precise_bn_batches=2), directory,
                   step=0, val_sources={})
  assert done["precise_bn"] == read_meta(directory)["precise_bn"] == dict(batches=2, examples=64)
  assert any(not np.allclose(a, b) for a, b in zip(before, means()))
