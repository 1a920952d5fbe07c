"""Prepare a source once (manual dir → array_record), then open its splits as grain sources.

Prepared datasets live under a data dir (`options.data_dir`, else `config.data.data_dir`, else
$GENDER_JAX_DATA_DIR, else ~/gender_jax_data). A folder is cached under a key made from its
path and listing (names, sizes, mtimes), so editing the folder re-prepares it and an
unchanged folder is reused. Preparation holds a file lock: several processes (one per host
or per GPU) asking for the same source prepare it once.

`store_size` (pixels) caps the shorter side of the stored images: decode cost grows with the
pixels (a 1024 px photo stored for 224 px training has ~15x fewer), paid on every epoch. It
is part of the cache key: each size is prepared once, next to the originals.

Beside each split's array_record files a small index (`gender_index-SPLIT.json`: label, path,
identity and subgroups of every record, in record order) is written once, so that balancing,
exclusion lists and the split listing never read or parse the image bytes at start-up.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib
import json
import logging
import math
import os
from typing import Any

KINDS = {  # source kind → (module, builder class name)
    "celeba": ("gender_jax.data.celeba", "GenderCeleba"),
    "peta": ("gender_jax.data.peta", "GenderPeta"),
    "rap": ("gender_jax.data.rap", "GenderRap"),
    "pa100k": ("gender_jax.data.pa100k", "GenderPa100k"),
    "folder": ("gender_jax.data.folder", "GenderFolder"),
    "muct": ("gender_jax.data.muct", "GenderMuct"),
    "synthetic": ("gender_jax.data.synthetic", None),
}


def default_data_dir() -> str:
  return os.environ.get("GENDER_JAX_DATA_DIR") or os.path.expanduser("~/gender_jax_data")


# Default stored size: this much above the largest training size, so that a random-resized
# crop of up to ~3/4 of the image's area is still resized down (or kept), not up.
STORE_MARGIN = 1.15


def store_size_for(image_sizes) -> int:
  """The stored shorter side for training at `image_sizes` (an int or several): ~1.15x the
  largest."""
  sizes = [int(s) for s in (image_sizes if hasattr(image_sizes, "__iter__") else [image_sizes])]
  if not sizes or min(sizes) < 1:
    raise ValueError(f"training sizes must be positive pixel counts, got {image_sizes!r}")
  return int(math.ceil(STORE_MARGIN * max(sizes)))


def builder_class(kind: str):
  if kind not in KINDS:
    raise ValueError(f"unknown source kind {kind!r}; known: {', '.join(KINDS)}")
  module, cls = KINDS[kind]
  module = importlib.import_module(module)
  return module.create_builder_class() if cls is None else getattr(module, cls)


def create_builder(kind: str, manual_dir: str | None, data_dir: str | None = None,
                   version: str | None = None, store_size: int = 0, strict: bool = False):
  """The builder for `kind`, with its data dir resolved (a folder gets its own cache key, a
  stored size its own directory). `strict`: the first unusable annotation line stops the
  preparation instead of being skipped and listed."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
  store_size = int(store_size or 0)
  if store_size < 0:
    raise ValueError(f"store_size={store_size}: give the stored shorter side in pixels "
                     "(0 keeps the images as they are)")
  if store_size:
    data_dir = os.path.join(data_dir, f"stored_{store_size}px")
  if manual_dir:
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(manual_dir):
      raise FileNotFoundError(f"{kind}: manual dir {manual_dir} does not exist")
  elif kind != "synthetic":
    raise ValueError(f"{kind}: give the dataset's folder as `manual_dir` (or `path`)")
  if kind == "folder":
    from gender_jax.data import folder
    data_dir = os.path.join(data_dir, "folders", folder.content_key(manual_dir))
  kwargs: dict[str, Any] = dict(data_dir=data_dir, file_format="array_record")
  if kind == "rap":
    kwargs["config"] = f"v{str(version or 2).lstrip('v')}"
  b = builder_class(kind)(**kwargs)
  b._gender_manual_dir = manual_dir  # pylint: disable=protected-access
  b._gender_store_size = store_size  # read by GenderBuilder._generate_examples
  b._gender_strict = bool(strict)  # read by GenderBuilder._split_generators
  return b


