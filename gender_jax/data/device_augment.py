"""Flip, colour jitter and grayscale on the device, inside the jitted train step.

The host pipeline then only decodes, crops (random resized crop, rotation) and resizes, and
sends uint8; these per-pixel operations cost more in host NumPy than the decode they follow,
and are a few fused elementwise ops on an accelerator. Each example's randomness comes from

  key = fold_in(fold_in(base_key, step), index)

with `index` the example's position in the global batch (the batch's `index` field), so the
result is a pure function of (seed, step, example): resume is bit-exact, and neither the
worker count nor the process count changes anything. In the train step, before `normalize`:

  images = device_augment.augment_batch(batch, aug_key, state["step"], aug_params)

with `aug_key = device_augment.base_key(config.seed)` and
`aug_params = device_augment.params_for(config)` made once outside the step, and
`config.data.device_augment=True` so that the host leaves these operations out.
The operations and their ranges are augment.py's (`_colour`), in float32 without the uint8
rounding: brightness, contrast (around the image mean), saturation (around the luma) factors
each uniform in [1-s, 1+s], then grayscale with probability p; the output is float32 in
[0, 255].
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gender_jax.data import augment as host_augment, sources

# ITU-R BT.601 luma, as PIL's "L" conversion and augment.py use.
LUMA = (0.299, 0.587, 0.114)
# Folded into the seed's key so this stream never coincides with dropout's fold_in(key, step).
STREAM = 0x6A75


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Per-source settings as arrays (one entry per source in `configured_sources` order), so
  a mixture's examples each get their own source's augmentation under one jitted program."""
  flip: jax.Array          # probability of a horizontal flip (0 or 0.5)
  color_jitter: jax.Array  # strength s
  grayscale: jax.Array     # probability


def params_for(config) -> AugmentParams:
  """The device share of every configured source's augmentation (augment.spec_for)."""
  specs = [host_augment.spec_for(sources.source_options(name, config), config)
           for name in sources.configured_sources(config)]
  return AugmentParams(
      flip=jnp.asarray([0.5 if s.flip else 0.0 for s in specs], jnp.float32),
      color_jitter=jnp.asarray([s.color_jitter for s in specs], jnp.float32),
      grayscale=jnp.asarray([s.grayscale for s in specs], jnp.float32))


def make_params(flip: bool = True, color_jitter: float = 0.0,
                grayscale: float = 0.0) -> AugmentParams:
  """One source's settings (flip on/off, jitter strength, grayscale probability)."""
  if color_jitter < 0 or not 0 <= grayscale <= 1:
    raise ValueError(f"color_jitter={color_jitter} must be ≥ 0 and grayscale={grayscale} a "
                     "probability")
  return AugmentParams(flip=jnp.asarray([0.5 if flip else 0.0], jnp.float32),
                       color_jitter=jnp.asarray([color_jitter], jnp.float32),
                       grayscale=jnp.asarray([grayscale], jnp.float32))


def base_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), STREAM)


def example_keys(key: jax.Array, step, index) -> jax.Array:
  """fold_in(fold_in(key, step), index) for every entry of `index` (int array, shape (B,))."""
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.asarray(index))


def _one(image, key, flip_p, s, gray_p):
  k_flip, k_jitter, k_gray = jax.random.split(key, 3)
  x = image.astype(jnp.float32)
  x = jnp.where(jax.random.uniform(k_flip) < flip_p, x[:, ::-1], x)
  luma = jnp.asarray(LUMA, jnp.float32)
  b, c, sat = jax.random.uniform(k_jitter, (3,), minval=1 - s, maxval=1 + s)
  jittered = x * b
  mean = jittered.mean()
  jittered = (jittered - mean) * c + mean
  gray = (jittered @ luma)[..., None]
  jittered = (jittered - gray) * sat + gray
  x = jnp.where(s > 0, jittered, x)  # s = 0 is the identity exactly, not via factors of 1
  to_gray = jax.random.uniform(k_gray) < gray_p
  x = jnp.where(to_gray, jnp.broadcast_to((x @ luma)[..., None], x.shape), x)
  return jnp.clip(x, 0.0, 255.0)


def augment(images, keys, params: AugmentParams, source_id=None) -> jax.Array:
  """uint8 (or float 0..255) NHWC images → float32 NHWC in [0, 255], flipped and jittered.

  Pure and jittable. `keys`: one key per example (`example_keys`), or a single key split
  into one per example (then the result depends on the batch's layout, not on each
  example's index); `params`: AugmentParams (or a config, read with `params_for`);
  `source_id`: int (B,) selecting each example's source entry in `params` (default: 0).
  """
  if not isinstance(params, AugmentParams):
    params = params_for(params)
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"augment expects NHWC RGB images, got shape {images.shape}")
  if jnp.ndim(keys) == 0:
    keys = jax.random.split(keys, images.shape[0])
  sid = (jnp.zeros(images.shape[0], jnp.int32) if source_id is None
         else jnp.asarray(source_id, jnp.int32))
  return jax.vmap(_one)(images, keys, params.flip[sid], params.color_jitter[sid],
                        params.grayscale[sid])


def augment_batch(batch, key: jax.Array, step, params: AugmentParams) -> jax.Array:
  """`augment` of a pipeline batch (its `image`, `index`, `source_id`) at train step `step`."""
  return augment(batch["image"], example_keys(key, step, batch["index"]), params,
                 batch.get("source_id"))

