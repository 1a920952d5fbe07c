"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1`) in NNX.

The network behind dlib's `face_recognition_model_v1` and the `face_recognition` package: a
ResNet-34-like stack with half the channels (32 → 256), trained by metric learning on about
three million faces to a 128-d descriptor. Weights come from the user's
`dlib_face_recognition_resnet_model_v1.dat` (CC0; `python -m gender_jax.convert --from dlib`);
here it is a backbone, `embed` its 128-d descriptor layer and `fc` our classifier on top.

It follows dlib's conventions exactly, because the port must reproduce the descriptor:
- Every "BatchNorm" is an `affine` layer (a per-channel scale and shift, no statistics).
- A stride-2 conv and every pool have no padding; a stride-1 3x3 conv pads by 1.
- A downsampling block's shortcut is a 2x2 average pool of its input, with no projection.
  dlib's `add_prev` then sums tensors of different shapes: the result takes the larger of each
  dimension, and each input is zero beyond its own extent. So the missing channels are zero,
  and so are the missing bottom/right pixels where the conv's output is a row smaller than the
  pool's (at 150 px: 8 → 3 against 4, and 4 → 1 against 2).
Input is RGB, (x - (122.782, 117.001, 104.298)) / 256: preset "dlib".
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

# (channels, blocks, whether the first block halves the resolution), input to output.
LEVELS = (("level4", 32, 3, False), ("level3", 64, 4, True), ("level2", 128, 3, True),
          ("level1", 256, 3, True), ("level0", 256, 1, True))
EMBED_DIM = 128
NATIVE_SIZE = 150  # dlib's input_rgb_image_sized<150>; fully convolutional from 103 px up


def _conv(cin, cout, k, stride, dtype, rngs):
  pad = 0 if stride != 1 else k // 2  # dlib's con_ default padding
  return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                  dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nnx.initializers.variance_scaling(2.0, "fan_in", "normal"),
                  rngs=rngs)


class Affine(nnx.Module):
  """dlib's affine_ layer (an inference-time BatchNorm): x * scale + bias per channel."""

  def __init__(self, channels, dtype, *, zero_init: bool = False):
    self.dtype = dtype
    self.scale = nnx.Param((jnp.zeros if zero_init else jnp.ones)((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x):
    return x * self.scale[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


def pad_add(a, b):
  """dlib's add_prev: a + b over the larger shape, each input zero beyond its extent."""
  shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape))
  grow = lambda t: jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])
  return grow(a) + grow(b)


class Block(nnx.Module):
  """conv → affine → relu → conv → affine, added to the input (pooled when downsampling)."""

  def __init__(self, cin, cout, down: bool, dtype, rngs):
    self.down = down
    self.conv1 = _conv(cin, cout, 3, 2 if down else 1, dtype, rngs)
    self.aff1 = Affine(cout, dtype)
    self.conv2 = _conv(cout, cout, 3, 1, dtype, rngs)
    self.aff2 = Affine(cout, dtype, zero_init=True)  # from scratch, a block starts as identity

  def __call__(self, x):
    y = self.aff2(self.conv2(nnx.relu(self.aff1(self.conv1(x)))))
    if self.down:
      x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    return nnx.relu(pad_add(y, x))


class DlibResNet(nnx.Module):
  """The descriptor network plus a `num_classes` head; input NHWC, normalised ("dlib")."""

  def __init__(self, *, num_classes: int = 2, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.conv1 = _conv(3, 32, 7, 2, dtype, rngs)
    self.aff1 = Affine(32, dtype)
    cin = 32
    for name, width, n, down in LEVELS:
      setattr(self, name, nnx.List([Block(cin if j == 0 else width, width, down and j == 0,
                                          dtype, rngs) for j in range(n)]))
      cin = width
    self.embed = nnx.Linear(cin, EMBED_DIM, use_bias=False, dtype=dtype,
                            param_dtype=jnp.float32, rngs=rngs)  # dlib's fc_no_bias<128>
    self.fc = nnx.Linear(EMBED_DIM, num_classes, dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.num_features = EMBED_DIM

  @property
  def stages(self) -> tuple[str, ...]:
    """Trainable groups from input to output, for fine-tune modes ("last N stages")."""
    return ("stem", *(name for name, *_ in LEVELS), "embed", "fc")

  @staticmethod
  def stage_of(path: tuple) -> str:
    return "stem" if path[0] in ("conv1", "aff1") else str(path[0])

  def features(self, x):
    """Per-stage activations and the 128-d descriptor ("embed"), for port parity checks."""
    x = nnx.relu(self.aff1(self.conv1(x.astype(self.dtype))))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2))
    out = {"stem": x}
    for name, *_ in LEVELS:
      for block in getattr(self, name):
        x = block(x)
      out[name] = x
    out["embed"] = self.embed(jnp.mean(x, axis=(1, 2)))
    return out

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    del rngs  # no dropout
    return self.fc(self.features(x)["embed"]).astype(jnp.float32)
