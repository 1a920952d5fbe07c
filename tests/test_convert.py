"""Weight ports against the real libraries: torchvision's and Keras's own models, random weights.

Each parity test randomises every bias and BatchNorm statistic (so the BN and bias mappings are
exercised, not just zeros and ones), converts, and compares float32 logits and the per-stage
activations of `model.features` to the reference at ≤1e-4 relative error.
"""
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gender_jax.models.weights import flat_key, load_flat, load_pretrained, load_weights
from gender_jax.models import create_model, ports as convert
from tests.helpers import randomize_torch, state_dict_numpy, torch_libs, torchvision_port

RTOL = 1e-4


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _abstract_model(arch, variant, num_classes, width=0.0):
  """Shapes only: the tests fill every variable from a port (random init costs ~10-30 s)."""
  cfg = ml_collections.ConfigDict(dict(arch=arch, num_classes=num_classes,
                                       compute_dtype="float32", variant=variant, width=width))
  return nnx.eval_shape(lambda: create_model(cfg))


def _our_model(arch, variant, flat, num_classes, width=0.0):
  model = _abstract_model(arch, variant, num_classes, width)
  load_flat(model, flat)  # strict: the port filled every variable, head included
  model.eval()
  return model


def _forward(model, x):
  """Logits and per-stage activations, in one compile (op-by-op dispatch is slower here)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x):
    model = nnx.merge(graphdef, state)
    return model(x), model.features(x)

  return jax.device_get(forward(state, x))


def _fill_unloaded(model) -> list[str]:
  """Zeros into the variables a load left abstract (shape-only); returns their keys."""
  left = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    if isinstance(var.get_value(), jax.ShapeDtypeStruct):
      left.append(flat_key(path))
      var.set_value(jax.numpy.zeros(var.get_value().shape, var.get_value().dtype))
  return left


def _assert_parity(model, x, ref_logits, ref_stages, rtol=RTOL):
  """Logits first; the per-stage table says where a mismatch starts."""
  logits, stages = _forward(model, x)
  errors = {k: _rel_err(stages[k], v) for k, v in ref_stages.items()}
  errors["logits"] = _rel_err(logits, ref_logits)
  assert np.std(ref_logits) > 0, "degenerate reference: constant logits prove nothing"
  table = "\n".join(f"  {k:8s} {e:.2e}" for k, e in errors.items())
  print(f"relative error per stage:\n{table}")  # shown with -s: the README's parity numbers
  assert max(errors.values()) <= rtol, f"relative error per stage:\n{table}"
  return errors


# ----------------------------------------------------------------------------- torchvision
def _torch_reference(model, x, stage_modules):
  """(logits, {stage: NHWC activation}) from forward hooks on the named modules."""
  torch, _ = torch_libs()
  stages = {}
  hooks = [m.register_forward_hook(
      lambda _m, _i, out, name=name: stages.__setitem__(name, out.permute(0, 2, 3, 1).numpy()))
      for name, m in stage_modules.items()]
  with torch.no_grad():
    logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
  for h in hooks:
    h.remove()
  return logits, stages


def _torch_stages(model, arch):
  if arch.startswith("resnet"):
    return {"stem": model.maxpool, **{f"layer{i}": getattr(model, f"layer{i}")
                                      for i in range(1, 5)}}
  pools = [m for m in model.features if type(m).__name__ == "MaxPool2d"]
  return {f"block{i + 1}": m for i, m in enumerate(pools)}


@pytest.mark.parametrize("arch,size", [
    ("resnet18", 224),
    ("resnet50", 224),
    pytest.param("vgg16", 224, marks=pytest.mark.slow),  # the VGG paths: vgg16_bn below
    ("vgg16_bn", 64),  # block5 is 2x2: also exercises the adaptive 7x7 average pool
    # The other depths share the code paths above; smaller inputs keep them quick.
    *(pytest.param(a, 64, marks=pytest.mark.slow) for a in ("resnet34", "resnet101", "resnet152")),
    *(pytest.param(f"vgg{d}{bn}", 32, marks=pytest.mark.slow)
      for d in (11, 13, 19) for bn in ("", "_bn")),
])
def test_torchvision_parity(arch, size):
  ref, flat, meta = torchvision_port(arch)
  assert meta["variant"] == "torchvision" and meta["preprocessing"]["preset"] == "torchvision"
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  ref_logits, ref_stages = _torch_reference(ref, x, _torch_stages(ref, arch))
  _assert_parity(_our_model(arch, "torchvision", flat, 1000), x, ref_logits, ref_stages)


def test_torchvision_mismatches_named_in_one_error():
  torch, torchvision = torch_libs()
  tensors = state_dict_numpy(torchvision.models.resnet18(weights=None))
  tensors["layer2.0.conv1.wieght"] = tensors.pop("layer2.0.conv1.weight")  # a renamed tensor
  tensors["layer3.1.bn2.running_var"] = np.ones(7, np.float32)  # a wrong shape
  with pytest.raises(ValueError) as err:
    convert.convert_tensors(tensors, source="torchvision", arch="resnet18", origin="bad.pth")
  msg = str(err.value)
  assert "3 problem(s)" in msg, msg
  assert "missing: layer2.0.conv1.weight" in msg
  assert "unexpected: layer2.0.conv1.wieght" in msg
  assert "shape: layer3.1.bn2.running_var is (7,)" in msg and "needs (256,)" in msg


def test_head_dropped_and_counters_ignored():
  _, torchvision = torch_libs()
  flat, meta = convert.convert_tensors(
      state_dict_numpy(torchvision.models.resnet18(weights=None)),
      source="torchvision", arch="resnet18")
  assert not any(k.startswith("fc/") for k in flat)
  assert meta["dropped"] == ["fc.bias", "fc.weight"] and meta["fresh_prefixes"] == ["fc/"]
  assert meta["num_source_classes"] == 1000
  with pytest.raises(ValueError, match="has no 'vgg16_bn' port"):
    convert.convert_tensors({}, source="keras", arch="vgg16_bn")


def test_cli_round_trip_pth_and_safetensors(tmp_path):
  """Files written the way users get them → CLI → a 2-class model fine-tune init."""
  torch, torchvision = torch_libs()
  from safetensors.torch import save_file
  from gender_jax.convert import main
  ref = randomize_torch(torchvision.models.resnet18(weights=None))
  state = ref.state_dict()
  torch.save(state, tmp_path / "resnet18.pth")
  save_file(state, str(tmp_path / "resnet18.safetensors"))
  loaded = {}
  for ext in ("pth", "safetensors"):
    out = tmp_path / f"out_{ext}"
    assert main(["--from", "torchvision", "--arch", "resnet18",
                 "--src", str(tmp_path / f"resnet18.{ext}"), "--out", str(out)]) == 0
    flat, meta = load_weights(str(out))
    assert meta["source_file"] == f"resnet18.{ext}" and meta["preprocessing"]["preset"] == "torchvision"
    loaded[ext] = flat
  assert loaded["pth"].keys() == loaded["safetensors"].keys()
  assert all(np.array_equal(loaded["pth"][k], loaded["safetensors"][k]) for k in loaded["pth"])

  # The trainer's load into a 2-class model: every variable but the head comes from the file.
  # (Shape-only model: a variable left unloaded stays abstract, so the test sees exactly which.)
  model = _abstract_model("resnet18", "torchvision", 2)
  meta = load_pretrained(model, str(tmp_path / "out_pth"))
  assert meta["arch"] == "resnet18" and meta["variant"] == "torchvision"
  assert _fill_unloaded(model) == ["fc/bias", "fc/kernel"]
  np.testing.assert_array_equal(np.asarray(model.layer1[0].conv1.kernel[...]),
                                state["layer1.0.conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.layer4[1].bn2.var[...]),
                                state["layer4.1.bn2.running_var"].numpy())
  model.eval()
  x = np.random.default_rng(1).standard_normal((1, 64, 64, 3), np.float32)
  _, ref_stages = _torch_reference(ref, x, _torch_stages(ref, "resnet18"))
  assert _rel_err(_forward(model, x)[1]["layer4"], ref_stages["layer4"]) <= RTOL

  with pytest.raises(ValueError, match="holds resnet18 weights"):
    load_pretrained(_abstract_model("resnet34", "torchvision", 2),
                            str(tmp_path / "out_pth"))
  assert main(["--from", "torchvision", "--arch", "resnet34",
               "--src", str(tmp_path / "resnet18.pth"), "--out", str(tmp_path / "x")]) == 1


def test_pth_refuses_pickled_objects(tmp_path):
  torch, _ = torch_libs()
  torch.save({"conv1.weight": torch.zeros(1), "evil": _Pickled()}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match="weights_only"):
    convert.read_tensors(str(tmp_path / "evil.pth"))


class _Pickled:
  """An arbitrary object: torch.load(weights_only=True) must refuse to rebuild it."""


# ----------------------------------------------------------------------------- Keras
def _keras():
  # Keras 3 on JAX needs no TensorFlow; the backend is fixed at first import.
  os.environ["KERAS_BACKEND"] = "jax"
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip(f"keras already imported with the {keras.backend.backend()} backend")
  return keras


def _keras_model(keras, factory, seed=0, **kwargs):
  """A Keras application with random weights, built without Keras's own initialisers.

  Keras on JAX compiles its uniform initialiser once per weight shape (~40 s for ResNet50 on
  2 busy cores); building under a StatelessScope defers that, and every value is assigned
  here instead: He-normal kernels, random biases and BN affine/statistics.
  """
  with keras.StatelessScope(initialize_variables=False):
    model = factory(weights=None, **kwargs)
  keras.backend.clear_session(free_memory=False)  # drop the deferred initialisers
  rng = np.random.default_rng(seed)
  for w in model.weights:
    shape, name = tuple(w.shape), w.path.rsplit("/", 1)[-1]
    if name == "gamma":
      value = 0.5 + rng.random(shape)
    elif name == "moving_variance":
      value = 0.5 + 1.5 * rng.random(shape)
    elif len(shape) == 1:  # bias, beta, moving_mean
      value = 0.1 * rng.standard_normal(shape)
    else:  # HWIO conv or (in, out) dense kernel
      value = rng.standard_normal(shape, np.float32) * np.sqrt(2 / np.prod(shape[:-1]))
    w.assign(value.astype(np.float32))
  return model


def _keras_reference(keras, model, x, stage_layers):
  """(logits, {stage: activation}): one jitted predict over the model and its stage outputs."""
  probe = keras.Model(model.inputs, [model.output] + [model.get_layer(n).output
                                                       for n in stage_layers.values()])
  logits, *stages = probe.predict(x, batch_size=len(x), verbose=0)
  return logits, dict(zip(stage_layers, stages))


KERAS_RESNET50_STAGES = {"stem": "pool1_pool", "layer1": "conv2_block3_out",
                         "layer2": "conv3_block4_out", "layer3": "conv4_block6_out",
                         "layer4": "conv5_block3_out"}
KERAS_VGG_STAGES = {f"block{i}": f"block{i}_pool" for i in range(1, 6)}


@pytest.mark.slow
def test_keras_resnet50_parity(tmp_path):
  keras = _keras()
  size = 128  # global average pooling: any size >= 32 runs the same code
  ref = _keras_model(keras, keras.applications.ResNet50, include_top=True,
                     input_shape=(size, size, 3), classifier_activation=None)
  # Both Keras layouts: the legacy one (keras-applications downloads) and Keras 3's own.
  ref.save(tmp_path / "resnet50.h5")
  ref.save_weights(tmp_path / "resnet50.weights.h5")
  legacy = convert.read_tensors(str(tmp_path / "resnet50.h5"))
  modern = convert.read_tensors(str(tmp_path / "resnet50.weights.h5"))
  assert legacy.keys() == modern.keys()
  assert all(np.array_equal(legacy[k], modern[k]) for k in legacy)
  flat, meta = convert.convert_tensors(legacy, source="keras", arch="resnet50", keep_head=True)
  assert meta["variant"] == "keras" and meta["preprocessing"]["preset"] == "caffe"
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  ref_logits, ref_stages = _keras_reference(keras, ref, x, KERAS_RESNET50_STAGES)
  _assert_parity(_our_model("resnet50", "keras", flat, 1000), x, ref_logits, ref_stages)


@pytest.mark.slow  # the Keras key map's quick check: test_ports_zoo's MobileNet parities
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_keras_vgg_parity(tmp_path, arch):
  """With top, at 224 px: the only size where Keras's flatten feeds fc1 (7x7x512)."""
  keras = _keras()
  factory = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[arch]
  ref = _keras_model(keras, factory, include_top=True, classifier_activation=None)
  keras.saving.save_model(ref, tmp_path / f"{arch}.h5")  # the legacy layout
  flat, _ = convert.convert_file(str(tmp_path / f"{arch}.h5"), source="keras", arch=arch,
                                 keep_head=True)
  x = np.random.default_rng(0).standard_normal((2, 224, 224, 3), np.float32)
  ref_logits, ref_stages = _keras_reference(keras, ref, x, KERAS_VGG_STAGES)
  _assert_parity(_our_model(arch, "keras", flat, 1000), x, ref_logits, ref_stages)


