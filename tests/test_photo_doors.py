"""The photo path's promises, by behaviour: one temperature (the bundle's, on raw logits) at
every door, one calibration (`evaluate --calibrate-on` is `calibrate` then `evaluate`), and
every face of a group answered."""
import csv
import glob
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from gender_jax import calibrate, evaluate, predict
from gender_jax.inference.bundle import Bundle, softmax
from gender_jax.inference.photos import FacePipeline, classify_photos
from gender_jax.inference.predictor import Predictor
from tests.fixtures import scenes
from tests.helpers import random_bundle


def _crops(utkface_2k, label, n, start=0):
  files = sorted(glob.glob(str(utkface_2k / label / "*.jpg")))[start:start + n]
  return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _photo_folder(directory, utkface_2k, per_class=6, seed=0):
  """male/ and female/ of 250-px photos, one UTKFace person each (face 0.3-0.6 of the side)."""
  rng = np.random.default_rng(seed)
  for label in ("female", "male"):
    (directory / label).mkdir(parents=True)
    crops = _crops(utkface_2k, label, per_class, start=20)
    for i, crop in enumerate(crops):
      photo = scenes.in_the_wild(rng, crop, crops, side=250, scale=(0.4, 0.6))
      Image.fromarray(photo.image).save(directory / label / f"{i}.jpg", quality=92)
  return str(directory)


@pytest.mark.slow
def test_every_door_gives_softmax_of_raw_logits_over_the_bundles_temperature(tmp_path, utkface_2k):
  """A bundle with T = 4: the Predictor, the photo path (its faces' raw logits are the
  Predictor's on the aligned crops) and predict's CSV, with faces and without, all answer
  softmax(logits / 4): the temperature is applied once, to raw logits."""
  t = 4.0
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32, temperature=t))
  photos = _photo_folder(tmp_path / "photos", utkface_2k, per_class=1)
  paths = sorted(glob.glob(f"{photos}/*/*.jpg"))
  predictor = Predictor(bundle, batch_size=8)
  raw = predictor.logits(paths).values
  whole = predictor.predict(paths)
  np.testing.assert_allclose([w["p_male"] for w in whole], softmax(raw, t)[:, 1], atol=1e-6)

  pipe = FacePipeline(bundle, detector="short", faces="detect")
  found = pipe([np.asarray(Image.open(p).convert("RGB")) for p in paths], crops=True)
  faces = [max(fs, key=lambda f: f["score"]) for fs in found]
  crop_raw = predictor.logits([f["crop"] for f in faces]).values
  np.testing.assert_allclose([f["logits"] for f in faces], crop_raw, atol=1e-4)
  np.testing.assert_allclose([f["p_male"] for f in faces], softmax(crop_raw, t)[:, 1], atol=1e-5)
  assert abs(softmax(crop_raw, 1.0)[0, 1] - faces[0]["p_male"]) > 1e-3  # T made a difference

  for mode, want in (("off", [w["p_male"] for w in whole]), ("detect", [f["p_male"] for f in faces])):
    out = tmp_path / f"{mode}.csv"
    predict.main(["--bundle", bundle.directory, photos, "--out", str(out), "--faces", mode,
                  "--detector", "short", "--quiet"])
    with open(out, newline="") as f:
      rows = {r["path"]: r for r in csv.DictReader(f)}
    np.testing.assert_allclose([float(rows[p]["p_male"]) for p in paths], want, atol=1e-5)


@pytest.mark.slow
def test_evaluate_calibrate_on_reports_what_calibrate_then_evaluate_does(tmp_path, utkface_2k):
  """`evaluate --faces detect --calibrate-on X` = `calibrate --faces detect --data X` on a copy
  of the bundle, then a plain `evaluate --faces detect`: the same temperature, and the same
  figures; the "uncalibrated" row is the raw logits' (T = 1), though the bundle holds T ≠ 1."""
  data = _photo_folder(tmp_path / "photos", utkface_2k)
  first = random_bundle(tmp_path / "bundle", size=32, temperature=0.741, seed=2)
  copy = str(tmp_path / "copy")
  shutil.copytree(first, copy)
  faces = ["--faces", "detect", "--detector", "short"]
  evaluate.main(["--bundle", first, "--data", data, "--calibrate-on", data, *faces,
                 "--bootstrap", "20", "--out", str(tmp_path / "at_once"), "--quiet"])
  calibrate.main(["--bundle", copy, "--data", data, *faces])
  evaluate.main(["--bundle", copy, "--data", data, *faces, "--bootstrap", "20",
                 "--out", str(tmp_path / "stored"), "--quiet"])
  at_once, stored = (json.loads((tmp_path / d / "report.json").read_text())
                     for d in ("at_once", "stored"))
  fitted = json.loads((tmp_path / "copy" / "meta.json").read_text())["calibration"]
  assert fitted["fitted_on"]["faces"] == "detect"
  assert at_once["calibration"]["fitted"]["temperature"] == fitted["temperature"] != 0.741
  assert at_once["calibration"]["source"] == "fitted now"
  for key in ("temperature", "ece_uncalibrated", "ece_calibrated", "nll_uncalibrated",
              "nll_calibrated"):
    assert at_once["calibration"][key] == stored["calibration"][key], key  # the same fit
  assert at_once["overall"] == stored["overall"] and at_once["count"] == stored["count"] > 0
  # The uncalibrated NLL is that of the raw logits: the Predictor's on the aligned faces.
  pipe = FacePipeline(Bundle(first), detector="short", faces="detect")
  from gender_jax.evaluation import calibration, datasets
  [ds] = datasets.load([data])
  outputs, _ = pipe.logits_for_records(ds.records)
  assert at_once["calibration"]["nll_uncalibrated"] == pytest.approx(
      calibration.nll(outputs.values, outputs.labels), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("count,size,sides", [(12, (640, 480), (55, 70)),
                                              (40, (1280, 960), (60, 80))])
def test_group_photos_are_answered_face_for_face(tmp_path, utkface_2k, count, size, sides):
  """Collages of 12 and of 40 people: every face the detector (with its windows) finds is
  answered, far past the 8 a photo once got, with no false face."""
  crops = _crops(utkface_2k, "female", count // 2) + _crops(utkface_2k, "male", count - count // 2)
  photo = scenes.group_photo(np.random.default_rng(count), crops, size=size, sides=sides,
                             kind="gradient", max_angle=5)
  assert len(photo.squares) == count
  bundle = random_bundle(tmp_path / "bundle", size=32)
  [faces] = classify_photos(bundle, [photo.image], detector="full", faces="detect")
  hit = scenes.match(photo.squares, np.asarray([f["box"] for f in faces]).reshape(-1, 4))
  print(f"{count} faces: {hit.sum()} found, {len(faces)} answered")
  assert hit.mean() >= 0.85 and len(faces) == hit.sum(), (hit.sum(), len(faces))
  assert all(f["label"] in ("female", "male", "uncertain") for f in faces)
  assert [f["index"] for f in faces] == list(range(len(faces)))
