"""The Ray Serve application: one FastAPI ingress deployment that owns the jitted model.

`serve run serve/config.yaml` builds it through `app(args)`. A replica loads the inference
bundle in its constructor (a missing or broken bundle fails the replica there), then compiles
the model for each batch size in `batch_sizes` on a background thread, so `/healthz` answers
from the first second: 503 `{"status": "starting"}` while compiling, 200 `{"status": "ready"}`
after. `@serve.batch` collects single images from concurrent requests and the batch is
zero-padded up to the smallest compiled size that holds it — sizes in powers of two, so a
batch of 2 costs a 2-image call, not an 8-image one. A request the replica cannot answer now
(still compiling, or its model thread failed) gets 503 with `Retry-After` at once, never a
wait until the proxy's timeout.
Every backend compile in the replica process is counted (jax.monitoring), so a compile on the
request path shows in `/v1/stats` and the Prometheus gauge instead of as a latency spike.

Ingress and model share one deployment on purpose: a separate ingress deployment adds a Ray
actor hop per request, and on small models the proxy, not the model, is the ceiling.
"""

import asyncio
import concurrent.futures
import hashlib
import os
import pathlib
import threading
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve import metrics

from serve import compiles, inputs

PAGE = pathlib.Path(__file__).with_name("index.html")
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# Seconds a client is told to wait (Retry-After) while a replica compiles; by then another
# replica, or this one, answers.
RETRY_AFTER_STARTING_S = 5
RETRY_AFTER_FAILED_S = 1


class Unavailable(Exception):
  """This replica cannot answer now: 503 with Retry-After."""

  def __init__(self, message: str, retry_after: int):
    super().__init__(message)
    self.message, self.retry_after = message, retry_after


def bundle_path(bundle: str | None) -> str:
  """The bundle a replica serves (GENDER_JAX_BUNDLE wins over args.bundle), checked: one
  line naming where the path came from when it is not a bundle."""
  path = os.environ.get("GENDER_JAX_BUNDLE") or bundle
  origin = "GENDER_JAX_BUNDLE" if os.environ.get("GENDER_JAX_BUNDLE") else "args.bundle"
  if not path:
    raise ValueError("no bundle: set args.bundle in serve/config.yaml or GENDER_JAX_BUNDLE")
  if not os.path.exists(os.path.join(path, "meta.json")):
    raise FileNotFoundError(f"bundle {path!r} (from {origin}) has no meta.json; point it at "
                            "a WORKDIR/bundle directory")
  return path

def _bundle_digest(directory: str) -> str:
  """sha256 over every file of the bundle: which exact model this replica serves."""
  h = hashlib.sha256()
  for path in sorted(pathlib.Path(directory).rglob("*")):
    if path.is_file():
      h.update(str(path.relative_to(directory)).encode())
      h.update(path.read_bytes())
  return h.hexdigest()[:16]


def _face_json(face: dict[str, Any]) -> dict[str, Any]:
  """A pipeline face → JSON: box [x0, y0, x1, y1] and keypoints in the photo's pixels."""
  out = {k: v for k, v in face.items() if k not in ("box", "keypoints", "crop", "logits")}
  out["box"] = [round(float(v), 1) for v in np.asarray(face["box"]).ravel()]
  out["keypoints"] = [[round(float(x), 1), round(float(y), 1)]
                      for x, y in np.asarray(face["keypoints"]).reshape(-1, 2)]
  return out


# ----------------------------------------------------------------------------- HTTP app
api = FastAPI(title="gender_jax", description="Perceived-gender classification of face or "
              "person crops; labels are the training data's binary labels.")


@api.exception_handler(inputs.BadRequest)
async def _bad_request(request: Request, e: inputs.BadRequest):
  del request
  return JSONResponse({"error": e.message}, status_code=e.status)


