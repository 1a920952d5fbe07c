"""MobileNet V2 and V3 (small, large) in Flax NNX: the phone-sized models.

`layers[i]` is torchvision's `features[i]`, index for index (stem conv, one inverted-residual
block per entry, the last 1x1 conv), so ports only rename inside a block. (`features(x)` is
the per-stage activations every model here provides, as for ResNet.)
A block names its layers by role (`expand`, `depthwise`, `se`, `project`), as Keras does;
the torchvision key map turns roles into Sequential positions.

`variant="keras"` changes the padding: Keras pads a strided conv TF-style (`SAME`: the
extra pixel at the bottom/right), torchvision symmetrically; with the other it would shift
every activation by a pixel. It also follows Keras's `alpha` where that differs from
torchvision's `width_mult` (both are `width` here; at 1.0 they agree): Keras's V3 keeps its
stem at 16 channels, sizes each expansion as a ratio of the block's scaled input, and widens
the pre-logits layer only for alpha > 1; its V2 truncates `channels * alpha` before rounding.

Stages for fine-tuning group blocks by output stride, like ResNet's: `stem` (stride 2),
`layer1`…`layer4` (4…32), then the head (`fc1`, `fc`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {"relu": nnx.relu, "relu6": jax.nn.relu6, "hswish": jax.nn.hard_swish,
               None: lambda x: x}


class Block(NamedTuple):
  kernel: int
  expanded: int  # channels after the 1x1 expansion (before width scaling)
  out: int
  se: bool
  act: str
  stride: int
  ratio: int = 0  # V2: expansion = ratio x the (width-scaled) input channels


def _v2_blocks() -> tuple[Block, ...]:
  rows = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))  # torchvision's (t, c, n, s)
  blocks, cin = [], 32
  for t, c, n, s in rows:
    for i in range(n):
      blocks.append(Block(3, cin * t, c, False, "relu6", s if i == 0 else 1, ratio=t))
      cin = c
  return tuple(blocks)


def _v3(rows) -> tuple[Block, ...]:
  return tuple(Block(k, e, c, se, "relu" if a == "RE" else "hswish", s)
               for k, e, c, se, a, s in rows)


# (blocks, stem channels, last conv channels, fc1 width or None): torchvision's tables.
SPECS = {
    "mobilenet_v2": (_v2_blocks(), 32, 1280, None),
    "mobilenet_v3_large": (_v3((
        (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1))), 16, 960, 1280),
    "mobilenet_v3_small": (_v3((
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1))), 16, 576, 1024),
}


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's and Keras's channel rounding: nearest multiple of 8, never 10% below."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class _Layers:
  """conv/BN factory with one dtype policy and one variant's padding and BN epsilon."""

  def __init__(self, dtype, variant: str, eps: float, momentum: float, rngs: nnx.Rngs):
    self.dtype, self.variant, self.eps, self.momentum, self.rngs = (
        dtype, variant, eps, momentum, rngs)

  def conv(self, cin, cout, k, stride=1, groups=1, bias=False):
    p = (k - 1) // 2
    padding = "SAME" if self.variant == "keras" else ((p, p), (p, p))
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=padding,
                    feature_group_count=groups, use_bias=bias, dtype=self.dtype,
                    param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                    rngs=self.rngs)

  def bn(self, c):
    return nnx.BatchNorm(c, momentum=self.momentum, epsilon=self.eps, dtype=self.dtype,
                         param_dtype=jnp.float32, rngs=self.rngs)


class ConvBN(nnx.Module):
  """Conv → BN → activation (torchvision's Conv2dNormActivation)."""

  def __init__(self, cin, cout, k, layers: _Layers, stride=1, groups=1, act=None):
    self.conv = layers.conv(cin, cout, k, stride, groups)
    self.bn = layers.bn(cout)
    self.act = act

  def __call__(self, x):
    return ACTIVATIONS[self.act](self.bn(self.conv(x)))


class SqueezeExcite(nnx.Module):
  def __init__(self, c, squeeze, layers: _Layers):
    self.fc1 = layers.conv(c, squeeze, 1, bias=True)
    self.fc2 = layers.conv(squeeze, c, 1, bias=True)

  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.nn.hard_sigmoid(self.fc2(nnx.relu(self.fc1(s))))


