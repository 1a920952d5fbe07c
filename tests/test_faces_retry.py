"""FacePipeline: a near-square photo where the margin-letterboxed pass found no face is tried
once more without the margin (its face may be small); other photos are not run twice."""
import numpy as np

from gender_jax.inference.photos import FacePipeline


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
