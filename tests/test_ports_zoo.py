"""MobileNet V2/V3 (also narrowed: Keras's alpha, torchvision's width_mult) and Inception-v3
ports against torchvision and Keras (random weights and BN statistics), and one fine-tune
train step of each new arch through the trainer.

Parity as in test_convert.py: float32 logits (and, for torchvision, every stage) ≤1e-4
relative; the Keras Inception-v3 port ≤1e-5. Inputs are 75-128 px: global pooling makes every
size run the same code.
"""
import re

import numpy as np
import pytest
from flax import nnx

from gender_jax.models.weights import load_flat
from gender_jax.models import inception, ports as convert
from tests.helpers import torchvision_port
from tests.test_convert import (_assert_parity, _keras, _keras_model, _keras_reference,
                                _our_model, _torch_reference)

MOBILENETS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def _torch_stages(ref, ours):
  """The torchvision module ending each of our stages (model.features is index for index)."""
  last = {}
  for i, stage in enumerate(ours.stage_of_feature):
    last[stage] = ref.features[i]
  return last


@pytest.mark.parametrize("arch,size,width", [
    ("mobilenet_v2", 96, 1.0), ("mobilenet_v3_small", 128, 1.0),
    pytest.param("mobilenet_v2", 64, 0.5, marks=pytest.mark.slow),  # torchvision's width_mult
    pytest.param("mobilenet_v3_large", 96, 1.0, marks=pytest.mark.slow)])
def test_torchvision_mobilenet_parity(arch, size, width):
  ref, flat, meta = torchvision_port(arch, width_mult=width)
  assert meta["preprocessing"]["preset"] == "torchvision"
  assert meta["width"] == width  # found from the file's shapes
  ours = _our_model(arch, "torchvision", flat, 1000, width=width)
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  ref_logits, ref_stages = _torch_reference(ref, x, _torch_stages(ref, ours))
  _assert_parity(ours, x, ref_logits, ref_stages)


KERAS = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3Small",
         "mobilenet_v3_large": "MobileNetV3Large"}


def _keras_port(tmp_path, arch, factory, size, **kwargs):
  """(Keras application with random weights, its port through a saved file, meta)."""
  keras = _keras()
  ref = _keras_model(keras, getattr(keras.applications, factory), include_top=True,
                     input_shape=(size, size, 3), classifier_activation=None, **kwargs)
  ref.save_weights(tmp_path / f"{arch}.weights.h5")
  flat, meta = convert.convert_file(str(tmp_path / f"{arch}.weights.h5"), source="keras",
                                    arch=arch, keep_head=True)
  assert meta["preprocessing"]["preset"] == "scratch"  # x/127.5 - 1
  assert "keras_preprocessing" in meta
  return keras, ref, flat, meta


@pytest.mark.parametrize("arch,size,width", [
    ("mobilenet_v2", 96, 1.0), ("mobilenet_v3_small", 97, 1.0),
    # alpha != 1: Keras narrows differently from torchvision (the keras variant follows it).
    ("mobilenet_v2", 64, 0.35), ("mobilenet_v3_small", 64, 0.75),
    *(pytest.param(a, 64, w, marks=pytest.mark.slow) for a, w in (
        ("mobilenet_v2", 0.75), ("mobilenet_v2", 1.3), ("mobilenet_v3_large", 0.75))),
    pytest.param("mobilenet_v3_large", 96, 1.0, marks=pytest.mark.slow)])
def test_keras_mobilenet_parity(tmp_path, arch, size, width):
  """Odd and even sizes: Keras pads strided convs TF-style, one more pixel bottom/right."""
  keras, ref, flat, meta = _keras_port(tmp_path, arch, KERAS[arch], size, alpha=width)
  assert meta["width"] == width  # found from the file's shapes
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  # V3 rescales inside the Keras model: it gets raw pixels, ours the normalised ones.
  raw = x * 127.5 + 127.5 if arch != "mobilenet_v2" else x
  if arch == "mobilenet_v2":
    ref_logits, ref_stages = _keras_reference(keras, ref, raw, {"layer4": "out_relu"})
  else:  # V3's activations are unnamed ops in Keras: logits only
    ref_logits, ref_stages = ref.predict(raw, batch_size=len(raw), verbose=0), {}
  _assert_parity(_our_model(arch, "keras", flat, 1000, width=width), x, ref_logits, ref_stages)


