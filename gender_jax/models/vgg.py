"""VGG-11/13/16/19 (with and without BatchNorm) in Flax NNX.

Convolutions are grouped per pooling block, named like Keras (`block1[0]` is `block1_conv1`);
the classifier is `fc1`, `fc2`, then the `fc` head. The flatten before `fc1` is in NHWC
order; a torchvision port permutes `classifier.0.weight` from its NCHW order.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import nnx

from gender_jax.models.layers import PooledBlocks

# Channels per conv, one tuple per pooling block (torchvision cfgs "A", "B", "D", "E").
CFGS = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
    "vgg_tiny": ((8,), (16,)),  # for tests: every code path, tiny widths
}
FC_WIDTH = {"vgg_tiny": 32}
POOL_SIZE = 7  # torchvision's AdaptiveAvgPool2d((7, 7)); Keras at 224 px is the same


def adaptive_avg_pool(x, size: int):
  """torchvision's AdaptiveAvgPool2d on NHWC with static shapes (bins may overlap)."""
  _, h, w, _ = x.shape
  if h == size and w == size:
    return x
  def bins(n):
    return [(int(np.floor(i * n / size)), int(np.ceil((i + 1) * n / size))) for i in range(size)]
  rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h)]
  x = jnp.stack(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w)]
  return jnp.stack(cols, axis=2)


class VGG(PooledBlocks):
  """Blocks `block1`…`blockN` (ConvBN lists, see layers.py), `fc1`, `fc2`, head `fc`."""

  head_stages = ("fc1", "fc2", "fc")

  def __init__(self, name: str, *, batch_norm: bool = False, num_classes: int = 2,
               dtype=jnp.float32, dropout: float = 0.5, rngs: nnx.Rngs):
    cin = self.build_blocks(CFGS[name], batch_norm=batch_norm, dtype=dtype, rngs=rngs)
    width = FC_WIDTH.get(name, 4096)
    dense = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = nnx.Linear(cin * POOL_SIZE * POOL_SIZE, width, **dense)
    self.fc2 = nnx.Linear(width, width, **dense)
    self.fc = nnx.Linear(width, num_classes, kernel_init=nnx.initializers.zeros, **dense)
    self.dropout = nnx.Dropout(dropout)
    self.num_features = width

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = self.features(x)[f"block{self.num_blocks}"]
    x = adaptive_avg_pool(x, POOL_SIZE).reshape(x.shape[0], -1)
    # Dropout draws from `rngs` only in train mode; eval mode (deterministic) needs none.
    x = self.dropout(nnx.relu(self.fc1(x)), rngs=rngs)
    x = self.dropout(nnx.relu(self.fc2(x)), rngs=rngs)
    return self.fc(x).astype(jnp.float32)


def create(name: str, **kwargs) -> VGG:
  batch_norm = name.endswith("_bn")
  return VGG(name.removesuffix("_bn"), batch_norm=batch_norm, **kwargs)
