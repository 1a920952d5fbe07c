"""clean finds planted exact and near duplicates, cross-split copies and flipped labels."""
import csv
import io
import json
import os

import numpy as np
from PIL import Image

from gender_jax.evaluation import label_issues
from gender_jax import clean, cli
from gender_jax.evaluation import cleaning
from gender_jax.evaluation import datasets as eval_data


def _blob_image(rng, tint):
  """A random 12x12 colour grid upsampled to 64x64, with a class colour cast."""
  grid = rng.uniform(0, 1, (12, 12, 3)) * 0.5 + np.asarray(tint) * 0.5
  img = Image.fromarray((grid * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
  return img


def _make_folder(root, rng):
  """40 reddish "female" and 40 bluish "male" images, with planted problems."""
  planted = dict(flipped=[], exact=[], near=[])
  for cls, tint in (("female", (1, 0.2, 0.2)), ("male", (0.2, 0.2, 1))):
    os.makedirs(root / cls)
    for i in range(40):
      _blob_image(rng, tint).save(root / cls / f"{cls}{i:02d}.jpg", quality=95)
  for i in range(3):  # flipped labels: a reddish image filed as male, a bluish one as female
    _blob_image(rng, (1, 0.2, 0.2)).save(root / "male" / f"flipped_f{i}.jpg", quality=95)
    _blob_image(rng, (0.2, 0.2, 1)).save(root / "female" / f"flipped_m{i}.jpg", quality=95)
    planted["flipped"] += [f"male/flipped_f{i}.jpg", f"female/flipped_m{i}.jpg"]
  for i in range(4):  # exact copies under another name
    src = f"female/female{i:02d}.jpg"
    (root / f"female/copy{i}.jpg").write_bytes((root / src).read_bytes())
    planted["exact"].append({src, f"female/copy{i}.jpg"})
  for i in range(4):  # near copies: re-encoded at low quality and slightly brightened
    src = f"male/male{i:02d}.jpg"
    img = np.asarray(Image.open(root / src)).astype(int) + 6
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=60)
    (root / f"male/near{i}.jpg").write_bytes(buf.getvalue())
    planted["near"].append({src, f"male/near{i}.jpg"})
  (root / "male" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
  return planted


def test_clean_finds_planted_problems(tmp_path):
  planted = _make_folder(tmp_path / "data", np.random.default_rng(0))
  out = tmp_path / "out"
  clean.main(["--data", str(tmp_path / "data"), "--out", str(out)])
  rows = list(csv.DictReader(open(out / "issues.csv")))
  exact = [{r["key"], r["other_key"]} for r in rows if r["kind"] == "exact_duplicate"]
  near = [{r["key"], r["other_key"]} for r in rows if r["kind"] == "near_duplicate"]
  errors = [r["key"] for r in rows if r["kind"] == "label_error"]
  assert sorted(map(sorted, exact)) == sorted(map(sorted, planted["exact"]))
  assert all(pair in near for pair in planted["near"])
  assert len(near) == len(planted["near"])  # no unrelated image pairs
  assert set(planted["flipped"]) <= set(errors) and len(errors) <= len(planted["flipped"]) + 2
  assert [r["key"] for r in rows if r["kind"] == "unreadable"] == ["male/broken.jpg"]

  # Cross-split flags agree with the splits the folder source assigns.
  folder = eval_data.FolderRecords(str(tmp_path / "data"))
  split_of = {m["key"]: m["split"] for m in map(folder.meta, range(len(folder)))}
  for r in rows:
    if r["kind"].endswith("duplicate"):
      assert r["cross_split"] == str(int(split_of[r["key"]] != split_of[r["other_key"]]))

  # Exclude list: one of each duplicate pair and the unreadable file; label errors are only
  # listed unless asked for.
  excluded = _excluded(out)
  assert all(len(pair & excluded) == 1 for pair in planted["exact"] + planted["near"])
  assert not set(planted["flipped"]) & excluded and "male/broken.jpg" in excluded
  summary = json.loads((out / "summary.json").read_text())
  assert summary["exact_duplicate_pairs"] == 4 and summary["unreadable"] == 1
  assert summary["out_of_fold_accuracy"] >= cleaning.LABEL_ERROR_FLOOR
  for png in ("contact_duplicates.png", "contact_label_errors.png"):
    assert Image.open(out / png).size[0] > 200

  # Asked for, with a model above the floor: the flipped labels are excluded too.
  clean.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out2"),
              "--exclude-label-errors"])
  assert set(planted["flipped"]) <= _excluded(tmp_path / "out2")


def _excluded(out) -> set:
  lines = [l.split("\t") for l in (out / "exclude.txt").read_text().splitlines()
           if l and not l.startswith("#")]
  return {key for key, _ in lines}


def test_exclusion_on_a_weak_models_word_is_refused(tmp_path, capsys):
  """Labels no thumbnail can predict (noise images, labels at random): the model is at chance,
  so --exclude-label-errors stops in one line naming its accuracy and the floor, writing
  nothing; without the flag the report is written and nothing is excluded for labels."""
  rng = np.random.default_rng(1)
  data = tmp_path / "data"
  for cls in ("female", "male"):
    os.makedirs(data / cls)
    for i in range(30):
      Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(data / cls / f"{i}.png")
  out = tmp_path / "out"
  try:
    clean.main(["--data", str(data), "--out", str(out), "--exclude-label-errors"])
  except cli.UsageError as e:
    assert "out-of-fold accuracy" in str(e) and str(cleaning.LABEL_ERROR_FLOOR) in str(e)
  else:
    raise AssertionError("exclusion on a chance-level model was not refused")
  assert not out.exists()
  clean.main(["--data", str(data), "--out", str(out)])
  assert not any("likely label error" in line for line in (out / "exclude.txt").read_text()
                 .splitlines())
  assert "not excluded" in capsys.readouterr().err


def test_cross_split_groups_keep_the_evaluation_copy():
  metas = [dict(key=k, label=0, split=s) for k, s in (("a", "train"), ("b", "test"), ("c", "train"))]
  scanned = dict(metas=metas, sha=["x", "x", "y"], phash=np.array([0, 0, 2 ** 64 - 1], np.uint64),
                 thumbs=np.zeros((3, 4)), errors=[])
  found = cleaning.find_issues(scanned, folds=1)
  assert found["cross_split_groups"] == [[0, 1]]
  assert cleaning.exclusions(found, metas) == {0: "duplicate of b (other split)"}


def test_confident_learning_rule_by_hand():
  # Thresholds: t_female = mean(0.9, 0.8, 0.3) = 0.667; t_male = mean(0.7, 0.9, 0.6) = 0.733.
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6]])
  labels = np.array([0, 0, 0, 1, 1, 1])
  issues = label_issues.confident_label_issues(probs, labels)
  # Image 2 (labelled female, p_male 0.7 < 0.733) is below the male threshold: not flagged.
  assert issues == []
  probs[2] = [0.2, 0.8]  # now p_male 0.8 ≥ t_male (0.733) and p_female 0.2 < t_female (0.633)
  issues = label_issues.confident_label_issues(probs, labels)
  assert [(r["index"], r["suggested"]) for r in issues] == [(2, 1)]
