"""A synthetic, learnable stand-in for face crops: runs anywhere, downloads nothing.

Each image is a noisy colour grating. The label is its orientation — near-horizontal
(label 0) or near-vertical (label 1) — so it is recoverable from the pixels, but only by
looking at structure: colour, frequency, phase and the noise level are random, and a small
fraction of labels are flipped so no model reaches 100%. Records are a pure function of
(seed, split, index), so the set needs no storage and every process sees the same data.
"""
from __future__ import annotations

import functools

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


@functools.cache  # a TFDS builder class registers its name once per process
def create_builder_class():
  """The synthetic set as a TFDS builder (`gender_synthetic`), for testing the prepared path.

  Defined lazily so that importing this module does not import TensorFlow.
  """
  import io

  from PIL import Image

  from gender_jax.data import builder, schema

  class GenderSynthetic(builder.GenderBuilder):
    """The synthetic grating set written as JPEG records; no manual files needed."""
    name = "gender_synthetic"
    SOURCE = "synthetic"
    SIZES = {"train": 4096, "validation": 512, "test": 512}

    def _split_generators(self, dl_manager):
      meta = self.info.metadata
      meta.update(source=self.SOURCE, split_method="generated", bad_files=[],
                  counts={s: {"female": 0, "male": 0} for s in self.SIZES}, identities={})
      return {s: self._generate(s, n) for s, n in self.SIZES.items()}

    def _entries(self, manual_dir):
      raise NotImplementedError

    def _generate(self, split, n):
      src = SyntheticSource(split, size=n, image_size=40)
      for i in range(n):
        r = src[i]
        out = io.BytesIO()
        Image.fromarray(r["image"]).save(out, format="JPEG", quality=schema.JPEG_QUALITY)
        self.info.metadata["counts"][split][schema.CLASS_NAMES[r["label"]]] += 1
        entry = schema.Entry(path="", key=f"{split}/{i:06d}", label=r["label"])
        yield entry.key, schema.to_example(entry, out.getvalue(), self.SOURCE)

  return GenderSynthetic
