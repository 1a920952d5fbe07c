"""Seeded train/validation/test splits: identity-disjoint where identities exist, label-stratified.

Used where a source has no official split (PETA, RAP v2, a folder) or only part of one
(RAP v1 has train/test: validation is carved out of train). The assignment is a pure
function of (entries, fractions, seed), so every machine computes the same split.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Sequence

import numpy as np

from gender_jax.data.schema import Entry

DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _seed(seed: int, text: str) -> int:
  return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "little")


def assign(entries: Sequence[Entry], fractions: dict[str, float] | None = None,
           seed: int = 0) -> dict[str, list[Entry]]:
  """Groups entries by identity (an entry without one is its own group); then, per label
  stratum (a group's majority label), deals the shuffled groups: first one to each split
  (smallest fraction first, so no split of a small set is left empty), then each to the split
  furthest below its share of the stratum. A group never straddles two splits."""
  fractions = dict(fractions or DEFAULT_FRACTIONS)
  total = sum(fractions.values())
  if total <= 0 or any(f < 0 for f in fractions.values()):
    raise ValueError(f"split fractions must be ≥ 0 and not all 0: {fractions}")
  groups: dict[str, list[Entry]] = collections.defaultdict(list)
  for e in entries:
    groups[f"id:{e.identity}" if e.identity != "" else f"file:{e.key}"].append(e)
  strata: dict[int, list[str]] = collections.defaultdict(list)
  for gid, members in groups.items():
    labels = [m.label for m in members]
    strata[int(np.bincount(labels, minlength=2).argmax())].append(gid)
  out: dict[str, list[Entry]] = {name: [] for name in fractions}
  names = [n for n in fractions if fractions[n] > 0]
  for label, gids in sorted(strata.items()):
    gids = sorted(gids)
    order = list(np.random.default_rng(_seed(seed, f"label{label}")).permutation(len(gids)))
    n = sum(len(groups[g]) for g in gids)
    target = {s: fractions[s] / total * n for s in names}
    count = dict.fromkeys(names, 0)

    def give(split, i):
      out[split].extend(groups[gids[i]])
      count[split] += len(groups[gids[i]])
    for split in sorted(names, key=lambda s: fractions[s]):
      if order:
        give(split, order.pop(0))
    for i in order:
      give(max(names, key=lambda s: target[s] - count[s]), i)
  for name in out:
    out[name].sort(key=lambda e: e.key)
  return out
