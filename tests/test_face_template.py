"""The face template a run measures on its validation crops, and the bundle that carries it."""
import sys

import numpy as np
import pytest

from gender_jax.models.weights import read_meta
from gender_jax.train import after, schedule
from gender_jax.faces import align
from tests.helpers import REPO, random_bundle, tiny_config

sys.path.insert(0, REPO)
from configs import mobilenet  # noqa: E402


def test_template_measured_on_utkface_crops_matches_the_shipped_one(utkface_2k, tmp_path):
  records = [{"image": p.read_bytes()} for p in sorted((utkface_2k / "female").glob("*.jpg"))[:40]]
  bundle = random_bundle(tmp_path / "b")
  found = after.run(tiny_config(after_training="face_template"), bundle, step=0,
                    val_sources={"folder": records})["face_template"]
  assert found["size"] == [200, 200] and found["measured_on"] >= 38
  # Within a few pixels of the template measured on all 2,000 crops; and the bundle holds it.
  np.testing.assert_allclose(found["points"], align.UTKFACE_TEMPLATE["points"], atol=5)
  assert read_meta(bundle)["face_template"] == found
  # A source of person crops is left out of the measurement: with only those, none.
  other = random_bundle(tmp_path / "persons")
  after.run(tiny_config(after_training="face_template"), other, step=0,
            val_sources={"peta": records})
  assert "face_template" not in read_meta(other)


def test_images_without_faces_give_no_template(tmp_path):
  rng = np.random.default_rng(0)
  import io
  from PIL import Image
  records = []
  for _ in range(20):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "PNG")
    records.append({"image": buf.getvalue()})
  bundle = random_bundle(tmp_path / "b")
  before = read_meta(bundle)
  after.run(tiny_config(after_training="face_template"), bundle, step=0, val_sources={"s": records})
  assert read_meta(bundle) == before


def test_after_training_names_steps_that_exist():
  with pytest.raises(ValueError, match="no step 'precise_nb'; the steps are precise_bn"):
    schedule.validate(tiny_config(after_training="precise_nb,calibrate"))
  schedule.validate(tiny_config(after_training="precise_bn, face_template ,calibrate"))
  assert "precise_bn" in schedule.after_training(mobilenet.get_config())


def test_bundle_reads_its_template(tmp_path):
  from gender_jax.inference.bundle import Bundle
  bundle = Bundle(random_bundle(tmp_path / "b"))
  assert bundle.face_template["points"] == align.UTKFACE_TEMPLATE["points"]  # the fallback
  bundle.meta["face_template"] = dict(size=[100, 120], points=[[30, 40], [70, 40], [50, 90]])
  assert bundle.face_template["size"] == [100.0, 120.0]
  bundle.meta["face_template"] = dict(size=[100], points=[[1, 2]])
  with pytest.raises(ValueError, match="face template"):
    bundle.face_template  # noqa: B018