@contextlib.contextmanager
def _lock(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class _QuietTFDS(logging.Filter):
  """Drops TFDS's notices below ERROR ("Variant folder … has no dataset_info.json" before a
  first prepare): they read like problems, and prepare logs what it does itself."""

  def filter(self, record):
    return "/tensorflow_datasets/" not in record.pathname or record.levelno >= logging.ERROR


def _quiet_tfds(tfds) -> None:
  # tqdm bars write raw cursor codes into log files; the split counts are printed after.
  tfds.disable_progress_bar()
  # TFDS print()s "Downloading and preparing dataset…" although a local source downloads
  # nothing; the "preparing KIND from DIR" line below says what happens.
  tfds.core.DatasetBuilder._log_download_bytes = lambda self: None
  tfds.core.DatasetBuilder._log_download_done = lambda self: None
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _QuietTFDS) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietTFDS())


def prepare(kind: str, manual_dir: str | None, data_dir: str | None = None, *,
            version: str | None = None, overwrite: bool = False, store_size: int = 0,
            strict: bool = False):
  """Prepares the source if it is not prepared yet; returns its builder.

  `store_size`: cap on the stored images' shorter side in pixels (aspect kept; 0: as they
  are); `store_size_for(training sizes)` gives the default margin. `strict`: stop at the first
  unusable annotation line (an AnnotationError) instead of skipping and listing it; it
  applies when the source is prepared, not to a copy prepared before.
  """
  import tensorflow_datasets as tfds
  _quiet_tfds(tfds)
  b = create_builder(kind, manual_dir, data_dir, version, store_size, strict)
  with _lock(os.path.join(os.fspath(b.data_path.parent), ".prepare.lock")):
    if overwrite or not b.is_prepared():
      logging.info("preparing %s from %s into %s", kind, manual_dir, b.data_path)
      mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else
              tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, download_mode=mode))
      # Re-open so the builder reads back what was written (splits, metadata).
      b = create_builder(kind, manual_dir, data_dir, version, store_size)
      for split in b.info.splits:  # the one pass over the records that reads the images
        write_index(os.fspath(b.data_path), b.name, split)
  return b


