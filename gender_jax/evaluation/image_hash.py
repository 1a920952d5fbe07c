"""Image fingerprints for duplicate finding: exact (SHA-1) and perceptual (64-bit DCT pHash).

Near duplicates are hash pairs within a few bits; `near_pairs` finds them blockwise, so a
hundred thousand images never need an n×n matrix at once.
"""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def content_hash(image) -> str:
  if isinstance(image, np.ndarray):
    return hashlib.sha1(str(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()
  return hashlib.sha1(image).hexdigest()


_DCT = None


def _dct_matrix(n: int = 32) -> np.ndarray:
  k, x = np.arange(n)[:, None], np.arange(n)[None, :]
  return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


def perceptual_hash(img: np.ndarray) -> np.uint64:
  """pHash: grey 32x32 → 2-D DCT → the 8x8 lowest frequencies vs their median → 64 bits."""
  global _DCT
  if _DCT is None:
    _DCT = _dct_matrix()
  grey = np.asarray(Image.fromarray(img).convert("L").resize((32, 32), Image.BILINEAR), np.float64)
  low = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
  bits = low > np.median(low[1:])  # the DC term would dominate the median
  return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def near_pairs(hashes: np.ndarray, max_distance: int, block: int = 1024) -> list[tuple[int, int, int]]:
  """All (i, j, hamming distance) with i < j and distance ≤ max_distance, blockwise."""
  hashes = np.asarray(hashes, np.uint64)
  out = []
  for lo in range(0, len(hashes), block):
    a = hashes[lo:lo + block]
    d = np.bitwise_count(a[:, None] ^ hashes[None, :])
    i, j = np.nonzero(d <= max_distance)
    keep = j > i + lo
    out += [(int(x + lo), int(y), int(d[x, y])) for x, y in zip(i[keep], j[keep])]
  return out
