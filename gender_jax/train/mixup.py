"""Mixup (Zhang et al., 2018) inside the jitted train step.

Each example is blended with the one before it in the global batch (the batch is already
shuffled, so that is a random partner; big_vision's `jnp.roll(x, 1)` pairing), with one
λ ~ Beta(α, α) per step, and the soft targets are blended the same way:

  inputs  ← λ·x + (1 − λ)·roll(x, 1)      targets ← λ·y + (1 − λ)·roll(y, 1)

The key is fold_in(fold_in(key(seed), STREAM), step): a pure function of (seed, step), so a
resumed run mixes exactly as the uninterrupted one. `config.mixup_alpha` 0 turns it off.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Folded into the seed's key, apart from dropout's fold_in(key, step) and device_augment's.
STREAM = 0x6D78


def step_key(seed: int, step) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM), step)


def mix(inputs: jax.Array, targets: jax.Array, key: jax.Array,
        alpha: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mixed inputs, mixed targets, λ) for a batch of inputs (N, …) and targets (N, C)."""
  lam = jax.random.beta(key, alpha, alpha, dtype=jnp.float32)

  def blend(x):
    return (lam * x.astype(jnp.float32) +
            (1.0 - lam) * jnp.roll(x, 1, axis=0).astype(jnp.float32)).astype(x.dtype)
  return blend(inputs), blend(targets), lam
