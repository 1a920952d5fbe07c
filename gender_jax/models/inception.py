"""Inception-v3 in Flax NNX, named after torchvision's modules (`Mixed_5b.branch1x1.conv`, …).

299 px by default (any size ≥ 75 runs). The auxiliary head is not built: it only adds a
training loss, and fine-tuning does without it. `transform_input=True` re-normalises
torchvision-normalised input to the x/127.5 - 1 range the Google weights expect, as
torchvision does when it loads them. Stages: `stem`, `mixed_5`, `mixed_6`, `mixed_7`, `fc`.

`variant="keras"` is `keras.applications.InceptionV3`: the same layers and padding, but its
3x3 average pools ('same') divide by the pixels inside the image, where torchvision's
`avg_pool2d(3, 1, 1)` divides by 9 everywhere; the two differ on every border pixel. (Keras's
BatchNorm has no gamma: a port sets ours to 1.)
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BasicConv2d(nnx.Module):
  def __init__(self, cin, cout, k, *, dtype, rngs, stride=1, padding=0):
    k = (k, k) if isinstance(k, int) else k
    p = (padding, padding) if isinstance(padding, int) else padding
    self.conv = nnx.Conv(cin, cout, k, strides=stride, padding=((p[0], p[0]), (p[1], p[1])),
                         use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=nnx.initializers.truncated_normal(0.1), rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-3, dtype=dtype,
                            param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


def _avg3(x, exclude_pad: bool = False):
  """torch's avg_pool2d(3, 1, 1), which counts the zero padding: so pad explicitly, then pool
  unpadded (a padded reduce_window_sum has no TFLite op; this form converts). With
  `exclude_pad` (Keras), a constant per-pixel factor rescales to the mean of real pixels."""
  _, h, w, _ = x.shape
  y = nnx.avg_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), strides=(1, 1))
  return y * _inside_fraction(h, w).astype(y.dtype) if exclude_pad else y


@functools.lru_cache(maxsize=None)
def _inside_fraction(h: int, w: int) -> np.ndarray:
  """9 / (pixels of each 3x3 window inside an h x w image), shaped (1, h, w, 1)."""
  def inside(n):
    return np.array([min(i + 1, n - 1) - max(i - 1, 0) + 1 for i in range(n)], np.float32)
  return (9.0 / np.outer(inside(h), inside(w)))[None, :, :, None]


def _max3s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2))


# Each block's ORDER: its convs in creation order (see conv_order).
class InceptionA(nnx.Module):
  ORDER = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
           "branch3x3dbl_3", "branch_pool")

  def __init__(self, cin, pool_features, c, exclude_pad=False):
    self.exclude_pad = exclude_pad
    self.branch1x1 = c(cin, 64, 1)
    self.branch5x5_1, self.branch5x5_2 = c(cin, 48, 1), c(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = c(cin, 64, 1)
    self.branch3x3dbl_2, self.branch3x3dbl_3 = c(64, 96, 3, padding=1), c(96, 96, 3, padding=1)
    self.branch_pool = c(cin, pool_features, 1)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg3(x, self.exclude_pad))], axis=-1)


class InceptionB(nnx.Module):
  ORDER = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")

  def __init__(self, cin, c):
    self.branch3x3 = c(cin, 384, 3, stride=2)
    self.branch3x3dbl_1, self.branch3x3dbl_2 = c(cin, 64, 1), c(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = c(96, 96, 3, stride=2)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        _max3s2(x)], axis=-1)


class InceptionC(nnx.Module):
  ORDER = ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3",
           *(f"branch7x7dbl_{i}" for i in range(1, 6)), "branch_pool")

  def __init__(self, cin, c7, c, exclude_pad=False):
    self.exclude_pad = exclude_pad
    row, col = dict(padding=(0, 3)), dict(padding=(3, 0))
    self.branch1x1 = c(cin, 192, 1)
    self.branch7x7_1, self.branch7x7_2 = c(cin, c7, 1), c(c7, c7, (1, 7), **row)
    self.branch7x7_3 = c(c7, 192, (7, 1), **col)
    self.branch7x7dbl_1, self.branch7x7dbl_2 = c(cin, c7, 1), c(c7, c7, (7, 1), **col)
    self.branch7x7dbl_3, self.branch7x7dbl_4 = c(c7, c7, (1, 7), **row), c(c7, c7, (7, 1), **col)
    self.branch7x7dbl_5 = c(c7, 192, (1, 7), **row)
    self.branch_pool = c(cin, 192, 1)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for i in range(1, 6):
      d = getattr(self, f"branch7x7dbl_{i}")(d)
    pool = self.branch_pool(_avg3(x, self.exclude_pad))
    return jnp.concatenate([self.branch1x1(x), b7, d, pool], axis=-1)


class InceptionD(nnx.Module):
  ORDER = ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5)))

  def __init__(self, cin, c):
    self.branch3x3_1, self.branch3x3_2 = c(cin, 192, 1), c(192, 320, 3, stride=2)
    self.branch7x7x3_1 = c(cin, 192, 1)
    self.branch7x7x3_2 = c(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = c(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = c(192, 192, 3, stride=2)

  def __call__(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max3s2(x)], axis=-1)


class InceptionE(nnx.Module):
  ORDER = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
           "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")

  def __init__(self, cin, c, exclude_pad=False):
    self.exclude_pad = exclude_pad
    row, col = dict(padding=(0, 1)), dict(padding=(1, 0))
    self.branch1x1 = c(cin, 320, 1)
    self.branch3x3_1 = c(cin, 384, 1)
    self.branch3x3_2a, self.branch3x3_2b = c(384, 384, (1, 3), **row), c(384, 384, (3, 1), **col)
    self.branch3x3dbl_1, self.branch3x3dbl_2 = c(cin, 448, 1), c(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = c(384, 384, (1, 3), **row)
    self.branch3x3dbl_3b = c(384, 384, (3, 1), **col)
    self.branch_pool = c(cin, 192, 1)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    return jnp.concatenate([
        self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
        self.branch_pool(_avg3(x, self.exclude_pad))], axis=-1)


VARIANTS = ("torchvision", "keras")
STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
MIXED = {"mixed_5": ("Mixed_5b", "Mixed_5c", "Mixed_5d"),
         "mixed_6": ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
         "mixed_7": ("Mixed_7a", "Mixed_7b", "Mixed_7c")}


class InceptionV3(nnx.Module):
  """Inception-v3 with a `num_classes` head; input NHWC, already normalised."""

  def __init__(self, *, num_classes: int = 2, dtype=jnp.float32, dropout: float = 0.5,
               transform_input: bool = False, variant: str = "torchvision", rngs: nnx.Rngs):
    if variant not in VARIANTS:
      raise ValueError(f"unknown Inception-v3 variant {variant!r}; choose from {VARIANTS}")
    def c(cin, cout, k, **kw):
      return BasicConv2d(cin, cout, k, dtype=dtype, rngs=rngs, **kw)
    ex = variant == "keras"
    self.dtype, self.transform_input, self.variant = dtype, transform_input, variant
    self.Conv2d_1a_3x3 = c(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = c(32, 32, 3)
    self.Conv2d_2b_3x3 = c(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = c(64, 80, 1)
    self.Conv2d_4a_3x3 = c(80, 192, 3)
    self.Mixed_5b, self.Mixed_5c = InceptionA(192, 32, c, ex), InceptionA(256, 64, c, ex)
    self.Mixed_5d = InceptionA(288, 64, c, ex)
    self.Mixed_6a = InceptionB(288, c)
    self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128, c, ex), InceptionC(768, 160, c, ex)
    self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160, c, ex), InceptionC(768, 192, c, ex)
    self.Mixed_7a = InceptionD(768, c)
    self.Mixed_7b, self.Mixed_7c = InceptionE(1280, c, ex), InceptionE(2048, c, ex)
    self.dropout = nnx.Dropout(dropout)
    self.fc = nnx.Linear(2048, num_classes, dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.num_features = 2048

  @property
  def stages(self) -> tuple[str, ...]:
    return ("stem", *MIXED, "fc")

  @staticmethod
  def stage_of(path: tuple) -> str:
    name = str(path[0])
    return "stem" if name in STEM else (f"mixed_{name[6]}" if name.startswith("Mixed") else name)

  def features(self, x):
    """Returns the per-stage activations, for port parity checks."""
    if self.transform_input:  # torchvision: ImageNet-normalised → x/127.5 - 1
      x = x * (jnp.array(_STD) / 0.5) + (jnp.array(_MEAN) - 0.5) / 0.5
    x = x.astype(self.dtype)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max3s2(x)))
    out = {"stem": (x := _max3s2(x))}
    for stage, names in MIXED.items():
      for name in names:
        x = getattr(self, name)(x)
      out[stage] = x
    return out

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = jnp.mean(self.features(x)["mixed_7"], axis=(1, 2))
    return self.fc(self.dropout(x, rngs=rngs)).astype(jnp.float32)


@functools.lru_cache(maxsize=1)
def conv_order() -> tuple[str, ...]:
  """Every BasicConv2d's path ("Mixed_5b/branch1x1") in creation order.

  That is torchvision's module order and the order in which Keras builds, and so numbers
  (conv2d_N, batch_normalization_N), its unnamed layers: what the Keras port matches by.
  """
  model = nnx.eval_shape(lambda: InceptionV3(num_classes=1, rngs=nnx.Rngs(0)))
  out = list(STEM)
  for name in (n for names in MIXED.values() for n in names):
    block = getattr(model, name)
    convs = sorted(k for k, v in vars(block).items() if isinstance(v, BasicConv2d))
    assert sorted(block.ORDER) == convs, (name, block.ORDER, convs)  # ORDER lists them all
    out += [f"{name}/{branch}" for branch in block.ORDER]
  return tuple(out)
