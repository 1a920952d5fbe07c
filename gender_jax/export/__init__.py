"""Export an inference bundle to TFLite, SavedModel or ONNX, each checked against JAX.

    python -m gender_jax.export --bundle WORKDIR/bundle --format tflite --out model.tflite \
        [--quantize float32|float16|dynamic_range|int8 --calibration-dir DIR] [--batch 1|0]

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

import json
import os
import pathlib
import time
from typing import Any

# The public API, in one namespace (tests and benchmarks/export.py use it).
from gender_jax.export.writers import (ONNX_OPSET, _edge_padded_max_pool, probs_function,
                                       tflite_bytes, write_onnx, write_saved_model, write_tflite)
from gender_jax.export.images import (IMAGE_SUFFIXES, ExportError, list_images, load_images,
                                      sample_images, synthetic_images)
from gender_jax.export.parity import (FORMATS, _batched, TOLERANCES, ParityError, check_parity,
                                      load_runtime, reference_probs)
from gender_jax.inference.bundle import Bundle

__all__ = [
    "FORMATS", "QUANTIZATIONS", "INPUT_DTYPES", "TOLERANCES", "IMAGE_SUFFIXES", "ONNX_OPSET",
    "ExportError", "ParityError", "export", "contract", "contract_path", "out_problem",
    "probs_function", "tflite_bytes", "write_tflite", "write_saved_model", "write_onnx",
    "list_images", "load_images", "sample_images", "synthetic_images",
    "load_runtime", "reference_probs", "check_parity", "_edge_padded_max_pool", "_batched"]

QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")
INPUT_DTYPES = ("uint8", "float32")


# What --out must look like for each format: a model file's extension, or a folder.
SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx", "saved_model": ""}


def contract_path(out) -> pathlib.Path:
  """model.tflite → model.tflite.json (the whole name: model.tflite and model.onnx in one
  folder keep a contract each); a SavedModel directory → DIR/contract.json."""
  out = pathlib.Path(out)
  return out / "contract.json" if out.is_dir() else out.with_name(out.name + ".json")


def out_problem(fmt: str, out) -> str | None:
  """Why `out` cannot hold a `fmt` export (extension against format, file against folder)."""
  path = pathlib.Path(out)
  suffix = SUFFIXES.get(fmt)
  if suffix is None:
    return None
  if not suffix:  # a SavedModel is a folder
    if path.is_file():
      return f"--out {out}: is a file, and a SavedModel is a folder; give a folder name"
    if path.suffix.lower() in (".tflite", ".onnx"):
      return (f"--out {out}: a {path.suffix} name for a SavedModel folder; give a folder name "
              f"or --format {path.suffix[1:].lower()}")
    return None
  if path.is_dir():
    return f"--out {out}: is a folder; give a model file name, e.g. {path / ('model' + suffix)}"
  if path.suffix.lower() != suffix:
    other = next((f for f, s in SUFFIXES.items() if s and s == path.suffix.lower()), None)
    hint = f" or --format {other}" if other else ""
    return f"--out {out}: a {fmt} model is written to a {suffix} file; name it *{suffix}{hint}"
  return None


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
    raise ExportError("--quantize int8 needs --calibration-dir: a folder of representative "
                     "images (e.g. with male/ and female/ inside)")
  if problem := out_problem(fmt, out):
    raise ExportError(problem)
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
