"""Export an inference bundle to TFLite, SavedModel or ONNX, each checked against JAX.

    python -m gender_jax.export --bundle WORKDIR/bundle --format tflite --out model.tflite \
        [--quantize float32|float16|dynamic_range|int8 --calibration_dir DIR] [--batch 1|0]

Every exported model takes raw RGB pixels (uint8, or float32 in 0..255) as NHWC at the
bundle's image size and returns calibrated class probabilities, softmax(logits / T): the
bundle's normalisation and temperature are inside the model, so an app only decodes and
resizes. That contract is written beside the model file as JSON (`contract_path`).

Paths: JAX → jax2tf (StableHLO inside a TF function) → TF SavedModel, or → the TFLite
converter. ONNX goes through the float TFLite model and tf2onnx: jax2tf only serialises
natively now (an `XlaCallModule` op) which tf2onnx cannot read, while the TFLite converter
legalises that StableHLO into builtin ops; jax2onnx pins an older orbax-checkpoint.

After writing, each export is run in its own runtime (LiteRT interpreter, TensorFlow,
onnxruntime) on a sample of images next to the JAX model; past `TOLERANCES` it raises.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

FORMATS = ("tflite", "saved_model", "onnx")
QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")
INPUT_DTYPES = ("uint8", "float32")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ONNX_OPSET = 17

# Largest |Δprob| against JAX, and the least top-1 agreement, each export must meet. Float
# formats differ from XLA only by op order; float16 weights add ~1e-3 relative error;
# dynamic-range and int8 quantise weights (and int8 activations) to 8 bits, so they are held
# to label agreement plus a coarse probability bound. Measured on the test bundle and a
# ResNet-18 (see benchmarks/export.py); int8 with 1/256 output steps lands near 0.02.
TOLERANCES = {
    "float32": dict(max_abs_prob=1e-4, min_label_agreement=0.0),
    "float16": dict(max_abs_prob=1e-2, min_label_agreement=0.95),
    "dynamic_range": dict(max_abs_prob=0.1, min_label_agreement=0.95),
    "int8": dict(max_abs_prob=0.15, min_label_agreement=0.99),
}


class ExportError(ValueError):
  """Bad export options or inputs; the message says which and why."""


class ParityError(AssertionError):
  """An exported model disagrees with the JAX model past the stated tolerance."""


def _tf():
  """TensorFlow, kept off any GPU: it only converts and checks here, JAX owns the devices."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices in this process; leave them
    pass
  return tf


# ----------------------------------------------------------------------------- images
def list_images(directory: str | os.PathLike) -> list[pathlib.Path]:
  """Image files under `directory` (recursively, e.g. male/ and female/), sorted."""
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"image folder {root} does not exist")
  files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
  if not files:
    raise ExportError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
  return files


def load_images(files, size: int) -> np.ndarray:
  """Decodes and resizes with the eval path every other entry point uses → uint8 NHWC."""
  from gender_jax.data.preprocess import ImageError, eval_image
  out = []
  for f in files:
    try:
      out.append(eval_image(pathlib.Path(f).read_bytes(), size))
    except ImageError as e:
      raise ImageError(f"{f}: {e}") from None
  return np.stack(out)


