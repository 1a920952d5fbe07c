"""Person crops as a first-class input: letterboxed (aspect kept) in training and inference,
recorded in the bundle; a bundle trained on persons classifies a crop whole under --faces
auto instead of hunting it for a face."""
import csv

import numpy as np
import pytest

from gender_jax.data import augment, preprocess
from tests.helpers import constant_bundle


def _tall(h=60, w=20, seed=0):
  """A tall crop with bright content edge to edge, so any padding shows as the fill colour."""
  return np.random.default_rng(seed).integers(150, 256, (h, w, 3), dtype=np.uint8)


def test_letterbox_keeps_the_aspect_and_pads_with_the_preset_mean():
  spec = preprocess.make_spec(30, "dlib", resize="letterbox")
  assert spec["resize"] == "letterbox" and preprocess.pad_colour(spec) == (123, 117, 104)
  out = preprocess.resize_for(_tall(), spec)
  assert out.shape == (30, 30, 3)
  # 60x20 → 30x10, centred: columns 10..19 hold the image, the rest is the fill colour.
  assert (out[:, :10] == (123, 117, 104)).all() and (out[:, 20:] == (123, 117, 104)).all()
  assert (out[:, 10:20].min(axis=-1) >= 140).all()
  # Squash (the default, and bundles from before `resize` existed) stretches it.
  assert preprocess.resize_mode({"image_size": 30}) == "squash"
  assert (preprocess.resize(_tall(), 30).min(axis=-1) >= 140).all()
  with pytest.raises(ValueError, match="unknown resize mode"):
    preprocess.make_spec(30, resize="stretch")


@pytest.mark.parametrize("backend", augment.BACKENDS)
def test_training_letterboxes_a_person_crop_whole(backend):
  import io

  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(_tall(120, 40)).save(buf, format="PNG")
  spec = augment.AugmentSpec(crop="random_resized", crop_scale=(0.7, 1.0), flip=False,
                             image_backend=backend, resize="letterbox", fill=(1, 2, 3))
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = augment.train_image(buf.getvalue(), 30, rng, spec)
    assert out.shape == (30, 30, 3)
    content = np.nonzero((out.min(axis=-1) >= 100).any(axis=0))[0]
    # The crop's aspect is drawn around the image's own 1:3: never a near-square cut of it
    # (which would fill 30 columns with the top half of a person).
    assert 6 <= len(content) <= 16, len(content)
    assert (out[:, :content[0]] == (1, 2, 3)).all()


def test_predictor_views_letterbox_as_the_bundle_says():
  from gender_jax.inference.predictor import views
  spec = preprocess.make_spec(30, "scratch", resize="letterbox")
  plain, flipped = views(_tall(), 30, "flip", spec)
  assert (plain[:, :10] == 128).all() and (plain[:, 10:20] >= 140).all()
  assert (flipped == plain[:, ::-1]).all()
  (squashed,) = views(_tall(), 30, "none")
  assert (squashed.min(axis=-1) >= 140).all()


def _predict(tmp_path, bundle, *extra):
  from PIL import Image

  from gender_jax import predict
  photos = tmp_path / "crops"
  photos.mkdir(exist_ok=True)
  Image.fromarray(_tall(96, 32)).save(photos / "person.png")
  out = tmp_path / "preds.csv"  # one file, rewritten for each bundle asked
  assert predict.main(["--bundle", bundle, str(photos), "--out", str(out), "--quiet",
                       "--overwrite", *extra]) == 0
  with open(out) as f:
    return list(csv.DictReader(f))


def test_faces_auto_on_a_persons_bundle_classifies_the_crop_whole(tmp_path, capsys):
  bundle = constant_bundle(tmp_path / "b", size=16, resize="letterbox", inputs=["persons"])
  rows = _predict(tmp_path, bundle)  # --faces auto is the default
  assert [(r["label"], r.get("face")) for r in rows] == [("male", None)]
  assert "trained on person crops" in capsys.readouterr().err


@pytest.mark.slow
def test_faces_auto_on_a_faces_and_persons_bundle_answers_a_faceless_crop_whole(tmp_path):
  faces_only = constant_bundle(tmp_path / "f", size=16)
  assert [r["label"] for r in _predict(tmp_path, faces_only)] == ["no_face"]
  merged = constant_bundle(tmp_path / "m", size=16, resize="letterbox",
                           inputs=["faces", "persons"])
  assert [r["label"] for r in _predict(tmp_path, merged)] == ["male"]


def test_sources_say_whether_they_hold_faces_or_persons(tmp_path):
  import ml_collections

  from gender_jax.train import after
  from gender_jax.data import sources
  from gender_jax.models.weights import read_meta
  config = ml_collections.ConfigDict(dict(data=dict(
      folder="", sources={"peta": dict(weight=1.0), "folder:office": dict(weight=1.0),
                          "folder:cctv": dict(weight=1.0, inputs="persons")})))
  assert sources.input_kinds(config) == {"peta": "persons", "folder:office": "faces",
                                         "folder:cctv": "persons"}
  # No face source: no template measured (the detector never runs on person crops).
  del config.data.sources["folder:office"]
  bundle = constant_bundle(tmp_path / "b", size=16)
  said = after.STEPS["face_template"](config, bundle, step=0,
                                      val_sources={"peta": None, "folder:cctv": None})
  assert "no face source" in said and "face_template" not in read_meta(bundle)
  config.data.sources["folder:cctv"].inputs = "bodies"
  with pytest.raises(ValueError, match=r"inputs='bodies': choose from \('faces', 'persons'\)"):
    sources.input_kinds(config)
