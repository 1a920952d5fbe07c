"""Writers of the exported formats: JAX → jax2tf → TFLite / SavedModel, and TFLite → tf2onnx → ONNX."""
from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Callable

import numpy as np

from gender_jax.export.images import ExportError

ONNX_OPSET = 17


def _tf():
  """TensorFlow, kept off any GPU: it only converts and checks here, JAX owns the devices."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices in this process; leave them
    pass
  return tf


def probs_function(bundle, *, pool_edge_padding: bool = False) -> Callable:
  """images (N,H,W,3 raw pixels, any real dtype) → calibrated probabilities, weights inlined."""
  import jax
  logits, state = bundle.logits_fn()
  # Host copies: jax2tf then embeds the weights as constants of the exported graph.
  state = jax.tree.map(np.asarray, state)

  def probs(images):
    return bundle.probs_from_logits(logits(state, images))
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


def tflite_bytes(bundle, *, quantization: str = "float32", batch: int | None = 1,
                 input_dtype: str = "uint8", calibration_images: np.ndarray | None = None) -> bytes:
  tf = _tf()
  size = bundle.image_size
  int8 = quantization == "int8"
  if int8 and calibration_images is None:
    raise ExportError("int8 quantisation needs calibration images (--calibration-dir)")
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
