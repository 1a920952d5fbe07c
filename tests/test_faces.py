"""Faces: alignment maths, detection on photos made from real faces, the fused program."""
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gender_jax.inference.bundle import Bundle
from tests.fixtures import scenes
from gender_jax.faces import align
from gender_jax.faces.letterbox import letterbox, unbox
from gender_jax.inference.photos import FacePipeline
from gender_jax.faces.detect import Detector
from tests.helpers import constant_bundle, random_bundle


def _crops(utkface_2k, n, seed=0):
  files = sorted(glob.glob(str(utkface_2k / "*" / "*.jpg")))
  pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
  return [np.asarray(Image.open(files[i]).convert("RGB")) for i in pick]


@pytest.fixture(scope="module")
def short():
  return Detector("short", max_faces=8, batch_size=8)


def test_similarity_recovers_a_known_transform_and_warp_is_exact_on_shifts():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (3, 2)).astype(np.float32)
  angle, scale, shift = 0.3, 1.7, np.asarray([12.0, -5.0])
  rot = scale * np.asarray([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  m = np.asarray(align.similarity(jnp.asarray(src), jnp.asarray(src @ rot.T + shift)))
  np.testing.assert_allclose(m[:, :2], rot, atol=1e-4)
  np.testing.assert_allclose(m[:, 2], shift, atol=1e-3)
  image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
  warp = jax.jit(align.warp, static_argnums=2)
  moved = np.asarray(warp(jnp.asarray(image), jnp.asarray([[1.0, 0, 3], [0, 1.0, 2]]), (10, 12)))
  np.testing.assert_array_equal(moved, image[2:12, 3:15])  # integer shift: exact pixels
  outside = np.asarray(warp(jnp.asarray(image), jnp.asarray([[1.0, 0, 100], [0, 1, 0]]),
                            (10, 12)))
  assert not outside.any()  # sampling outside the image gives black, like the letterbox


def test_templates_are_checked_and_scaled():
  pts = align.template_points(align.UTKFACE_TEMPLATE, 100)
  np.testing.assert_allclose(pts, np.asarray(align.UTKFACE_TEMPLATE["points"]) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="face template"):
    align.check_template(dict(size=[200, 200], points=[[1, 2]]))


def test_bundle_face_template_from_meta_or_utkface(tmp_path):
  plain = Bundle(constant_bundle(tmp_path / "a"))
  assert plain.face_template["points"] == align.UTKFACE_TEMPLATE["points"]
  b = Bundle(constant_bundle(tmp_path / "b"))
  b.meta["face_template"] = dict(size=[100, 120], points=[[30, 40], [70, 40], [50, 90]])
  assert b.face_template["size"] == [100.0, 120.0]


def test_framing_measures_a_photo_against_the_template():
  tpl = align.UTKFACE_TEMPLATE
  kp = np.zeros((6, 2))
  kp[list(align.ALIGN_KEYPOINTS)] = np.asarray(tpl["points"])
  assert np.allclose(align.framing(kp, (200, 200, 3), tpl), (1, 0, 0), atol=1e-5)
  # The same face at 0.8 of the crop's framing, in the middle of a 250-px photo.
  centre = np.asarray([100.0, 100.0])
  smaller = (kp - centre) * 0.8 * 250 / 200 + 125
  scale, degrees, shift = align.framing(smaller, (250, 250, 3), tpl)
  assert scale == pytest.approx(0.8) and degrees == pytest.approx(0, abs=1e-5)
  assert shift == pytest.approx(np.hypot(*(np.mean(np.asarray(tpl["points"]), 0) - centre))
                                * 0.2 / 200)
  rot = np.radians(20)
  turned = (kp - 100) @ np.asarray([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]]) + 100
  assert align.framing(turned, (200, 200, 3), tpl)[1] == pytest.approx(20)


def test_letterbox_maps_points_back():
  image = np.zeros((90, 300, 3), np.uint8)
  lb = letterbox(image, 128)
  assert lb.image.shape == (128, 128, 3)
  pts = np.asarray([[0.0, 0.0], [300.0, 90.0]])
  back = unbox(pts * np.asarray(lb.scale) + np.asarray(lb.offset), lb)
  np.testing.assert_allclose(back, pts, atol=1e-6)
  square = letterbox(np.zeros((200, 200, 3), np.uint8), 128)
  assert square.offset == (32.0, 32.0)  # a near-square image (a crop) gets a quarter margin


@pytest.mark.slow
def test_utkface_crops_come_out_as_one_face_and_align_onto_themselves(utkface_2k, short):
  crops = _crops(utkface_2k, 200)
  faces = short(crops)
  counts = np.asarray([len(f) for f in faces])
  assert (counts == 1).mean() >= 0.99
  # A crop's own keypoints fit onto the UTKFace template by nearly the identity: the
  # template, the keypoint order and the letterbox margin agree.
  kps = np.stack([f[0]["keypoints"] for f in faces if len(f) == 1]).astype(np.float32)
  tpl = np.broadcast_to(align.template_points(align.UTKFACE_TEMPLATE, 200), (len(kps), 3, 2))
  m = np.asarray(align.similarity(jnp.asarray(tpl), jnp.asarray(kps[:, list(align.ALIGN_KEYPOINTS)])))
  scale = np.hypot(m[:, 0, 0], m[:, 1, 0])
  angle = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
  assert abs(np.median(scale) - 1) < 0.03 and np.quantile(abs(scale - 1), 0.9) < 0.12
  assert abs(np.median(angle)) < 1.5 and np.quantile(abs(angle), 0.9) < 8
  centre = np.einsum("nij,j->ni", m, [100.0, 100.0, 1.0])  # where the crop centre comes from
  assert np.abs(np.median(centre, 0) - 100).max() < 2


def test_pasted_faces_found_where_they_are_and_blank_images_have_none(utkface_2k, short):
  rng = np.random.default_rng(3)
  crops = _crops(utkface_2k, 12, seed=1)
  photos = [scenes.group_photo(rng, crops[3 * k:3 * k + 3], size=(400, 300), sides=(80, 120),
                                  kind=scenes.BACKGROUNDS[k], others=crops) for k in range(4)]
  faces = short([p.image for p in photos])
  found = np.concatenate([scenes.match(p.squares, np.asarray([f["box"] for f in fs]).reshape(-1, 4))
                          for p, fs in zip(photos, faces)])
  assert found.mean() >= 0.8, found
  assert sum(len(fs) for fs in faces) <= len(found) + 1  # hardly any false alarms
  for p, fs in zip(photos, faces):  # keypoints inside their boxes, eyes above the mouth
    for f in fs:
      (x0, _, x1, _), kp = f["box"], f["keypoints"]
      assert (x0 - 5 <= kp[:4, 0]).all() and (kp[:4, 0] <= x1 + 5).all()
      assert kp[3, 1] > kp[:2, 1].max()
  blanks = [np.full((240, 320, 3), 128, np.uint8), np.zeros((64, 64, 3), np.uint8)] + [
      scenes.background(rng, (320, 240), k, crops) for k in scenes.BACKGROUNDS]
  assert [len(f) for f in short(blanks)] == [0] * len(blanks)


@pytest.mark.slow
def test_pipeline_classifies_only_the_faces_it_finds_with_the_predictor(utkface_2k, tmp_path):
  """Detection, then the faces found (and only those) warped and classified by the Predictor:
  its answers on the aligned crops, each face one pass, compiles fixed after the first call."""
  from gender_jax.inference.predictor import Predictor
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32))
  pipe = FacePipeline(bundle, detector="short", batch_size=4, canvas=320, faces="detect")
  rng = np.random.default_rng(5)
  crops = _crops(utkface_2k, 6, seed=2)
  photo = scenes.group_photo(rng, crops[:2], size=(420, 280), sides=(120, 135), kind="gradient")
  images = [photo.image, crops[2], np.zeros((50, 70, 3), np.uint8), crops[3], crops[4]]
  passes, crop_logits = [], pipe.predictor.crop_logits
  pipe.predictor.crop_logits = lambda ims: passes.append(len(ims)) or crop_logits(ims)
  out = pipe(images, crops=True)
  assert [len(f) for f in out] == [2, 1, 0, 1, 1]
  assert passes == [5]  # one classifier input per face found, none for empty slots
  assert scenes.match(photo.squares, np.stack([f["box"] for f in out[0]])).all()
  faces = [f for fs in out for f in fs]
  direct = Predictor(bundle, batch_size=8).predict([f["crop"] for f in faces])
  for f, d in zip(faces, direct):
    assert f["crop"].shape == (32, 32, 3)
    assert f["p_male"] == pytest.approx(d["p_male"], abs=1e-5)
    assert f["label"] == d["label"] and f["index"] in (0, 1)
  pipe.warm()  # every batch size: a photo alone takes the smallest
  compiled = pipe.compiles
  pipe([crops[5]])
  pipe(images[:2])
  assert pipe.compiles == compiled


