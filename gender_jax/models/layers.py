"""Conv + max-pool stacks (VGG, the small CNN): blocks of 3x3 ConvBN, each closed by a 2x2 pool.

A model built from `PooledBlocks` has `block1`…`blockN` (lists of ConvBN, so checkpoint keys
read `block1/0/conv/kernel`) followed by its own head layers; `stages` lists both, in order.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class ConvBN(nnx.Module):
  """3x3 conv (same padding) → optional BatchNorm → ReLU."""

  def __init__(self, cin, cout, batch_norm: bool, dtype, rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                         param_dtype=jnp.float32,
                         kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                         rngs=rngs)
    self.bn = nnx.data(nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, dtype=dtype,
                                     param_dtype=jnp.float32, rngs=rngs) if batch_norm else None)

  def __call__(self, x):
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return nnx.relu(x)


class PooledBlocks(nnx.Module):
  """The conv part and the stage bookkeeping; subclasses add the head after `build_blocks`."""

  head_stages: tuple[str, ...] = ()  # the layers after the blocks, input to output

  def build_blocks(self, widths_per_block, *, batch_norm: bool, dtype, rngs) -> int:
    """Creates `block{i}` from channel widths, one tuple per block; returns the last width."""
    self.dtype = dtype
    self.num_blocks = len(widths_per_block)
    cin = 3
    for i, widths in enumerate(widths_per_block):
      convs = []
      for cout in widths:
        convs.append(ConvBN(cin, cout, batch_norm, dtype, rngs))
        cin = cout
      setattr(self, f"block{i + 1}", nnx.List(convs))
    return cin

  @property
  def stages(self) -> tuple[str, ...]:
    return (*(f"block{i + 1}" for i in range(self.num_blocks)), *self.head_stages)

  @staticmethod
  def stage_of(path: tuple) -> str:
    return str(path[0])

  def features(self, x):
    """Returns the per-block activations (after each pool), for port parity checks."""
    x = x.astype(self.dtype)
    out = {}
    for i in range(self.num_blocks):
      for layer in getattr(self, f"block{i + 1}"):
        x = layer(x)
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      out[f"block{i + 1}"] = x
    return out
