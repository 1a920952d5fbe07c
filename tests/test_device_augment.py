"""Device-side flip / colour jitter / grayscale: keyed per (step, example), in range, and the
same distribution as the host version it replaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import datasets as fixtures
from gender_jax.data import augment, device_augment, pipeline
from gender_jax import parallel
from gender_jax.train import steps
from gender_jax.data import preprocess
from tests.helpers import tiny_config


def _config(sources_dict, **data):
  from configs.common import get_base_config
  config = get_base_config()
  with config.unlocked():
    for name, opts in sources_dict.items():
      config.data.sources[name] = opts
    config.data.update(dict(image_size=32, batch_size=8, read_threads=1, prefetch=2,
                            num_workers=0, device_augment=True))
    config.data.update(data)
  return config


def _take(it, n):
  it = iter(it)
  return [next(it) for _ in range(n)]


def _images(n=8, size=24, seed=0):
  # A left-to-right ramp plus noise: a flip is visible, colours are not grey.
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 200, size, dtype=np.float32)[None, :, None]
  x = ramp + rng.uniform(0, 55, (n, size, size, 3)).astype(np.float32)
  return x.astype(np.uint8)


AUG = jax.jit(device_augment.augment)


def test_a_pure_function_of_step_and_example_index():
  images = _images()
  key = device_augment.base_key(0)
  params = device_augment.make_params(flip=True, color_jitter=0.4, grayscale=0.2)
  index = np.arange(8)
  a = AUG(images, device_augment.example_keys(key, 5, index), params)
  b = AUG(images, device_augment.example_keys(key, 5, index), params)
  np.testing.assert_array_equal(a, b)
  c = AUG(images, device_augment.example_keys(key, 6, index), params)
  assert not np.array_equal(a, c)
  # An example's result depends on its own index only, not on its neighbours in the batch:
  # a process holding half the global batch computes exactly its half.
  half = AUG(images[4:], device_augment.example_keys(key, 5, index[4:]), params)
  np.testing.assert_array_equal(a[4:], half)


def test_output_is_float_in_range_and_identity_when_off():
  images = np.zeros((16, 8, 8, 3), np.uint8)
  images[::2] = 255
  keys = device_augment.example_keys(device_augment.base_key(1), 0, np.arange(16))
  out = AUG(images, keys, device_augment.make_params(color_jitter=0.9, grayscale=0.5))
  assert out.dtype == jnp.float32 and out.shape == images.shape
  assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
  off = AUG(_images(), keys[:8], device_augment.make_params(flip=False))
  np.testing.assert_array_equal(off, _images().astype(np.float32))
  # One key for the whole batch is split per example.
  one = AUG(_images(), keys[0], device_augment.make_params(color_jitter=0.5))
  assert one.shape == (8, 24, 24, 3) and not np.array_equal(one[0], one[1])
  # Float input (already 0..255) is accepted too.
  np.testing.assert_array_equal(
      AUG(_images().astype(np.float32), keys[:8], device_augment.make_params(flip=False)), off)


def test_matches_the_host_versions_statistics():
  """Per-image brightness, saturation, flip and grayscale rates over many draws, host
  (augment.train_image, uint8) against device (float32): equal within sampling error."""
  image = _images(1, size=16)[0]
  n = 1500
  spec = augment.AugmentSpec(crop="none", flip=True, color_jitter=0.4, grayscale=0.25)
  host = np.stack([augment.train_image(image, 16, np.random.default_rng(i), spec)
                   for i in range(n)]).astype(np.float32)
  keys = device_augment.example_keys(device_augment.base_key(0), 3, np.arange(n))
  dev = np.asarray(AUG(np.repeat(image[None], n, 0), keys,
                       device_augment.make_params(flip=True, color_jitter=0.4, grayscale=0.25)))

  def stats(x):
    brightness = x.mean(axis=(1, 2, 3))
    saturation = x.std(axis=-1).mean(axis=(1, 2))
    gray = saturation < 1.0
    flipped = x[:, :, :4].mean(axis=(1, 2, 3)) > x[:, :, -4:].mean(axis=(1, 2, 3))
    return dict(b_mean=brightness.mean(), b_std=brightness.std(),
                s_mean=saturation[~gray].mean(), gray=gray.mean(), flip=flipped.mean())

  h, d = stats(host), stats(dev)
  assert abs(h["b_mean"] - d["b_mean"]) < 0.03 * h["b_mean"], (h, d)
  assert abs(h["b_std"] - d["b_std"]) < 0.1 * h["b_std"], (h, d)
  assert abs(h["s_mean"] - d["s_mean"]) < 0.05 * h["s_mean"], (h, d)
  # Rates: one standard error at n=1500 is ≤ 0.013.
  assert abs(h["gray"] - d["gray"]) < 0.05 and abs(d["gray"] - 0.25) < 0.05, (h, d)
  assert abs(h["flip"] - d["flip"]) < 0.06 and abs(d["flip"] - 0.5) < 0.05, (h, d)


def test_each_source_gets_its_own_settings():
  config = _config({"synthetic": dict(weight=1.0, train_size=64, image_size=16),
                    "synthetic:b": dict(weight=1.0, train_size=64, image_size=16, seed=1,
                                        flip=False, color_jitter=0.0)},
                   color_jitter=0.5, grayscale=0.0)
  params = device_augment.params_for(config)
  np.testing.assert_allclose(params.color_jitter, [0.5, 0.0])  # a config stands for these:
  keys = device_augment.example_keys(device_augment.base_key(0), 0, np.arange(8))
  np.testing.assert_array_equal(device_augment.augment(_images(8), keys, config),
                                device_augment.augment(_images(8), keys, params))
  np.testing.assert_allclose(params.flip, [0.5, 0.0])
  images = _images(8)
  sid = np.array([0, 1] * 4)
  out = np.asarray(AUG(images, device_augment.example_keys(device_augment.base_key(0), 0,
                                                           np.arange(8)), params, sid))
  np.testing.assert_array_equal(out[1::2], images[1::2].astype(np.float32))  # source b: off
  assert not np.array_equal(out[0::2], images[0::2].astype(np.float32))


@pytest.fixture(scope="module")
def folder_source(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  fixtures.folder(str(root / "f"), per_class=16)
  return dict(path=str(root / "f"), data_dir=str(root / "d"), weight=1.0)


def test_host_leaves_flip_and_colour_to_the_device(folder_source):
  base = _take(pipeline.train_dataset(_config({"folder": folder_source}, flip=False,
                                              device_augment=False)), 3)
  jittered = _take(pipeline.train_dataset(_config({"folder": folder_source}, flip=True,
                                                  color_jitter=0.5, grayscale=0.5)), 3)
  for a, b in zip(base, jittered):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].dtype == np.uint8


def test_device_result_unchanged_by_threads_and_processes(folder_source):
  """The same global batch whatever the read threads and however many processes share it:
  host crops plus device colour, keyed by the batch's global `index`."""
  params = device_augment.make_params(color_jitter=0.4, grayscale=0.3)
  key = device_augment.base_key(0)

  def device(batches, start):
    return [np.asarray(device_augment.augment_batch(b, key, start + s, params))
            for s, b in enumerate(batches)]

  config = _config({"folder": dict(folder_source, rotate=10.0)})
  one = device(_take(pipeline.train_dataset(config, start_step=2), 3), 2)
  with config.unlocked():
    config.data.read_threads = 3
  threads = device(_take(pipeline.train_dataset(config, start_step=2), 3), 2)
  halves = [_take(pipeline.train_dataset(config, start_step=2, process_index=p,
                                         process_count=2), 3) for p in range(2)]
  np.testing.assert_array_equal(halves[1][0]["index"], np.arange(4, 8))
  two = [np.concatenate(x) for x in zip(device(halves[0], 2), device(halves[1], 2))]
  for a, b, c in zip(one, threads, two):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_runs_in_a_jitted_step_on_a_sharded_batch():
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  batch = {"image": _images(8), "index": np.arange(8, dtype=np.int32),
           "source_id": np.zeros(8, np.int32)}
  params = device_augment.make_params(color_jitter=0.3, grayscale=0.1)
  key = device_augment.base_key(0)
  step = jax.jit(lambda b, s: device_augment.augment_batch(b, key, s, params))
  sharded = step(jax.device_put(batch, sharding), jnp.int32(7))
  assert sharded.sharding.spec == P("data")  # stays per-device: no gather of the batch
  # Another partitioning is another XLA program: float sums may round differently (~1e-5
  # of 255); the same program is bit-exact run to run, which is what resume relies on.
  np.testing.assert_allclose(sharded, step(batch, jnp.int32(7)), atol=1e-3)
  np.testing.assert_array_equal(sharded, step(jax.device_put(batch, sharding), jnp.int32(7)))


# -------------------------------------------------- in the jitted train step


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