def test_keras_vgg19_notop_fine_tune_load(tmp_path):
  """A no-top file: conv blocks ported, fc1/fc2/head left fresh for the fine-tune."""
  keras = _keras()
  from gender_jax.convert import main
  size = 64
  ref = _keras_model(keras, keras.applications.VGG19, include_top=False,
                     input_shape=(size, size, 3))
  ref.save_weights(tmp_path / "vgg19_notop.weights.h5")
  ref.save(tmp_path / "vgg19_notop.keras")  # the same weights inside Keras 3's zip format
  zipped = convert.read_tensors(str(tmp_path / "vgg19_notop.keras"))
  plain = convert.read_tensors(str(tmp_path / "vgg19_notop.weights.h5"))
  assert zipped.keys() == plain.keys() and all(np.array_equal(zipped[k], plain[k]) for k in plain)
  out = str(tmp_path / "vgg19_keras")
  assert main(["--from", "keras", "--arch", "vgg19", "--src",
               str(tmp_path / "vgg19_notop.weights.h5"), "--out", out]) == 0
  model = _abstract_model("vgg19", "keras", 2)
  meta = load_pretrained(model, out)
  assert meta["fresh_prefixes"] == ["fc1/", "fc2/", "fc/"] and meta["num_source_classes"] is None
  assert meta["preprocessing"]["preset"] == "caffe"
  assert _fill_unloaded(model) == [f"{fc}/{p}" for fc in ("fc", "fc1", "fc2")
                                   for p in ("bias", "kernel")]
  model.eval()
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), np.float32)
  assert _rel_err(_forward(model, x)[1]["block5"], ref.predict(x, verbose=0)) <= RTOL
