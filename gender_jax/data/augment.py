"""Training augmentation, configurable per source (faces are square, pedestrians 2:1).

Options, read from `config.data.sources[name]` with `config.data` as the fallback:
  crop         "random_resized" (area fraction `crop_scale`, aspect 3/4..4/3), "pad_crop"
               (pad by `pad_fraction` of the side, reflect, crop back), or "none"
  crop_scale   (min, max) area fraction for random_resized
  flip         horizontal flip with probability 1/2
  rotate       max rotation in degrees (uniform ±rotate; 0: off)
  color_jitter strength s: brightness, contrast, saturation factors in [1-s, 1+s] (0: off)
  grayscale    probability of converting to grayscale (kept 3-channel)
  jpeg_decoder "pil" (default) or "simplejpeg" (libjpeg-turbo with its 1/8-step DCT scaling:
               a JPEG is decoded at the smallest scale ≥ the crop's output, not only at
               1/2, 1/4, 1/8 as PIL's draft; same operations, slightly different pixels)
All randomness comes from the `rng` the pipeline seeds per element, so augmentation is
reproducible whatever the number of workers. With `config.data.device_augment` the host keeps
the geometric part (crop, rotate, resize) and flip, colour jitter and grayscale run on the
device instead (device_augment.py: the same operations, keyed per example).
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
from PIL import Image

from gender_jax.data import preprocess

CROPS = ("random_resized", "pad_crop", "none")
DECODERS = ("pil", "simplejpeg")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  crop: str = "random_resized"
  crop_scale: tuple[float, float] = (0.6, 1.0)
  pad_fraction: float = 0.1
  flip: bool = True
  rotate: float = 0.0
  color_jitter: float = 0.0
  grayscale: float = 0.0
  jpeg_decoder: str = "pil"

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f"augment crop {self.crop!r}: choose from {CROPS}")
    if self.jpeg_decoder not in DECODERS:
      raise ValueError(f"jpeg_decoder {self.jpeg_decoder!r}: choose from {DECODERS}")
    if self.jpeg_decoder == "simplejpeg" and importlib.util.find_spec("simplejpeg") is None:
      raise ValueError("jpeg_decoder 'simplejpeg' needs the simplejpeg package "
                       "(pip install simplejpeg), or use 'pil'")
    lo, hi = self.crop_scale
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"crop_scale {self.crop_scale} must satisfy 0 < min ≤ max ≤ 1")


def spec_for(options, config) -> AugmentSpec:
  """The source's augmentation: its own options first, then the config.data defaults."""
  def get(key, default):
    if options is not None and key in options:
      return options[key]
    return config.data.get(key, default)
  d = AugmentSpec()
  return AugmentSpec(crop=get("crop", d.crop), crop_scale=tuple(get("crop_scale", d.crop_scale)),
                     pad_fraction=float(get("pad_fraction", d.pad_fraction)),
                     flip=bool(get("flip", d.flip)), rotate=float(get("rotate", d.rotate)),
                     color_jitter=float(get("color_jitter", d.color_jitter)),
                     grayscale=float(get("grayscale", d.grayscale)),
                     jpeg_decoder=str(get("jpeg_decoder", d.jpeg_decoder)))


def host_only(spec: AugmentSpec) -> AugmentSpec:
  """The host's share when flip, colour and grayscale run on the device."""
  return dataclasses.replace(spec, flip=False, color_jitter=0.0, grayscale=0.0)


def _random_resized_box(h, w, rng, scale):
  area = h * w * rng.uniform(*scale)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
  ch = int(round(min(h, np.sqrt(area / aspect))))
  cw = int(round(min(w, np.sqrt(area * aspect))))
  y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
  return y, x, max(ch, 1), max(cw, 1)


def _open(data) -> Image.Image:
  """Bytes or array → an opened PIL image (for bytes nothing is decoded yet)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(preprocess.decode(data))
  return preprocess.open_image(data)


def train_image(data, size: int, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
  """Decode → crop → resize → rotate → flip → colour: uint8 size×size×3.

  The crop and the resize are one PIL call, and a JPEG much larger than its crop's output is
  decoded at a reduced scale (`draft`): 2-4x less work per image than decode-then-resize.
  """
  im = _open(data)
  orient = preprocess.orientation(im)  # applied after the resize, which drops the tag
  w, h = im.size
  box = (0, 0, w, h)
  if spec.crop == "random_resized" and spec.crop_scale[0] < 1.0:
    y, x, ch, cw = _random_resized_box(h, w, rng, spec.crop_scale)
    box = (x, y, x + cw, y + ch)
  try:
    if im.format == "JPEG" and spec.crop != "pad_crop":
      cw, ch = box[2] - box[0], box[3] - box[1]
      need = (-(-w * size // cw), -(-h * size // ch))  # ≥ size px across the crop
      if spec.jpeg_decoder == "simplejpeg" and isinstance(data, bytes):
        im = _simplejpeg(data, need)
      else:
        im.draft("RGB", need)
      sx, sy = im.size[0] / w, im.size[1] / h
      box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    if im.mode != "RGB":
      im = im.convert("RGB")
    im.load()
    if spec.crop == "pad_crop" and spec.pad_fraction > 0:
      img = np.asarray(im)
      py, px = int(round(h * spec.pad_fraction)), int(round(w * spec.pad_fraction))
      padded = np.pad(img, ((py, py), (px, px), (0, 0)), mode="reflect")
      y, x = rng.integers(0, 2 * py + 1), rng.integers(0, 2 * px + 1)
      im = Image.fromarray(np.ascontiguousarray(padded[y:y + h, x:x + w]))
    if im.size != (size, size) or box != (0, 0, w, h):
      im = im.resize((size, size), Image.BILINEAR, box=box)
  except (OSError, SyntaxError, ValueError) as e:
    raise preprocess.ImageError(f"corrupt or truncated image: {e}") from None
  im = preprocess.upright(im, orient)
  if spec.rotate > 0:
    im = im.rotate(float(rng.uniform(-spec.rotate, spec.rotate)), Image.BILINEAR)
  out = np.asarray(im)
  if spec.flip and rng.random() < 0.5:
    out = out[:, ::-1]
  if spec.color_jitter > 0 or spec.grayscale > 0:
    out = _colour(out, rng, spec)
  return np.ascontiguousarray(out)


def _simplejpeg(data: bytes, need: tuple[int, int]) -> Image.Image:
  import simplejpeg
  try:
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need[0], min_height=need[1])
  except ValueError as e:
    raise OSError(str(e)) from None  # reported as a corrupt image, like PIL's errors
  return Image.fromarray(arr)


def _colour(img: np.ndarray, rng, spec: AugmentSpec) -> np.ndarray:
  x = img.astype(np.float32)
  gray = x @ np.float32([0.299, 0.587, 0.114])
  if spec.color_jitter > 0:
    s = spec.color_jitter
    b, c, sat = rng.uniform(1 - s, 1 + s, 3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = x @ np.float32([0.299, 0.587, 0.114])
    x = (x - gray[..., None]) * sat + gray[..., None]
  if spec.grayscale > 0 and rng.random() < spec.grayscale:
    x = np.repeat((x @ np.float32([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
  return np.clip(x + 0.5, 0, 255).astype(np.uint8)