def sample_images(directory, size: int, *, calibration: int, check: int, seed: int = 0):
  """Two disjoint random samples of a folder: calibration images and parity-check images."""
  files = list_images(directory)
  order = np.random.default_rng(seed).permutation(len(files))
  n_cal = min(calibration, max(len(files) - check, len(files) // 2))
  cal = [files[i] for i in order[:n_cal]]
  chk = [files[i] for i in order[n_cal:n_cal + check]] or cal[:check]
  return load_images(cal, size) if cal else None, load_images(chk, size)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """Smooth random colour fields (upsampled noise): image-like statistics, no data needed."""
  from gender_jax.data.preprocess import resize
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  return np.stack([resize(s, size) for s in small])


# ----------------------------------------------------------------------------- the function
def probs_function(bundle, *, pool_edge_padding: bool = False) -> Callable:
  """images (N,H,W,3 raw pixels, any real dtype) → calibrated probabilities, weights inlined."""
  import jax
  logits, state = bundle.logits_fn()
  # Host copies: jax2tf then embeds the weights as constants of the exported graph.
  state = jax.tree.map(np.asarray, state)
  temperature = float(bundle.calibration.get("temperature", 1.0))

  def probs(images):
    return jax.nn.softmax(logits(state, images) / temperature, axis=-1)
  return _edge_padded_max_pool(probs) if pool_edge_padding else probs


def _edge_padded_max_pool(fn: Callable) -> Callable:
  """`fn` with each padded max pool computed as edge-pad + unpadded pool.

  XLA pads a max pool with -inf; the TFLite int8 quantiser then gives the pooled tensor (and
  the conv writing it) a scale of ~1e36 and the model falls apart. Replicating the border
  instead is exact: any window that reaches into the padding also holds the border pixel
  that padding copies (padding < window), so the max is unchanged.
  """
  import jax
  from jax import lax
  from jax.extend import core as jcore

  def rewrite(jaxpr, consts, *args):
    env = {}
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      invals = [read(v) for v in eqn.invars]
      params, name = eqn.params, eqn.primitive.name
      inner = params.get("jaxpr") if name in ("pjit", "jit") else (
          params.get("call_jaxpr") if name == "custom_jvp_call" else None)
      if name == "reduce_window_max" and _edge_pad_is_exact(params):
        x = jax.numpy.pad(invals[0], params["padding"], mode="edge")
        outvals = [lax.reduce_window_max_p.bind(
            x, **{**params, "padding": ((0, 0),) * x.ndim})]
      elif isinstance(inner, jcore.ClosedJaxpr):  # inline, so nested pools are seen too
        outvals = rewrite(inner.jaxpr, inner.consts, *invals)
      else:
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
        outvals = outvals if eqn.primitive.multiple_results else [outvals]
      env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]

  def wrapped(images):
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(images.shape, images.dtype))
    (out,) = rewrite(closed.jaxpr, closed.consts, images)
    return out
  return wrapped


def _edge_pad_is_exact(params) -> bool:
  padded = any(lo or hi for lo, hi in params["padding"])
  undilated = all(d == 1 for d in (*params["base_dilation"], *params["window_dilation"]))
  inside = all(lo < w and hi < w for (lo, hi), w in zip(params["padding"],
                                                         params["window_dimensions"]))
  return padded and undilated and inside


def _tf_function(fn, shape, dtype: str, platforms=("cpu",)):
  """jax2tf: a TF function of one input `images` (batch dimension None = polymorphic)."""
  tf = _tf()
  from jax.experimental import jax2tf
  poly = None if shape[0] is not None else ["(b, " + ", ".join(map(str, shape[1:])) + ")"]
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False,
                             native_serialization_platforms=tuple(platforms))
  return tf.function(lambda images: {"probs": converted(images)}, autograph=False,
                     input_signature=[tf.TensorSpec(shape, getattr(tf, dtype), name="images")])


# ----------------------------------------------------------------------------- writers
def tflite_bytes(bundle, *, quantization: str = "float32", batch: int | None = 1,
                 input_dtype: str = "uint8", calibration_images: np.ndarray | None = None) -> bytes:
  tf = _tf()
  size = bundle.image_size
  int8 = quantization == "int8"
  if int8 and calibration_images is None:
    raise ExportError("int8 quantisation needs calibration images (--calibration_dir)")
  # int8: the graph takes float pixels and the converter puts a uint8 input on it, quantised
  # with scale 1 / zero point 0 (pinned below) — raw pixels, no cast op to quantise around.
  traced_dtype = "float32" if int8 else input_dtype
  fn = _tf_function(probs_function(bundle, pool_edge_padding=int8), (batch, size, size, 3),
                    traced_dtype)
  concrete = fn.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
  if quantization != "float32":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantization == "float16":
    converter.target_spec.supported_types = [tf.float16]
  if int8:
    n = batch or 1

    def representative():
      # A black and a white frame first: the input's calibrated range is then exactly 0..255.
      for value in (0, 255):
        yield [np.full((n, size, size, 3), value, np.float32)]
      for i in range(0, len(calibration_images) - n + 1, n):
        yield [calibration_images[i:i + n].astype(np.float32)]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_dtype == "uint8":
      converter.inference_input_type = tf.uint8
  return converter.convert()


