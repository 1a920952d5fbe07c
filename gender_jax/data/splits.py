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
  """Groups entries by identity (an entry without one is its own group), then, per label
  stratum (the group's majority label), deals shuffled groups to the splits in order until
  each holds its fraction of the stratum's images. A group never straddles two splits."""
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
  names = list(fractions)
  for label, gids in sorted(strata.items()):
    gids = sorted(gids)
    order = np.random.default_rng(_seed(seed, f"label{label}")).permutation(len(gids))
    n = sum(len(groups[g]) for g in gids)
    # Cumulative targets: split k takes groups until the running count reaches its bound.
    bounds = np.cumsum([fractions[s] / total * n for s in names])
    taken, k = 0, 0
    for i in order:
      members = groups[gids[i]]
      while k < len(names) - 1 and taken + len(members) / 2 > bounds[k]:
        k += 1
      out[names[k]].extend(members)
      taken += len(members)
  for name in out:
    out[name].sort(key=lambda e: e.key)
  return out
