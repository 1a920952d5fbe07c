"""PA-100K from `annotation.mat`: official 80k/10k/10k train/val/test, `Female` at index 0.

Manual dir: annotation.mat (or annotation/annotation.mat) and the images in data/ (or
release_data/release_data/, images/, or the manual dir itself). No identities.
"""
from __future__ import annotations

import os

from gender_jax.data import builder, matfile, schema

SPLITS = {"train": "train", "val": "validation", "test": "test"}
AGES = ("AgeOver60", "Age18-60", "AgeLess18")


def _image_dir(manual_dir: str) -> str:
  for d in ("data", "release_data/release_data", "images"):
    if os.path.isdir(os.path.join(manual_dir, d)):
      return os.path.join(manual_dir, d)
  return manual_dir


def read_entries(manual_dir: str, skips: schema.Skips | None = None):
  path = os.path.join(manual_dir, "annotation.mat")
  if not os.path.exists(path):
    path = os.path.join(manual_dir, "annotation", "annotation.mat")
  ann = matfile.load(path)
  attrs = matfile.strings(path, matfile.field(path, ann, "attributes", ""), "attributes")
  if attrs[0] != "Female":
    raise schema.AnnotationError(path, "attributes", f"expected 'Female' first, found {attrs[0]!r}")
  skips = skips if skips is not None else schema.Skips()
  images = _image_dir(manual_dir)
  entries, seen = [], {}
  for prefix, split in SPLITS.items():
    files = matfile.strings(path, matfile.field(path, ann, f"{prefix}_images_name", ""),
                            f"{prefix}_images_name")
    labels = matfile.matrix(path, matfile.field(path, ann, f"{prefix}_label", ""), len(files),
                            f"{prefix}_label")
    for row, (file, values) in enumerate(zip(files, labels)):
      where = f"{prefix}_label row {row + 1}"
      if values[0] not in (0, 1):
        skips.add(path, where, f"{file}: Female must be 0 or 1, got {values[0]}")
        continue
      if file in seen:  # one image in two lists (or twice in one) would leak or double
        skips.add(path, where, f"{file} is listed before, at {seen[file]} (the first is kept)")
        continue
      seen[file] = where
      ages = [a for a in AGES if a in attrs and values[attrs.index(a)] == 1]
      full = os.path.join(images, file)
      entries.append(schema.Entry(path=full, key=schema.relpath(full, manual_dir),
                                  label=1 - int(values[0]), split=split,
                                  subgroups={"age": ages[0]} if ages else {}))
  return entries, []


class GenderPa100k(builder.GenderBuilder):
  """PA-100K pedestrians; label from `Female`; official train/val/test."""
  name = "gender_pa100k"
  SOURCE = "pa100k"
  HOMEPAGE = "https://github.com/xh-liu/HydraPlus-Net"
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place annotation.mat and data/ in the manual dir."

  def _entries(self, manual_dir):
    return read_entries(manual_dir, self.skips)
