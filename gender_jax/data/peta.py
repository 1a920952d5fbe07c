"""PETA (10 pedestrian sub-datasets) from either of its two published layouts.

1. The original release: `<sub-dataset>/archive/` folders (3DPeS, CAVIAR4REID, CUHK, GRID,
   i-LID, MIT, PRID, SARC3D, TownCentre, VIPeR), each with images and a `Label.txt` whose lines
   are "<person id> attr attr …" listing the positive attributes, one of them `personalMale` or
   `personalFemale`. An image belongs to the person whose id is the first number in its file
   name (a line may also start with a file name instead of an id).
2. The common `PETA.mat` repackaging + `images/00001.png …`: `peta{1}` is N×(4+105) with
   columns (image index, global person id, sub-dataset index, local person id, attributes…),
   `peta{2}` the attribute names.
No official identity-disjoint split exists, so the split is seeded and identity-disjoint.
"""
from __future__ import annotations

import glob
import os
import re

from gender_jax.data import builder, schema

AGE_BANDS = {"personalLess30": "<30", "personalLess45": "30-44", "personalLess60": "45-59",
             "personalLarger60": "60+"}
_FIRST_NUMBER = re.compile(r"\d+")


def read_label_file(path: str, skips: schema.Skips | None = None
                    ) -> tuple[dict[str, tuple[int, set[str]]], dict[str, str]]:
  """Label.txt → ({id or file name: (label, positive attributes)}, {key: why its line was
  skipped}). A line without exactly one gender, with a first field that is no id or file
  name, or repeating a key is skipped and listed in `skips` (a repeat that agrees with the
  first line is dropped quietly; one that disagrees takes the person out: neither line is
  trusted). Blank lines, a BOM and CRLF line ends are read as if absent."""
  skips = skips if skips is not None else schema.Skips()
  out, rejected, first_line = {}, {}, {}
  with schema.open_text(path) as f:
    for number, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      key, attrs = tokens[0], set(tokens[1:])
      if not ("." in key or key.isdigit()):
        skips.add(path, number, f"first field {key!r} is neither a person id nor a file name")
        continue
      key = key if "." in key else str(int(key))
      male, female = "personalMale" in attrs, "personalFemale" in attrs
      if male == female:
        reason = ("needs exactly one of personalMale / personalFemale, found "
                  f"{'both' if male else 'neither'} (person {key})")
        skips.add(path, number, reason)
        rejected[key] = f"line {number} skipped: {reason}"
        continue
      if key in out or key in first_line:
        first = first_line[key]
        if key in out and out[key][0] == int(male):
          skips.add(path, number, f"duplicate entry for {key!r} (same gender as line {first};"
                    " the first is kept)")
          continue
        reason = f"conflicting genders for {key!r} on lines {first} and {number}"
        skips.add(path, number, reason + " (both dropped)")
        out.pop(key, None)
        rejected[key] = reason
        continue
      first_line[key] = number
      out[key] = (int(male), attrs)
  return out, rejected


def _subgroups(attrs: set[str], subset: str) -> dict:
  bands = [band for name, band in AGE_BANDS.items() if name in attrs]
  return {"subset": subset, **({"age": bands[0]} if bands else {})}


def read_archive_entries(manual_dir: str, skips: schema.Skips | None = None):
  label_files = sorted(glob.glob(os.path.join(manual_dir, "*", "archive", "Label.txt")) +
                       glob.glob(os.path.join(manual_dir, "*", "*", "archive", "Label.txt")))
  entries, skipped = [], []
  for label_file in label_files:
    archive = os.path.dirname(label_file)
    subset = os.path.basename(os.path.dirname(archive))
    labels, rejected = read_label_file(label_file, skips)
    label_name = schema.relpath(label_file, manual_dir)
    for fname in sorted(os.listdir(archive)):
      path = os.path.join(archive, fname)
      if fname == "Label.txt" or fname.startswith(".") or not os.path.isfile(path):
        continue
      key = schema.relpath(path, manual_dir)
      match = _FIRST_NUMBER.search(fname)
      pid = str(int(match.group())) if match else None
      found = labels.get(fname) or (labels.get(pid) if pid is not None else None)
      if found is None:
        why = rejected.get(fname) or (rejected.get(pid) if pid is not None else None)
        skipped.append({"path": key, "reason": f"{label_name} {why}" if why else
                        f"no line in {label_name} for this file (person id {pid})"})
        continue
      label, attrs = found
      entries.append(schema.Entry(path=path, key=key, label=label, identity=f"{subset}/{pid}",
                                  subgroups=_subgroups(attrs, subset)))
  return entries, skipped


def read_mat_entries(manual_dir: str, skips: schema.Skips | None = None):
  import numpy as np
  from scipy.io import loadmat
  path = os.path.join(manual_dir, "PETA.mat")
  try:
    peta = loadmat(path)["peta"][0, 0]
    data = np.asarray(peta[0])
    names = [str(np.ravel(n)[0]) for n in np.ravel(peta[1])]
  except (KeyError, IndexError, TypeError, ValueError) as e:
    raise schema.AnnotationError(path, "peta", f"expected the PETA.mat struct "
                                 f"(data, attribute names, …): {e}") from None
  if data.ndim != 2 or data.shape[1] != 4 + len(names):
    raise schema.AnnotationError(path, "peta{1}", f"shape {data.shape} does not match 4 + "
                                 f"{len(names)} attribute columns")
  if "personalMale" not in names:
    raise schema.AnnotationError(path, "peta{2}", "no 'personalMale' attribute")
  images = next((os.path.join(manual_dir, d) for d in ("images/images", "images")
                 if os.path.isdir(os.path.join(manual_dir, d))), manual_dir)
  male = 4 + names.index("personalMale")
  entries = []
  skips = skips if skips is not None else schema.Skips()
  for row, values in enumerate(data):
    if values[male] not in (0, 1):
      skips.add(path, f"peta{{1}} row {row + 1}",
                f"personalMale must be 0 or 1, got {values[male]}")
      continue
    file = os.path.join(images, f"{int(values[0]):05d}.png")
    attrs = {n for n, v in zip(names, values[4:]) if v == 1}
    entries.append(schema.Entry(path=file, key=schema.relpath(file, manual_dir),
                                label=int(values[male]), identity=str(int(values[1])),
                                subgroups=_subgroups(attrs, str(int(values[2])))))
  return entries, []


class GenderPeta(builder.GenderBuilder):
  """PETA pedestrians; label from personalMale/personalFemale; identity-disjoint split."""
  name = "gender_peta"
  SOURCE = "peta"
  HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/PETA.html"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place the 10 sub-dataset folders (each with archive/Label.txt)"
                                  " or PETA.mat with images/ in the manual dir.")

  def _entries(self, manual_dir):
    if os.path.exists(os.path.join(manual_dir, "PETA.mat")):
      return read_mat_entries(manual_dir, self.skips)
    entries, skipped = read_archive_entries(manual_dir, self.skips)
    if not entries and not skipped:
      raise FileNotFoundError(f"PETA: neither PETA.mat nor */archive/Label.txt in {manual_dir}")
    return entries, skipped
