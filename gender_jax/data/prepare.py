"""Prepare a source once (manual dir → array_record), then open its splits as grain sources.

Prepared datasets live under a data dir (`options.data_dir`, else `config.data.data_dir`, else
$GENDER_JAX_DATA_DIR, else ~/gender_jax_data). A folder is cached under a key made from its
path and listing (names, sizes, mtimes), so editing the folder re-prepares it and an
unchanged folder is reused. Preparation holds a file lock: several processes (one per host
or per GPU) asking for the same source prepare it once.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import logging
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


def builder_class(kind: str):
  if kind not in KINDS:
    raise ValueError(f"unknown source kind {kind!r}; known: {', '.join(KINDS)}")
  module, cls = KINDS[kind]
  module = importlib.import_module(module)
  return module.create_builder_class() if cls is None else getattr(module, cls)


def create_builder(kind: str, manual_dir: str | None, data_dir: str | None = None,
                   version: str | None = None):
  """The builder for `kind`, with its data dir resolved (a folder gets its own cache key)."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
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
            version: str | None = None, overwrite: bool = False):
  """Prepares the source if it is not prepared yet; returns its builder."""
  import tensorflow_datasets as tfds
  _quiet_tfds(tfds)
  b = create_builder(kind, manual_dir, data_dir, version)
  with _lock(os.path.join(os.fspath(b.data_path.parent), ".prepare.lock")):
    if overwrite or not b.is_prepared():
      logging.info("preparing %s from %s into %s", kind, manual_dir, b.data_path)
      mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite else
              tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, download_mode=mode))
      # Re-open so the builder reads back what was written (splits, metadata).
      b = create_builder(kind, manual_dir, data_dir, version)
  return b


def metadata(b) -> dict[str, Any]:
  path = os.path.join(os.fspath(b.data_path), "metadata.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def bad_files(b) -> list[dict[str, str]]:
  return sorted(metadata(b).get("bad_files", []), key=lambda x: x["path"])


class RecordSource:
  """One prepared split as a grain random-access source of pipeline records.

  Opens the array_record files lazily, so it pickles small into grain worker processes.
  """

  def __init__(self, data_path: str, builder_name: str, split: str, name: str):
    self.data_path, self.builder_name, self.split, self.name = data_path, builder_name, split, name
    self._ds = None
    self._len = len(self._open())

  def _open(self):
    if self._ds is None:
      import tensorflow_datasets as tfds
      b = tfds.builder_from_directory(self.data_path)
      if self.split not in b.info.splits:
        raise ValueError(f"{self.name}: no split {self.split!r} in {self.data_path} "
                         f"(has {sorted(b.info.splits)})")
      self._ds = b.as_data_source(self.split, decoders={"image": tfds.decode.SkipDecoding()})
    return self._ds

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_ds"} | {"_ds": None}

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    from gender_jax.data import schema
    record = schema.from_record(self._open()[int(index)])
    record["source"] = self.name
    return record

  def __repr__(self):
    return f"RecordSource({self.name}:{self.split}, {self._len} records, {self.data_path})"


def open_split(b, split: str, name: str) -> RecordSource:
  return RecordSource(os.fspath(b.data_path), b.name, split, name)


def summary(b) -> dict[str, Any]:
  """Counts per split and label, identities, split method and bad files, from the metadata."""
  meta = metadata(b)
  return dict(source=meta.get("source", b.name), data_dir=os.fspath(b.data_path),
              split_method=meta.get("split_method"), counts=meta.get("counts", {}),
              identities=meta.get("identities", {}), bad_files=bad_files(b),
              excluded_uncertain_gender=meta.get("excluded_uncertain_gender"))
