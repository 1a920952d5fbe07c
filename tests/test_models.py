"""Model shapes, parameter counts that match torchvision, and the train/eval switch."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gender_jax.models import ARCHS, create_model
from gender_jax.train import schedule as config_lib
from tests.helpers import tiny_config
import os
from gender_jax.train import loop as trainer


def _config(arch, dtype="float32"):
  return ml_collections.ConfigDict(dict(arch=arch, num_classes=2, compute_dtype=dtype))


@pytest.mark.parametrize("arch,params", [
    # torchvision's counts with the 1000-way head swapped for a 2-way one.
    ("resnet18", 11_689_512 - 513_000 + 1_026),
    ("resnet50", 25_557_032 - 2_049_000 + 4_098),
    ("vgg16", 138_357_544 - 4_097_000 + 8_194),
    ("vgg16_bn", 138_365_992 - 4_097_000 + 8_194),
])
def test_parameter_counts_match_torchvision(arch, params):
  model = nnx.eval_shape(lambda: create_model(_config(arch)))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count == params


@pytest.mark.parametrize("arch", ["resnet_tiny", "vgg_tiny", "vgg_tiny_bn"])
def test_tiny_models_run_in_both_modes(arch):
  model = create_model(_config(arch, "bfloat16"))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
  model.train()
  y_train = model(x, rngs=nnx.Rngs(dropout=0))
  model.eval()
  y_eval, y_eval2 = model(x), model(x)
  assert y_train.shape == y_eval.shape == (4, 2) and y_eval.dtype == jnp.float32
  np.testing.assert_array_equal(y_eval, y_eval2)  # eval is deterministic


def test_bn_statistics_update_only_in_train_mode():
  model = create_model(_config("resnet_tiny"))
  x = jnp.ones((2, 32, 32, 3))
  before = np.asarray(model.bn1.mean.value)
  model.eval()
  model(x)
  np.testing.assert_array_equal(before, model.bn1.mean.value)
  model.train()
  model(x)
  assert not np.array_equal(before, model.bn1.mean.value)


def test_unknown_arch_names_the_choices():
  with pytest.raises(ValueError, match="resnet50"):
    create_model(_config("resnet51"))
  assert "vgg19_bn" in ARCHS


def test_decode_names_what_is_wrong_with_bad_images(tmp_path):
  import io
  from PIL import Image
  from gender_jax.data import preprocess
  buf = io.BytesIO()
  Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG")
  good = buf.getvalue()
  assert preprocess.decode(good).shape == (30, 40, 3)
  cases = {b"": "0 bytes", b"hello": "not a recognised image", good[: len(good) // 2]: "truncated"}
  for data, message in cases.items():
    with pytest.raises(preprocess.ImageError, match=message):
      preprocess.decode(data)
  big = io.BytesIO()
  Image.new("1", (12000, 12000)).save(big, "PNG")
  with pytest.raises(preprocess.ImageError, match="too large"):
    preprocess.decode(big.getvalue())


def test_inception_refuses_inputs_below_its_minimum():
  from configs import inception
  cfg = inception.get_config()
  cfg.data.image_size = 48
  with pytest.raises(ValueError, match="data.image_size=48 is too small for inception_v3"):
    config_lib.validate(cfg)
  cfg.data.image_size = 75
  config_lib.validate(cfg)


# -------------------------------------------------- cnn_small


def test_parameters_stages_and_size_independence():
  cfg = ml_collections.ConfigDict(dict(arch="cnn_small", num_classes=2, compute_dtype="float32"))
  assert "cnn_small" in ARCHS
  model = nnx.eval_shape(lambda: create_model(cfg))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert 1_000_000 < n < 1_500_000  # global pooling: the same at any image size
  assert model.stages == ("block1", "block2", "block3", "block4", "fc1", "fc")
  model = create_model(ml_collections.ConfigDict(dict(arch="cnn_small", num_classes=2,
                                                      compute_dtype="bfloat16", width=4)))
  model.eval()  # dropout off: two calls agree
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  a, b = model(x), model(x)
  assert a.shape == (2, 2) and a.dtype == np.float32 and np.array_equal(a, b)
  assert model.fc1.kernel.dtype == np.float32  # bf16 compute, f32 params


def test_trains_a_few_steps_and_exports(tmp_path):
  config = tiny_config(**{"model.arch": "cnn_small", "model.width": 8, "total_steps": 2,
                          "eval_every_steps": 2, "checkpoint.checkpoint_every_steps": 2})
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2
  bundle = os.path.join(tmp_path, "run", "bundle")
  pytest.importorskip("ai_edge_litert", reason="pip install -e '.[export]'")
  from gender_jax import export
  out = tmp_path / "cnn_small.tflite"
  contract = export.export(bundle, "tflite", out, check_count=4, log=lambda *_: None)
  assert out.stat().st_size > 0 and contract["parity"]["passed"]
