"""Every inference path against the bundle contract written out by hand.

A random-weight bundle (`helpers.random_bundle`) and images at its exact size: `predict`,
`evaluate` and `calibrate` must give what `helpers.reference_logits` computes in numpy —
so a swapped channel order, a wrong mean or std, a temperature applied twice or a padded row
leaking into the answers fails here, where a constant-output bundle would not notice.
"""
import os

import numpy as np
import pytest
from PIL import Image

from gender_jax.evaluation import datasets as eval_data
from gender_jax.evaluation.calibration import calibrate_bundle
from gender_jax.evaluation import calibration
from gender_jax.evaluation import scoring
from gender_jax.inference.predictor import Predictor
from tests.helpers import load_bundle_model, random_bundle, reference_logits

SIZE = 16


@pytest.fixture(scope="module", params=["torchvision", "caffe"])
def case(request, tmp_path_factory):
  """A bundle (RGB or BGR preset, temperature 2) and a male/ female/ folder of PNGs."""
  root = tmp_path_factory.mktemp(request.param)
  bundle = random_bundle(root / "bundle", size=SIZE, preset=request.param, temperature=2.0)
  rng = np.random.default_rng(3)
  images, labels, paths = [], [], []
  for label, name in enumerate(("female", "male")):
    os.makedirs(root / "data" / name)
    for i in range(7):
      img = rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)
      path = root / "data" / name / f"{i}.png"
      Image.fromarray(img).save(path)
      images.append(img)
      labels.append(label)
      paths.append(str(path))
  model, spec, temperature = load_bundle_model(bundle)
  logits = reference_logits(model, spec, np.stack(images))
  return dict(bundle=bundle, data=str(root / "data"), paths=paths, labels=np.array(labels),
              logits=logits, spec=spec, model=model, images=np.stack(images),
              temperature=temperature)


def test_reference_sees_channel_order(case):
  """The check has teeth: the other channel order gives other answers."""
  swapped = dict(case["spec"], channel_order="BGR" if case["spec"]["channel_order"] == "RGB"
                 else "RGB")
  other = reference_logits(case["model"], swapped, case["images"])
  assert np.abs(calibration.softmax(other) - calibration.softmax(case["logits"])).max() > 1e-3
  assert 0 < (case["logits"].argmax(1) == 1).sum() < len(case["logits"])  # both classes


def test_predict_matches_reference(case):
  # Batch 4 over 14 images: the last batch is padded; padded rows must not leak in.
  answers = Predictor(case["bundle"], batch_size=4).predict(case["paths"])
  p_male = np.array([a["p_male"] for a in answers])
  expected = calibration.softmax(case["logits"], case["temperature"])[:, 1]
  np.testing.assert_allclose(p_male, expected, atol=2e-5)


def test_evaluate_matches_reference(case, tmp_path):
  report = scoring.evaluate_bundle(case["bundle"], [eval_data.load_one(case["data"])],
                                    str(tmp_path / "report"), bootstrap=20, progress=False)
  correct = case["logits"].argmax(1) == case["labels"]
  assert report["overall"]["accuracy"]["value"] == pytest.approx(correct.mean())
  assert report["calibration"]["temperature"] == case["temperature"]
  assert report["calibration"]["nll_calibrated"] == pytest.approx(
      calibration.nll(case["logits"], case["labels"], case["temperature"]), rel=1e-4)


def test_calibrate_matches_reference(case, tmp_path):
  import shutil
  bundle = shutil.copytree(case["bundle"], tmp_path / "bundle")
  summary = calibrate_bundle(str(bundle), eval_data.load_one(case["data"]).records,
                                       batch_size=4)
  expected = calibration.fit_temperature(case["logits"], case["labels"])
  assert summary["temperature"] == pytest.approx(expected, rel=1e-3)
  assert load_bundle_model(bundle)[2] == pytest.approx(expected, rel=1e-3)  # stored