class InvertedResidual(nnx.Module):
  def __init__(self, cin, exp, cout, block: Block, layers: _Layers):
    # No expansion when it would not widen (V2's first block, V3's 16→16 blocks).
    self.expand = nnx.data(ConvBN(cin, exp, 1, layers, act=block.act) if exp != cin else None)
    self.depthwise = ConvBN(exp, exp, block.kernel, layers, block.stride, groups=exp,
                            act=block.act)
    self.se = nnx.data(SqueezeExcite(exp, make_divisible(exp // 4), layers)
                       if block.se else None)
    self.project = ConvBN(exp, cout, 1, layers)  # linear bottleneck: no activation
    self.residual = block.stride == 1 and cin == cout

  def __call__(self, x):
    y = self.expand(x) if self.expand is not None else x
    y = self.depthwise(y)
    if self.se is not None:
      y = self.se(y)
    y = self.project(y)
    return x + y if self.residual else y


class MobileNet(nnx.Module):
  """MobileNet V2/V3 with a `num_classes` head; input NHWC, already normalised."""

  def __init__(self, name: str, *, num_classes: int = 2, width: float = 1.0,
               dropout: float = 0.2, dtype=jnp.float32, variant: str = "torchvision",
               rngs: nnx.Rngs):
    blocks, stem, last, fc1 = SPECS[name]
    v2 = name == "mobilenet_v2"
    # torchvision: V2 uses BN defaults (eps 1e-5, momentum 0.1), V3 eps 1e-3 / momentum 0.01;
    # Keras uses eps 1e-3 for both. Flax's momentum is 1 - torch's.
    eps = 1e-5 if v2 and variant == "torchvision" else 1e-3
    layers = _Layers(dtype, variant, eps, 0.9 if v2 else 0.99, rngs)
    keras = variant == "keras"
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    # Keras's V2 rounds int(filters * alpha) (mobilenet_v2._inverted_res_block).
    ch_out = (lambda c: make_divisible(int(c * width))) if keras and v2 else ch  # noqa: E731
    self.dtype, self.version = dtype, 2 if v2 else 3
    stem_act = "relu6" if v2 else "hswish"
    cin = stem if keras and not v2 else ch(stem)
    features, strides = [ConvBN(3, cin, 3, layers, 2, act=stem_act)], [2]
    table_in = stem  # the previous layer's unscaled width: Keras V3's ratios divide by it
    for b in blocks:
      # V2 sizes the expansion from the (scaled) input, V3 scales its own table entry; Keras's
      # V3 instead applies the table's ratio to the scaled input.
      if b.ratio:
        exp = cin * b.ratio
      elif keras:
        exp = make_divisible(cin * (b.expanded / table_in))
      else:
        exp = ch(b.expanded)
      cout = ch_out(b.out)
      features.append(InvertedResidual(cin, exp, cout, b, layers))
      strides.append(b.stride)
      cin, table_in = cout, b.out
    # V2 never narrows its last conv below 1280 (torchvision: last_channel * max(1, width)).
    last = make_divisible(last * max(1.0, width)) if v2 else 6 * cin
    features.append(ConvBN(cin, last, 1, layers, act=stem_act))
    strides.append(1)
    self.layers = nnx.List(features)
    # Stage of each feature: how many stride-2 layers it is past, so stem = output stride 2.
    count, stage_of_feature = 0, []
    for s in strides:
      count += s == 2
      stage_of_feature.append("stem" if count == 1 else f"layer{count - 1}")
    self.stage_of_feature = tuple(stage_of_feature)
    dense = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = nnx.data(None)
    width_in = last
    if fc1:  # V3's pre-logits layer (Keras: the 1x1 conv_2 after pooling)
      width_in = make_divisible(fc1 * width) if width > 1 or not keras else fc1
      self.fc1 = nnx.Linear(last, width_in, kernel_init=nnx.initializers.normal(0.01), **dense)
    self.dropout = nnx.Dropout(dropout)
    self.fc = nnx.Linear(width_in, num_classes, kernel_init=nnx.initializers.zeros, **dense)
    self.num_features = width_in

  @property
  def stages(self) -> tuple[str, ...]:
    """Trainable groups from input to output, for fine-tune modes ("last N stages")."""
    groups = tuple(dict.fromkeys(self.stage_of_feature))
    return (*groups, *(("fc1",) if self.fc1 is not None else ()), "fc")

  def stage_of(self, path: tuple) -> str:
    return self.stage_of_feature[int(path[1])] if path[0] == "layers" else str(path[0])

  def features(self, x):
    """Returns the per-stage activations, for port parity checks and predict's features."""
    x = x.astype(self.dtype)
    out = {}
    for layer, stage in zip(self.layers, self.stage_of_feature):
      x = out[stage] = layer(x)
    return out

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = jnp.mean(self.features(x)["layer4"], axis=(1, 2))
    if self.fc1 is not None:
      x = jax.nn.hard_swish(self.fc1(x))
    # Dropout draws from `rngs` only in train mode; eval mode (deterministic) needs none.
    return self.fc(self.dropout(x, rngs=rngs)).astype(jnp.float32)


def create(name: str, **kwargs) -> MobileNet:
  return MobileNet(name, **kwargs)
