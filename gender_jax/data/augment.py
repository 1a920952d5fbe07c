"""Training augmentation, configurable per source (faces are square, pedestrians 2:1).

Options, read from `config.data.sources[name]` with `config.data` as the fallback:
  crop         "random_resized" (area fraction `crop_scale`, aspect 3/4..4/3), "pad_crop"
               (pad by `pad_fraction` of the side, reflect, crop back), or "none"
  crop_scale   (min, max) area fraction for random_resized
  flip         horizontal flip with probability 1/2
  rotate       max rotation in degrees (uniform ±rotate; 0: off)
  color_jitter strength s: brightness, contrast, saturation factors in [1-s, 1+s] (0: off)
  grayscale    probability of converting to grayscale (kept 3-channel)
  resize       "squash" or "letterbox" (config.data.resize only: one mode per model, the one
               its bundle records): the crop fitted with its aspect kept and padded with
               `fill`, the preprocessing preset's mean colour
  image_backend "opencv" (default): JPEGs decoded by libjpeg-turbo (simplejpeg) at the
               smallest 1/8 DCT scale ≥ the crop's output, crop, resize and rotation by
               OpenCV — 2-3x less CPU per image than "pil" (benchmarks/README.md); "pil":
               PIL throughout, as eval does. Same operations and random draws, pixels within
               a few grey levels (bilinear either way; OpenCV's INTER_AREA when shrinking)
All randomness comes from the `rng` the pipeline seeds per element, so augmentation is
reproducible whatever the number of workers. With `config.data.device_augment` the host keeps
the geometric part (crop, rotate, resize) and flip, colour jitter and grayscale run on the
device instead (device_augment.py: the same operations, keyed per example).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math

import numpy as np
from PIL import Image

from gender_jax.data import preprocess

CROPS = ("random_resized", "pad_crop", "none")
BACKENDS = ("opencv", "pil")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  crop: str = "random_resized"
  crop_scale: tuple[float, float] = (0.6, 1.0)
  pad_fraction: float = 0.1
  flip: bool = True
  rotate: float = 0.0
  color_jitter: float = 0.0
  grayscale: float = 0.0
  image_backend: str = "opencv"
  resize: str = "squash"
  fill: tuple[int, int, int] = (128, 128, 128)

  def __post_init__(self):
    if self.resize not in preprocess.RESIZE_MODES:
      raise ValueError(f"resize {self.resize!r}: choose from {preprocess.RESIZE_MODES}")
    if self.crop not in CROPS:
      raise ValueError(f"augment crop {self.crop!r}: choose from {CROPS}")
    if self.image_backend not in BACKENDS:
      raise ValueError(f"image_backend {self.image_backend!r}: choose from {BACKENDS}")
    if self.image_backend == "opencv" and importlib.util.find_spec("cv2") is None:
      raise ValueError("image_backend 'opencv' needs OpenCV (pip install "
                       "opencv-python-headless), or set data.image_backend='pil'")
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
                     image_backend=str(get("image_backend", d.image_backend)),
                     resize=str(config.data.get("resize", d.resize)),
                     fill=preprocess.pad_colour(preprocess.PRESETS.get(
                         config.data.get("preprocessing", "scratch"))))


def host_only(spec: AugmentSpec) -> AugmentSpec:
  """The host's share when flip, colour and grayscale run on the device."""
  return dataclasses.replace(spec, flip=False, color_jitter=0.0, grayscale=0.0)


# The aspect range in log space; numpy's log, so the boxes are those numpy's scalars gave.
_LOG_ASPECT = (float(np.log(3 / 4)), float(np.log(4 / 3)))


def _random_resized_box(h, w, rng, scale, relative: bool = False):
  # Python floats over rng.random() (uniform(a, b) is a + (b - a)·random() in numpy too):
  # numpy's scalar calls made this a fifth of an image's GIL-held time at 112 px.
  # `relative`: the aspect drawn is a factor on the image's own (letterboxed crops keep their
  # aspect): an absolute 3/4..4/3 box on a 1:2 person crop would cut it to its top half.
  lo, hi = scale
  area = h * w * (lo + (hi - lo) * rng.random())
  aspect = math.exp(_LOG_ASPECT[0] + (_LOG_ASPECT[1] - _LOG_ASPECT[0]) * rng.random())
  if relative:
    aspect *= w / h
  ch = int(round(min(h, math.sqrt(area / aspect))))
  cw = int(round(min(w, math.sqrt(area * aspect))))
  y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
  return y, x, max(ch, 1), max(cw, 1)


def _open(data) -> Image.Image:
  """Bytes or array → an opened PIL image (for bytes nothing is decoded yet)."""
  if isinstance(data, np.ndarray):
    return Image.fromarray(preprocess.decode(data))
  return preprocess.open_image(data)


