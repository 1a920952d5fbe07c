"""The one image contract: decode and resize on the host, normalise on the device.

Train, eval, predict, serve and export all go through these functions, so a model sees
the same pixels wherever it runs. Images travel to the device as uint8 (4x less transfer
than float32); `normalize` runs inside the jitted function.
"""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

try:  # libjpeg-turbo with 1/8-step DCT scaling: the training input's JPEG decoder
  import simplejpeg as _simplejpeg
except ImportError:  # PIL's decoder is used instead
  _simplejpeg = None

# Per-channel mean/std in 0..255 pixel units, applied after channel reordering.
PRESETS = {
    # torchvision ImageNet weights: RGB, (x/255 - mean)/std.
    "torchvision": dict(channel_order="RGB", mean=(123.675, 116.28, 103.53),
                        std=(58.395, 57.12, 57.375)),
    # Keras VGG16/19 and ResNet50 ("caffe" mode): BGR, mean subtraction, no scaling.
    "caffe": dict(channel_order="BGR", mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    # dlib's face-recognition ResNet: RGB, (x - its mean)/256 (input_rgb_image_sized).
    "dlib": dict(channel_order="RGB", mean=(122.782, 117.001, 104.298),
                 std=(256.0, 256.0, 256.0)),
    # From scratch: x/127.5 - 1.
    "scratch": dict(channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
}


class ImageError(ValueError):
  """An input that is not a decodable image; the message says why."""


class ImageTooLarge(ImageError):
  """More pixels than PIL's decompression-bomb limit (~89 MP)."""


# How an image becomes size x size: "squash" stretches it (face crops are square already);
# "letterbox" keeps its aspect, the longer side at `size`, and pads the shorter one with the
# preset's mean colour (zero after normalisation): a 1:2 person crop keeps its build.
RESIZE_MODES = ("squash", "letterbox")


def make_spec(image_size: int, preset: str = "scratch", resize: str = "squash") -> dict[str, Any]:
  if preset not in PRESETS:
    raise ValueError(f"unknown preprocessing preset {preset!r}; choose from {list(PRESETS)}")
  if resize not in RESIZE_MODES:
    raise ValueError(f"unknown resize mode {resize!r}; choose from {list(RESIZE_MODES)}")
  return dict(image_size=int(image_size), preset=preset, resize=resize, **PRESETS[preset])


def resize_mode(spec: dict[str, Any] | None) -> str:
  """A bundle's resize mode: bundles written before letterboxing existed squash."""
  return (spec or {}).get("resize", "squash")


def pad_colour(spec: dict[str, Any] | None) -> tuple[int, int, int]:
  """The letterbox border: the preset's mean pixel, in RGB order."""
  mean = (spec or PRESETS["scratch"])["mean"]
  if (spec or {}).get("channel_order") == "BGR":
    mean = mean[::-1]
  return tuple(int(round(m)) for m in mean)


def letterbox_dims(h: int, w: int, size: int) -> tuple[int, int, int, int]:
  """(new h, new w, top, left) of an h x w image fitted into size x size, aspect kept."""
  scale = size / max(h, w)
  nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
  return nh, nw, (size - nh) // 2, (size - nw) // 2


def paste_centered(img: np.ndarray, size: int, fill) -> np.ndarray:
  """An image already fitted inside size x size → centred on a size x size `fill` canvas."""
  h, w = img.shape[:2]
  if h == size and w == size:
    return img
  out = np.empty((size, size, 3), np.uint8)
  out[...] = np.asarray(fill, np.uint8)
  top, left = (size - h) // 2, (size - w) // 2
  out[top:top + h, left:left + w] = img
  return out


# PIL's decompression-bomb limit (~89 MP): no face or pedestrian crop is that large.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
# EXIF orientation tag value → the PIL transpose that makes the pixels upright.
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
  """The one place the library opens encoded image bytes (JPEG, PNG, …).

  Returns a PIL image whose header is read and checked but whose pixels are not decoded
  yet, so a caller can still `draft` a JPEG at a reduced scale. Raises ImageTooLarge past
  `max_pixels` (PIL's bomb limit by default) before any pixel is decoded, ImageError for
  anything that is not an image.
  """
  if not data:
    raise ImageError("empty input (0 bytes)")
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", Image.DecompressionBombWarning)
      im = Image.open(io.BytesIO(data))  # reads the header only
  except UnidentifiedImageError:
    raise ImageError("not a recognised image format") from None
  except Image.DecompressionBombError as e:  # over twice PIL's limit; not an OSError
    raise ImageTooLarge(f"image too large (decompression bomb guard): {e}") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"corrupt or truncated image: {e}") from None
  limit = MAX_PIXELS if max_pixels is None else max_pixels
  if im.width * im.height > limit:
    raise ImageTooLarge(f"image too large: {im.width}x{im.height} = {im.width * im.height} "
                        f"pixels is over the limit of {limit} (a decompression bomb or an "
                        "oversized photo)")
  bombs = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
  if bombs:  # over PIL's limit is a bomb here, not a warning, even under a higher limit
    raise ImageTooLarge(f"image too large (decompression bomb guard): {bombs[0].message}")
  return im


def turbo_jpeg_size(data, max_pixels: int | None = None) -> tuple[int, int] | None:
  """(w, h) of a JPEG that `decode_jpeg_scaled` can decode, from its header alone; None where
  that path does not apply, so the caller takes `decode` (PIL), which also says what is
  wrong with a bad file: not JPEG bytes, a colour space other than YCbCr/grey/RGB, an EXIF
  block (its orientation is PIL's to apply), over the pixel limit, or no simplejpeg."""
  if (_simplejpeg is None or not isinstance(data, bytes) or not data.startswith(b"\xff\xd8")
      or data.find(b"Exif\x00", 0, 65536) >= 0):  # searched in place: no copy of the file
    return None
  try:
    h, w, colorspace, _ = _simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  limit = MAX_PIXELS if max_pixels is None else max_pixels
  if colorspace not in ("YCbCr", "Gray", "RGB") or not 0 < w * h <= limit:
    return None
  return w, h


def decode_jpeg_scaled(data: bytes, min_size: tuple[int, int]) -> np.ndarray:
  """A JPEG that `turbo_jpeg_size` accepted → uint8 RGB HxWx3, decoded by libjpeg-turbo at the
  smallest DCT scale n/8 that keeps it at least `min_size` = (w, h): 2x less CPU than PIL's
  decoder on a 200x200 face, and finer steps than PIL's `draft` (1/2, 1/4, 1/8 only)."""
  try:
    return _simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=int(min_size[0]),
                                   min_height=int(min_size[1]))
  except ValueError as e:  # strict mode: a truncated or damaged stream
    raise ImageError(f"corrupt or truncated image: {e}") from None


