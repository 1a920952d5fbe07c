"""Subgroup fields of a record (age bands, UTKFace race names): what reports and balancing group by.

It lives in `data/` because sampling (`balance.py`) groups by the same fields the evaluation
report does; the evaluation layer imports it from here.
"""
from __future__ import annotations

from typing import Any

# Fields that describe a record rather than a subgroup of people.
NOT_SUBGROUPS = {"image", "label", "source", "key", "path", "split", "identity", "id", "index"}
MAX_SUBGROUP_VALUES = 20  # more distinct values than this is an id, not a subgroup
AGE_BANDS = ((0, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200))
# UTKFace's race codes (its file names and labels.csv), shown next to the code in reports.
UTKFACE_RACE = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}


# Ages 0-2 (UTKFace labels almost all of them 1): faces that carry little of the gender a
# label gives them. Validation, dlib backbone: age 1 0.60, age 2 0.62, ages 3-4 0.82, 7-9 0.88.
# Reported apart from the older children, since one race's share of them (UTKFace: Asian 17%,
# Black 1%) can make most of a race gap.
INFANT_MAX_AGE = 2


def age_years(age) -> int | None:
  """An age field as whole years, None where missing or not a number."""
  try:
    return int(float(age))
  except (TypeError, ValueError, OverflowError):
    return None


def age_band(age) -> str:
  a = age_years(age)
  if a is None:
    return "unknown"
  for lo, hi in AGE_BANDS:
    if lo <= a <= hi:
      return f"{lo}+" if hi >= 200 else f"{lo}-{hi}"
  return "unknown"


# Coarser than the bands, for the headline: children's labels are the least reliable (and their
# faces the hardest), so they are reported apart from adults everywhere.
AGE_GROUPS = ((0, 9, "0-9 children"), (10, 19, "10-19"), (20, 69, "20-69 adults"), (70, 200, "70+"))


def age_group(age) -> str:
  a = age_years(age)
  if a is None:
    return "unknown"
  return next((name for lo, hi, name in AGE_GROUPS if lo <= a <= hi), "unknown")


def subgroup_fields(record: dict[str, Any]) -> dict[str, str]:
  """The record's subgroup values as strings: `age` becomes `age_band`, codes get names."""
  out = {}
  for k, v in record.items():
    if k in NOT_SUBGROUPS or isinstance(v, (bytes, list, dict)) or hasattr(v, "shape"):
      continue
    if k == "age":
      out["age_band"] = age_band(v)
      out["age_group"] = age_group(v)
    elif k == "race" and str(v) in UTKFACE_RACE:
      out[k] = f"{v} {UTKFACE_RACE[str(v)]}"
    else:
      out[k] = "unknown" if v is None or str(v) == "" else str(v)
  return out