def test_keras_width_differs_from_torchvision_width():
  """Why the keras variant sizes layers itself: at alpha 0.75 the two libraries' V3 differ."""
  from gender_jax.models import mobilenet
  def shapes(variant):
    model = nnx.eval_shape(lambda: mobilenet.create("mobilenet_v3_small", width=0.75,
                                                    variant=variant, rngs=nnx.Rngs(0)))
    return {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  keras, torch = shapes("keras"), shapes("torchvision")
  assert keras.keys() == torch.keys()  # the same parameter names; only widths differ
  # Block 1 expands 16 → 16 x 72/16 in Keras, 16 → make_divisible(72 x 0.75) in torchvision;
  # Keras's pre-logits layer keeps 1024 for alpha < 1, torchvision's narrows by alpha.
  expand = ("layers", 2, "expand", "conv", "kernel")
  assert keras[expand] == (1, 1, 16, 72) and torch[expand] == (1, 1, 16, 56)
  assert keras[("fc1", "kernel")] == (432, 1024) and torch[("fc1", "kernel")] == (432, 768)
  assert keras != torch


def test_mobilenet_width_not_found_is_named():
  """A width outside the published ones, not given: one error naming the mismatched shapes."""
  keras = _keras()
  ref = _keras_model(keras, keras.applications.MobileNetV2, include_top=False, alpha=0.6,
                     input_shape=(64, 64, 3))
  tensors = {}
  for layer in ref.layers:
    convert._keras_layer("alpha0.6", layer.name, [np.asarray(w) for w in layer.get_weights()],
                         tensors)
  with pytest.raises(ValueError, match=r"problem\(s\) porting keras mobilenet_v2"):
    convert.convert_tensors(tensors, source="keras", arch="mobilenet_v2")
  flat, meta = convert.convert_tensors(tensors, source="keras", arch="mobilenet_v2", width=0.6)
  assert meta["width"] == 0.6
  np.testing.assert_array_equal(flat["layers/2/expand/conv/kernel"],
                                tensors["block_1_expand/kernel"])


def test_keras_mobilenet_v3_notop_leaves_fc1_fresh():
  keras = _keras()
  ref = _keras_model(keras, keras.applications.MobileNetV3Small, include_top=False,
                     input_shape=(64, 64, 3))
  tensors = {}
  for layer in ref.layers:
    convert._keras_layer("notop", layer.name, [np.asarray(w) for w in layer.get_weights()],
                         tensors)
  flat, meta = convert.convert_tensors(tensors, source="keras", arch="mobilenet_v3_small")
  assert meta["fresh_prefixes"] == ["fc1/", "fc/"]
  assert not any(k.startswith(("fc1/", "fc/")) for k in flat)


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", *(
    pytest.param(a, marks=pytest.mark.slow) for a in ("mobilenet_v2", "mobilenet_v3_large"))])
def test_trains_one_step_with_head_finetune(arch):
  """create_train_setup with finetune.mode=head: steps run, only the head moves."""
  import jax
  from configs import demo
  from gender_jax import parallel
  from gender_jax.train import steps
  from gender_jax.data import preprocess
  config = demo.get_config()
  with config.unlocked():
    config.model.arch = arch
    config.model.width = 0.25
    config.model.dropout = 0.2
    config.finetune.mode = "head"
  mesh = parallel.create_mesh()
  spec = preprocess.make_spec(32)
  setup = steps.create_train_setup(config, mesh, total_steps=2, spec=spec)
  state = jax.device_put(setup.init_state(), setup.state_sharding)
  before = jax.device_get(state["params"])
  n = 8
  batch = dict(image=np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), np.uint8),
               label=np.arange(n, dtype=np.int32) % 2)
  batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  for _ in range(2):  # the warmup's learning rate is 0 at step 0
    state, metrics = setup.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"][0]))
  after = jax.device_get(state["params"])
  changed = {k for k in after if not all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after[k]), jax.tree.leaves(before[k])))}
  assert changed == {"fc"}, changed


