"""Subgroup-balanced sampling: draw a source's records so small subgroups weigh more.

A source option `balance_by` names a subgroup field (`race`, `age_band`, a CelebA attribute…)
and `balance_power` how far to go: each record is drawn with probability ∝ n_group^-power,
so 0 keeps the data's mix, 1 makes every group equally frequent, 0.5 is in between. Labels
are balanced within each group the same way, so a group's gender mix is not skewed by it.
Fields joined by `+` (`race+age_group`) balance their joint cells: the few children of a race
weigh more than that race's adults, where balancing by race alone draws its ages in the data's
mix.
"""
from __future__ import annotations

import collections
import logging

import numpy as np

from gender_jax.data.subgroups import subgroup_fields

# Draws per record in the resampled epoch list: large enough that repeated epochs don't
# repeat the same multiset, small enough to build in a second for 100k records.
DRAWS_PER_RECORD = 4


def group_key(record, field: str) -> str:
  values = subgroup_fields(record.get("subgroups") or {})
  return "+".join(values.get(f.strip(), "unknown") for f in field.split("+"))


class Balanced:
  """`source` resampled by subgroup weight (random access, grain protocol; deterministic)."""

  def __init__(self, source, field: str, power: float, seed: int):
    keys = [(group_key(source[i], field), int(source[i]["label"])) for i in range(len(source))]
    counts = collections.Counter(keys)
    weights = np.array([counts[k] ** -float(power) for k in keys])
    rng = np.random.default_rng(seed)
    self.source = source
    self.indices = rng.choice(len(source), size=DRAWS_PER_RECORD * len(source),
                              p=weights / weights.sum())
    groups = collections.Counter(keys[i][0] for i in self.indices)
    logging.info("balanced by %s (power %.2f): %s", field, power,
                 {g: round(c / len(self.indices), 3) for g, c in sorted(groups.items())})

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]
