"""One data-source contract, dispatched by name.

A source is a random-access sequence (grain's `RandomAccessDataSource` protocol) of records
`{"image": JPEG bytes or uint8 HxWx3, "label": 0 female | 1 male, "source": name, …}`.
`config.data.sources` maps a source name to its options and mixing `weight`; a name may carry
a tag after a colon ("folder:office", "folder:home") to use one kind several times.

Prepared sources (celeba, peta, rap, pa100k, muct, folder) take `manual_dir` (a folder also takes
`path`), optional `data_dir`, and prepare themselves on first use (see prepare.py);
`config.data.folder=PATH` is a shortcut for one folder source. "prepared" opens a prepared
source's folder copied from elsewhere (`path`: the folder of its .array_record files) and
needs neither TFDS nor TensorFlow. "synthetic" is generated on
the fly, needs no files, and is what the demo uses.

Start-up (counts, balancing, exclusion, the split listing) reads a source's metadata
`columns`, never its images: a prepared split answers from its index (prepare.py), and each
builder and split is opened once per process.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import ml_collections

from gender_jax.data import synthetic

# name → factory(split, options, config) → source. Dataset modules register themselves here.
REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str):
  def wrap(factory):
    REGISTRY[name] = factory
    return factory
  return wrap


@register("synthetic")
def _synthetic(split: str, options: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  if options.get("prepared", False):  # the same set, written as JPEG array_record
    return _prepared("synthetic")(split, options, config)
  size = options.get(f"{split}_size", options.get("train_size") if split == "train" else 512)
  return synthetic.SyntheticSource(split, size=size, image_size=options.get("image_size", 40),
                                   seed=options.get("seed", 0))


# The kinds of input a model can be trained on: faces (square crops, framed on a face) or
# persons (whole-body crops, tall). A bundle records which it saw (`inputs`), so `--faces
# auto` classifies a person crop whole instead of hunting it for a face.
INPUT_KINDS = ("faces", "persons")
PERSON_SOURCES = ("peta", "rap", "pa100k")


def input_kind(name: str, options=None) -> str:
  """A source's `inputs` option ("faces" or "persons"), else its kind's: the pedestrian
  datasets hold persons, the rest (CelebA, MUCT, folders, synthetic) faces."""
  value = (options or {}).get("inputs") if options is not None else None
  if value:
    if value not in INPUT_KINDS:
      raise ValueError(f"data.sources.{name}.inputs={value!r}: choose from {INPUT_KINDS}")
    return value
  return "persons" if name.split(":")[0] in PERSON_SOURCES else "faces"


def input_kinds(config) -> dict[str, str]:
  """name → "faces" | "persons" for each of the config's sources (the folder shortcut too)."""
  return {name: input_kind(name, source_options(name, config))
          for name in configured_sources(config)}


def _data_dir(options, config) -> str | None:
  return options.get("data_dir") or config.data.get("data_dir") or None


def store_size(options, config) -> int:
  """The stored shorter side for this source: its `store_size` option, else
  `config.data.store_size`; 0 keeps the images as they are, -1 (or "auto") is ~1.15x
  data.image_size (prepare.store_size_for)."""
  from gender_jax.data import prepare
  default = config.data.get("store_size", 0)
  value = options.get("store_size", default) if options is not None else default
  if value == "auto" or value == -1:
    return prepare.store_size_for(config.data.image_size)
  try:
    return int(value or 0)
  except (TypeError, ValueError):
    raise ValueError(f"store_size={value!r}: give pixels (0 keeps the images as they are) "
                     "or -1 for ~1.15x data.image_size") from None


_BUILDERS: dict[str, Any] = {}  # preparing checks the folder's listing: once per process


def prepared_builder(kind: str, options, config):
  """The prepared TFDS builder behind a source (preparing it now if needed)."""
  from gender_jax.data import prepare
  if kind == "celeba" and options.get("from_catalog", False):
    return None
  if kind == "prepared":  # already prepared elsewhere: nothing to prepare, no TFDS
    if not options.get("path"):
      raise ValueError("prepared: give the prepared dataset's folder as `path`")
    return prepare.PreparedCopy(options.path)
  manual_dir = options.get("manual_dir") or options.get("path")
  args = dict(version=options.get("version"), store_size=store_size(options, config))
  key = json.dumps([kind, manual_dir, _data_dir(options, config), args], default=str)
  if key not in _BUILDERS:
    _BUILDERS[key] = prepare.prepare(kind, manual_dir, _data_dir(options, config), **args)
  return _BUILDERS[key]


_OPENED: dict[str, Any] = {}  # the trainer asks for the same split several times


def _prepared(kind: str):
  def factory(split, options, config):
    from gender_jax.data import prepare
    key = json.dumps([kind, split, options.to_dict() if hasattr(options, "to_dict") else options,
                      config.data.get("data_dir")], sort_keys=True, default=str)
    if key not in _OPENED:
      b = prepared_builder(kind, options, config)
      if b is None:
        from gender_jax.data import celeba  # TFDS's catalog: only where it is asked for
        _OPENED[key] = celeba.CatalogSource(split, _data_dir(options, config))
      else:
        _OPENED[key] = prepare.open_split(b, split, options.get("source_name", kind))
    return _OPENED[key]
  return factory


for _kind in ("celeba", "peta", "rap", "pa100k", "muct", "folder", "prepared"):
  register(_kind)(_prepared(_kind))