@pytest.mark.parametrize("arch,params", [
    # torchvision's counts with the 1000-way head swapped for a 2-way one.
    ("mobilenet_v2", 3_504_872 - 1_281_000 + 2_562),
    ("mobilenet_v3_small", 2_542_856 - 1_025_000 + 2_050),
    ("mobilenet_v3_large", 5_483_032 - 1_281_000 + 2_562),
    ("inception_v3", 23_834_568 - 2_049_000 + 4_098),  # without the aux head
])
def test_parameter_counts_match_torchvision(arch, params):
  import jax
  import ml_collections
  from flax import nnx
  from gender_jax.models import create_model
  cfg = ml_collections.ConfigDict(dict(arch=arch, num_classes=2, compute_dtype="float32"))
  model = nnx.eval_shape(lambda: create_model(cfg))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == params


def test_torchvision_inception_v3_parity():
  """At 107 px (≥75 runs): every block type. The file's aux head is dropped by the port."""
  ref, flat, meta = torchvision_port("inception_v3", aux_logits=True, init_weights=False,
                                     transform_input=False)
  assert any(k.startswith("AuxLogits.") for k in meta["dropped"])
  assert meta["preprocessing"]["preset"] == "scratch"  # what transform_input produces
  ours = _our_model("inception_v3", "torchvision", flat, 1000)
  x = np.random.default_rng(0).standard_normal((2, 107, 107, 3), np.float32)
  stages = {"stem": ref.maxpool2, "mixed_5": ref.Mixed_5d, "mixed_6": ref.Mixed_6e,
            "mixed_7": ref.Mixed_7c}
  ref_logits, ref_stages = _torch_reference(ref, x, stages)
  _assert_parity(ours, x, ref_logits, ref_stages)


def _keras_inception(flat):
  model = nnx.eval_shape(lambda: inception.InceptionV3(num_classes=1000, variant="keras",
                                                       rngs=nnx.Rngs(0)))
  load_flat(model, flat)  # strict: gamma-less BN and bias-less convs all filled
  model.eval()
  return model


@pytest.mark.slow  # the Inception code paths: test_torchvision_inception_v3_parity
def test_keras_inception_v3_parity(tmp_path):
  """At 91 px the last blocks are 1x1-3x3: Keras's border-aware average pools matter there."""
  keras, ref, flat, meta = _keras_port(tmp_path, "inception_v3", "InceptionV3", 91)
  assert meta["variant"] == "keras" and not meta["dropped"]
  assert all(np.all(v == 1) for k, v in flat.items() if k.endswith("/bn/scale"))
  # The keras-applications file numbers its layers from conv2d_1, a fresh Keras 3 from conv2d.
  tensors = convert.read_tensors(str(tmp_path / "inception_v3.weights.h5"))
  shifted = {re.sub(r"^(conv2d|batch_normalization)(?:_(\d+))?/",
                    lambda m: f"{m[1]}_{int(m[2] or 0) + 1}/", k): v for k, v in tensors.items()}
  assert "conv2d_94/kernel" in shifted
  again, _ = convert.convert_tensors(shifted, source="keras", arch="inception_v3",
                                     keep_head=True)
  assert again.keys() == flat.keys() and all(np.array_equal(again[k], flat[k]) for k in flat)

  x = np.random.default_rng(0).standard_normal((2, 91, 91, 3), np.float32)
  pools = [layer.name for layer in ref.layers if type(layer).__name__ == "MaxPooling2D"]
  ref_logits, ref_stages = _keras_reference(keras, ref, x, {
      "stem": pools[1], "mixed_5": "mixed2", "mixed_6": "mixed7", "mixed_7": "mixed10"})
  _assert_parity(_keras_inception(flat), x, ref_logits, ref_stages, rtol=1e-5)


def test_keras_average_pool_counts_only_pixels_inside():
  """Keras's AveragePooling2D(3, 1, 'same') against ours: torchvision's form (÷9 everywhere)
  agrees inside the image only, which is why the keras variant exists."""
  keras = _keras()
  x = np.random.default_rng(0).standard_normal((2, 5, 4, 3), np.float32)
  ref = np.asarray(keras.layers.AveragePooling2D((3, 3), strides=(1, 1), padding="same")(x))
  np.testing.assert_allclose(np.asarray(inception._avg3(x, exclude_pad=True)), ref, rtol=1e-6)
  torch_style = np.asarray(inception._avg3(x))
  np.testing.assert_allclose(torch_style[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=1e-6)
  assert not np.allclose(torch_style[:, 0], ref[:, 0])
