"""Exports of a tiny bundle, each loaded in its own runtime and compared with the JAX model."""
import json
import pathlib
import re

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gender_jax import export
from gender_jax.inference.bundle import Bundle, save_bundle
from gender_jax.export import command as export_cli
from gender_jax.data import preprocess
from gender_jax.models import create_model

SIZE = 64
REAL = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface-2k"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  """The real UTKFace folder where present, else a male/ female/ folder of synthetic PNGs."""
  if (REAL / "labels.csv").exists():
    return REAL
  from PIL import Image
  root = tmp_path_factory.mktemp("images")
  for label, seed in (("female", 1), ("male", 2)):
    (root / label).mkdir()
    for i, img in enumerate(export.synthetic_images(150, 96, seed=seed)):
      Image.fromarray(img).save(root / label / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def images(image_dir):
  """Test images disjoint from the calibration sample the exports draw (same seed, same split)."""
  _, check = export.sample_images(image_dir, SIZE, calibration=100, check=100)
  return check


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, image_dir):
  """resnet_tiny trained for a few steps on the folder's labels: its probabilities spread over
  both classes like a real model's, which random weights (all near one value) would not."""
  import optax
  files = export.list_images(image_dir)
  order = np.random.default_rng(1).permutation(len(files))
  train_files = [files[i] for i in order[:600]]
  x = export.load_images(train_files, SIZE)
  y = np.array([f.parent.name == "male" for f in train_files], np.int32)
  model_config = dict(arch="resnet_tiny", num_classes=2, compute_dtype="float32")
  model = create_model(ml_collections.ConfigDict(model_config))
  spec = preprocess.make_spec(SIZE)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    def loss_fn(model):
      logits = model(preprocess.normalize(images, spec))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  model.train()
  rng = np.random.default_rng(0)
  for _ in range(80):
    batch = rng.integers(0, len(x), 32)
    train_step(model, optimizer, x[batch], y[batch])
  model.eval()
  directory = tmp_path_factory.mktemp("bundle")
  save_bundle(str(directory), model, model_config=model_config, preprocessing=spec,
                         calibration=dict(temperature=1.5, abstain_threshold=0.6))
  return directory


@pytest.fixture(scope="module")
def reference(bundle_dir, images):
  probs = np.asarray(Bundle(str(bundle_dir)).probs_fn()(images))
  labels = probs.argmax(-1)
  assert 0.2 < labels.mean() < 0.8, "the test model should predict both classes"
  return probs


def needs(*modules):
  """The runtimes come with the `export` extra (pip install -e ".[export]")."""
  for module in modules:
    pytest.importorskip(module, reason=f"{module} not installed: pip install -e '.[export]'")


def run_tflite(path, images):
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  assert tuple(inp["shape"]) == (1, SIZE, SIZE, 3) and inp["dtype"] == np.uint8
  probs = []
  for image in images:
    interpreter.set_tensor(inp["index"], image[None])
    interpreter.invoke()
    probs.append(interpreter.get_tensor(out["index"])[0])
  return np.stack(probs)


@pytest.mark.parametrize("quantization", ["float32", "float16", "dynamic_range"])
def test_tflite_float_and_weight_quantised(tmp_path, bundle_dir, image_dir, images, reference,
                                            quantization):
  needs("ai_edge_litert")
  out = tmp_path / "model.tflite"
  result = export.export(bundle_dir, "tflite", out, quantization=quantization,
                         check_dir=image_dir, check_count=16)
  probs = run_tflite(out, images)
  diff = np.abs(probs - reference).max()
  assert diff <= export.TOLERANCES[quantization]["max_abs_prob"]
  if quantization == "float32":
    assert diff <= 1e-4
    assert (probs.argmax(-1) == reference.argmax(-1)).mean() >= 0.99
  # The contract beside the model tells an app exactly what to feed it.
  written = json.loads((tmp_path / "model.tflite.json").read_text())
  assert written == json.loads(json.dumps(result))
  assert written["input"].items() >= dict(shape=[1, SIZE, SIZE, 3], dtype="uint8",
                                          channel_order="RGB", value_range=[0, 255]).items()
  assert written["class_names"] == ["female", "male"]
  assert written["calibration"]["temperature"] == 1.5
  assert written["parity"]["passed"] and written["parity"]["images"] == 16