@api.exception_handler(Unavailable)
async def _unavailable(request: Request, e: Unavailable):
  del request
  return JSONResponse({"error": e.message}, status_code=503,
                      headers={"Retry-After": str(e.retry_after)})


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(api)
class GenderClassifier:
  """Loads the bundle, compiles every batch size, answers /v1/predict in padded batches."""

  def __init__(self, bundle: str | None = None, batch_sizes=DEFAULT_BATCH_SIZES,
               batch_wait_timeout_s: float = 0.002, compute_dtype: str = "float32",
               max_body_bytes: int = 16 * 2**20, max_images: int = 32,
               max_image_pixels: int = 40_000_000, faces_detector: str = "full",
               faces_batch_size: int = 8, max_faces: int = 64, faces_tiles: str = "auto"):
    import jax
    from gender_jax.inference.bundle import Bundle
    from gender_jax.inference.predictor import Predictor

    # The environment wins so one config file serves any bundle (a KubeRay pod, a CI run).
    path = bundle_path(bundle)
    self.batch_sizes = tuple(sorted({int(s) for s in batch_sizes}))
    if not self.batch_sizes or self.batch_sizes[0] < 1:
      raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    self.limits = inputs.Limits(int(max_body_bytes), int(max_images), int(max_image_pixels))
    compiles.install()

    self.bundle = Bundle(path, compute_dtype=compute_dtype)  # NaN weights are refused here
    self.predictor = Predictor(self.bundle, batch_sizes=self.batch_sizes)
    size = self.bundle.image_size
    # Photos of people (`?faces=auto|detect`): detector and alignment in front of this same
    # Predictor (its batch sizes), each program compiled on the warm-up thread.
    self.face_pipeline = None
    if faces_detector:
      from gender_jax.inference.photos import FacePipeline
      self.face_pipeline = FacePipeline(self.predictor, detector=faces_detector,
                                        max_faces=int(max_faces),
                                        batch_size=int(faces_batch_size), faces="auto",
                                        tiles=faces_tiles)
      self._infer_faces.set_max_batch_size(int(faces_batch_size))
      self._infer_faces.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
    self.warmup_s, self.compiles_at_warmup, self.warmup_error = None, None, None
    self.started = time.perf_counter()
    self.ready = threading.Event()
    threading.Thread(target=self._warm, name="warm-up", daemon=True).start()
    # One thread runs the model; decoding runs on its own threads (PIL releases the GIL while
    # it decodes), so neither a batch nor a 40-megapixel upload stalls the event loop, which
    # keeps accepting and answering other requests meanwhile.
    self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
    self.decoder = concurrent.futures.ThreadPoolExecutor(
        max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="decode")
    self._infer.set_max_batch_size(self.batch_sizes[-1])
    self._infer.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    self.info = dict(
        arch=self.bundle.model_config.arch, num_classes=int(self.bundle.model_config.num_classes),
        image_size=size, compute_dtype=compute_dtype,
        bundle_format_version=self.bundle.meta.get("format_version"),
        bundle_sha256=_bundle_digest(path), bundle_path=os.path.abspath(path),
        class_names=list(self.bundle.class_names), calibration=dict(self.bundle.calibration),
        preprocessing=self.bundle.preprocessing, inputs=list(self.bundle.inputs),
        batch_sizes=list(self.batch_sizes),
        backend=jax.default_backend(),
        faces=dict(detector=faces_detector or None, max_faces=int(max_faces),
                   batch_size=int(faces_batch_size), tiles=faces_tiles) if faces_detector else None,
        limits=dict(max_body_bytes=self.limits.max_body_bytes, max_images=self.limits.max_images,
                    max_image_pixels=self.limits.max_image_pixels))
    self.page = PAGE.read_text()
    self._init_metrics()

  def _warm(self):
    """Every shape the request path will ever see, compiled before the first request runs."""
    try:
      self.predictor.warm()
      if self.face_pipeline is not None:
        self.face_pipeline.warm(self.bundle.image_size)
    except Exception as e:  # noqa: BLE001 — reported by /healthz and Serve's health check
      self.warmup_error = f"{type(e).__name__}: {e}"
      return
    self.warmup_s = time.perf_counter() - self.started
    self.compiles_at_warmup = compiles.count()
    self.ready.set()

  def _require_ready(self):
    if self.ready.is_set():
      return
    if self.warmup_error:
      raise Unavailable(f"replica failed to start: {self.warmup_error}", RETRY_AFTER_FAILED_S)
    raise Unavailable(f"replica starting: compiling the model "
                      f"({time.perf_counter() - self.started:.0f} s so far)",
                      RETRY_AFTER_STARTING_S)

  async def _model_call(self, fn, *args):
    """Runs fn on the model thread; a broken executor is this replica's failure: 503."""
    try:
      return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
    except RuntimeError as e:
      if self.executor._shutdown:  # pylint: disable=protected-access
        raise Unavailable(f"replica model thread stopped: {e}", RETRY_AFTER_FAILED_S) from e
      raise

  def _init_metrics(self):
    # Replica-local mirrors of the Prometheus series, for /v1/stats and the tests.
    self.stats = dict(batches=0, images=0, batch_size_counts={}, predictions={}, abstentions=0,
                      bad_requests={}, queue_wait_s_max=0.0)
    self.m_batch = metrics.Histogram(
        "gender_jax_batch_size", description="Images per model call, before padding.",
        boundaries=BATCH_BUCKETS)
    self.m_padded = metrics.Counter(
        "gender_jax_padded_images", description="Zero images added to reach a compiled size.")
    self.m_wait = metrics.Histogram(
        "gender_jax_queue_wait_seconds", description="From enqueue to the start of its batch.",
        boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    self.m_model = metrics.Histogram(
        "gender_jax_model_seconds", description="Model call per batch (padded).",
        boundaries=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    self.m_pred = metrics.Counter(
        "gender_jax_predictions", description="Answers by label.", tag_keys=("label",))
    self.m_abstain = metrics.Counter(
        "gender_jax_abstentions", description="Answers below the abstain threshold.")
    self.m_bad = metrics.Counter(
        "gender_jax_bad_requests", description="4xx answers by status.", tag_keys=("status",))
    self.m_compiles = metrics.Gauge(
        "gender_jax_compiles_after_warmup", description="XLA compiles after start; must stay 0.")
    self.m_compiles.set(0)

  # --------------------------------------------------------------------------- batching
  @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
  async def _infer(self, items: list[tuple[np.ndarray, float]]) -> list[dict[str, Any]]:
    start = time.perf_counter()
    probs, padded = await self._model_call(self.predictor.probs_of,
                                           [image for image, _ in items])
    answers = self.bundle.decide(probs)
    self._record(items, answers, start, time.perf_counter() - start, padded)
    return answers

  @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
  async def _infer_faces(self, items: list[tuple[np.ndarray, str, float]]) -> list[list[dict]]:
    """Photos → their faces; the pipeline pads the batch to its one compiled size."""
    start = time.perf_counter()

    def run():
      out = [None] * len(items)
      for mode in {m for _, m, _ in items}:  # at most two calls: detect and auto
        idx = [i for i, (_, m, _) in enumerate(items) if m == mode]
        for i, found in zip(idx, self.face_pipeline([items[i][0] for i in idx], faces=mode)):
          out[i] = [_face_json(f) for f in found]
      return out
    found = await self._model_call(run)
    answers = [f for faces in found for f in faces]
    self._record([(None, t) for _, _, t in items], answers, start,
                 time.perf_counter() - start, self.face_pipeline.batch_size)
    return found

  def _record(self, items, answers, start, model_s, padded):
    n, s = len(items), self.stats
    s["batches"] += 1
    s["images"] += n
    s["batch_size_counts"][n] = s["batch_size_counts"].get(n, 0) + 1
    self.m_batch.observe(n)
    self.m_model.observe(model_s)
    if padded > n:
      self.m_padded.inc(padded - n)
    for _, enqueued in items:
      wait = start - enqueued
      s["queue_wait_s_max"] = max(s["queue_wait_s_max"], wait)
      self.m_wait.observe(wait)
    for a in answers:
      s["predictions"][a["label"]] = s["predictions"].get(a["label"], 0) + 1
      self.m_pred.inc(tags={"label": a["label"]})
      if a["abstained"]:
        s["abstentions"] += 1
        self.m_abstain.inc()
    self.m_compiles.set(self._compiles_after_warmup())

  def _compiles_after_warmup(self) -> int | None:
    return None if self.compiles_at_warmup is None else compiles.count() - self.compiles_at_warmup

  # --------------------------------------------------------------------------- routes
  @api.post("/v1/predict")
  async def predict(self, request: Request):
    """`?faces=auto` (the default, as predict's and the Python API's): every face of each
    photo, found, aligned and classified, with its box and keypoints, numbered left to right,
    a photo that is already one tight face crop classified whole (a bundle trained on person
    crops alone: every image whole); `?faces=detect`: every face aligned; `?faces=off` (the
    default where face detection is off): each image is one face or person crop → one answer."""
    self._require_ready()
    try:
      default = "auto" if self.face_pipeline is not None else "off"
      faces = inputs.faces_mode(request.query_params.get("faces", default),
                                enabled=self.face_pipeline is not None)
      faces = self.bundle.faces_mode(faces)
      encoded = await inputs.encoded_images(request, self.limits)
      size = None if faces != "off" else self.bundle.image_size  # photos keep their pixels
      loop = asyncio.get_running_loop()
      images = await asyncio.gather(*(
          loop.run_in_executor(self.decoder, inputs.decode_image, name, data, size,
                               self.limits.max_image_pixels, self.bundle.preprocessing)
          for name, data in encoded))
    except inputs.BadRequest as e:
      self.stats["bad_requests"][e.status] = self.stats["bad_requests"].get(e.status, 0) + 1
      self.m_bad.inc(tags={"status": str(e.status)})
      raise
    now = time.perf_counter()
    if faces != "off":
      found = await asyncio.gather(*(self._infer_faces((image, faces, now)) for image in images))
      return {"predictions": [
          {"input": name, "faces": f, "label": None if f else "no_face",
           "image_size": [int(image.shape[1]), int(image.shape[0])]}
          for (name, _), f, image in zip(encoded, found, images)]}
    answers = await asyncio.gather(*(self._infer((image, now)) for image in images))
    for (name, _), answer in zip(encoded, answers):
      answer["input"] = name
    return {"predictions": answers}

  @api.get("/healthz")
  def healthz(self):
    """200 `ready` once every batch size is compiled; 503 `starting` (or `failed`) before,
    with Retry-After, from the replica's first second."""
    if self.ready.is_set():
      return {"status": "ready", "compiles_after_warmup": self._compiles_after_warmup(),
              "warmup_s": round(self.warmup_s, 3),
              "replica": serve.get_replica_context().replica_id.unique_id}
    status = "failed" if self.warmup_error else "starting"
    retry = RETRY_AFTER_FAILED_S if self.warmup_error else RETRY_AFTER_STARTING_S
    return JSONResponse({"status": status, "error": self.warmup_error,
                         "elapsed_s": round(time.perf_counter() - self.started, 1)},
                        status_code=503, headers={"Retry-After": str(retry)})

  @api.get("/v1/model")
  def model(self):
    return self.info

  @api.get("/v1/stats")
  def stats_(self):
    """This replica's counters (Prometheus has the cluster-wide series)."""
    return dict(self.stats, replica=serve.get_replica_context().replica_id.unique_id,
                pid=os.getpid(), compiles_at_warmup=self.compiles_at_warmup,
                compiles_after_warmup=self._compiles_after_warmup(),
                warmup_s=None if self.warmup_s is None else round(self.warmup_s, 3))

  @api.get("/", response_class=HTMLResponse)
  def page_(self):
    return self.page

  def check_health(self):
    """Serve's periodic probe: an unusable model makes the controller replace the replica."""
    if self.executor._shutdown:  # pylint: disable=protected-access
      raise RuntimeError("model executor is shut down")
    if self.warmup_error:
      raise RuntimeError(f"warm-up failed: {self.warmup_error}")


def app(args: dict[str, Any] | None = None) -> serve.Application:
  """Application builder for `serve run serve/config.yaml` (`import_path: serve.app:app`)."""
  args = dict(args or {})
  bundle_path(args.get("bundle"))  # a missing bundle stops the build, not each replica
  known = {"bundle", "batch_sizes", "batch_wait_timeout_s", "compute_dtype", "max_body_bytes",
           "max_images", "max_image_pixels", "faces_detector", "faces_batch_size", "max_faces",
           "faces_tiles"}
  unknown = sorted(set(args) - known)
  if unknown:
    raise ValueError(f"unknown serve args {unknown}; known: {sorted(known)}")
  return GenderClassifier.bind(**args)