def test_auto_classifies_a_tight_crop_whole(utkface_2k, tmp_path):
  from gender_jax.inference.predictor import Predictor
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32))
  pipe = FacePipeline(bundle, detector="short", max_faces=2, batch_size=2, canvas=320)
  crop = _crops(utkface_2k, 1, seed=4)[0]
  photo = scenes.in_the_wild(np.random.default_rng(0), crop, [], side=300, scale=(0.5, 0.5))
  # Framed a little wider than the crops (a 250-px portrait): its face box is over half the
  # photo wide, but classified whole it would be a zoomed-out crop, so it is aligned.
  wider = scenes.in_the_wild(np.random.default_rng(0), crop, [], side=250, scale=(0.8, 0.8))
  [[whole], [small], [portrait]] = pipe([crop, photo.image, wider.image])
  assert not whole["aligned"] and small["aligned"] and portrait["aligned"]
  assert portrait["box"][2] - portrait["box"][0] >= 0.5 * 250
  [direct] = Predictor(bundle).predict([crop])
  assert whole["p_male"] == pytest.approx(direct["p_male"], abs=1e-5)


def test_flip_tta_averages_each_aligned_face_with_its_mirror(utkface_2k, tmp_path):
  """`tta="flip"` in the fused program answers as the Predictor's flip TTA does on the same
  aligned crop; and only flip is offered (crops would cut into the aligned framing)."""
  from gender_jax.inference.predictor import Predictor
  # A high temperature keeps the random model's answers away from 0 and 1, where the
  # mirror's effect would be lost in rounding.
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32, seed=3, temperature=50.0))
  crop = _crops(utkface_2k, 1, seed=6)[0]
  photo = scenes.in_the_wild(np.random.default_rng(1), crop, [], side=300, scale=(0.5, 0.5))
  plain = FacePipeline(bundle, detector="short", max_faces=2, batch_size=2, canvas=320)
  flip = FacePipeline(bundle, detector="short", max_faces=2, batch_size=2, canvas=320,
                      tta="flip")
  [[face]], [[face_tta]] = plain([photo.image], crops=True), flip([photo.image])
  [one] = Predictor(bundle).predict([face["crop"]])
  [both] = Predictor(bundle, tta="flip").predict([face["crop"]])
  assert face["p_male"] == pytest.approx(one["p_male"], abs=1e-5)
  assert face_tta["p_male"] == pytest.approx(both["p_male"], abs=1e-5)
  assert abs(both["p_male"] - one["p_male"]) > 1e-4  # the mirror changed the answer
  with pytest.raises(ValueError, match="flip"):
    FacePipeline(bundle, detector="short", tta="crops")


