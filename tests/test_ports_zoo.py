"""MobileNet V2/V3 ports against torchvision and Keras (random weights and BN statistics), and
one fine-tune train step of each new arch through the trainer.

Parity as in test_convert.py: float32 logits (and, for torchvision, every stage) ≤1e-4
relative. Inputs are 96-128 px: global pooling makes every size run the same code.
"""
import numpy as np
import pytest

from gender_jax.models import ports as convert
from tests.test_convert import (_assert_parity, _keras, _keras_model, _keras_reference,
                                _our_model, _randomize_torch, _state_dict_numpy, _torch,
                                _torch_reference)

MOBILENETS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def _torch_stages(ref, ours):
  """The torchvision module ending each of our stages (model.features is index for index)."""
  last = {}
  for i, stage in enumerate(ours.stage_of_feature):
    last[stage] = ref.features[i]
  return last


@pytest.mark.parametrize("arch,size", [("mobilenet_v2", 96), ("mobilenet_v3_small", 128),
                                       pytest.param("mobilenet_v3_large", 96,
                                                    marks=pytest.mark.slow)])
def test_torchvision_mobilenet_parity(arch, size):
  torch, torchvision = _torch()
  torch.manual_seed(0)
  ref = _randomize_torch(getattr(torchvision.models, arch)(weights=None))
  flat, meta = convert.convert_tensors(_state_dict_numpy(ref), source="torchvision",
                                       arch=arch, keep_head=True)
  assert meta["preprocessing"]["preset"] == "torchvision"
  ours = _our_model(arch, "torchvision", flat, 1000)
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  ref_logits, ref_stages = _torch_reference(ref, x, _torch_stages(ref, ours))
  _assert_parity(ours, x, ref_logits, ref_stages)


KERAS = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3Small",
         "mobilenet_v3_large": "MobileNetV3Large"}


@pytest.mark.parametrize("arch,size", [("mobilenet_v2", 96), ("mobilenet_v3_small", 97),
                                       pytest.param("mobilenet_v3_large", 96,
                                                    marks=pytest.mark.slow)])
def test_keras_mobilenet_parity(tmp_path, arch, size):
  """Odd and even sizes: Keras pads strided convs TF-style, one more pixel bottom/right."""
  keras = _keras()
  ref = _keras_model(keras, getattr(keras.applications, KERAS[arch]), include_top=True,
                     input_shape=(size, size, 3), classifier_activation=None)
  ref.save_weights(tmp_path / f"{arch}.weights.h5")
  flat, meta = convert.convert_file(str(tmp_path / f"{arch}.weights.h5"), source="keras",
                                    arch=arch, keep_head=True)
  assert meta["preprocessing"]["preset"] == "scratch"  # x/127.5 - 1
  assert "keras_preprocessing" in meta
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  # V3 rescales inside the Keras model: it gets raw pixels, ours the normalised ones.
  raw = x * 127.5 + 127.5 if arch != "mobilenet_v2" else x
  if arch == "mobilenet_v2":
    ref_logits, ref_stages = _keras_reference(keras, ref, raw, {"layer4": "out_relu"})
  else:  # V3's activations are unnamed ops in Keras: logits only
    ref_logits, ref_stages = ref.predict(raw, batch_size=len(raw), verbose=0), {}
  _assert_parity(_our_model(arch, "keras", flat, 1000), x, ref_logits, ref_stages)


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
  from gender_jax import parallel, trainer
  from gender_jax.data import preprocess
  config = demo.get_config()
  with config.unlocked():
    config.model.arch = arch
    config.model.width = 0.25
    config.model.dropout = 0.2
    config.finetune.mode = "head"
  mesh = parallel.create_mesh()
  spec = preprocess.make_spec(32)
  setup = trainer.create_train_setup(config, mesh, total_steps=2, spec=spec)
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
  torch, torchvision = _torch()
  torch.manual_seed(0)
  ref = _randomize_torch(torchvision.models.inception_v3(
      weights=None, aux_logits=True, init_weights=False, transform_input=False))
  flat, meta = convert.convert_tensors(_state_dict_numpy(ref), source="torchvision",
                                    arch="inception_v3", keep_head=True)
  assert any(k.startswith("AuxLogits.") for k in meta["dropped"])
  assert meta["preprocessing"]["preset"] == "scratch"  # what transform_input produces
  ours = _our_model("inception_v3", "torchvision", flat, 1000)
  x = np.random.default_rng(0).standard_normal((2, 107, 107, 3), np.float32)
  stages = {"stem": ref.maxpool2, "mixed_5": ref.Mixed_5d, "mixed_6": ref.Mixed_6e,
            "mixed_7": ref.Mixed_7c}
  ref_logits, ref_stages = _torch_reference(ref, x, stages)
  _assert_parity(ours, x, ref_logits, ref_stages)
