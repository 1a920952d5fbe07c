"""The Ray Serve endpoint, against a real Serve on loopback (CPU).

One Serve instance (Ray start + replica warm-up, ~30 s on 2 cores) is shared by every test of
this module, the web-page test at the end included (one module, so pytest-xdist keeps them on
one worker); the replica-kill test leaves a healthy replacement behind.
"""
import base64
import concurrent.futures
import io
import json
import os
import pathlib
import shutil
import socket
import sys
import time

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `serve` (the app package) lives at the repository root

pytest.importorskip("ray.serve")
requests = pytest.importorskip("requests")
yaml = pytest.importorskip("yaml")

from gender_jax.inference.bundle import BUNDLE_VERSION, Bundle  # noqa: E402
from gender_jax.data import preprocess  # noqa: E402
from serve import inputs  # noqa: E402
from tests.helpers import constant_bundle, random_bundle  # noqa: E402

IMAGE_SIZE = 64
# The proxy mode serve/README.md recommends (measured there); Ray reads it when it starts.
SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}


# ----------------------------------------------------------------------------- helpers
def make_bundle(directory) -> str:
  """A random-weight resnet_tiny (helpers.random_bundle), centred on images like the requests'
  so different images get different answers."""
  probe = np.stack([preprocess.eval_image(b, IMAGE_SIZE) for b in written_images(32, seed=99)])
  return random_bundle(directory, size=IMAGE_SIZE, abstain_threshold=0.55, probe=probe)