@pytest.mark.slow
def test_full_range_at_a_larger_side_finds_the_same_faces_and_smaller_ones(utkface_2k):
  rng = np.random.default_rng(8)
  crops = _crops(utkface_2k, 8, seed=6)
  big = scenes.group_photo(rng, crops[:3], size=(480, 320), sides=(110, 140), kind="noise")
  small = scenes.group_photo(rng, crops[3:8], size=(640, 480), sides=(50, 70), kind="gradient")
  native, wide = Detector("full", batch_size=2), Detector("full", batch_size=2, side=384)
  [a, a_small], [b, b_small] = native([big.image, small.image]), wide([big.image, small.image])
  assert len(a) >= 2 and len(b) >= len(a)
  for fa in a:  # each face of the native run is found at 384 too, at the same place
    side = fa["box"][2] - fa["box"][0]
    fb = min(b, key=lambda f: np.abs(f["box"] - fa["box"]).max())
    np.testing.assert_allclose(fa["box"], fb["box"], atol=0.08 * side)
    np.testing.assert_allclose(fa["keypoints"][:4], fb["keypoints"][:4], atol=0.08 * side)
  found = lambda faces: scenes.match(small.squares, np.asarray(  # noqa: E731
      [f["box"] for f in faces]).reshape(-1, 4)).sum()
  assert found(b_small) >= 4 and found(b_small) > found(a_small)


