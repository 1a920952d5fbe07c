"""The Predictor: a bundle's model jitted for fixed batch sizes, over a device mesh.

Everything that runs a trained model over images goes through it: trainer validation,
evaluate, calibrate, clean, predict and the serve replica, so a number in the training log
and the same number from `evaluate` come from one program.

  predictor = Predictor("RUN/bundle")
  predictor.predict([pil_image, uint8_array, jpeg_bytes])  # → [{"label", "p_female", …}]

With a `mesh` ("auto": every device of a one-process run), each padded batch is split over
the mesh's `data` axis and the weights are replicated; the outputs come back whole to every
process. On several processes every process decodes the whole batch (validation sets are
small next to a training epoch) and gives its own devices their rows, so every process ends
with the same answers.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import sys
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gender_jax.inference.bundle import Bundle
from gender_jax.data import preprocess
from gender_jax.data.preprocess import ImageError
from gender_jax.data.schema import record_meta
from gender_jax.parallel import batch_sharding
from gender_jax.parallel import replicated
from gender_jax.parallel import create_mesh

TTA_MODES = ("none", "flip", "crops", "flip+crops")
CROP_FRACTION = 0.875  # side of each multi-crop view, relative to the image


def views(image: np.ndarray, size: int, tta: str = "none",
          spec: dict[str, Any] | None = None) -> list[np.ndarray]:
  """One decoded image → its test-time views at size x size (the first is the plain eval view),
  resized as `spec` (the bundle's preprocessing) says: squashed, or letterboxed."""
  if tta not in TTA_MODES:
    raise ValueError(f"tta={tta!r}: choose from {TTA_MODES}")
  mode, fill = preprocess.resize_mode(spec), preprocess.pad_colour(spec)

  def resize(img):
    return preprocess.resize(img, size, mode, fill)
  out = [resize(image)]
  if "crops" in tta:  # centre and four corners, each 87.5% of the side
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
    for y, x in ((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw):
      out.append(resize(np.ascontiguousarray(image[y:y + ch, x:x + cw])))
  if "flip" in tta:
    out += [np.ascontiguousarray(v[:, ::-1]) for v in out]
  return out


def to_array(item) -> np.ndarray:
  """A PIL image, uint8 array, encoded bytes or a file path → decoded uint8 RGB HxWx3."""
  if isinstance(item, (str, os.PathLike)):
    try:
      with open(item, "rb") as f:
        item = f.read()
    except OSError as e:
      raise ImageError(f"cannot read file: {e.strerror or e}") from None
  elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
    item = np.asarray(preprocess.as_rgb(item))
  return preprocess.decode(item)


def _local_mesh(sizes: Sequence[int]):
  """All devices of a one-process run when there are several and every size divides by
  their count (a GPU host's cards; the tests' fake CPUs); else None: one device."""
  n = jax.device_count()
  if jax.process_count() > 1 or n == 1 or any(s % n for s in sizes):
    return None
  return create_mesh()


class Outputs(NamedTuple):
  values: np.ndarray          # (n_ok, …): logits or features of the readable inputs
  labels: np.ndarray          # (n_ok,) given labels where the inputs have them, else -1
  metas: list[dict[str, Any]]  # per readable input: everything but the image
  errors: list[tuple[str, str]]  # (key, reason) per unreadable input


class Predictor:
  """A bundle's model jitted for fixed-size batches, with test-time augmentation.

  `batch_sizes` are the compiled sizes for `probs_of` (serving); the file and record loops
  use `batch_size` images a call (times the TTA views). Each size compiles once.
  """

  def __init__(self, bundle: Bundle | str, *, batch_size: int = 64, tta: str = "none",
               compute_dtype: str | None = None, threads: int = 4, mesh="auto",
               batch_sizes: Sequence[int] = ()):
    self.bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle, compute_dtype)
    if tta not in TTA_MODES:
      raise ValueError(f"tta={tta!r}: choose from {TTA_MODES}")
    self.batch_size, self.tta, self.threads = int(batch_size), tta, threads
    self.batch_sizes = tuple(sorted({int(s) for s in batch_sizes} or {self.batch_size}))
    if mesh == "auto":
      mesh = _local_mesh((self.batch_size, *self.batch_sizes))
    self.mesh = mesh
    if mesh is not None and any(s % mesh.size for s in (self.batch_size, *self.batch_sizes)):
      raise ValueError(f"batch sizes {sorted({self.batch_size, *self.batch_sizes})} must divide "
                       f"by the {mesh.size} devices of the mesh")
    self.size = self.bundle.image_size
    self.num_views = len(views(np.zeros((8, 8, 3), np.uint8), self.size, tta))
    self.traces = 0  # how often jit traced: 1 per distinct batch size
    logits, self._state = self.bundle.logits_fn()
    if mesh is not None:
      self.set_model(self.bundle.model)
    spec, dtype = self.bundle.preprocessing, self.bundle.model_config.compute_dtype
    graphdef, num_views = nnx.graphdef(self.bundle.model), self.num_views

    def batch_logits(state, images):
      self.traces += 1
      out = logits(state, images)
      # Averaging logits (not probabilities) keeps the fitted temperature meaningful.
      return out.reshape(-1, num_views, out.shape[-1]).mean(axis=1)

    def batch_features(state, images):
      """Pooled last-stage activations (the input to the head), averaged over views."""
      stages = nnx.merge(graphdef, state).features(preprocess.normalize(images, spec, dtype))
      x = jnp.mean(list(stages.values())[-1].astype(jnp.float32), axis=(1, 2))
      return x.reshape(-1, num_views, x.shape[-1]).mean(axis=1)
    self._logits, self._features = self._jit(batch_logits), self._jit(batch_features)

  # ---------------------------------------------------------------- model calls
  def _jit(self, fn):
    if self.mesh is None:
      return jax.jit(fn)
    return jax.jit(fn, in_shardings=(replicated(self.mesh), batch_sharding(self.mesh)),
                   out_shardings=replicated(self.mesh))

  def set_model(self, model: nnx.Module) -> None:
    """New weights of the same model (the trainer's at each validation): no recompile."""
    _, state = nnx.split(model)
    if self.mesh is not None:
      state = jax.device_put(state, replicated(self.mesh))
    self._state = state

  def _device_batch(self, batch: np.ndarray):
    if self.mesh is None:
      return batch
    # Every process holds the whole batch; each fills its own devices' rows from it.
    return jax.make_array_from_callback(batch.shape, batch_sharding(self.mesh),
                                        lambda index: batch[index])

  def _call(self, fn, images: Sequence[np.ndarray], size: int) -> np.ndarray:
    batch = preprocess.pad_batch(images, size)
    return np.asarray(fn(self._state, self._device_batch(batch)))

  def _run(self, fn, prepared: list[list[np.ndarray]]) -> np.ndarray:
    """Views of ≤ batch_size images → fn outputs, padding to the one compiled batch size."""
    flat = [v for vs in prepared for v in vs]  # each image's views side by side
    return self._call(fn, flat, self.batch_size * self.num_views)[:len(prepared)]

  def _iterate(self, n: int, load: Callable[[int], tuple], fn, progress: bool = False):
    """load(i) → (views or None, info); yields (index, fn output or None, info) in order,
    loading ahead on threads."""
    from tqdm import tqdm
    chunks = [range(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
    bar = tqdm(total=n, unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      pending = collections.deque()
      for k, chunk in enumerate(chunks):
        while len(pending) < 2 and k + len(pending) < len(chunks):  # keep two chunks decoding
          pending.append([pool.submit(load, i) for i in chunks[k + len(pending)]])
        results = [f.result() for f in pending.popleft()]
        ok = [j for j, (vs, _) in enumerate(results) if vs is not None]
        out = self._run(fn, [results[j][0] for j in ok]) if ok else []
        out_of = dict(zip(ok, out))
        for j, i in enumerate(chunk):
          yield i, out_of.get(j), results[j][1]
        bar.update(len(chunk))
    bar.close()

  def _views(self, item, info):
    """(views, info), or (None, info with the reason) when the image cannot be read."""
    try:
      return views(to_array(item), self.size, self.tta, self.bundle.preprocessing), info
    except ImageError as e:
      return None, {**info, "error": str(e)}

  # ---------------------------------------------------------------- public calls
  def probs_of(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """≤ max(batch_sizes) decoded images already at the bundle's size → (calibrated
    probabilities, the compiled size they were padded to): the serving call."""
    size = next(s for s in self.batch_sizes if s >= len(images))
    logits = self._call(self._logits, images, size)[:len(images)]
    return self.probabilities(logits), size

  def warm(self) -> None:
    """Compiles every serving size now, so no request waits for XLA."""
    for n in self.batch_sizes:
      self._call(self._logits, [np.zeros((self.size, self.size, 3), np.uint8)],
                 n * self.num_views)

  def crop_logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Decoded uint8 images, any number → raw logits (n, classes), each image's TTA views
    averaged, in the compiled `batch_sizes` (a chunk padded to the smallest that holds it):
    the classifier of the photo path, one pass per face (two with flip)."""
    out, top = [], self.batch_sizes[-1]
    for lo in range(0, len(images), top):
      chunk = images[lo:lo + top]
      size = next(s for s in self.batch_sizes if s >= len(chunk))
      flat = [v for image in chunk
              for v in views(image, self.size, self.tta, self.bundle.preprocessing)]
      out.append(self._call(self._logits, flat, size * self.num_views)[:len(chunk)])
    return (np.concatenate(out) if out else
            np.zeros((0, len(self.bundle.class_names)), np.float32))

  def logits(self, items: Sequence[Any]) -> Outputs:
    """Raw (temperature 1) logits of images given as arrays, PIL images, bytes or paths."""
    return self._collect(len(items), lambda i: self._views(items[i], {"key": str(i)}),
                         self._logits)

  def predict(self, items: Sequence[Any]) -> list[dict[str, Any]]:
    """Images → per image {"label", "p_female", "p_male", "abstained"} or {"error"}."""
    out = self.logits(items)
    answers = iter(self.bundle.decide(self.probabilities(out.values)))
    bad = {int(k): reason for k, reason in out.errors}
    return [{"label": "error", "error": bad[i]} if i in bad else next(answers)
            for i in range(len(items))]

  def probabilities(self, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities: softmax(logits / the bundle's temperature)."""
    return self.bundle.probs_from_logits(
        np.asarray(logits, np.float64).reshape(-1, len(self.bundle.class_names)))

  def logits_for_records(self, records, progress: bool = False) -> Outputs:
    """Logits of labelled records ({"image", "label", …}); unreadable ones are listed, not fatal."""
    return self._records(records, self._logits, progress)

  def features_for_records(self, records, progress: bool = False) -> Outputs:
    return self._records(records, self._features, progress)

  def _records(self, records, fn, progress) -> Outputs:
    def load(i):  # each record read once: its image and its metadata
      try:
        record = records[i]
      except ImageError as e:  # a folder's file that cannot be read
        return None, {**record_meta(records, i), "error": str(e)}
      return self._views(record["image"], {k: v for k, v in record.items() if k != "image"})
    return self._collect(len(records), load, fn, progress)

  def _collect(self, n, load, fn, progress=False) -> Outputs:
    values, labels, metas, errors = [], [], [], []
    for i, out, meta in self._iterate(n, load, fn, progress):
      if out is None:
        errors.append((str(meta.get("key", i)), meta["error"]))
        continue
      values.append(out)
      labels.append(int(meta.get("label", -1)))
      metas.append(meta)
    values = np.stack(values) if values else np.zeros((0, 2), np.float32)
    return Outputs(values, np.asarray(labels, np.int64), metas, errors)

  def predict_paths(self, paths: Sequence[str], progress: bool = False) -> Iterable[dict[str, Any]]:
    """Yields one CSV row per path, in order."""
    for i, out, info in self._iterate(len(paths), lambda i: self._views(paths[i], {}),
                                      self._logits, progress):
      if out is None:
        yield dict(path=paths[i], label="error", p_female="", p_male="", abstained="",
                   error=info["error"])
        continue
      [answer] = self.bundle.decide(self.probabilities(out))
      yield dict(path=paths[i], label=answer["label"], p_female=f"{answer['p_female']:.6f}",
                 p_male=f"{answer['p_male']:.6f}", abstained=int(answer["abstained"]), error="")
