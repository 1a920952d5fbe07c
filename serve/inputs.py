"""Request bodies → decoded images, with every client mistake turned into a 4xx and a message.

Three body forms reach `POST /v1/predict`: a raw image (`image/*` or
`application/octet-stream`), `multipart/form-data` with one or many files, and JSON
`{"images": [base64, ...]}` (or `{"image": base64}`). Limits are checked before any work
that scales with them: the declared length before reading, the byte count while reading,
the image count before decoding, and the pixel count from the header before the full decode
(a 100 KB PNG can claim 10^10 pixels).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json

import numpy as np
from starlette.requests import Request

from gender_jax.data import preprocess

RAW_TYPES = ("image/", "application/octet-stream")


class BadRequest(Exception):
  """A client error: HTTP status plus a message that says what was wrong and where."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 16 * 2**20
  max_images: int = 32
  max_image_pixels: int = 40_000_000


async def read_body(request: Request, max_bytes: int) -> bytes:
  """The whole body, refusing (413) before reading past `max_bytes`."""
  declared = request.headers.get("content-length")
  if declared is not None:
    try:
      declared_bytes = int(declared)
    except ValueError:
      raise BadRequest(400, f"Content-Length {declared!r} is not a number") from None
    if declared_bytes > max_bytes:
      raise BadRequest(413, f"body of {declared_bytes} bytes is over the limit of {max_bytes} bytes")
  chunks, total = [], 0
  async for chunk in request.stream():
    total += len(chunk)
    if total > max_bytes:
      raise BadRequest(413, f"body is over the limit of {max_bytes} bytes")
    chunks.append(chunk)
  body = b"".join(chunks)
  # Starlette's form parser reads `_body` when the stream was already consumed.
  request._body = body  # pylint: disable=protected-access
  return body


async def encoded_images(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
  """(name, encoded bytes) for every image in the request, in order."""
  content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
  body = await read_body(request, limits.max_body_bytes)
  if content_type.startswith(RAW_TYPES):
    images = [("body", body)]
  elif content_type == "multipart/form-data":
    images = await _multipart_images(request, limits)
  elif content_type == "application/json":
    images = _json_images(body, limits)
  else:
    raise BadRequest(415, f"unsupported content type {content_type or '(none)'!r}; send a raw "
                     "image (image/* or application/octet-stream), multipart/form-data files, "
                     "or application/json {\"images\": [base64, ...]}")
  if not images:
    raise BadRequest(400, "no image in the request")
  if len(images) > limits.max_images:
    raise BadRequest(413, f"too many images: {len(images)}, the limit is {limits.max_images} "
                     "per request")
  return images


async def _multipart_images(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
  try:
    form = await request.form(max_files=limits.max_images, max_fields=limits.max_images)
  except Exception as e:  # starlette raises several types for malformed multipart bodies
    detail = str(getattr(e, "detail", e))
    if "too many files" in detail.lower():
      raise BadRequest(413, f"too many images: more than {limits.max_images}, the limit per "
                       "request") from None
    raise BadRequest(400, f"malformed multipart/form-data body: {detail}") from None
  images = []
  for field, value in form.multi_items():
    if isinstance(value, str):
      continue  # plain form fields carry no image
    images.append((f"{field}:{value.filename or ''}", await value.read()))
  if not images:
    raise BadRequest(400, "multipart/form-data body has no file part")
  return images


def _json_images(body: bytes, limits: Limits) -> list[tuple[str, bytes]]:
  try:
    doc = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadRequest(400, f"malformed JSON body: {e}") from None
  if isinstance(doc, dict) and "image" in doc and "images" not in doc:
    items = [doc["image"]]
  elif isinstance(doc, dict) and isinstance(doc.get("images"), list):
    items = doc["images"]
  else:
    raise BadRequest(400, "JSON body must be {\"images\": [base64, ...]} or {\"image\": base64}")
  if len(items) > limits.max_images:
    raise BadRequest(413, f"too many images: {len(items)}, the limit is {limits.max_images} "
                     "per request")
  images = []
  for i, item in enumerate(items):
    if not isinstance(item, str):
      raise BadRequest(400, f"images[{i}]: expected a base64 string, got {type(item).__name__}")
    if item.startswith("data:"):  # data URLs, as a browser's FileReader makes them
      item = item.partition(",")[2]
    try:
      images.append((f"images[{i}]", base64.b64decode(item, validate=True)))
    except (binascii.Error, ValueError) as e:
      raise BadRequest(400, f"images[{i}]: not valid base64 ({e})") from None
  return images


FACES_MODES = ("off", "detect", "auto")


def faces_mode(value: str, enabled: bool) -> str:
  """The `faces` query parameter, checked before the body is read."""
  if value not in FACES_MODES:
    raise BadRequest(400, f"faces={value!r}: choose one of {', '.join(FACES_MODES)}")
  if value != "off" and not enabled:
    raise BadRequest(400, f"faces={value}: face detection is off on this deployment "
                     "(set faces_detector in serve/config.yaml)")
  return value


def decode_image(name: str, data: bytes, size: int | None, max_pixels: int,
                 spec: dict | None = None) -> np.ndarray:
  """Encoded bytes → uint8 (size, size, 3) through the eval path, resized as `spec` (the
  bundle's preprocessing: squashed or letterboxed) says (`size` None: the photo's own size,
  for face detection), or a BadRequest naming `name`."""
  try:
    # The header is checked against max_pixels before any pixel is decoded.
    if size is None:
      return preprocess.decode(data, max_pixels=max_pixels)
    return preprocess.eval_image(data, size, max_pixels=max_pixels, spec=spec)
  except preprocess.ImageTooLarge as e:
    raise BadRequest(413, f"{name}: {e}") from None
  except preprocess.ImageError as e:
    raise BadRequest(400, f"{name}: {e}") from None