def test_second_look_puts_small_faces_keypoints_where_their_crops_put_them(utkface_2k, tmp_path):
  """A face 75-95 px wide in a 250-px photo is ~30 px in the detector's input; the second
  look (refine.py) measures it again in the template's own view, so its keypoints land where
  the short-range detector puts them on the crop itself (the template's regime). A tight
  crop, which the first look already saw larger than the view would, keeps its keypoints."""
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32))
  crops = _crops(utkface_2k, 8, seed=9)
  own = Detector("short", max_faces=1, batch_size=8)(crops)
  rng = np.random.default_rng(4)
  photos, truth = [], []
  for crop, [face] in zip(crops, own):
    side = int(rng.integers(75, 96))
    x0, y0 = (int(v) for v in rng.integers(0, 250 - side, 2))
    canvas = Image.fromarray(scenes.background(rng, (250, 250), "gradient"))
    scenes.paste(canvas, crop, x0, y0, side, 0.0, shape="square")
    photos.append(np.asarray(canvas))
    truth.append(face["keypoints"] * side / crop.shape[1] + [x0, y0])
  first = FacePipeline(bundle, detector="full", max_faces=2, batch_size=8, refine=False)
  second = FacePipeline(bundle, detector="full", max_faces=2, batch_size=8)

  def errors(pipe):
    out = [max(fs, key=lambda f: f["score"]) for fs in pipe(photos)]
    pts = list(align.ALIGN_KEYPOINTS)
    return np.asarray([np.abs(f["keypoints"][pts] - t[pts]).max() /
                       np.linalg.norm(t[1] - t[0]) for f, t in zip(out, truth)])
  before, after = errors(first), errors(second)
  print(f"keypoint error / eye distance, median: {np.median(before):.3f} → {np.median(after):.3f}")
  assert np.median(after) < 0.7 * np.median(before), (before, after)
  [[a]], [[b]] = first(crops[:1]), second(crops[:1])
  np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)  # canvas round trip


# -------------------------------------------------- a photo where the margin pass found no face


def test_photos_without_a_face_are_tried_again_without_the_margin():
  pipe = FacePipeline.__new__(FacePipeline)  # the host logic only: no detector, no bundle
  pipe.faces, pipe.margin, pipe.tiles, pipe.max_faces = "detect", None, "auto", 8
  calls = []

  def find(images, margin, capped):
    calls.append(([im.shape for im in images], margin))
    return [[{"score": 0.9, "margin": margin, "box": [0, 0, 9, 9], "aligned": True}]
            if im.shape == (250, 250, 3) and margin == 0.0
            or im.shape == (250, 250, 3) and im[0, 0, 0] == 1 else [] for im in images]
  pipe._find = find
  pipe._classify = lambda images, found, crops: None
  found = np.ones((250, 250, 3), np.uint8)         # found on the first pass
  small = np.zeros((250, 250, 3), np.uint8)        # found only without the margin
  wide = np.zeros((200, 400, 3), np.uint8)         # no margin to drop: not run again
  out = pipe([found, small, wide])
  assert [len(f) for f in out] == [1, 1, 0]
  assert out[0][0]["margin"] is None and out[1][0]["margin"] == 0.0
  assert calls == [([(250, 250, 3), (250, 250, 3), (200, 400, 3)], None), ([(250, 250, 3)], 0.0)]