def metadata(b) -> dict[str, Any]:
  path = os.path.join(os.fspath(b.data_path), "metadata.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def bad_files(b) -> list[dict[str, str]]:
  return sorted(metadata(b).get("bad_files", []), key=lambda x: x["path"])


def bad_annotations(b) -> list[dict[str, str]]:
  """The annotation lines skipped while preparing: {where (file:line), reason}, in file order."""
  return list(metadata(b).get("bad_annotations", []))


INDEX_FILE = "gender_index-{split}.json"
INDEX_VERSION = 2  # 2: subgroups as JSON text


def _split_files(data_path: str, builder_name: str, split: str) -> list[list]:
  """(name, size, mtime) of the split's array_record shards: what the index was made from."""
  pattern = os.path.join(glob.escape(data_path), f"{builder_name}-{split}.array_record*")
  out = []
  for path in sorted(glob.glob(pattern)):
    st = os.stat(path)
    out.append([os.path.basename(path), st.st_size, st.st_mtime_ns])
  return out


def _as_data_source(data_path: str, split: str, name: str):
  """TFDS's own reader of the split (its generic parse): what the pipeline's records are
  checked against in tests."""
  import tensorflow_datasets as tfds
  b = tfds.builder_from_directory(data_path)
  if split not in b.info.splits:
    raise ValueError(f"{name}: no split {split!r} in {data_path} (has {sorted(b.info.splits)})")
  return b.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def _serialized_records(data_path: str, builder_name: str, split: str, name: str):
  """The split's serialized records in TFDS's order, read with array_record alone: training
  and indexing need neither TFDS nor TensorFlow on the host (a GPU host may have neither)."""
  from array_record.python import array_record_data_source
  pattern = os.path.join(glob.escape(data_path), f"{builder_name}-*.array_record*")
  shards = sorted(glob.glob(pattern))
  mine = [p for p in shards if os.path.basename(p).startswith(f"{builder_name}-{split}.")]
  if not mine:
    found = {os.path.basename(p)[len(builder_name) + 1:].split(".array_record")[0]
             for p in shards}
    raise ValueError(f"{name}: no split {split!r} in {data_path} (has {sorted(found)})")
  # Shards are named NAME-SPLIT.array_record-00000-of-0000N: sorted is TFDS's record order.
  return array_record_data_source.ArrayRecordDataSource(mine)


def write_index(data_path: str, builder_name: str, split: str) -> dict[str, list]:
  """Reads every record of the split once and writes its index; returns the columns.

  A read-only data dir is fine: the index is then kept in memory for this process only.
  """
  from gender_jax.data import schema
  ds = _serialized_records(data_path, builder_name, split, builder_name)
  columns: dict[str, list] = {k: [] for k in schema.INDEX_FIELDS}
  chunk = 1024
  for lo in range(0, len(ds), chunk):
    for raw in ds.__getitems__(list(range(lo, min(lo + chunk, len(ds))))):
      for k, v in schema.index_fields(schema.from_example(raw)).items():
        columns[k].append(v)
  doc = dict(version=INDEX_VERSION, files=_split_files(data_path, builder_name, split),
             num_records=len(ds), columns=columns)
  path = os.path.join(data_path, INDEX_FILE.format(split=split))
  try:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(doc, f)
    os.replace(tmp, path)  # readers never see half a file
  except OSError as e:
    logging.warning("could not write the record index %s (%s); it is rebuilt on each start",
                    path, e.strerror or e)
  return columns


def read_index(data_path: str, builder_name: str, split: str, name: str = "") -> dict[str, list]:
  """The split's columns from its index, written now if it is missing or out of date."""
  path = os.path.join(data_path, INDEX_FILE.format(split=split))
  files = _split_files(data_path, builder_name, split)
  if not files:  # no such split: the same one-line error as opening it
    _serialized_records(data_path, builder_name, split, name or builder_name)
  try:
    with open(path) as f:
      doc = json.load(f)
    if doc.get("version") == INDEX_VERSION and doc.get("files") == files:
      return doc["columns"]
  except (OSError, ValueError):
    pass
  logging.info("indexing %s:%s once (labels and metadata, read at start-up)", builder_name,
               split)
  return write_index(data_path, builder_name, split)


class RecordSource:
  """One prepared split as a grain random-access source of pipeline records.

  Its length and its metadata columns (`columns()`) come from the split's index, so opening
  one reads no record; the array_record files are opened on the first record read, which
  also keeps it small to pickle into grain worker processes.
  """

  def __init__(self, data_path: str, builder_name: str, split: str, name: str):
    self.data_path, self.builder_name, self.split, self.name = data_path, builder_name, split, name
    self._ds = None
    self._columns = read_index(data_path, builder_name, split, name)
    self._len = len(self._columns["label"])

  def _open(self):
    if self._ds is None:
      self._ds = _serialized_records(self.data_path, self.builder_name, self.split, self.name)
    return self._ds

  def __getstate__(self):
    # Workers read records, not columns: the index stays in the parent process.
    return {k: v for k, v in self.__dict__.items() if k not in ("_ds", "_columns")} | {
        "_ds": None, "_columns": None}

  def columns(self) -> dict[str, list]:
    """{label, path, identity, subgroups (JSON text)} → one list each, in record order (no
    image read)."""
    if self._columns is None:
      self._columns = read_index(self.data_path, self.builder_name, self.split, self.name)
    return self._columns

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._read(index, metadata=True)

  def training_record(self, index: int) -> dict[str, Any]:
    """Image, label, source and path only: what a training example needs."""
    return self._read(index, metadata=False)

  def _read(self, index: int, metadata: bool) -> dict[str, Any]:
    from gender_jax.data import schema
    # The serialized record from array_record, parsed here rather than by TFDS (4x faster).
    record = schema.from_example(self._open()[int(index)], metadata)
    record["source"] = self.name
    return record

  def __repr__(self):
    return f"RecordSource({self.name}:{self.split}, {self._len} records, {self.data_path})"


class PreparedCopy:
  """A prepared dataset's version folder (array_record shards, dataset_info.json, metadata,
  split indexes) copied to another host: opened without TFDS, as the `prepared` source kind
  (`config.data.sources.prepared.path=DIR`). It offers what `open_split`, `bad_files` and
  `summary` read of a builder, so a training host needs neither TFDS nor TensorFlow."""

  def __init__(self, path: str):
    self.data_path = os.path.abspath(os.path.expanduser(path))
    info = os.path.join(self.data_path, "dataset_info.json")
    try:
      with open(info) as f:
        self.name = json.load(f)["name"]
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f"prepared: {path} is not a prepared dataset's folder (no readable "
                       f"dataset_info.json: {getattr(e, 'strerror', None) or e}); give the "
                       "folder that holds the .array_record files") from None


def open_split(b, split: str, name: str) -> RecordSource:
  return RecordSource(os.fspath(b.data_path), b.name, split, name)


def summary(b) -> dict[str, Any]:
  """Counts per split and label, identities, split method and bad files, from the metadata."""
  meta = metadata(b)
  return dict(source=meta.get("source", b.name), data_dir=os.fspath(b.data_path),
              split_method=meta.get("split_method"), counts=meta.get("counts", {}),
              identities=meta.get("identities", {}), bad_files=bad_files(b),
              bad_annotations=bad_annotations(b),
              excluded_uncertain_gender=meta.get("excluded_uncertain_gender"))