def train_image(data, size: int, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
  """Decode → crop → resize → rotate → flip → colour: uint8 size×size×3."""
  if spec.image_backend == "opencv":
    return _train_image_cv(data, size, rng, spec)
  return _train_image_pil(data, size, rng, spec)


def _train_image_pil(data, size: int, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
  """The crop and the resize are one PIL call, and a JPEG much larger than its crop's output is
  decoded at a reduced scale (`draft`): 2-4x less work per image than decode-then-resize.
  """
  im = _open(data)
  orient = preprocess.orientation(im)  # applied after the resize, which drops the tag
  w, h = im.size
  box = (0, 0, w, h)
  if spec.crop == "random_resized" and spec.crop_scale[0] < 1.0:
    y, x, ch, cw = _random_resized_box(h, w, rng, spec.crop_scale,
                                         spec.resize == "letterbox")
    box = (x, y, x + cw, y + ch)
  try:
    if im.format == "JPEG" and spec.crop != "pad_crop":
      cw, ch = box[2] - box[0], box[3] - box[1]
      im.draft("RGB", (-(-w * size // cw), -(-h * size // ch)))  # ≥ size px across the crop
      sx, sy = im.size[0] / w, im.size[1] / h
      box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    im = preprocess.as_rgb(im)  # 16-bit and transparent images as decode() sees them
    im.load()
    if spec.crop == "pad_crop" and spec.pad_fraction > 0:
      img = np.asarray(im)
      py, px = int(round(h * spec.pad_fraction)), int(round(w * spec.pad_fraction))
      padded = np.pad(img, ((py, py), (px, px), (0, 0)), mode="reflect")
      y, x = rng.integers(0, 2 * py + 1), rng.integers(0, 2 * px + 1)
      im = Image.fromarray(np.ascontiguousarray(padded[y:y + h, x:x + w]))
    if spec.resize == "letterbox":
      nh, nw, _, _ = preprocess.letterbox_dims(round(box[3] - box[1]), round(box[2] - box[0]),
                                               size)
      im = Image.fromarray(preprocess.paste_centered(
          np.asarray(im.resize((nw, nh), Image.BILINEAR, box=box)), size, spec.fill))
    elif im.size != (size, size) or box != (0, 0, w, h):
      im = im.resize((size, size), Image.BILINEAR, box=box)
  except (OSError, SyntaxError, ValueError) as e:
    raise preprocess.ImageError(f"corrupt or truncated image: {e}") from None
  im = preprocess.upright(im, orient)
  if spec.rotate > 0:
    im = im.rotate(float(rng.uniform(-spec.rotate, spec.rotate)), Image.BILINEAR)
  return _flip_and_colour(np.asarray(im), rng, spec)


def _flip_and_colour(out: np.ndarray, rng, spec: AugmentSpec) -> np.ndarray:
  if spec.flip and rng.random() < 0.5:
    out = out[:, ::-1]
  if spec.color_jitter > 0 or spec.grayscale > 0:
    out = _colour(out, rng, spec)
  return np.ascontiguousarray(out)


@functools.cache
def _cv2():
  import cv2
  # The pipeline's threads are the parallelism: OpenCV's own pool under them would
  # oversubscribe the cores (one image is far too small to split).
  cv2.setNumThreads(1)
  return cv2


def _train_image_cv(data, size: int, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
  """The same steps and random draws as the PIL path, with libjpeg-turbo decoding a JPEG at
  the smallest DCT scale that still gives ≥ `size` px across the crop, and OpenCV's SIMD
  resize (PIL's resample costs ~6x more per image, benchmarks/README.md)."""
  cv2 = _cv2()
  # The header alone where libjpeg-turbo can take the file: the crop is drawn on the full size
  # before any pixel is decoded. Anything else (other formats, EXIF orientation, every error
  # message) goes through PIL's decode.
  full = preprocess.turbo_jpeg_size(data)
  img = None if full else preprocess.decode(data)
  w, h = full or (img.shape[1], img.shape[0])
  box = (0, 0, w, h)
  if spec.crop == "random_resized" and spec.crop_scale[0] < 1.0:
    y, x, ch, cw = _random_resized_box(h, w, rng, spec.crop_scale,
                                         spec.resize == "letterbox")
    box = (x, y, x + cw, y + ch)
  if img is None:
    cw, ch = box[2] - box[0], box[3] - box[1]
    img = preprocess.decode_jpeg_scaled(data, (min(w, -(-w * size // cw)),
                                               min(h, -(-h * size // ch))))
  sy, sx = img.shape[0] / h, img.shape[1] / w  # < 1 where decoded at a reduced DCT scale
  if spec.crop == "pad_crop" and spec.pad_fraction > 0:
    # Drawn in full-size pixels, as the PIL path does, then scaled to the decoded image.
    hh, ww = img.shape[:2]
    py, px = int(round(h * spec.pad_fraction)), int(round(w * spec.pad_fraction))
    y, x = rng.integers(0, 2 * py + 1), rng.integers(0, 2 * px + 1)
    py, px, y, x = (int(round(v * f)) for v, f in ((py, sy), (px, sx), (y, sy), (x, sx)))
    padded = np.pad(img, ((py, py), (px, px), (0, 0)), mode="reflect")
    img = padded[y:y + hh, x:x + ww]
  x0, y0 = int(round(box[0] * sx)), int(round(box[1] * sy))
  x1 = max(x0 + 1, int(round(box[2] * sx)))
  y1 = max(y0 + 1, int(round(box[3] * sy)))
  img = img[y0:y1, x0:x1]
  th, tw = size, size
  if spec.resize == "letterbox":
    th, tw, _, _ = preprocess.letterbox_dims(img.shape[0], img.shape[1], size)
  if img.shape[:2] != (th, tw):
    # Bilinear, unless shrinking 2x or more, where it would alias: INTER_AREA then (7x the
    # cost at a non-integer ratio). After a DCT-scaled decode the shrink is under 2x.
    shrink = img.shape[0] >= 2 * th and img.shape[1] >= 2 * tw
    img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  if (th, tw) != (size, size):
    img = preprocess.paste_centered(img, size, spec.fill)
  if spec.rotate > 0:
    angle = float(rng.uniform(-spec.rotate, spec.rotate))  # degrees, counter-clockwise as PIL
    m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return _flip_and_colour(img, rng, spec)


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