def test_tflite_int8_agrees_on_labels(tmp_path, bundle_dir, image_dir, images, reference):
  needs("ai_edge_litert")
  out = tmp_path / "int8.tflite"
  result = export.export(bundle_dir, "tflite", out, quantization="int8",
                         calibration_dir=image_dir, calibration_count=100, check_count=100)
  # Raw pixels go straight in: uint8 input with scale 1, zero point 0.
  assert result["input"]["quantization"] == dict(scale=1.0, zero_point=0)
  probs = run_tflite(out, images)
  agreement = (probs.argmax(-1) == reference.argmax(-1)).mean()
  assert agreement >= 0.99, agreement
  assert np.abs(probs - reference).max() <= export.TOLERANCES["int8"]["max_abs_prob"]
  assert out.stat().st_size < 0.5 * len(export.tflite_bytes(Bundle(str(bundle_dir))))


def test_saved_model_dynamic_batch(tmp_path, bundle_dir, images, reference):
  import tensorflow as tf
  out = tmp_path / "saved_model"
  export.export(bundle_dir, "saved_model", out, batch=None, check_count=8)
  assert (out / "contract.json").exists()
  serve = tf.saved_model.load(str(out)).signatures["serving_default"]
  for n in (1, 7):  # any batch size
    probs = serve(images=tf.constant(images[:n]))["probs"].numpy()
    assert np.abs(probs - reference[:n]).max() <= 1e-4
  probs = serve(images=tf.constant(images))["probs"].numpy()
  assert np.abs(probs - reference).max() <= 1e-4


def test_onnx_dynamic_batch(tmp_path, bundle_dir, images, reference):
  needs("tf2onnx", "onnx", "onnxruntime")
  import onnxruntime as ort
  out = tmp_path / "model.onnx"
  export.export(bundle_dir, "onnx", out, batch=None, check_count=8)
  session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  assert [i.name for i in session.get_inputs()] == ["images"]
  assert [o.name for o in session.get_outputs()] == ["probs"]
  probs = session.run(["probs"], {"images": images})[0]
  assert np.abs(probs - reference).max() <= 1e-4
  assert json.loads((tmp_path / "model.onnx.json").read_text())["input"]["shape"][0] is None


def test_edge_padded_max_pool_is_exact():
  # The int8 rewrite of padded max pools, on inputs with negative values (no ReLU before).
  def fn(x):
    y = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return jax.jit(lambda z: nnx.max_pool(z, (2, 2), strides=(1, 1), padding=((1, 0), (0, 1))))(y)
  x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3)) - 1.0
  rewritten = export._edge_padded_max_pool(fn)
  np.testing.assert_array_equal(np.asarray(rewritten(x)), np.asarray(fn(x)))
  pools = [e for e in jax.make_jaxpr(rewritten)(x).jaxpr.eqns
           if e.primitive.name == "reduce_window_max"]
  assert len(pools) == 2 and all(p.params["padding"] == ((0, 0),) * 4 for p in pools)


def test_parity_failure_is_loud():
  reference = np.array([[0.9, 0.1], [0.2, 0.8]])
  assert export.check_parity(reference + 5e-5, reference, "float32")["passed"]
  with pytest.raises(export.ParityError, match=re.escape("max |Δprob| 0.001")):
    export.check_parity(reference + [1e-3, -1e-3], reference, "float32")
  with pytest.raises(export.ParityError, match="label agreement 50.00%"):
    export.check_parity(np.array([[0.9, 0.1], [0.6, 0.4]]), reference, "int8")


def test_cli_rejects_bad_options(tmp_path, capsys):
  bundle = str(tmp_path / "missing")
  assert export_cli.main(["--bundle", bundle, "--format", "tflite", "--out", str(tmp_path / "m"),
                      "--quantize", "int8"]) == 1
  assert "needs --calibration-dir" in capsys.readouterr().err
  assert export_cli.main(["--bundle", bundle, "--format", "onnx", "--out", str(tmp_path / "m"),
                      "--quantize", "float16"]) == 1
  assert "is for TFLite" in capsys.readouterr().err
  assert export_cli.main(["--bundle", bundle, "--format", "saved_model",
                      "--out", str(tmp_path / "m")]) == 2  # a path to fix: the usage status
  assert "not a weights directory" in capsys.readouterr().err
