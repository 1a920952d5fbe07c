"""`python -m gender_jax.data align`: photos of people → aligned crops on the UTKFace framing."""
import csv
import os

import numpy as np
from PIL import Image

from gender_jax.data.__main__ import main
from gender_jax.data import folder, splits
from gender_jax.faces import crops


def test_align_recovers_the_crop_and_lists_photos_without_a_face(tmp_path, utkface_2k):
  rng = np.random.default_rng(0)
  photos, originals = tmp_path / "photos", {}
  rows = ["path,label,age"]
  for label in ("female", "male"):
    os.makedirs(photos / label)
    for i, crop in enumerate(sorted((utkface_2k / label).glob("*.jpg"))[:2]):
      face = np.asarray(Image.open(crop).convert("RGB"))
      canvas = rng.integers(40, 200, (420, 360, 3)).astype(np.uint8)
      canvas[100:300, 80:280] = face  # the 200x200 crop at its own scale, in a larger photo
      Image.fromarray(canvas).save(photos / label / f"p{i}.png")
      originals[f"{label}/{label}_p{i}.jpg"] = face
      rows.append(f"{label}/p{i}.png,{label},{20 + i}")
    Image.fromarray(np.full((300, 300, 3), 90, np.uint8)).save(photos / label / "wall.png")
    rows.append(f"{label}/wall.png,{label},30")
  (photos / "labels.csv").write_text("\n".join(rows) + "\n")
  assert main(["align", "--manual-dir", str(photos), "--out", str(tmp_path / "crops"),
               "--detector", "short"]) == 0
  with open(tmp_path / "crops" / "labels.csv") as f:
    got = list(csv.DictReader(f))
  assert sorted(r["path"] for r in got) == sorted(originals)
  assert {r["age"] for r in got} == {"20", "21"}  # subgroup columns carried over
  missed = (tmp_path / "crops" / "no_face.txt").read_text()
  assert "female/wall.png\tno face found" in missed and "male/wall.png" in missed
  for rel, face in originals.items():
    crop = Image.open(tmp_path / "crops" / rel)
    assert crop.size == (200, 200)
    # Re-aligned onto the framing the crop was made with (the median framing, so a face sits
    # a few pixels off it): at 25x25 in grey, nearly the crop itself.
    small = [np.asarray(im.convert("L").crop((30, 30, 170, 170)).resize((28, 28), Image.BILINEAR),
                        np.float64).ravel() for im in (crop, Image.fromarray(face))]
    assert np.corrcoef(*small)[0, 1] > 0.8, (rel, np.corrcoef(*small)[0, 1])
    # A crop shifted by a sixth of the side no longer matches: the check can fail.
    shifted = np.asarray(Image.fromarray(face).convert("L").crop((60, 30, 200, 170)).resize(
        (28, 28), Image.BILINEAR), np.float64).ravel()
    assert np.corrcoef(small[0], shifted)[0, 1] < np.corrcoef(*small)[0, 1]


# -------------------------------------------------- keep_missed_photos


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
