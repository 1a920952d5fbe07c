"""crops.keep_missed_photos: an aligned folder of tight crops lists every source photo, so the
folder source's seeded split deals it as it deals the source."""
import csv
import os

import numpy as np
from PIL import Image

from gender_jax.data import folder, splits
from gender_jax.faces import crops


def _folder(root, names, age="30"):
  rows = ["path,label,age"]
  for label, name in names:
    os.makedirs(root / label, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(root / label / name)
    rows.append(f"{label}/{name},{label},{age}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")


def test_missed_photos_are_kept_as_they_are_and_the_split_matches(tmp_path):
  names = [(label, f"{i:02d}.jpg.chip.jpg") for label in ("female", "male") for i in range(20)]
  _folder(tmp_path / "src", names)
  dst = tmp_path / "dst"
  found = [(l, n) for i, (l, n) in enumerate(names) if i % 7]  # every 7th "has no face"
  os.makedirs(dst)
  with open(dst / "labels.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "label", "age", "face_score"])
    for label, name in found:
      rel = crops.crop_path(f"{label}/{name}", 1 if label == "male" else 0)
      os.makedirs(dst / label, exist_ok=True)
      Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(dst / rel)
      w.writerow([rel, label, "30", "0.9"])
  missed = [f"{l}/{n}" for l, n in names if (l, n) not in found]
  (dst / crops.NO_FACE_LIST).write_text(
      "# photos left out: path<TAB>reason\n" + "".join(f"{k}\tno face found\n" for k in missed))

  assert crops.keep_missed_photos(str(tmp_path / "src"), str(dst)) == len(missed)
  assert crops.keep_missed_photos(str(tmp_path / "src"), str(dst)) == 0  # idempotent
  with open(dst / "labels.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(names) and {r["age"] for r in rows} == {"30"}
  kept = [r for r in rows if r["face_score"] == ""]
  assert len(kept) == len(missed)
  assert Image.open(dst / kept[0]["path"]).size == (32, 32)  # the other crops' side

  def dealt(root, rename=lambda k: k):
    entries, _ = folder.read_entries(str(root))
    return {s: sorted(rename(e.key) for e in es) for s, es in splits.assign(entries).items()}
  flat = lambda k: crops.crop_path(k, 1 if k.startswith("male") else 0)
  assert dealt(dst) == dealt(tmp_path / "src", flat)
