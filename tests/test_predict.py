"""Batch prediction: bad files are listed not fatal, one compile per batch size, library calls."""
import csv
import math
import os

import numpy as np
import pytest
from PIL import Image

from gender_jax import predict
from gender_jax.inference.predictor import Predictor, views
from tests.helpers import constant_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  return constant_bundle(tmp_path_factory.mktemp("b") / "bundle", bias=(0.0, 1.0))


def _write_inputs(root):
  rng = np.random.default_rng(0)
  os.makedirs(root / "sub" / "deeper")
  paths = []
  for i in range(5):
    p = root / ("sub/deeper" if i % 2 else "sub") / f"img{i}.jpg"
    Image.fromarray(rng.integers(0, 255, (30 + i, 24, 3), np.uint8)).save(p)
    paths.append(p)
  good = (root / "sub" / "img0.jpg").read_bytes()
  (root / "truncated.jpg").write_bytes(good[:len(good) // 2])
  (root / "notes.txt").write_text("not an image")
  Image.fromarray(rng.integers(0, 255, (12, 12), np.uint8)).save(root / "grey.png")
  return paths


def test_predict_folder_lists_bad_files_and_predicts_the_rest(bundle, tmp_path):
  _write_inputs(tmp_path / "in")
  out = tmp_path / "preds.csv"
  predict.main(["--bundle", bundle, str(tmp_path / "in"), str(tmp_path / "missing.jpg"),
                "--out", str(out), "--batch-size", "4", "--quiet", "--sort-into",
                str(tmp_path / "sorted"), "--faces", "off"])
  rows = {os.path.basename(r["path"]): r for r in csv.DictReader(open(out))}
  assert list(csv.DictReader(open(out)).fieldnames) == list(predict.CSV_COLUMNS)
  assert len(rows) == 9  # 5 jpg + 1 grey png + truncated + text + missing
  errors = {k: r["error"] for k, r in rows.items() if r["label"] == "error"}
  assert set(errors) == {"truncated.jpg", "notes.txt", "missing.jpg"}
  assert "truncated" in errors["truncated.jpg"] and "not a recognised image" in errors["notes.txt"]
  assert "cannot read" in errors["missing.jpg"]
  p_male = 1 / (1 + math.exp(-1))
  for k, r in rows.items():
    if k not in errors:
      assert r["label"] == "male" and float(r["p_male"]) == pytest.approx(p_male, abs=1e-5)
      assert float(r["p_female"]) + float(r["p_male"]) == pytest.approx(1.0, abs=1e-5)
      assert r["abstained"] == "0"
  assert sorted(os.listdir(tmp_path / "sorted" / "male")) == sorted(
      k for k in rows if k not in errors)


def test_one_compile_per_batch_size_and_library_inputs(bundle):
  predictor = Predictor(bundle, batch_size=4, tta="flip+crops")
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 255, (20 + i, 18, 3), np.uint8) for i in range(7)]  # 4 + 3 (padded)
  images.append(Image.fromarray(images[0]))  # a PIL image
  images.append(b"garbage")                   # undecodable bytes: an error entry, no crash
  answers = predictor.predict(images)
  assert predictor.traces == 1
  assert [a["label"] for a in answers] == ["male"] * 8 + ["error"]
  assert "not a recognised image" in answers[-1]["error"]
  predictor.predict(images[:2])
  assert predictor.traces == 1  # a short call is padded to the compiled batch, not retraced


def test_abstention_and_tta_views(tmp_path):
  bundle = constant_bundle(tmp_path / "bundle", bias=(0.0, 0.2), abstain_threshold=0.6)
  [answer] = Predictor(bundle).predict([np.zeros((10, 10, 3), np.uint8)])
  assert answer["label"] == "uncertain" and answer["abstained"]  # p_male = sigmoid(0.2) < 0.6
  img = np.arange(24 * 16 * 3, dtype=np.uint8).reshape(24, 16, 3)
  assert len(views(img, 8, "flip")) == 2 and len(views(img, 8, "flip+crops")) == 12
  v = views(img, 16, "flip")
  assert (v[1] == v[0][:, ::-1]).all()


@pytest.mark.slow
def test_faces_one_row_per_face_no_face_rows_and_crops(bundle, tmp_path, utkface_2k):
  """--faces detect on a photo with two pasted real faces, a tight crop, a blank image."""
  import glob
  from tests.fixtures import scenes
  files = sorted(glob.glob(str(utkface_2k / "*" / "*.jpg")))[:3]
  crops = [np.asarray(Image.open(f).convert("RGB")) for f in files]
  photo = scenes.group_photo(np.random.default_rng(0), crops[:2], size=(480, 300),
                                sides=(100, 130), kind="gradient")
  os.makedirs(tmp_path / "in")
  Image.fromarray(photo.image).save(tmp_path / "in" / "a_group.png")
  Image.fromarray(crops[2]).save(tmp_path / "in" / "b_crop.jpg")
  Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "in" / "c_blank.png")
  (tmp_path / "in" / "d_bad.jpg").write_bytes(b"not a jpeg")
  for mode in ("detect", "auto"):
    out = tmp_path / f"faces_{mode}.csv"
    assert predict.main(["--bundle", bundle, str(tmp_path / "in"), "--out", str(out), "--quiet",
                         "--faces", mode, "--detector", "short", "--max-faces", "4",
                         "--save-crops", str(tmp_path / f"crops_{mode}")]) == 0
    reader = csv.DictReader(open(out))
    assert reader.fieldnames == list(predict.CSV_COLUMNS + predict.FACE_COLUMNS)
    rows = list(reader)
    by = {}
    for r in rows:
      by.setdefault(os.path.basename(r["path"]), []).append(r)
    assert [len(by[k]) for k in sorted(by)] == [2, 1, 1, 1]
    assert by["c_blank.png"][0]["label"] == "no_face" and by["d_bad.jpg"][0]["label"] == "error"
    boxes = np.asarray([[float(r[f"box_{k}"]) for k in ("x0", "y0", "x1", "y1")]
                        for r in by["a_group.png"]])
    assert scenes.match(photo.squares, boxes).all()  # boxes in the photo's own pixels
    assert sorted(r["face"] for r in by["a_group.png"]) == ["0", "1"]
    assert by["b_crop.jpg"][0]["aligned"] == ("1" if mode == "detect" else "0")
    for r in by["a_group.png"] + by["b_crop.jpg"]:
      assert r["label"] == "male" and float(r["face_score"]) > 0.5
      assert float(r["box_y0"]) < float(r["right_eye_y"]) < float(r["mouth_y"])
    assert len(os.listdir(tmp_path / f"crops_{mode}")) == 3