def write_tflite(bundle, out, **kwargs) -> None:
  data = tflite_bytes(bundle, **kwargs)
  pathlib.Path(out).write_bytes(data)


def write_saved_model(bundle, out, *, batch: int | None = None, input_dtype: str = "uint8",
                      platforms=("cpu", "cuda")) -> None:
  """A SavedModel with one `serving_default` signature: images → {"probs"}."""
  tf = _tf()
  size = bundle.image_size
  module = tf.Module()
  module.serve = _tf_function(probs_function(bundle), (batch, size, size, 3), input_dtype,
                              platforms)
  tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve})


def write_onnx(bundle, out, *, batch: int | None = None, input_dtype: str = "uint8") -> None:
  """float TFLite → tf2onnx → ONNX with input `images` and output `probs`."""
  import onnx
  import tf2onnx
  data = tflite_bytes(bundle, batch=batch, input_dtype=input_dtype)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.tflite")
    pathlib.Path(path).write_bytes(data)
    model, _ = tf2onnx.convert.from_tflite(path, opset=ONNX_OPSET)
  _rename_io(model, "images", "probs")
  onnx.checker.check_model(model)
  onnx.save(model, str(out))


def _rename_io(model, input_name: str, output_name: str) -> None:
  graph = model.graph
  if len(graph.input) != 1 or len(graph.output) != 1:
    raise ValueError(f"expected one input and one output, got {len(graph.input)} and "
                     f"{len(graph.output)}")
  renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
  for value in (graph.input[0], graph.output[0]):
    value.name = renames[value.name]
  for node in graph.node:
    node.input[:] = [renames.get(n, n) for n in node.input]
    node.output[:] = [renames.get(n, n) for n in node.output]


