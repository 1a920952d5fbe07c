"""The train step with `data.device_augment`: the augmentation is in the jitted step, keyed
by each example's index, and the identity when every operation is off."""
import jax
import numpy as np
import pytest

from gender_jax import parallel
from gender_jax.train import steps
from gender_jax.data import preprocess
from tests.helpers import tiny_config


def _step(config):
  mesh = parallel.create_mesh(1)
  spec = preprocess.make_spec(config.data.image_size)
  setup = steps.create_train_setup(config, mesh, 10, spec)
  state = jax.jit(setup.init_state, out_shardings=setup.state_sharding)()
  return setup, state


def _batch(index):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
          "label": rng.integers(0, 2, 32).astype(np.int32), "index": np.asarray(index, np.int32)}


@pytest.mark.slow
def test_device_augmentation_is_in_the_step_and_keyed_by_index():
  on = tiny_config(**{"data.device_augment": True, "data.color_jitter": 0.4,
                      "data.grayscale": 0.2, "mesh.num_devices": 1})
  setup, state = _step(on)
  # The head starts at zero, so the loss is log 2 for any image; the gradient sees them.
  loss = lambda batch: float(jax.device_get(setup.train_step(  # noqa: E731
      jax.tree.map(lambda x: x.copy(), state), batch)[1]["grad_norm"][0]))
  base = loss(_batch(np.arange(32)))
  assert loss(_batch(np.arange(32))) == base  # a pure function of (seed, step, index)
  assert loss(_batch(np.arange(32)[::-1])) != base  # other indices: other augmentations
  # Everything off: the step sees exactly the host's pixels.
  off = tiny_config(**{"data.device_augment": True, "data.flip": False, "mesh.num_devices": 1})
  plain = tiny_config(**{"data.device_augment": False, "data.flip": False, "mesh.num_devices": 1})
  (s_off, st_off), (s_plain, st_plain) = _step(off), _step(plain)
  a = jax.device_get(s_off.train_step(st_off, _batch(np.arange(32)))[1]["grad_norm"][0])
  b = jax.device_get(s_plain.train_step(st_plain, _batch(np.arange(32)))[1]["grad_norm"][0])
  np.testing.assert_allclose(a, b, rtol=1e-6)
