"""A synthetic, learnable stand-in for face crops: runs anywhere, downloads nothing.

Each image is a noisy colour grating. The label is its orientation — near-horizontal
(label 0) or near-vertical (label 1) — so it is recoverable from the pixels, but only by
looking at structure: colour, frequency, phase and the noise level are random, and a small
fraction of labels are flipped so no model reaches 100%. Records are a pure function of
(seed, split, index), so the set needs no storage and every process sees the same data.
"""
from __future__ import annotations

import numpy as np

SPLITS = {"train": 0, "validation": 1, "test": 2}


class SyntheticSource:
  """Random-access source (grain protocol): len() and [i] → record dict."""

  def __init__(self, split: str, *, size: int, image_size: int = 32, seed: int = 0,
               label_noise: float = 0.05, pixel_noise: float = 0.35):
    if split not in SPLITS:
      raise ValueError(f"synthetic split {split!r}: choose from {list(SPLITS)}")
    self.split, self.size, self.image_size = split, int(size), int(image_size)
    self.seed, self.label_noise, self.pixel_noise = seed, label_noise, pixel_noise
    s = np.arange(self.image_size, dtype=np.float32) / self.image_size
    self._yy, self._xx = np.meshgrid(s, s, indexing="ij")

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self.size:
      raise IndexError(index)
    rng = np.random.default_rng((self.seed, SPLITS[self.split], int(index)))
    label = int(rng.integers(2))
    # Orientation within ±35° of horizontal (0) or vertical (1) stripes.
    theta = rng.uniform(-35, 35) * np.pi / 180 + (np.pi / 2 if label else 0.0)
    freq = rng.uniform(2.0, 6.0)
    wave = np.sin(2 * np.pi * freq * (self._xx * np.sin(theta) + self._yy * np.cos(theta))
                  + rng.uniform(0, 2 * np.pi))
    colour_a, colour_b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = colour_a + (colour_b - colour_a) * (0.5 + 0.5 * wave[..., None])
    img = img + rng.normal(0, self.pixel_noise, img.shape)
    if rng.random() < self.label_noise:
      label = 1 - label
    image = np.clip(img * 255, 0, 255).astype(np.uint8)
    return {"image": image, "label": label, "source": "synthetic"}