# ----------------------------------------------------------------------------- runtimes
def load_runtime(fmt: str, path, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """The exported model in its own runtime: uint8 NHWC (any N) → float32 probabilities."""
  path = str(path)
  if fmt == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    fixed = int(inp["shape_signature"][0]) if inp["shape_signature"][0] > 0 else None
    if fixed is None:
      interpreter.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
    interpreter.allocate_tensors()
    state = dict(batch=fixed or 1)

    def run_chunk(x):
      if fixed is None and len(x) != state["batch"]:
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        state["batch"] = len(x)
      interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
      interpreter.invoke()
      return interpreter.get_tensor(out["index"]).copy()
    return _batched(run_chunk, fixed)
  if fmt == "saved_model":
    tf = _tf()
    serve = tf.saved_model.load(path).signatures["serving_default"]
    dtype = serve.structured_input_signature[1]["images"].dtype.as_numpy_dtype
    fixed = serve.structured_input_signature[1]["images"].shape[0]
    return _batched(lambda x: serve(images=tf.constant(x.astype(dtype)))["probs"].numpy(), fixed)
  if fmt == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    if num_threads:
      options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    return _batched(lambda x: session.run(None, {inp.name: x.astype(dtype)})[0], fixed)
  raise ExportError(f"unknown format {fmt!r}; choose from {FORMATS}")


def _batched(run_chunk, fixed: int | None):
  """Runs any number of images through a model of fixed batch, padding the last chunk."""
  def run(images):
    images = np.asarray(images)
    if fixed is None:
      return np.asarray(run_chunk(images), np.float32)
    outs = []
    for i in range(0, len(images), fixed):
      chunk = images[i:i + fixed]
      pad = fixed - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      outs.append(np.asarray(run_chunk(chunk))[:fixed - pad])
    return np.concatenate(outs).astype(np.float32)
  return run


# ----------------------------------------------------------------------------- parity
def reference_probs(bundle, images: np.ndarray, chunk: int = 64) -> np.ndarray:
  probs = bundle.probs_fn()
  return np.concatenate([np.asarray(probs(images[i:i + chunk]))
                         for i in range(0, len(images), chunk)])


def check_parity(exported: np.ndarray, reference: np.ndarray, quantization: str,
                 *, where: str = "export") -> dict[str, Any]:
  """Compares probabilities; returns the report, raises ParityError past the tolerance."""
  tol = TOLERANCES[quantization]
  diff = np.abs(np.asarray(exported, np.float64) - np.asarray(reference, np.float64))
  agreement = float(np.mean(np.argmax(exported, -1) == np.argmax(reference, -1)))
  report = dict(images=int(len(reference)), max_abs_prob_diff=float(diff.max()),
                mean_abs_prob_diff=float(diff.mean()), label_agreement=agreement,
                tolerance=tol)
  report["passed"] = (report["max_abs_prob_diff"] <= tol["max_abs_prob"]
                      and agreement >= tol["min_label_agreement"])
  if not report["passed"]:
    raise ParityError(
        f"{where} ({quantization}) disagrees with the JAX model on {len(reference)} images: "
        f"max |Δprob| {report['max_abs_prob_diff']:.3g} (allowed {tol['max_abs_prob']:g}), "
        f"label agreement {agreement:.2%} (required {tol['min_label_agreement']:.0%}). "
        "Do not ship this file.")
  return report


# ----------------------------------------------------------------------------- the contract
def contract_path(out) -> pathlib.Path:
  """model.tflite → model.json; a SavedModel directory → DIR/contract.json."""
  out = pathlib.Path(out)
  return out / "contract.json" if out.is_dir() else out.with_suffix(".json")


def contract(bundle, *, fmt, quantization, batch, input_dtype, parity, input_quantization=None):
  spec = bundle.preprocessing
  size = bundle.image_size
  return dict(
      format=fmt, quantization=quantization,
      input=dict(
          name="images", shape=[batch, size, size, 3], dtype=input_dtype, layout="NHWC",
          channel_order="RGB", value_range=[0, 255],
          resize=f"squash-resize the whole image to {size}x{size}, bilinear (no crop)",
          quantization=input_quantization,
          note="raw pixels: the model normalises them itself (below)"),
      normalization_in_model=dict(preset=spec.get("preset"), channel_order=spec["channel_order"],
                                  mean=list(spec["mean"]), std=list(spec["std"])),
      output=dict(name="probs", shape=[batch, len(bundle.class_names)], dtype="float32",
                  meaning="class probabilities, softmax(logits / temperature)"),
      class_names=list(bundle.class_names), calibration=dict(bundle.calibration),
      parity=parity, bundle=os.path.abspath(bundle.directory), versions=_versions())


def _versions() -> dict[str, str]:
  from importlib import metadata
  out = {}
  for name in ("jax", "tensorflow-cpu", "tensorflow", "ai-edge-litert", "tf2onnx", "onnx",
               "onnxruntime"):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


# ----------------------------------------------------------------------------- entry
def export(bundle_dir, fmt: str, out, *, quantization: str = "float32", batch: int | None = 1,
           input_dtype: str = "uint8", calibration_dir=None, calibration_count: int = 200,
           check_dir=None, check_count: int = 64, log=print) -> dict[str, Any]:
  """Writes one export plus its contract JSON, after checking it against JAX; returns the contract."""
  from gender_jax.checkpoint import Bundle
  if fmt not in FORMATS:
    raise ExportError(f"unknown format {fmt!r}; choose from {FORMATS}")
  if quantization not in QUANTIZATIONS:
    raise ExportError(f"unknown quantization {quantization!r}; choose from {QUANTIZATIONS}")
  if fmt != "tflite" and quantization != "float32":
    raise ExportError(f"--quantize {quantization} is for TFLite; {fmt} exports float32")
  if input_dtype not in INPUT_DTYPES:
    raise ExportError(f"unknown input dtype {input_dtype!r}; choose from {INPUT_DTYPES}")
  if batch is not None and batch < 1:
    raise ExportError(f"batch must be >= 1 (or None for a dynamic batch), got {batch}")
  if quantization == "int8" and not calibration_dir:
    raise ExportError("--quantize int8 needs --calibration_dir: a folder of representative "
                     "images (e.g. with male/ and female/ inside)")
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  bundle = Bundle(str(bundle_dir), compute_dtype="float32")
  size = bundle.image_size

  # Calibration and check images never overlap; without a folder the check uses synthetic images.
  calibration_images = None
  sample_dir = calibration_dir or check_dir
  if calibration_dir:
    calibration_images, check_images = sample_images(
        calibration_dir, size, calibration=calibration_count, check=check_count)
  if check_dir:
    _, check_images = sample_images(check_dir, size, calibration=0, check=check_count)
  if not sample_dir:
    check_images = synthetic_images(check_count, size)
  check_source = f"images from {os.path.abspath(check_dir or calibration_dir)}" if sample_dir \
      else "synthetic images"

  start = time.perf_counter()
  if fmt == "tflite":
    write_tflite(bundle, out, quantization=quantization, batch=batch, input_dtype=input_dtype,
                 calibration_images=calibration_images)
  elif fmt == "saved_model":
    write_saved_model(bundle, out, batch=batch, input_dtype=input_dtype)
  else:
    write_onnx(bundle, out, batch=batch, input_dtype=input_dtype)
  log(f"wrote {out} ({_size(out) / 1e6:.2f} MB) in {time.perf_counter() - start:.1f}s")

  input_quantization = None
  if fmt == "tflite" and quantization == "int8" and input_dtype == "uint8":
    input_quantization = _tflite_input_quantization(out)
    if input_quantization != dict(scale=1.0, zero_point=0):
      raise ParityError(f"{out}: uint8 input quantised as {input_quantization}, expected "
                        "scale 1 / zero point 0 (raw pixels)")

  run = load_runtime(fmt, out)
  parity = check_parity(run(check_images), reference_probs(bundle, check_images), quantization,
                        where=str(out))
  parity["source"] = check_source
  if calibration_images is not None and quantization == "int8":
    parity["calibration_images"] = int(len(calibration_images))
  log(f"parity on {parity['images']} {check_source}: max |Δprob| "
      f"{parity['max_abs_prob_diff']:.2e}, label agreement {parity['label_agreement']:.2%} "
      f"(tolerance {parity['tolerance']})")
  result = contract(bundle, fmt=fmt, quantization=quantization, batch=batch,
                    input_dtype=input_dtype, parity=parity, input_quantization=input_quantization)
  result["model_file"] = out.name
  with open(contract_path(out), "w") as f:
    json.dump(result, f, indent=2)
  log(f"wrote {contract_path(out)}")
  return result


def _tflite_input_quantization(path) -> dict[str, Any]:
  from ai_edge_litert.interpreter import Interpreter
  scale, zero_point = Interpreter(model_path=str(path)).get_input_details()[0]["quantization"]
  return dict(scale=float(scale), zero_point=int(zero_point))


def _size(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return path.stat().st_size


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gender_jax.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--bundle", required=True, help="inference bundle directory")
  parser.add_argument("--format", required=True, choices=FORMATS)
  parser.add_argument("--out", required=True,
                      help="model file (.tflite / .onnx) or SavedModel directory")
  parser.add_argument("--quantize", default="float32", choices=QUANTIZATIONS,
                      help="TFLite only: float16 weights, dynamic-range (int8 weights) or "
                           "full int8 (needs --calibration_dir)")
  parser.add_argument("--batch", type=int, default=None,
                      help="fixed batch size; 0 = dynamic. Default: 1 for TFLite (fuses "
                           "BatchNorm into convs), dynamic otherwise")
  parser.add_argument("--input_dtype", default="uint8", choices=INPUT_DTYPES)
  parser.add_argument("--calibration_dir",
                      help="folder of images (searched recursively) for int8 calibration; "
                           "the parity check uses other images from it")
  parser.add_argument("--calibration_images", type=int, default=200)
  parser.add_argument("--check_dir", help="folder of images for the parity check "
                                          "(default: --calibration_dir, else synthetic)")
  parser.add_argument("--check_images", type=int, default=64)
  args = parser.parse_args(argv)
  from gender_jax.data.preprocess import ImageError
  batch = args.batch if args.batch is not None else (1 if args.format == "tflite" else 0)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    export(args.bundle, args.format, args.out, quantization=args.quantize,
           batch=batch or None, input_dtype=args.input_dtype,
           calibration_dir=args.calibration_dir, calibration_count=args.calibration_images,
           check_dir=args.check_dir, check_count=args.check_images)
  except (ExportError, ParityError, ImageError, FileNotFoundError) as e:
    print(f"export failed: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
