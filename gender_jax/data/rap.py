"""RAP v1 and v2 (Richly Annotated Pedestrians) from `RAP_annotation.mat`.

v1: struct `RAP_annotation` with `imagesname`, `label` (N×92), `attribute_eng` (`Femal` first)
    and `partion` (5 random train/test partitions, 1-based): the first partition is used,
    validation is carved from its train part. No identities.
v2: struct `RAP_annotation` with `name`, `data` (N×152), `attribute` (`Femal` first) and
    `person_identity`: split seeded and identity-disjoint (the official partitions are random
    per image, so they leak identities between train and test).
Gender value 1 = female, 0 = male; 2 = uncertain → excluded (counted in the metadata).
Images are in `RAP_dataset/` (v1) or `RAP_dataset/` / `images/` (v2), or the manual dir itself.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from gender_jax.data import builder, matfile, schema

ANNOTATION = "RAP_annotation.mat"
FEMALE_NAMES = ("Femal", "Female")


def _image_dir(manual_dir: str) -> str:
  for d in ("RAP_dataset", "images"):
    if os.path.isdir(os.path.join(manual_dir, d)):
      return os.path.join(manual_dir, d)
  return manual_dir


def _age(names: list[str], row: np.ndarray) -> dict:
  ages = [n for n, v in zip(names, row) if n.startswith("Age") and v == 1]
  return {"age": ages[0]} if ages else {}


def read_entries(manual_dir: str, version: int, skips: schema.Skips | None = None):
  path = os.path.join(manual_dir, ANNOTATION)
  if not os.path.exists(path):
    path = os.path.join(manual_dir, "RAP_annotation", ANNOTATION)
  ann = matfile.field(path, matfile.load(path), "RAP_annotation", "")
  names_field, data_field, attr_field = (("imagesname", "label", "attribute_eng") if version == 1
                                         else ("name", "data", "attribute"))
  files = matfile.strings(path, matfile.field(path, ann, names_field, "RAP_annotation"),
                          names_field)
  attrs = matfile.strings(path, matfile.field(path, ann, attr_field, "RAP_annotation"), attr_field)
  data = matfile.matrix(path, matfile.field(path, ann, data_field, "RAP_annotation"), len(files),
                        data_field)
  if attrs[0] not in FEMALE_NAMES:
    raise schema.AnnotationError(path, attr_field, f"expected 'Femal' first, found {attrs[0]!r}")
  split_of = [None] * len(files)
  identity = [""] * len(files)
  if version == 1:
    part = np.ravel(np.asarray(matfile.field(path, ann, "partion", "RAP_annotation"),
                               dtype=object))[0]
    for split, key in (("train", "train_index"), ("test", "test_index")):
      for i in matfile.indices(path, matfile.field(path, part, key, "partion(1)"), len(files),
                               f"partion(1).{key}"):
        split_of[i] = split
  else:
    ids = np.ravel(matfile.matrix(path, matfile.field(path, ann, "person_identity",
                                                      "RAP_annotation"),
                                  len(files), "person_identity"))
    identity = [str(int(v)) if v >= 0 else "" for v in ids]  # negative: identity unknown
  skips = skips if skips is not None else schema.Skips()
  images = _image_dir(manual_dir)
  entries, excluded, seen = [], 0, {}
  for i, (file, row) in enumerate(zip(files, data)):
    if row[0] == 2:  # annotators were unsure of the gender: counted, not listed
      excluded += 1
      continue
    if row[0] not in (0, 1):
      skips.add(path, f"{data_field} row {i + 1}", f"{file}: {attrs[0]} must be 0, 1 or 2 "
                f"(uncertain), got {row[0]}")
      continue
    if file in seen:
      skips.add(path, f"{data_field} row {i + 1}", f"{file} is listed before, at row "
                f"{seen[file]} (the first is kept)")
      continue
    seen[file] = i + 1
    if version == 1 and split_of[i] is None:
      continue  # outside the partition (v1 partitions cover every image)
    full = os.path.join(images, file)
    entries.append(schema.Entry(path=full, key=schema.relpath(full, manual_dir),
                                label=1 - int(row[0]), identity=identity[i],
                                split=split_of[i], subgroups=_age(attrs, row)))
  return entries, excluded


class GenderRap(builder.GenderBuilder):
  """RAP pedestrians (v1 or v2); label from `Femal`; uncertain gender excluded."""
  name = "gender_rap"
  SOURCE = "rap"
  HOMEPAGE = "https://www.rapdataset.com/"
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="v1", description="RAP v1 (41,585 images)"),
                     tfds.core.BuilderConfig(name="v2", description="RAP v2 (84,928 images)")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Place {ANNOTATION} and RAP_dataset/ in the manual dir; "
                                  "choose the builder config v1 or v2 to match the file.")

  def _entries(self, manual_dir):
    entries, excluded = read_entries(manual_dir, 1 if self.builder_config.name == "v1" else 2,
                                     self.skips)
    self.info.metadata["excluded_uncertain_gender"] = excluded
    return entries, []