def written_images(count: int, seed: int = 0) -> list[bytes]:
  """JPEGs and PNGs of varied sizes and content, written here so no data set is needed."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(count):
    h, w = rng.integers(40, 240, size=2)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * rng.uniform(0.5, 3)) % 256, (yy * rng.uniform(0.5, 3)) % 256,
                     np.full((h, w), rng.integers(0, 256))], -1)
    noise = rng.integers(0, 60, size=(h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if i % 3 == 0 else "JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def offline(bundle: Bundle, images: list[bytes]) -> list[dict]:
  """What predict does offline: the eval decode, then bundle.decide(bundle.probs_fn()(batch))."""
  batch = np.stack([preprocess.eval_image(b, bundle.image_size) for b in images])
  return bundle.decide(bundle.probs_fn()(batch))


def assert_same(http_answers, offline_answers):
  assert len(http_answers) == len(offline_answers)
  for i, (got, want) in enumerate(zip(http_answers, offline_answers)):
    assert got["label"] == want["label"], (i, got, want)
    assert got["abstained"] == want["abstained"], (i, got, want)
    np.testing.assert_allclose([got["p_female"], got["p_male"]],
                               [want["p_female"], want["p_male"]], atol=2e-5, err_msg=str(i))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def load_config() -> dict:
  with open(REPO / "serve" / "config.yaml") as f:
    return yaml.safe_load(f)


class Served:
  def __init__(self, url, bundle_dir):
    self.url, self.bundle_dir = url, bundle_dir
    self.bundle = Bundle(bundle_dir, compute_dtype="float32")

  def post(self, body=None, content_type="image/jpeg", **kwargs):
    """POST /v1/predict; the crop tests' images hold no face, so unless the test names
    `faces` (the endpoint's default is auto), they are sent as crops (faces=off)."""
    headers = {"Content-Type": content_type} if content_type else {}
    kwargs.setdefault("params", {"faces": "off"})
    return requests.post(self.url + "/v1/predict", data=body, headers=headers, timeout=60, **kwargs)

  def stats(self):
    return requests.get(self.url + "/v1/stats", timeout=30).json()


_shared = {}


def start_serve(tmp_path_factory) -> Served:
  """serve/config.yaml deployed on a free loopback port, with a test bundle and one replica.

  One instance per session (a start costs 30-100 s on 2 busy cores): `stop_serve` leaves it
  running only while a later module of the session needs it.
  """
  if "served" in _shared:
    return _shared["served"]
  import ray
  from ray.serve._private import api as serve_api
  from ray.serve.schema import ServeDeploySchema

  bundle_dir = make_bundle(tmp_path_factory.mktemp("serve") / "bundle")
  # The replica finds the bundle through the environment, as a KubeRay pod would.
  env = dict(GENDER_JAX_BUNDLE=bundle_dir, **SERVE_ENV,
             # Direct ingress drains a stopping replica for 30 s by default; tests need not wait.
             RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1")
  _shared["saved_env"] = {k: os.environ.get(k) for k in (*env, "PYTHONPATH")}
  os.environ.update(env)
  os.environ["PYTHONPATH"] = os.pathsep.join(
      filter(None, [str(REPO), _shared["saved_env"]["PYTHONPATH"]]))
  port = free_port()
  config = load_config()
  config["http_options"].update(host="127.0.0.1", port=port)
  # The short-range detector compiles faster; the faces path is the same program either way.
  config["applications"][0]["args"]["faces_detector"] = "short"
  deployment = config["applications"][0]["deployments"][0]
  # One replica, so /v1/stats always reaches the replica that served the requests.
  deployment.pop("autoscaling_config")
  deployment["num_replicas"] = 1
  schema = ServeDeploySchema.model_validate(config)
  ray.init(num_cpus=2, include_dashboard=False, namespace="serve", log_to_driver=False)
  try:
    # What `serve run serve/config.yaml` does (ray/serve/scripts.py), minus the CLI.
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    # Not Serve's own blocking wait (60 s): a replica compiling its classifier and its face
    # pipeline on two busy cores can take longer; /healthz answers once it is up.
    client.deploy_apps(schema)
    url = f"http://127.0.0.1:{port}"
    wait_until_ok(url, timeout=240)
  except BaseException:
    stop_serve()
    raise
  _shared["served"] = Served(url, bundle_dir)
  return _shared["served"]


def stop_serve(request=None):
  """Shuts Ray down unless a module after `request`'s in this session also uses `served`."""
  if request is not None:
    users = [item.module.__name__ for item in request.session.items
             if "served" in getattr(item, "fixturenames", ())]
    this = request.module.__name__
    if this in users and any(m != this for m in users[users.index(this):]):
      return
  import ray
  from ray import serve
  _shared.pop("served", None)
  try:
    serve.shutdown()
  finally:
    ray.shutdown()
    for k, v in _shared.pop("saved_env", {}).items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
  yield start_serve(tmp_path_factory)
  stop_serve(request)


def wait_until_ok(url, timeout):
  """Until /healthz says ready; what the replica answered before is kept in _shared."""
  deadline, last = time.monotonic() + timeout, None
  seen = _shared.setdefault("healthz_before_ready", [])
  while time.monotonic() < deadline:
    try:
      r = requests.get(url + "/healthz", timeout=5)
      if r.status_code == 200:
        return
      if r.headers.get("content-type", "").startswith("application/json"):
        seen.append((r.status_code, r.json().get("status"), r.headers.get("Retry-After")))
      last = r.status_code
    except requests.RequestException as e:
      last = e
    time.sleep(0.5)
  raise TimeoutError(f"{url}/healthz not OK after {timeout} s: {last}")


# ----------------------------------------------------------------------------- config
def test_config_files_validate(tmp_path, monkeypatch):
  from ray.serve.schema import ServeDeploySchema
  from serve.app import app
  config = load_config()
  schema = ServeDeploySchema.model_validate(config)
  (application,) = schema.applications
  assert application.import_path == "serve.app:app"
  deployment = application.deployments[0]
  assert deployment.max_ongoing_requests >= max(application.args["batch_sizes"])
  bundle = constant_bundle(tmp_path / "bundle")
  monkeypatch.setenv("GENDER_JAX_BUNDLE", bundle)
  app(application.args)  # every arg is one the deployment takes
  with pytest.raises(ValueError, match="unknown serve args.*batch_size"):
    app({"batch_size": 8})
  # Powers of two: a batch is padded to the smallest compiled size that holds it.
  sizes = application.args["batch_sizes"]
  assert sizes == [2 ** i for i in range(len(sizes))], sizes
  # Two replicas at least, so one lost leaves the other answering.
  assert deployment.autoscaling_config["min_replicas"] >= 2
  # The KubeRay manifest carries the same application.
  manifest = yaml.safe_load((REPO / "serve" / "rayservice.yaml").read_text())
  embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
  ServeDeploySchema.model_validate(embedded)
  assert embedded["applications"][0]["import_path"] == application.import_path
  assert embedded["applications"][0]["args"]["batch_sizes"] == application.args["batch_sizes"]


# ----------------------------------------------------------------------------- decoding (no Ray)
def test_decode_refuses_bombs_before_decoding():
  bomb = io.BytesIO()
  Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpixel in ~20 KB
  assert len(bomb.getvalue()) < 100_000
  with pytest.raises(inputs.BadRequest, match="12000x12000.*over the limit") as e:
    inputs.decode_image("x", bomb.getvalue(), 64, max_pixels=40_000_000)
  assert e.value.status == 413


def test_decode_keeps_pils_own_bomb_guard():
  # With our limit set above PIL's, PIL's DecompressionBombError still ends as a 413.
  bomb = io.BytesIO()
  Image.new("1", (20000, 10000)).save(bomb, format="PNG")
  with pytest.raises(inputs.BadRequest, match="decompression bomb") as e:
    inputs.decode_image("x", bomb.getvalue(), 64, max_pixels=10**12)
  assert e.value.status == 413


def test_decode_errors_name_the_input():
  jpeg = written_images(2)[1]
  for data, match in ((b"", "empty"), (b"not an image", "not a recognised"),
                      (jpeg[: len(jpeg) // 2], "truncated")):
    with pytest.raises(inputs.BadRequest, match=f"photo.jpg: .*{match}") as e:
      inputs.decode_image("photo.jpg", data, 64, max_pixels=10**8)
    assert e.value.status == 400


# ----------------------------------------------------------------------------- over HTTP
def test_predict_equals_offline_for_every_body_form(served):
  images = written_images(12)
  want = offline(served.bundle, images)
  assert len({a["label"] for a in want}) > 1, "test bundle should not answer one label for all"
  # Raw body, one image per request.
  raw = [served.post(b, "image/png" if b.startswith(b"\x89PNG") else "image/jpeg")
         for b in images[:4]]
  assert [r.status_code for r in raw] == [200] * 4
  assert_same([r.json()["predictions"][0] for r in raw], want[:4])
  # Multipart with many files.
  r = served.post(None, None, files=[("file", (f"{i}.img", b)) for i, b in enumerate(images)])
  assert r.status_code == 200, r.text
  assert_same(r.json()["predictions"], want)
  assert r.json()["predictions"][3]["input"] == "file:3.img"
  # JSON with base64, including a data URL as the web page's FileReader would send.
  doc = {"images": [base64.b64encode(b).decode() for b in images[:5]]}
  doc["images"][0] = "data:image/jpeg;base64," + doc["images"][0]
  r = served.post(json.dumps(doc), "application/json")
  assert r.status_code == 200, r.text
  assert_same(r.json()["predictions"], want[:5])


def test_predict_equals_offline_on_real_photos(served, utkface_2k):
  paths = sorted((utkface_2k / "female").glob("*.jpg"))[:8] + sorted((utkface_2k / "male").glob("*.jpg"))[:8]
  images = [p.read_bytes() for p in paths]
  r = served.post(None, None, files=[("file", (p.name, b)) for p, b in zip(paths, images)])
  assert r.status_code == 200, r.text
  assert_same(r.json()["predictions"], offline(served.bundle, images))


def group_photo(utkface_2k, seed=0):
  """Two real UTKFace crops pasted onto a 480x360 background: (JPEG bytes, true boxes)."""
  rng = np.random.default_rng(seed)
  canvas = rng.integers(90, 160, (360, 480, 3)).astype(np.uint8)
  boxes = []
  for (x, y, side), label in zip(((40, 80, 150), (280, 120, 120)), ("female", "male")):
    crop = sorted((utkface_2k / label).glob("*.jpg"))[seed]
    canvas[y:y + side, x:x + side] = np.asarray(Image.open(crop).convert("RGB").resize((side, side)))
    boxes.append((x, y, x + side, y + side))
  buf = io.BytesIO()
  Image.fromarray(canvas).save(buf, "JPEG", quality=92)
  return buf.getvalue(), boxes


def test_faces_detect_returns_every_face_with_its_box(served, utkface_2k):
  from gender_jax.inference.photos import FacePipeline
  photo, truth = group_photo(utkface_2k)
  blank = io.BytesIO()
  Image.fromarray(np.full((200, 260, 3), 127, np.uint8)).save(blank, "PNG")
  r = served.post(None, None, files=[("file", ("group.jpg", photo)),
                                     ("file", ("blank.png", blank.getvalue()))],
                  params={"faces": "detect"})
  assert r.status_code == 200, r.text
  group, empty = r.json()["predictions"]
  assert empty["faces"] == [] and empty["label"] == "no_face"
  assert group["image_size"] == [480, 360] and len(group["faces"]) == 2
  for face, (x0, y0, x1, y1) in zip(sorted(group["faces"], key=lambda f: f["box"][0]), truth):
    # BlazeFace's box is the inner face, inside the pasted crop (which has hair and margin).
    bx0, by0, bx1, by1 = face["box"]
    assert x0 - 5 <= bx0 < bx1 <= x1 + 5 and y0 - 5 <= by0 < by1 <= y1 + 5, (face["box"], truth)
    assert len(face["keypoints"]) == 6 and 0.5 <= face["score"] <= 1
    assert face["label"] in ("female", "male", "uncertain")
  # The same answers as the pipeline run offline on the same bundle.
  offline_faces = FacePipeline(served.bundle, detector="short", faces="auto")(
      [preprocess.decode(photo)], faces="detect")[0]
  got = sorted(f["p_male"] for f in group["faces"])
  np.testing.assert_allclose(got, sorted(f["p_male"] for f in offline_faces), atol=1e-4)


def test_one_photo_gets_the_same_answer_by_every_door(served, utkface_2k, tmp_path):
  """The same photo and options, by predict, the Python API and the HTTP endpoint (whose
  default the web page uses): the same faces, numbered left to right, the same answers, and
  the same default, auto. A tight crop is one face classified whole by each."""
  import csv
  from gender_jax import predict
  from gender_jax.inference.photos import classify_photos
  photo, _ = group_photo(utkface_2k, seed=1)
  crop = sorted((utkface_2k / "female").glob("*.jpg"))[5].read_bytes()
  (tmp_path / "in").mkdir()
  for name, data in (("a_group.jpg", photo), ("b_crop.jpg", crop)):
    (tmp_path / "in" / name).write_bytes(data)
  r = requests.post(served.url + "/v1/predict", timeout=60,  # no `faces`: the default
                    files=[("file", ("a_group.jpg", photo)), ("file", ("b_crop.jpg", crop))])
  assert r.status_code == 200, r.text
  http = [p["faces"] for p in r.json()["predictions"]]
  api = classify_photos(served.bundle_dir, [photo, crop], detector="short")
  predict.main(["--bundle", served.bundle_dir, str(tmp_path / "in"), "--out",
                str(tmp_path / "p.csv"), "--detector", "short", "--quiet"])
  with open(tmp_path / "p.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  cli_rows = [[r for r in rows if r["path"].endswith(name)] for name in ("a_group.jpg", "b_crop.jpg")]
  assert [len(h) for h in http] == [len(a) for a in api] == [len(c) for c in cli_rows] == [2, 1]
  for h_faces, a_faces, c_faces in zip(http, api, cli_rows):
    for h, a, c in zip(h_faces, a_faces, c_faces):
      assert h["index"] == a["index"] == int(c["face"])
      assert h["label"] == a["label"] == c["label"] and h["aligned"] == a["aligned"]
      assert h["aligned"] == bool(int(c["aligned"]))
      np.testing.assert_allclose([h["p_male"], float(c["p_male"])], [a["p_male"]] * 2, atol=1e-4)
      np.testing.assert_allclose(h["box"], a["box"], atol=0.1)
  assert [f["box"][0] for f in http[0]] == sorted(f["box"][0] for f in http[0])
  assert not http[1][0]["aligned"]  # auto: the crop whole


def test_small_faces_of_a_large_photo_are_found_in_windows_without_compiles(served, utkface_2k):
  """A 1440x1080 photo with two 120-px faces: 11 px for the short-range detector's whole look,
  found in its windows; the windows' programs were compiled at warm-up."""
  from gender_jax.inference.photos import FacePipeline
  rng = np.random.default_rng(1)
  canvas = rng.integers(90, 160, (1080, 1440, 3)).astype(np.uint8)
  truth = []
  for (x, y), label in zip(((200, 300), (1000, 600)), ("female", "male")):
    crop = sorted((utkface_2k / label).glob("*.jpg"))[3]
    canvas[y:y + 120, x:x + 120] = np.asarray(Image.open(crop).convert("RGB").resize((120, 120)))
    truth.append((x, y, x + 120, y + 120))
  buf = io.BytesIO()
  Image.fromarray(canvas).save(buf, "JPEG", quality=92)
  r = served.post(buf.getvalue(), "image/jpeg", params={"faces": "detect"})
  assert r.status_code == 200, r.text
  faces = sorted(r.json()["predictions"][0]["faces"], key=lambda f: f["box"][0])
  assert len(faces) == 2, faces
  for face, (x0, y0, x1, y1) in zip(faces, truth):
    bx0, by0, bx1, by1 = face["box"]
    assert x0 - 5 <= bx0 < bx1 <= x1 + 5 and y0 - 5 <= by0 < by1 <= y1 + 5, (face["box"], truth)
  assert served.stats()["compiles_after_warmup"] == 0
  offline = FacePipeline(served.bundle, detector="short", faces="auto")(
      [preprocess.decode(buf.getvalue())], faces="detect")[0]
  np.testing.assert_allclose(sorted(f["p_male"] for f in faces),
                             sorted(f["p_male"] for f in offline), atol=1e-4)


def test_faces_bad_mode_is_a_400(served):
  r = served.post(written_images(1)[0], "image/png", params={"faces": "yes"})
  assert r.status_code == 400 and "faces='yes'" in r.json()["error"]


def test_model_health_and_page(served):
  health = requests.get(served.url + "/healthz", timeout=10).json()
  assert health["status"] == "ready" and health["compiles_after_warmup"] == 0
  info = requests.get(served.url + "/v1/model", timeout=10).json()
  assert info["arch"] == "resnet_tiny" and info["image_size"] == IMAGE_SIZE
  assert info["bundle_format_version"] == BUNDLE_VERSION
  assert info["calibration"] == {"temperature": 1.0, "abstain_threshold": 0.55}
  assert info["bundle_path"] == os.path.abspath(served.bundle_dir)  # GENDER_JAX_BUNDLE won
  assert info["batch_sizes"] == [1, 2, 4, 8, 16, 32]
  page = requests.get(served.url + "/", timeout=10)
  assert page.status_code == 200 and 'id="file"' in page.text


def test_healthz_says_starting_while_the_replica_compiles(served):
  """The replica answered while compiling: 503 `starting` with Retry-After, never a hang."""
  seen = _shared.get("healthz_before_ready", [])
  assert seen, "the replica never answered before it was ready"
  assert {s[:2] for s in seen} == {(503, "starting")}, seen
  assert all(s[2] and int(s[2]) > 0 for s in seen), seen


def test_missing_bundle_stops_the_app_builder_in_one_line(monkeypatch, tmp_path):
  from serve.app import app
  monkeypatch.setenv("GENDER_JAX_BUNDLE", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match=r"nowhere.*\(from GENDER_JAX_BUNDLE\) has no "
                     "meta.json"):
    app({})


def test_concurrent_requests_are_batched_without_compiles(served):
  images = written_images(48, seed=1)
  want = offline(served.bundle, images)
  before = served.stats()
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    responses = list(pool.map(lambda b: served.post(b), images))
  assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
  assert_same([r.json()["predictions"][0] for r in responses], want)
  after = served.stats()
  sizes = {int(k): v - before["batch_size_counts"].get(k, 0)
           for k, v in after["batch_size_counts"].items()}
  assert max(s for s, n in sizes.items() if n > 0) > 1, sizes
  assert after["images"] - before["images"] == len(images)
  assert after["compiles_at_warmup"] > 0  # warm-up did compile, so the counter works
  assert after["compiles_after_warmup"] == 0
  label_counts = {k: after["predictions"].get(k, 0) - before["predictions"].get(k, 0)
                  for k in after["predictions"]}
  assert sum(label_counts.values()) == len(images)
  assert after["abstentions"] - before["abstentions"] == sum(a["abstained"] for a in want)


def _bad_requests():
  jpeg = written_images(2)[1]
  bomb = io.BytesIO()
  Image.new("1", (12000, 12000)).save(bomb, format="PNG")
  too_many = [("file", (f"{i}.jpg", jpeg)) for i in range(33)]
  return {
      "not an image": (dict(body=b"GIF? no, plain text"), 400, "not a recognised image format"),
      "truncated": (dict(body=jpeg[: len(jpeg) // 2]), 400, "truncated"),
      "zero bytes": (dict(body=b""), 400, "empty input"),
      "wrong content type": (dict(body=jpeg, content_type="text/plain"), 415,
                             "unsupported content type 'text/plain'"),
      "no content type": (dict(body=jpeg, content_type=None), 415, "unsupported content type"),
      "malformed json": (dict(body=b'{"images": [', content_type="application/json"), 400,
                         "malformed JSON"),
      "json wrong shape": (dict(body=b'{"pictures": []}', content_type="application/json"), 400,
                           "must be {\"images\""),
      "json bad base64": (dict(body=b'{"images": ["@@@"]}', content_type="application/json"),
                          400, "images[0]: not valid base64"),
      "json empty list": (dict(body=b'{"images": []}', content_type="application/json"), 400,
                          "no image"),
      "too many images": (dict(body=None, content_type=None, files=too_many), 413,
                          "too many images"),
      "multipart without files": (dict(content_type=None, files={"a": (None, "b")}), 400,
                                  "no file part"),
      "over the size limit": (dict(body=b"\xff" * (16 * 2**20 + 1)), 413, "over the limit"),
      "decompression bomb": (dict(body=bomb.getvalue(), content_type="image/png"), 413,
                             "12000x12000"),
  }


def test_bad_requests_get_4xx_and_the_replica_stays_healthy(served):
  good = written_images(1)[0]
  before = served.stats()
  for name, (kwargs, status, message) in _bad_requests().items():
    r = served.post(**kwargs)
    assert r.status_code == status, (name, r.status_code, r.text)
    assert message in r.json()["error"], (name, r.text)
    ok = served.post(good, "image/png")
    assert ok.status_code == 200, (name, ok.text)
  after = served.stats()
  assert after["replica"] == before["replica"] and after["pid"] == before["pid"]
  assert sum(after["bad_requests"].values()) - sum(before["bad_requests"].values()) == len(_bad_requests())


def test_bad_requests_do_not_disturb_concurrent_good_ones(served):
  images = written_images(16, seed=2)
  want = offline(served.bundle, images)
  bad = [kw for kw, _, _ in _bad_requests().values()]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    good_f = [pool.submit(served.post, b) for b in images]
    bad_f = [pool.submit(served.post, **kw) for kw in bad]
    assert all(400 <= f.result().status_code < 500 for f in bad_f)
    assert_same([f.result().json()["predictions"][0] for f in good_f], want)


def test_huge_uploads_do_not_stall_other_requests(served):
  # Six 35-megapixel photos (each under the 40 MP limit) in one request take a second or more
  # to decode; decoding runs off the event loop, so the replica keeps answering meanwhile.
  # /healthz needs nothing but the event loop: it measures exactly that, not CPU sharing.
  yy, xx = np.mgrid[0:5000, 0:7000]
  big = io.BytesIO()
  Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)).save(
      big, format="JPEG", quality=80)
  files = [("file", (f"{i}.jpg", big.getvalue())) for i in range(6)]
  t0 = time.perf_counter()
  assert served.post(None, None, files=files).status_code == 200
  alone = time.perf_counter() - t0
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    big_f = pool.submit(served.post, None, None, files=files)
    time.sleep(alone / 4)  # the upload is in and decoding has begun
    t1 = time.perf_counter()
    assert requests.get(served.url + "/healthz", timeout=30).status_code == 200
    health_s = time.perf_counter() - t1
    assert big_f.result().status_code == 200
  # Measured on 2 cores: 0.015 s of 1.7 s with decoding off the loop; 1.44 s of 3.9 s (0.37x)
  # with it on the loop.
  assert health_s < 0.25 * alone, (health_s, alone)


@pytest.mark.slow
def test_killed_replica_is_replaced(served):
  """Kill the replica under load: failures are server errors, never 4xx, then service resumes."""
  import ray
  before = served.stats()
  (actor_name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if "GenderClassifier" in a["name"] and "REPLICA" in a["name"]]
  actor = ray.get_actor(actor_name, namespace="serve")
  image = written_images(1)[0]
  statuses, stop = [], time.monotonic() + 8

  def load():
    while time.monotonic() < stop:
      try:
        r = served.post(image, "image/png")
        statuses.append(r.status_code if r.status_code == 200 else (r.status_code, r.text[:200]))
      except requests.RequestException:
        statuses.append("connection error")

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(load) for _ in range(4)]
    time.sleep(2)
    ray.kill(actor, no_restart=True)
    for f in futures:
      f.result()
  failures = [s for s in statuses if s != 200]
  # In-flight requests on the killed replica fail as server-side errors (5xx, or HAProxy's
  # 408 when the backend connection dies mid-request), never as a client error.
  assert all(s == "connection error" or s[0] == 408 or s[0] >= 500 for s in failures), failures
  print("during the kill:", len(statuses) - len(failures), "ok,", failures[:5])
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    try:
      if served.post(image, "image/png").status_code == 200:
        break
    except requests.RequestException:
      pass
    time.sleep(1)
  results = [served.post(image, "image/png").status_code for _ in range(20)]
  assert results == [200] * 20
  after = served.stats()
  assert after["replica"] != before["replica"] and after["pid"] != before["pid"]
  assert after["compiles_after_warmup"] == 0


# ----------------------------------------------------------------------------- the web page
# `GET /` driven in headless Chromium: upload a photo, read the label. Needs Debian's
# `chromium` and `chromium-driver` packages and selenium; skips where any is absent. In this
# module so that it shares the one Serve instance (also under pytest-xdist, which keeps a
# module on one worker).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
  webdriver = pytest.importorskip("selenium.webdriver")
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service
  options = Options()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-extensions", "--no-first-run",
               "--window-size=900,900"):
    options.add_argument(flag)
  # An explicit driver path keeps Selenium Manager from trying to download one.
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  try:
    yield driver
  finally:
    driver.quit()


def upload_and_read(driver, path) -> dict:
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  driver.find_element(By.ID, "file").send_keys(str(path))
  label = WebDriverWait(driver, 60).until(
      ec.presence_of_element_located((By.CSS_SELECTOR, "#label, #error")))
  assert label.get_attribute("id") == "label", driver.find_element(By.ID, "result").text
  return dict(label=label.get_attribute("data-label"),
              p_female=driver.find_element(By.ID, "p_female").text,
              p_male=driver.find_element(By.ID, "p_male").text)


def test_page_uploads_a_photo_and_shows_the_label(browser, served, tmp_path):
  from selenium.webdriver.common.by import By
  real = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-2k" / "female"
  photos = sorted(real.glob("*.jpg"))[:1] if real.exists() else []
  if photos:
    data, path = photos[0].read_bytes(), photos[0]
  else:
    data = written_images(2)[1]
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
  (want,) = offline(served.bundle, [data])

  browser.get(served.url + "/")
  assert "gender" in browser.title.lower()
  if not photos:  # no face in a made image: ask for the whole image, as a crop
    browser.find_element(By.ID, "whole").click()
  got = upload_and_read(browser, path)
  assert got["label"] == want["label"]
  assert got["p_female"] == f"{100 * want['p_female']:.1f}%"
  # The default finds the faces first (a tight crop is classified whole): the photo is drawn
  # with its box; asked for the whole image, the plain preview.
  assert browser.find_element(By.ID, "photo" if photos else "preview").is_displayed()
  # The screenshot is kept for a person to look at (pytest's tmp dir, or SERVE_SCREENSHOT).
  shot = os.environ.get("SERVE_SCREENSHOT") or str(tmp_path / "page.png")
  browser.save_screenshot(shot)
  assert os.path.getsize(shot) > 5_000

  # A file that is not an image: the page shows the server's message instead of a label.
  bad = tmp_path / "notes.jpg"
  bad.write_bytes(b"not really a jpeg")
  browser.get(served.url + "/")
  browser.find_element(By.ID, "file").send_keys(str(bad))
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  error = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "error")))
  assert "not a recognised image format" in error.text