def orientation(im: Image.Image) -> int:
  """The EXIF orientation (1 = upright) of an opened image; read before any resize drops it."""
  try:
    return int(im.getexif().get(0x0112, 1) or 1)
  except Exception:  # a malformed EXIF block is not worth losing the image over
    return 1


def upright(im: Image.Image, orient: int) -> Image.Image:
  """Applies an EXIF orientation: phone photos are often stored sideways with this tag."""
  return im.transpose(_ORIENT[orient]) if orient in _ORIENT else im


# What shows through transparent pixels (PNG/GIF/WebP cut-outs): one fixed colour, so an image
# looks the same to the model wherever it is decoded. White: how viewers show such files.
ALPHA_BACKGROUND = (255, 255, 255)
# 16-bit greyscale (PNG, TIFF): PIL opens it as I;16 (or I, 32-bit), whose plain conversion to
# RGB clips at 255, turning the image white. Scaled instead: 65535 → 255.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def as_rgb(im: Image.Image) -> Image.Image:
  """A PIL image of any mode → RGB with the same picture: 16-bit scaled to 8, transparency
  (alpha or a palette's transparent index) over ALPHA_BACKGROUND, CMYK and the rest by PIL."""
  if im.mode == "RGB":
    return im
  if im.mode in _SIXTEEN_BIT:
    wide = np.asarray(im).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
  if im.mode == "P" and "transparency" in im.info or im.mode in _ALPHA:
    rgba = im.convert("RGBA")
    out = Image.new("RGB", im.size, ALPHA_BACKGROUND)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out
  return im.convert("RGB")


def to_rgb(im: Image.Image) -> np.ndarray:
  """An opened image → fully decoded, upright uint8 RGB HxWx3."""
  try:
    orient = orientation(im)
    im.load()  # forces a full decode, so truncated files fail here, not later
    return np.asarray(upright(as_rgb(im), orient))
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"corrupt or truncated image: {e}") from None


def decode(data: bytes | np.ndarray, max_pixels: int | None = None) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, …) or an array → upright uint8 RGB HxWx3."""
  if isinstance(data, np.ndarray):
    img = data
  else:
    with open_image(data, max_pixels) as im:
      img = to_rgb(im)
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 1:
    raise ImageError(f"expected an HxWx3 image, got shape {img.shape}")
  return np.ascontiguousarray(img[..., :3].astype(np.uint8, copy=False))


def resize(img: np.ndarray, size: int, mode: str = "squash", fill=(128, 128, 128)) -> np.ndarray:
  """To size x size: squashed (face crops are already framed square), or letterboxed (aspect
  kept, padded with `fill`: tall person crops)."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  if mode == "letterbox":
    nh, nw, _, _ = letterbox_dims(img.shape[0], img.shape[1], size)
    fitted = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return paste_centered(fitted, size, fill)
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def resize_for(img: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
  """An image resized as the spec (a bundle's preprocessing) says."""
  return resize(img, int(spec["image_size"]), resize_mode(spec), pad_colour(spec))


def eval_image(data: bytes | np.ndarray, size: int, max_pixels: int | None = None,
               spec: dict[str, Any] | None = None) -> np.ndarray:
  """Decode + resize: the deterministic path shared by eval, predict, serve and export
  (`spec`: the bundle's preprocessing, whose resize mode applies; else a squash)."""
  img = decode(data, max_pixels)
  if spec is None:
    return resize(img, size)
  return resize(img, size, resize_mode(spec), pad_colour(spec))


def pad_batch(images, size: int) -> np.ndarray:
  """Stacks ≤ size same-shape uint8 images into a (size, …) batch, zero rows after them.

  Jitted models are compiled for a few fixed batch sizes; padding to one of them (and slicing
  the outputs back to len(images)) is what keeps every call on a compiled program.
  """
  n = len(images)
  if not 0 < n <= size:
    raise ValueError(f"pad_batch: {n} images for a batch of {size}")
  first = np.asarray(images[0])
  batch = np.zeros((size, *first.shape), first.dtype)
  for i, image in enumerate(images):
    batch[i] = image
  return batch


def normalize(images, spec: dict[str, Any], dtype=None):
  """uint8 NHWC (RGB) → normalised float, on device under jit (or numpy outside it)."""
  import jax.numpy as jnp
  x = jnp.asarray(images).astype(jnp.float32)
  if spec["channel_order"] == "BGR":
    x = x[..., ::-1]
  x = (x - jnp.asarray(spec["mean"], jnp.float32)) / jnp.asarray(spec["std"], jnp.float32)
  return x.astype(dtype) if dtype is not None else x
