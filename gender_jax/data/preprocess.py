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

# Per-channel mean/std in 0..255 pixel units, applied after channel reordering.
PRESETS = {
    # torchvision ImageNet weights: RGB, (x/255 - mean)/std.
    "torchvision": dict(channel_order="RGB", mean=(123.675, 116.28, 103.53),
                        std=(58.395, 57.12, 57.375)),
    # Keras VGG16/19 and ResNet50 ("caffe" mode): BGR, mean subtraction, no scaling.
    "caffe": dict(channel_order="BGR", mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)),
    # From scratch: x/127.5 - 1.
    "scratch": dict(channel_order="RGB", mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5)),
}


class ImageError(ValueError):
  """An input that is not a decodable image; the message says why."""


class ImageTooLarge(ImageError):
  """More pixels than PIL's decompression-bomb limit (~89 MP)."""


def make_spec(image_size: int, preset: str = "scratch") -> dict[str, Any]:
  if preset not in PRESETS:
    raise ValueError(f"unknown preprocessing preset {preset!r}; choose from {list(PRESETS)}")
  return dict(image_size=int(image_size), preset=preset, **PRESETS[preset])


def decode(data: bytes | np.ndarray) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, …) or an array → uint8 RGB HxWx3."""
  if isinstance(data, np.ndarray):
    img = data
  else:
    if not data:
      raise ImageError("empty input (0 bytes)")
    try:
      with warnings.catch_warnings():
        # Over PIL's MAX_IMAGE_PIXELS (~89 MP) is a bomb here, not a warning: no face or
        # pedestrian crop is that large, and decoding it could exhaust memory.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
          im.load()  # forces a full decode, so truncated files fail here, not later
          img = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
      raise ImageError("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # not OSErrors
      raise ImageTooLarge(f"image too large (decompression bomb guard): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
      raise ImageError(f"corrupt or truncated image: {e}") from None
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.ndim != 3 or img.shape[-1] not in (3, 4) or min(img.shape[:2]) < 1:
    raise ImageError(f"expected an HxWx3 image, got shape {img.shape}")
  return np.ascontiguousarray(img[..., :3].astype(np.uint8, copy=False))


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Squash-resize to size x size (face and pedestrian crops are already framed)."""
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def eval_image(data: bytes | np.ndarray, size: int) -> np.ndarray:
  """Decode + resize: the deterministic path shared by eval, predict, serve and export."""
  return resize(decode(data), size)


def train_image(data: bytes | np.ndarray, size: int, rng: np.random.Generator,
                crop_scale: tuple[float, float] = (0.6, 1.0), flip: bool = True) -> np.ndarray:
  """Random resized crop (area fraction in crop_scale, aspect 3/4..4/3) + horizontal flip."""
  img = decode(data)
  h, w = img.shape[:2]
  if crop_scale[0] < 1.0:
    area = h * w * rng.uniform(*crop_scale)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(round(min(h, np.sqrt(area / aspect))))
    cw = int(round(min(w, np.sqrt(area * aspect))))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = img[y:y + ch, x:x + cw]
  img = resize(img, size)
  if flip and rng.random() < 0.5:
    img = img[:, ::-1]
  return np.ascontiguousarray(img)


def normalize(images, spec: dict[str, Any], dtype=None):
  """uint8 NHWC (RGB) → normalised float, on device under jit (or numpy outside it)."""
  import jax.numpy as jnp
  x = jnp.asarray(images).astype(jnp.float32)
  if spec["channel_order"] == "BGR":
    x = x[..., ::-1]
  x = (x - jnp.asarray(spec["mean"], jnp.float32)) / jnp.asarray(spec["std"], jnp.float32)
  return x.astype(dtype) if dtype is not None else x
