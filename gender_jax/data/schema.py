"""The one record schema every prepared source is written with, and image validation.

Each source is written once, as `array_record`, with these features:
  image      JPEG bytes (sources' JPEGs are kept byte for byte; other formats re-encoded)
  label      0 female | 1 male (the datasets' binary perceived-gender labels)
  source     the source name ("celeba", "peta", …)
  identity   person id where the source has one ("" otherwise)
  path       the file's path inside the manual directory (for reports)
  subgroups  JSON object name → value (CelebA attributes, age, race, …) for subgroup reports
Files that are not decodable images are skipped at prepare time and listed with their reason
in the dataset's `metadata.json` under "bad_files". Every field but the image is also kept in
a per-split index (INDEX_FIELDS), read at start-up instead of the records.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any

import numpy as np
from PIL import Image

from gender_jax import cli
from gender_jax.data import preprocess

CLASS_NAMES = ("female", "male")
# Label spellings accepted in labels.csv and folder names (case-insensitive).
LABEL_ALIASES = {"female": 0, "f": 0, "woman": 0, "women": 0, "0": 0,
                 "male": 1, "m": 1, "man": 1, "men": 1, "1": 1}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
JPEG_QUALITY = 95
# The record fields start-up needs (balancing, exclusion, split listing): never the image.
INDEX_FIELDS = ("label", "path", "identity", "subgroups")


class AnnotationError(cli.UsageError, ValueError):
  """A malformed annotation file; the message names the file, the line and the reason."""

  def __init__(self, path, line: int | str | None, reason: str):
    # `line` is a 1-based line number for text files, or a field name for .mat files.
    self.path, self.line, self.reason = str(path), line, reason
    if isinstance(line, int):
      where = f"{path}:{line}"
    else:
      where = f"{path} [{line}]" if line else str(path)
    super().__init__(f"{where}: {reason}")


class Skips:
  """The annotation lines a reader could not use, each with its file:line and reason.

  Published annotations have quirks (a person with no gender, a line listed twice): one bad
  line is skipped and listed in the prepare summary, as a bad image is, instead of stopping
  the whole dataset. `strict` raises the first one as an AnnotationError instead.
  """

  def __init__(self, strict: bool = False, root: str = ""):
    self.strict, self.root, self.items = strict, root, []

  def add(self, path, line: int | str | None, reason: str) -> None:
    if self.strict:
      raise AnnotationError(path, line, reason)
    where = relpath(str(path), self.root) if self.root else str(path)
    if isinstance(line, int):
      where = f"{where}:{line}"
    elif line:
      where = f"{where} [{line}]"
    self.items.append({"where": where, "reason": reason})


def open_text(path: str):
  """An annotation text file, with a UTF-8 byte-order mark dropped (CRLF is split away by
  str.split); undecodable bytes become U+FFFD so the line is reported, not the file."""
  return open(path, encoding="utf-8-sig", errors="replace")


class BadImage(ValueError):
  """A file that is missing, unreadable or not a decodable image."""


@dataclasses.dataclass
class Entry:
  """One image as a source's annotation describes it, before it is read."""
  path: str                       # absolute path on disk
  key: str                        # path relative to the manual dir: unique, reported
  label: int
  identity: str = ""
  subgroups: dict[str, Any] = dataclasses.field(default_factory=dict)
  split: str | None = None        # the official split, where the source has one


def features():
  import tensorflow_datasets as tfds
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
      "source": tfds.features.Text(),
      "identity": tfds.features.Text(),
      "path": tfds.features.Text(),
      "subgroups": tfds.features.Text(),
  })


def parse_label(value: str) -> int | None:
  return LABEL_ALIASES.get(str(value).strip().lower())


def _stored_dims(w: int, h: int, max_side: int, store_size: int) -> tuple[int, int]:
  """(w, h) after the caps: longer side ≤ max_side, shorter side ≤ store_size (aspect kept)."""
  scale = 1.0
  if max_side and max(w, h) > max_side:
    scale = max_side / max(w, h)
  if store_size and min(w, h) * scale > store_size:
    scale = store_size / min(w, h)
  if scale == 1.0:
    return w, h
  return max(1, round(w * scale)), max(1, round(h * scale))


