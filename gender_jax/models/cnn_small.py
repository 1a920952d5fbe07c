"""The small from-scratch CNN of the seed project, in Flax NNX.

Four conv + max-pool blocks (two 3x3 convs each, BatchNorm, ReLU; channels `width` × 1, 2, 4,
8), global average pooling, one hidden dense layer with dropout, then the `fc` head. The seed
trained it on 128×128 crops with Adam at 2e-4 (configs/cnn_small.py); global pooling instead
of the seed's flatten keeps the parameter count independent of the image size, so the same
model runs at 64 px on a CPU budget or 128 px as published.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gender_jax.models.layers import PooledBlocks

NUM_BLOCKS = 4
CONVS_PER_BLOCK = 2
WIDTH = 32       # channels of the first block
HIDDEN = 256     # the dense layer before the head


class CnnSmall(PooledBlocks):
  """Input NHWC, already normalised; blocks `block1`…`block4`, `fc1`, head `fc`."""

  head_stages = ("fc1", "fc")

  def __init__(self, *, num_classes: int = 2, width: int = WIDTH, hidden: int = HIDDEN,
               dropout: float = 0.5, dtype=jnp.float32, rngs: nnx.Rngs):
    # BatchNorm (which the seed lacked) lets it train at the framework's usual rates.
    cin = self.build_blocks([(width * 2**i,) * CONVS_PER_BLOCK for i in range(NUM_BLOCKS)],
                            batch_norm=True, dtype=dtype, rngs=rngs)
    dense = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = nnx.Linear(cin, hidden, **dense)
    self.fc = nnx.Linear(hidden, num_classes, kernel_init=nnx.initializers.zeros, **dense)
    self.dropout = nnx.Dropout(dropout)
    self.num_features = hidden

  def __call__(self, x, *, rngs: nnx.Rngs | None = None):
    x = self.features(x)[f"block{NUM_BLOCKS}"]
    x = jnp.mean(x, axis=(1, 2))
    # Dropout draws from `rngs` only in train mode; eval mode (deterministic) needs none.
    x = self.dropout(nnx.relu(self.fc1(x)), rngs=rngs)
    return self.fc(x).astype(jnp.float32)


def create(width: int | None = None, **kwargs) -> CnnSmall:
  return CnnSmall(width=width or WIDTH, **kwargs)
