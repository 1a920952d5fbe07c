"""Labelled data for evaluate, calibrate and clean: image folders and configured sources.

A folder is the layout of a user's own data: `ROOT/male/…`, `ROOT/female/…` (any depth) and an
optional `ROOT/labels.csv` whose `path` column (relative to ROOT) adds per-image fields such as
UTKFace's `age` and `race`, and optionally `split`. A configured source is any registered
source (`source:NAME[:SPLIT]`), configured by a run's `config.json`.

Records are `{"image": bytes | uint8 HxWx3, "label": 0|1, "source", "key", subgroup fields…}`;
`key` identifies the record in reports and exclude lists (a folder's relative path).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from gender_jax import cli
from gender_jax.data.schema import record_meta
from gender_jax.data.subgroups import (  # noqa: F401
    INFANT_MAX_AGE, MAX_SUBGROUP_VALUES, age_band, age_years, subgroup_fields)


@dataclasses.dataclass
class Dataset:
  name: str
  description: str
  records: Sequence[dict[str, Any]]


class FolderRecords:
  """Random-access records of a folder, listed as the "folder" data source lists it.

  Each record also carries the split the folder source assigns it (seeded, label-stratified),
  so cross-split duplicates can be found before training.
  """

  def __init__(self, root: str, name: str | None = None):
    from gender_jax.data import builder, folder, splits
    self.root = os.path.abspath(root)
    self.name = name or os.path.basename(self.root.rstrip("/"))
    entries, _ = folder.read_entries(self.root)
    split_of = {e.key: s for s, es in splits.assign(
        entries, builder.GenderBuilder.SPLIT_FRACTIONS, builder.GenderBuilder.SPLIT_SEED).items()
        for e in es}
    self.entries = sorted(entries, key=lambda e: e.key)
    self.splits = [split_of[e.key] for e in self.entries]

  def __len__(self):
    return len(self.entries)

  def meta(self, index: int) -> dict[str, Any]:
    """Everything but the image, without reading the file."""
    e = self.entries[index]
    return {**e.subgroups, "label": e.label, "source": self.name, "key": e.key, "path": e.key,
            "identity": e.identity, "split": self.splits[index]}

  def __getitem__(self, index: int) -> dict[str, Any]:
    try:
      with open(self.entries[index].path, "rb") as f:
        data = f.read()
    except OSError as e:
      from gender_jax.data.preprocess import ImageError
      raise ImageError(f"cannot read file: {e.strerror or e}") from None
    return {"image": data, **self.meta(index)}


class SourceRecords:
  """A configured source's split, with a `key` per record (NAME/SPLIT/INDEX)."""

  def __init__(self, source, name: str, split: str):
    self.source, self.name, self.split = source, name, split

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = dict(self.source[index])
    # Prepared sources keep subgroup fields in one dict; reports want them as fields.
    for k, v in (record.pop("subgroups", None) or {}).items():
      record.setdefault(k, v)
    record.setdefault("source", self.name)
    record.setdefault("key", record.get("path") or f"{self.name}/{self.split}/{index}")
    return record

  def meta(self, index: int) -> dict[str, Any]:
    return {k: v for k, v in self[index].items() if k != "image"}


class Concat:
  """Several record sequences as one, with per-record metadata."""

  def __init__(self, parts: Sequence):
    import numpy as np
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

  def __len__(self):
    return int(self.offsets[-1])

  def _locate(self, i):
    import numpy as np
    k = int(np.searchsorted(self.offsets, i, side="right") - 1)
    return self.parts[k], i - int(self.offsets[k])

  def __getitem__(self, i):
    part, j = self._locate(i)
    return part[j]

  def meta(self, i):
    part, j = self._locate(i)
    return record_meta(part, j)


def require_split(split: str, what: str = "--split") -> str:
  """A split every source has (train, validation, test), checked before any data is read."""
  from gender_jax.data.splits import DEFAULT_FRACTIONS  # every builder's split names
  if split not in DEFAULT_FRACTIONS:
    raise cli.UsageError(f"{what}: there is no split {split!r}; the splits are "
                         f"{', '.join(DEFAULT_FRACTIONS)}")
  return split


def load_one(spec: str, *, workdir: str | None = None, config_file: str | None = None,
             split: str = "test") -> Dataset:
  """One data argument: FOLDER, NAME=FOLDER, or source:NAME[:SPLIT]."""
  if spec.startswith("source:"):
    from gender_jax.data import sources
    parts = spec.split(":")
    name, split = parts[1], (parts[2] if len(parts) > 2 else split)
    require_split(split, spec)
    config = cli.run_config(workdir, config_file)
    if name not in config.data.sources:
      raise cli.UsageError(f"{spec}: source {name!r} is not configured in this run "
                       f"(configured: {', '.join(config.data.sources)})")
    return Dataset(f"{name}:{split}", spec,
                   SourceRecords(sources.get_source(name, split, config), name, split))
  name, _, path = spec.rpartition("=")
  from gender_jax.data import folder
  folder.require_folder(path, f"--data {spec}:")
  records = FolderRecords(path, name or None)
  return Dataset(records.name, os.path.abspath(path), records)


def load(specs: Sequence[str] | None, *, workdir: str | None = None,
         config_file: str | None = None, split: str = "test") -> list[Dataset]:
  """Data arguments → datasets; with none, the run's configured sources at `split`."""
  if specs:
    return [load_one(s, workdir=workdir, config_file=config_file, split=split) for s in specs]
  config = cli.run_config(workdir, config_file)
  from gender_jax.data import sources
  out = []
  for name in sources.configured_sources(config):
    out.append(load_one(f"source:{name}:{split}", workdir=workdir, config_file=config_file))
  return out