def encode_image_file(path: str, max_side: int = 0, store_size: int = 0) -> bytes:
  """Reads and fully decodes `path`; returns JPEG bytes, raising BadImage on any failure.

  Baseline JPEGs in RGB or grayscale are returned unchanged (no generation loss); PNG, BMP,
  CMYK, EXIF-rotated or oversize images (longer side over `max_side`, shorter side over
  `store_size`; 0: no cap) are re-encoded, downscaled with the aspect kept.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise BadImage(f"unreadable: {e.strerror or e}") from None
  if not data:
    raise BadImage("empty file (0 bytes)")
  try:
    with preprocess.open_image(data) as im:
      fmt = im.format
      orient = preprocess.orientation(im) if fmt == "JPEG" else 1
      w, h = im.size
      if orient in (5, 6, 7, 8):  # stored sideways: the caps apply to the upright image
        w, h = h, w
      dims = _stored_dims(w, h, max_side, store_size)
      too_big = dims != (w, h)
      if fmt == "JPEG" and im.mode in ("RGB", "L") and orient == 1 and not too_big:
        im.load()  # full decode: a truncated file fails here, not during training
        return data
      if too_big and store_size and fmt == "JPEG":
        # DCT-domain downscale at decode (1/2, 1/4, 1/8): never below the stored size.
        sideways = orient in (5, 6, 7, 8)
        im.draft("RGB", (dims[1], dims[0]) if sideways else dims)
      rgb = Image.fromarray(preprocess.to_rgb(im))
  except preprocess.ImageError as e:
    raise BadImage(str(e)) from None
  except (OSError, SyntaxError, ValueError) as e:  # from the full decode of a kept JPEG
    raise BadImage(f"corrupt or truncated image: {e}") from None
  if too_big and store_size:
    # Antialiased (PIL filters widen when shrinking); stored once, so the better filter.
    rgb = rgb.resize(dims, Image.LANCZOS)
  elif too_big:
    rgb.thumbnail((max_side, max_side), Image.BILINEAR)
  out = io.BytesIO()
  rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
  return out.getvalue()


def to_example(entry: Entry, image: bytes, source: str) -> dict[str, Any]:
  return dict(image=image, label=int(entry.label), source=source, identity=str(entry.identity),
              path=entry.key, subgroups=json.dumps(entry.subgroups, sort_keys=True))


def from_record(record: dict[str, Any]) -> dict[str, Any]:
  """A record read back from array_record → the pipeline's record dict (str fields, dict)."""
  def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)
  image = record["image"]
  if isinstance(image, np.ndarray) and image.dtype == object:
    image = image.item()
  return {"image": image, "label": int(record["label"]), "source": text(record["source"]),
          "identity": text(record["identity"]), "path": text(record["path"]),
          "subgroups": json.loads(text(record["subgroups"]) or "{}")}


def from_example(serialized: bytes, metadata: bool = True) -> dict[str, Any]:
  """One serialized record of `features()` → the pipeline's record dict, as `from_record`
  gives after TFDS's own parse, but read straight from the tf.Example: TFDS's generic numpy
  conversion costs ~0.1 ms a record in Python, a quarter of a small image's whole host
  cost in training (benchmarks/README.md, "Input pipeline"). `metadata=False`: image,
  label, source and path only (what training reads; no JSON to parse)."""
  from gender_jax.data.example_proto import Example
  f = Example.FromString(serialized).features.feature

  def text(key):
    return f[key].bytes_list.value[0].decode()
  record = {"image": f["image"].bytes_list.value[0],
            "label": int(f["label"].int64_list.value[0]), "source": text("source"),
            "path": text("path")}
  if metadata:
    record.update(identity=text("identity"), subgroups=json.loads(text("subgroups") or "{}"))
  return record


def index_fields(record: dict[str, Any]) -> dict[str, Any]:
  """A record as `from_example` parses it → its INDEX_FIELDS (the image is dropped).

  `subgroups` stays JSON text: 40 CelebA attributes as a dict per record would make the
  index of 200k records take a gigabyte in every process; it is decoded where it is used.
  """
  r = dict(record, subgroups=json.dumps(record["subgroups"], sort_keys=True))
  return {k: r[k] for k in INDEX_FIELDS}


def relpath(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, "/")


def record_meta(records, index: int) -> dict[str, Any]:
  """A record's fields without its image (the records' own `meta` where they have one)."""
  if hasattr(records, "meta"):
    return records.meta(index)
  return {k: v for k, v in records[index].items() if k != "image"}
