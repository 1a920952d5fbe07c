"""CelebA from its published files (or the TFDS catalog builder when it can download).

Manual dir layout (as distributed):
  img_align_celeba/000001.jpg …   (also accepted: img_align_celeba/img_align_celeba/)
  list_attr_celeba.txt            count line, 40 attribute names, then "file v1 … v40" (±1)
  list_eval_partition.txt         "file 0|1|2"  (train / validation / test, identity-disjoint)
  identity_CelebA.txt             "file person_id"
Label: the `Male` attribute. The other 39 attributes are kept as subgroup fields (0/1).
"""
from __future__ import annotations

import os

from gender_jax.data import builder, schema

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
PARTITIONS = {"0": "train", "1": "validation", "2": "test"}


def _lines(path):
  if not os.path.exists(path):
    raise schema.AnnotationError(path, None, "file not found")
  with schema.open_text(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        yield number, line.split()


def read_attributes(path: str, skips: schema.Skips | None = None
                    ) -> tuple[list[str], dict[str, list[int]]]:
  """list_attr_celeba.txt → (attribute names, {file: [0/1 per attribute]}). A row with the
  wrong number of fields, a value other than ±1 or a file listed before is skipped and listed
  in `skips`; a broken header (count or names line) stops."""
  skips = skips if skips is not None else schema.Skips()
  lines = _lines(path)
  try:
    (n1, first), (n2, names) = next(lines), next(lines)
  except StopIteration:
    raise schema.AnnotationError(path, None, "expected a count line and a names line") from None
  if len(first) != 1 or not first[0].isdigit():
    raise schema.AnnotationError(path, n1, f"first line must be the image count, got {first}")
  if "Male" not in names:
    raise schema.AnnotationError(path, n2, f"no 'Male' attribute among {len(names)} names")
  rows: dict[str, list[int]] = {}
  listed = 0
  for number, tokens in lines:
    listed += 1
    if len(tokens) != len(names) + 1:
      skips.add(path, number, f"expected a file name and {len(names)} values, got "
                f"{len(tokens)} fields")
      continue
    if tokens[0] in rows:
      skips.add(path, number, f"duplicate file {tokens[0]!r} (the first line is kept)")
      continue
    try:
      values = [int(v) for v in tokens[1:]]
    except ValueError:
      values = []
    if len(values) != len(names) or any(v not in (-1, 1) for v in values):
      skips.add(path, number, f"{tokens[0]}: attribute values must be -1 or 1")
      continue
    rows[tokens[0]] = [int(v == 1) for v in values]
  if listed != int(first[0]):
    raise schema.AnnotationError(path, n1, f"header says {first[0]} images, found {listed}")
  return names, rows


def read_pairs(path: str, allowed: set[str] | None = None,
               skips: schema.Skips | None = None) -> dict[str, str]:
  """Two-column files (partition, identity) → {file: value}; a malformed row, a value outside
  `allowed` or a repeated file is skipped and listed in `skips`."""
  skips = skips if skips is not None else schema.Skips()
  out = {}
  for number, tokens in _lines(path):
    if len(tokens) != 2:
      skips.add(path, number, f"expected 'file value', got {len(tokens)} fields")
    elif allowed is not None and tokens[1] not in allowed:
      skips.add(path, number, f"{tokens[0]}: value {tokens[1]!r} not in {sorted(allowed)}")
    elif tokens[0] in out:
      skips.add(path, number, f"duplicate file {tokens[0]!r} (the first line is kept)")
    else:
      out[tokens[0]] = tokens[1]
  return out


def image_dir(manual_dir: str) -> str:
  for d in ("img_align_celeba/img_align_celeba", "img_align_celeba"):
    if os.path.isdir(os.path.join(manual_dir, d)):
      return os.path.join(manual_dir, d)
  raise FileNotFoundError(f"CelebA: no img_align_celeba/ folder in {manual_dir}")


def read_entries(manual_dir: str, skips: schema.Skips | None = None):
  skips = skips if skips is not None else schema.Skips()
  names, attrs = read_attributes(os.path.join(manual_dir, ATTR_FILE), skips)
  part_path, id_path = (os.path.join(manual_dir, f) for f in (PARTITION_FILE, IDENTITY_FILE))
  partitions = read_pairs(part_path, set(PARTITIONS), skips)
  identities = read_pairs(id_path, None, skips)
  images = image_dir(manual_dir)
  male = names.index("Male")
  entries = []
  for name, values in attrs.items():
    missing = [p for p, table in ((part_path, partitions), (id_path, identities))
               if name not in table]
    if missing:  # its split or its identity unknown: it could leak across splits
      skips.add(missing[0], None, f"{name} (listed in {ATTR_FILE}) has no usable line")
      continue
    entries.append(schema.Entry(
        path=os.path.join(images, name), key=schema.relpath(os.path.join(images, name), manual_dir),
        label=values[male], identity=identities[name], split=PARTITIONS[partitions[name]],
        subgroups={a: v for a, v in zip(names, values) if a != "Male"}))
  return entries, []


class GenderCeleba(builder.GenderBuilder):
  """CelebA aligned faces; label from the `Male` attribute; official identity-disjoint split."""
  name = "gender_celeba"
  SOURCE = "celeba"
  HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Place img_align_celeba/, {ATTR_FILE}, {PARTITION_FILE} and "
                                  f"{IDENTITY_FILE} in the manual dir.")

  def _entries(self, manual_dir):
    return read_entries(manual_dir, self.skips)


class CatalogSource:
  """The TFDS catalog's `celeb_a` (downloads when it can) mapped to the one record schema."""

  SPLITS = {"train": "train", "validation": "validation", "test": "test"}

  def __init__(self, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds
    b = tfds.builder("celeb_a", data_dir=data_dir, file_format="array_record")
    b.download_and_prepare()
    self._ds = b.as_data_source(self.SPLITS[split],
                                decoders={"image": tfds.decode.SkipDecoding()})

  def __len__(self):
    return len(self._ds)

  def __getitem__(self, index):
    r = self._ds[index]
    attrs = {k: int(bool(v)) for k, v in r["attributes"].items()}
    return {"image": r["image"], "label": attrs.pop("Male"), "source": "celeba",
            "identity": "", "path": "", "subgroups": attrs}
