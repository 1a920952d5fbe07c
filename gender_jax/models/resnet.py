"""ResNet-18/34/50/101/152 in Flax NNX, named after torchvision's modules.

Submodule names follow torchvision (`conv1`, `bn1`, `layer1[0].conv2`, `downsample_conv`, …)
so a weight port is a key rename plus layout transforms. `variant="keras"` switches the few
places where Keras applications differ (stride on the first 1x1 conv of a bottleneck, conv
biases, BN epsilon) so the same module also holds Keras ResNet50 weights exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

# torchvision pads explicitly (3 for the 7x7 stem, 1 for 3x3); 'SAME' would pad asymmetrically
# on even sizes and shift every activation by a pixel relative to the ported weights.
_PAD = {1: 0, 3: 1, 7: 3}


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  block: str  # "basic" | "bottleneck"
  stage_sizes: Sequence[int]
  width: int = 64


SPECS = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetSpec("bottleneck", (3, 8, 36, 3)),
    # For tests and the CPU demo: every code path of resnet18, a thousandth of the FLOPs.
    "resnet_tiny": ResNetSpec("basic", (1, 1, 1, 1), width=8),
}


class _Layers:
  """Builds conv/BN layers with one dtype policy and one variant's conventions."""

  def __init__(self, dtype, variant: str, rngs: nnx.Rngs):
    self.dtype, self.variant, self.rngs = dtype, variant, rngs

  def conv(self, cin, cout, k, stride=1):
    p = _PAD[k]
    return nnx.Conv(
        cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)),
        use_bias=self.variant == "keras", dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=self.rngs)

  def bn(self, c, zero_init=False):
    return nnx.BatchNorm(
        c, momentum=0.9, epsilon=1.001e-5 if self.variant == "keras" else 1e-5,
        dtype=self.dtype, param_dtype=jnp.float32,
        scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones,
        rngs=self.rngs)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, width, stride, layers: _Layers):
    self.conv1 = layers.conv(cin, width, 3, stride)
    self.bn1 = layers.bn(width)
    self.conv2 = layers.conv(width, width, 3)
    # Zero-init of the last BN in each residual branch: each block starts as identity.
    self.bn2 = layers.bn(width, zero_init=True)
    shortcut = stride != 1 or cin != width
    self.downsample_conv = nnx.data(layers.conv(cin, width, 1, stride) if shortcut else None)
    self.downsample_bn = nnx.data(layers.bn(width) if shortcut else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x))
    return nnx.relu(x + y)


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, width, stride, layers: _Layers):
    cout = width * self.expansion
    # torchvision (ResNet v1.5) strides the 3x3 conv; Keras (v1) strides the first 1x1.
    s1, s3 = (stride, 1) if layers.variant == "keras" else (1, stride)
    self.conv1 = layers.conv(cin, width, 1, s1)
    self.bn1 = layers.bn(width)
    self.conv2 = layers.conv(width, width, 3, s3)
    self.bn2 = layers.bn(width)
    self.conv3 = layers.conv(width, cout, 1)
    self.bn3 = layers.bn(cout, zero_init=True)
    shortcut = stride != 1 or cin != cout
    self.downsample_conv = nnx.data(layers.conv(cin, cout, 1, stride) if shortcut else None)
    self.downsample_bn = nnx.data(layers.bn(cout) if shortcut else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample_conv is not None:
      x = self.downsample_bn(self.downsample_conv(x))
    return nnx.relu(x + y)


class ResNet(nnx.Module):
  """ImageNet ResNet with a `num_classes` head; input NHWC, already normalised."""

  def __init__(self, spec: ResNetSpec, *, num_classes: int = 2, dtype=jnp.float32,
               variant: str = "torchvision", rngs: nnx.Rngs):
    layers = _Layers(dtype, variant, rngs)
    block_cls = BasicBlock if spec.block == "basic" else Bottleneck
    self.dtype = dtype
    self.conv1 = layers.conv(3, spec.width, 7, 2)
    self.bn1 = layers.bn(spec.width)
    cin = spec.width
    for i, n in enumerate(spec.stage_sizes):
      width = spec.width * 2**i
      blocks = []
      for j in range(n):
        blocks.append(block_cls(cin, width, 2 if (i > 0 and j == 0) else 1, layers))
        cin = width * block_cls.expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))
    self.num_stages = len(spec.stage_sizes)
    self.fc = nnx.Linear(cin, num_classes, dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=nnx.initializers.zeros, rngs=rngs)
    self.num_features = cin

  @property
  def stages(self) -> tuple[str, ...]:
    """Trainable groups from input to output, for fine-tune modes ("last N stages")."""
    return ("stem", *(f"layer{i + 1}" for i in range(self.num_stages)), "fc")

  @staticmethod
  def stage_of(path: tuple) -> str:
    return "stem" if path[0] in ("conv1", "bn1") else str(path[0])

  def features(self, x):
    """Returns the per-stage activations, for port parity checks."""
    x = x.astype(self.dtype)
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out = {"stem": x}
    for i in range(self.num_stages):
      for block in getattr(self, f"layer{i + 1}"):
        x = block(x)
      out[f"layer{i + 1}"] = x
    return out

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    del rngs  # no dropout in ResNet
    x = self.features(x)[f"layer{self.num_stages}"]
    x = jnp.mean(x, axis=(1, 2))
    return self.fc(x).astype(jnp.float32)


def create(name: str, width: int | None = None, **kwargs) -> ResNet:
  spec = SPECS[name]
  return ResNet(dataclasses.replace(spec, width=width) if width else spec, **kwargs)
