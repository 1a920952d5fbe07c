"""The base TFDS builder every source shares: manual dir → entries → splits → array_record.

A source module only says how to read its annotation into `Entry`s (`_entries`). This class
validates every image, drops the bad ones into the `bad_files` report, applies the official
split or a seeded identity-disjoint one, and records per-split label counts in the metadata.
"""
from __future__ import annotations

import abc
import collections
import logging
import os
import sys
import time

import tensorflow_datasets as tfds

from gender_jax.data import schema, splits

SPLITS = ("train", "validation", "test")


class GenderBuilder(tfds.core.GeneratorBasedBuilder):
  """Abstract: subclasses set SOURCE and implement `_entries`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One schema: JPEG image, female/male label, source, identity, "
                            "subgroups."}
  SOURCE = ""
  skips: schema.Skips  # set before `_entries` runs; sources list skipped lines in it
  MAX_SIDE = 0           # re-encode images whose longer side exceeds this (0: never)
  # (prepare's `store_size` caps the shorter side too, per prepared copy: see prepare.py)
  SPLIT_SEED = 0
  SPLIT_FRACTIONS = splits.DEFAULT_FRACTIONS
  HOMEPAGE = ""

  @abc.abstractmethod
  def _entries(self, manual_dir: str) -> tuple[list[schema.Entry], list[dict]]:
    """Reads the annotation: (entries, skipped) where skipped lists {path, reason}."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=schema.features(), homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    # Annotation lines a source could not use: listed (or, strict, the first one raised).
    self.skips = schema.Skips(getattr(self, "_gender_strict", False), manual_dir)
    entries, skipped = self._entries(manual_dir)
    if not entries:
      raise ValueError(f"{self.SOURCE}: no labelled images found under {manual_dir}")
    by_split, method = self._assign_splits(entries)
    meta = self.info.metadata
    meta["source"] = self.SOURCE
    meta["split_method"] = method
    meta["bad_files"] = list(skipped)
    meta["bad_annotations"] = list(self.skips.items)
    meta["counts"] = {s: {"female": 0, "male": 0} for s in by_split}
    meta["identities"] = {s: len({e.identity for e in es if e.identity}) for s, es in
                          by_split.items()}
    self._progress = Progress(self.SOURCE, len(entries))
    return {name: self._generate_examples(name, es) for name, es in by_split.items()}

  def _assign_splits(self, entries):
    official = collections.defaultdict(list)
    for e in entries:
      official[e.split].append(e)
    if None not in official:
      if "validation" not in official:  # e.g. RAP v1: carve validation out of train
        carved = splits.assign(official.pop("train"), {"train": 8, "validation": 1},
                               self.SPLIT_SEED)
        official.update(carved)
        return dict(official), "official train/test; validation carved from train (seeded)"
      return dict(official), "official"
    if len(official) > 1:
      raise ValueError(f"{self.SOURCE}: some entries have an official split and some not")
    method = "seeded, label-stratified" + (
        ", identity-disjoint" if any(e.identity for e in entries) else "")
    return splits.assign(entries, self.SPLIT_FRACTIONS, self.SPLIT_SEED), method

  def _generate_examples(self, split: str, entries):
    meta = self.info.metadata
    for e in entries:
      self._progress.step()
      try:
        # prepare.create_builder sets the stored size; a builder made through the TFDS API
        # alone keeps the images as they are.
        image = schema.encode_image_file(e.path, self.MAX_SIDE,
                                         getattr(self, "_gender_store_size", 0))
      except schema.BadImage as err:
        logging.warning("%s: skipping %s: %s", self.SOURCE, e.key, err)
        meta["bad_files"].append({"path": e.key, "reason": str(err)})
        continue
      meta["counts"][split][schema.CLASS_NAMES[e.label]] += 1
      yield e.key, schema.to_example(e, image, self.SOURCE)


class Progress:
  """One progress line on stderr: redrawn in place on a terminal, a line per 10% in a log file
  (TFDS's own bars are off: nested tqdm bars leave raw cursor codes in files)."""

  def __init__(self, name: str, total: int):
    self.name, self.total, self.done = name, max(total, 1), 0
    self.tty = sys.stderr.isatty()
    self.start = time.perf_counter()
    self.shown = -1

  def step(self) -> None:
    self.done += 1
    percent = 100 * self.done // self.total
    if self.tty:
      if percent != self.shown or self.done == self.total:
        end = "\n" if self.done == self.total else ""
        print(f"\r{self._text()}", end=end, file=sys.stderr, flush=True)
    elif percent // 10 > self.shown // 10:  # the first image, then each further 10%
      print(self._text(), file=sys.stderr, flush=True)
    self.shown = percent

  def _text(self) -> str:
    seconds = time.perf_counter() - self.start
    return (f"{self.name}: {self.done}/{self.total} images "
            f"({100 * self.done // self.total}%, {seconds:.0f} s)")