def source_options(name: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.data.sources[name], or the `config.data.folder` shortcut's implied options."""
  if name in config.data.sources:
    options = config.data.sources[name]
  elif name == "folder" and config.data.get("folder"):
    options = ml_collections.ConfigDict(dict(path=config.data.folder, weight=1.0))
  else:
    raise ValueError(f"no options for data source {name!r} in config.data.sources")
  options = ml_collections.ConfigDict(options.to_dict())
  if name == "folder" and not options.get("path") and config.data.get("folder"):
    options.path = config.data.folder  # the shortcut fills a configured folder source's path
  options.source_name = name  # the records' "source" field: the configured name, tag included
  return options


def get_source(name: str, split: str, config: ml_collections.ConfigDict):
  """The `split` of source `name` as configured in `config.data.sources[name]`.

  With `exclude=FILE` in the source's options (the list `python -m gender_jax.clean` writes:
  one `KEY<TAB>reason` per line, KEY the record's path), those records are left out.
  """
  base = name.split(":")[0]
  if base not in REGISTRY:
    raise ValueError(f"unknown data source {name!r}; known: {', '.join(sorted(REGISTRY))}")
  options = source_options(name, config)
  source = REGISTRY[base](split, options, config)
  if options.get("exclude"):
    source = Excluding(source, read_exclude_list(options.exclude))
  return source


def read_exclude_list(path: str) -> set[str]:
  keys = set()
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.rstrip("\n")
      if line.strip() and not line.startswith("#"):
        keys.add(line.split("\t", 1)[0])
  return keys


METADATA_FIELDS = ("label", "path", "identity", "subgroups")


def columns(source) -> dict[str, list]:
  """{label, path, identity, subgroups} → a list each, in record order; subgroups as JSON
  text (`Metadata` decodes them one record at a time).

  From the source's own `columns()` where it has them (prepared splits: no image is read);
  otherwise by reading its records (generated and in-memory sources).
  """
  if hasattr(source, "columns"):
    return source.columns()
  records = [source[i] for i in range(len(source))]
  out = {k: [r.get(k) for r in records] for k in METADATA_FIELDS}
  out["subgroups"] = [json.dumps(g or {}, sort_keys=True) for g in out["subgroups"]]
  return out


def training_reader(source):
  """`source`'s reader of training records (`training_record` where it has one: the
  metadata a training example does not need left unparsed), else its `__getitem__`."""
  return getattr(source, "training_record", source.__getitem__)


class Subset:
  """The records of `source` at `indices`, in that order (random access, grain protocol)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = [int(i) for i in indices]
    self._columns = None

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[self.indices[index]]

  def training_record(self, index: int):
    return training_reader(self.source)(self.indices[index])

  def __getstate__(self):
    return dict(self.__dict__, _columns=None)

  def columns(self) -> dict[str, list]:
    if self._columns is None:
      full = columns(self.source)
      self._columns = {k: [v[i] for i in self.indices] for k, v in full.items()}
    return self._columns


class Excluding(Subset):
  """A source without the records whose `path` is in `keys`."""

  def __init__(self, source, keys: set[str]):
    paths = columns(source)["path"]
    super().__init__(source, [i for i, p in enumerate(paths) if p not in keys])


class Metadata:
  """A source's records without their images, from its columns (for balancing)."""

  def __init__(self, source):
    self._columns = columns(source)
    self._len = len(source)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = {k: v[index] for k, v in self._columns.items()}
    record["subgroups"] = json.loads(record["subgroups"] or "{}")
    return record


def configured_sources(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{source name: mixing weight} for the training mixture."""
  sources = {name: float(opts.get("weight", 1.0)) for name, opts in config.data.sources.items()}
  if config.data.get("folder") and "folder" not in sources:
    sources["folder"] = 1.0
  if not sources:
    raise ValueError("config.data.sources is empty: name at least one data source "
                     "(or set config.data.folder)")
  if any(w < 0 for w in sources.values()) or not any(sources.values()):
    raise ValueError(f"source weights must be ≥ 0 and not all 0: {sources}")
  return {k: w for k, w in sources.items() if w > 0}


def bad_file_report(config: ml_collections.ConfigDict) -> dict[str, list[dict[str, str]]]:
  """{source name: [{path, reason}, …]} for every configured prepared source."""
  from gender_jax.data import prepare
  report = {}
  for name in configured_sources(config):
    base = name.split(":")[0]
    options = source_options(name, config)
    if base == "synthetic" and not options.get("prepared", False):
      continue
    b = prepared_builder(base, options, config)
    if b is not None:
      report[name] = prepare.bad_files(b)
  return report


def write_bad_file_report(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Writes WORKDIR/bad_files.json (the files skipped while preparing); returns their count."""
  report = bad_file_report(config)
  with open(os.path.join(workdir, "bad_files.json"), "w") as f:
    json.dump(report, f, indent=2)
  return sum(len(v) for v in report.values())


def write_split_listing(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/splits.csv (source,split,path,label) so every number can be reproduced."""
  import csv
  with open(os.path.join(workdir, "splits.csv"), "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["source", "split", "path", "label"])
    for name in configured_sources(config):
      for split in ("train", "validation", "test"):
        try:
          source = get_source(name, split, config)
        except (ValueError, KeyError):  # a source without this split
          continue
        if not hasattr(source, "columns") and (
            not hasattr(source, "__getitem__") or not len(source) or "path" not in source[0]):
          continue  # generated on the fly (synthetic): nothing to list
        c = columns(source)
        for path, label in zip(c["path"], c["label"]):
          out.writerow([name, split, path, label])
