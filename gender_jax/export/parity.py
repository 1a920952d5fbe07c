"""The exported model in its own runtime, compared with the JAX model."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from gender_jax.data import preprocess
from gender_jax.export.writers import _tf
from gender_jax.export.images import ExportError

FORMATS = ("tflite", "saved_model", "onnx")


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


class ParityError(AssertionError):
  """An exported model disagrees with the JAX model past the stated tolerance."""


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
      outs.append(np.asarray(run_chunk(preprocess.pad_batch(chunk, fixed)))[:len(chunk)])
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
