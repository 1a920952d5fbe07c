"""The face template a run measures on its validation crops, and the bundle that carries it."""
import numpy as np
import pytest

from gender_jax.train import loop as trainer
from gender_jax.faces import align
from tests.helpers import random_bundle, tiny_config


def test_template_measured_on_utkface_crops_matches_the_shipped_one(utkface_2k):
  records = [{"image": p.read_bytes()} for p in sorted((utkface_2k / "female").glob("*.jpg"))[:40]]
  found = trainer._face_template(tiny_config(face_template="measure"), {"folder": records})
  assert found["size"] == [200, 200] and found["measured_on"] >= 38
  # Within a few pixels of the template measured on all 2,000 crops.
  np.testing.assert_allclose(found["points"], align.UTKFACE_TEMPLATE["points"], atol=5)
  assert trainer._face_template(tiny_config(face_template="off"), {"folder": records}) is None


def test_images_without_faces_give_no_template():
  rng = np.random.default_rng(0)
  import io
  from PIL import Image
  records = []
  for _ in range(20):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "PNG")
    records.append({"image": buf.getvalue()})
  assert trainer._face_template(tiny_config(face_template="measure"), {"s": records}) is None


def test_bundle_reads_its_template(tmp_path):
  from gender_jax.inference.bundle import Bundle
  bundle = Bundle(random_bundle(tmp_path / "b"))
  assert bundle.face_template["points"] == align.UTKFACE_TEMPLATE["points"]  # the fallback
  bundle.meta["face_template"] = dict(size=[100, 120], points=[[30, 40], [70, 40], [50, 90]])
  assert bundle.face_template["size"] == [100.0, 120.0]
  bundle.meta["face_template"] = dict(size=[100], points=[[1, 2]])
  with pytest.raises(ValueError, match="face template"):
    bundle.face_template  # noqa: B018
