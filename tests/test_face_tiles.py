"""Tiles: a large photo's windows cover it with enough overlap, their faces merge into one
list, and small faces the whole-photo look misses are found."""
import glob

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import scenes

from gender_jax.faces import tiles
from gender_jax.faces.detect import Detector


@pytest.mark.parametrize("h,w", [(480, 640), (1440, 1920), (3000, 4000), (700, 641)])
def test_windows_cover_the_photo_and_hold_every_face_up_to_half_a_window(h, w):
  wins = tiles.windows((h, w, 3))
  side = max(tiles.MIN_TILE, -(-max(h, w) // tiles.TILES_ACROSS))
  assert wins and all(x1 - x0 <= side and y1 - y0 <= side for x0, y0, x1, y1 in wins)
  assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in wins)
  rng = np.random.default_rng(0)
  for _ in range(500):  # any square face of up to half a window lies whole in some window
    s = int(rng.integers(1, side // 2 + 1))
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    assert any(x0 <= x and y0 <= y and x + s <= x1 and y + s <= y1 for x0, y0, x1, y1 in wins)


def test_small_photos_and_off_are_not_tiled_and_a_bad_mode_is_named():
  assert tiles.windows((250, 250, 3)) == [] and tiles.windows((479, 639, 3)) == []
  assert tiles.windows((480, 640, 3), "off") == []
  with pytest.raises(ValueError, match="tiles='on'"):
    tiles.windows((480, 640, 3), "on")


def _face(box, score):
  box = np.asarray(box, np.float32)
  return dict(index=0, box=box, score=score, keypoints=np.tile(box[:2], (6, 1)) + 1)


def test_merge_maps_back_drops_duplicates_and_prefers_whole_faces():
  shape = (480, 640, 3)
  whole = [_face([10, 10, 60, 60], 0.9)]  # found by the whole-photo look
  # Window (300, 0, 620, 320): the same face as a neighbour's but cut at its left border,
  # with a higher score, and a new one.
  cut = [_face([0, 100, 30, 140], 0.95), _face([100, 200, 140, 240], 0.7)]
  # Window (200, 0, 520, 320): the first of those whole, and the whole-photo face again.
  neighbour = [_face([90, 100, 140, 140], 0.8)]
  out = tiles.merge([whole, cut, neighbour], [(0, 0, 640, 480), (300, 0, 620, 320),
                                              (200, 0, 520, 320)], shape, max_faces=8)
  boxes = [f["box"].tolist() for f in out]
  assert boxes == [[10, 10, 60, 60], [290, 100, 340, 140], [400, 200, 440, 240]]
  assert [f["index"] for f in out] == [0, 1, 2] and [f["score"] for f in out] == [0.9, 0.8, 0.7]
  np.testing.assert_allclose(out[2]["keypoints"][0], [401, 201])  # keypoints moved too
  assert len(tiles.merge([whole, cut, neighbour], [(0, 0, 640, 480), (300, 0, 620, 320),
                                                   (200, 0, 520, 320)], shape, 2)) == 2
  # A part of a large face seen in a window, mostly inside the whole face's box: one face.
  part = [_face([0, 0, 40, 40], 0.99)]
  big = [_face([0, 0, 300, 300], 0.9)]
  assert len(tiles.merge([big, part], [(0, 0, 640, 480), (100, 100, 420, 420)], shape, 8)) == 1


@pytest.mark.slow
def test_small_faces_of_a_group_photo_are_found_with_tiles(utkface_2k):
  files = sorted(glob.glob(str(utkface_2k / "*" / "*.jpg")))
  pick = np.random.default_rng(5).choice(len(files), 40, replace=False)
  crops = [np.asarray(Image.open(files[i]).convert("RGB")) for i in pick]
  rng = np.random.default_rng(0)
  photos = [scenes.group_photo(rng, crops[5 * k:5 * k + 5], size=(640, 480), sides=(40, 70),
                               others=crops) for k in range(8)]

  def recall(mode):
    found = Detector("full", max_faces=8, batch_size=8, tiles=mode)([p.image for p in photos])
    hits = [scenes.match(p.squares, np.asarray([f["box"] for f in fs]).reshape(-1, 4))
            for p, fs in zip(photos, found)]
    false = sum(len(fs) - int(h.sum()) for fs, h in zip(found, hits))
    return np.concatenate(hits).mean(), false

  (plain, _), (tiled, false) = recall("off"), recall("auto")
  assert plain < 0.5 and tiled >= 0.8 and false <= 1, (plain, tiled, false)


@pytest.mark.slow
def test_pipeline_classifies_the_faces_its_windows_find_without_new_compiles(utkface_2k, tmp_path):
  """The photo path answers the windows' faces like the whole photo's: aligned crops of the
  photo at the photo's own scale, classified as the Predictor would, with the programs the
  whole photo compiled."""
  from gender_jax.inference.bundle import Bundle
  from gender_jax.inference.photos import FacePipeline
  from gender_jax.inference.predictor import Predictor
  from tests.helpers import random_bundle
  files = sorted(glob.glob(str(utkface_2k / "*" / "*.jpg")))
  crops = [np.asarray(Image.open(files[i]).convert("RGB")) for i in (3, 300, 900, 1500)]
  photo = scenes.group_photo(np.random.default_rng(1), crops, size=(800, 600), sides=(55, 65),
                             kind="gradient", max_angle=0)
  bundle = Bundle(random_bundle(tmp_path / "bundle", size=32))
  pipe = FacePipeline(bundle, detector="full", batch_size=4, refine=False, faces="detect")
  pipe.warm()
  compiled = pipe.compiles
  looked, find = [], pipe._find
  pipe._find = lambda views, *args: looked.append(len(views)) or find(views, *args)
  [faces] = pipe([photo.image], crops=True)
  # The detector alone picked the windows worth aligning.
  windows = tiles.windows(photo.image.shape)
  assert looked[0] == 1 and 0 < looked[1] < len(windows), looked
  assert pipe.compiles == compiled
  direct = Predictor(bundle).predict([f["crop"] for f in faces])
  assert [f["p_male"] for f in faces] == pytest.approx([d["p_male"] for d in direct], abs=1e-5)
  [plain] = FacePipeline(bundle, detector="full", batch_size=4, refine=False,
                         tiles="off")([photo.image])
  found = scenes.match(photo.squares, np.stack([f["box"] for f in faces]).reshape(-1, 4))
  assert len(plain) < found.sum(), (len(plain), found)
  assert found.sum() >= 3 and len(faces) == found.sum(), [f["box"] for f in faces]
  assert [f["index"] for f in faces] == list(range(len(faces)))
  assert [f["box"][0] for f in faces] == sorted(f["box"][0] for f in faces)  # left to right
