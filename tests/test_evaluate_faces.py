"""`evaluate --faces detect` on photos made here: real UTKFace crops pasted onto larger
backgrounds, and a photo with no face, which is listed instead of being guessed."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from gender_jax import evaluate
from tests.helpers import random_bundle


def test_evaluate_faces_detect_lists_photos_without_a_face(tmp_path, utkface_2k):
  rng = np.random.default_rng(0)
  data = tmp_path / "photos"
  for label in ("female", "male"):
    os.makedirs(data / label)
    crops = sorted((utkface_2k / label).iterdir())[:2]
    for i, crop in enumerate(crops):
      canvas = np.full((320, 240, 3), rng.integers(60, 200), np.uint8)
      face = np.asarray(Image.open(crop).convert("RGB").resize((110, 110)))
      y, x = rng.integers(20, 320 - 130), rng.integers(10, 240 - 120)
      canvas[y:y + 110, x:x + 110] = face
      Image.fromarray(canvas).save(data / label / f"{i}.jpg", quality=92)
  Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(data / "male" / "blank.jpg")
  bundle = random_bundle(tmp_path / "bundle", size=32)
  evaluate.main(["--bundle", bundle, "--data", str(data), "--out", str(tmp_path / "report"),
                 "--faces", "detect", "--detector", "short", "--bootstrap", "20", "--quiet"])
  report = json.loads((tmp_path / "report" / "report.json").read_text())
  assert report["faces"]["images"] == 5
  assert [e["key"] for e in report["faces"]["no_face"]] == ["male/blank.jpg"]
  assert report["count"] == 4 and report["faces"]["found_fraction"] == pytest.approx(0.8)
  assert "No face found in" in (tmp_path / "report" / "report.md").read_text()
