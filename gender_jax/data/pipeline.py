"""The grain input pipeline: mix → shuffle → augment → per-process batches.

Everything before batching is a random-access `grain.MapDataset`, so the batch a process
reads at step `s` is a pure function of (config, s, process index, process count):
resuming at step `s` means slicing the stream at `s`. That makes resume exact without
storing worker state, and lets a run saved on N processes resume on M.
"""
from __future__ import annotations

import logging
from typing import Iterator

import grain
import jax
import ml_collections
import numpy as np

from gender_jax.data import augment, balance, preprocess, sources


# A record that fails to decode at training time (a source that was not prepared, or a file
# damaged after preparation) is replaced by another record of the same source drawn with the
# element's own rng, so the stream stays deterministic and training goes on.
MAX_DECODE_RETRIES = 8


def _train_record(source, spec: augment.AugmentSpec, size: int, source_id: int):
  def fn(record, rng: np.random.Generator):
    for _ in range(MAX_DECODE_RETRIES):
      try:
        image = augment.train_image(record["image"], size, rng, spec)
        return {"image": image, "label": np.int32(record["label"]),
                "source_id": np.int32(source_id)}
      except preprocess.ImageError as e:
        _warn_bad(record, e)
        record = source[int(rng.integers(len(source)))]
    raise RuntimeError(f"source {record.get('source')!r}: {MAX_DECODE_RETRIES} records in a row "
                       "failed to decode; prepare it again (python -m gender_jax.data prepare)")
  return fn


_WARNED: set = set()


def _warn_bad(record, error):
  where = f"{record.get('source', '?')}:{record.get('path') or '?'}"
  if where not in _WARNED:
    _WARNED.add(where)
    logging.warning("skipping undecodable training image %s: %s", where, error)


def train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None):
  """The per-process stream of training batches from `start_step` on, as a grain IterDataset.

  Batches hold `image` (uint8 NHWC), `label` and `source_id` (the index of the record's
  source in `configured_sources(config)`).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.data.batch_size % process_count:
    raise ValueError(f"data.batch_size={config.data.batch_size} must divide by "
                     f"{process_count} processes")
  per_process = config.data.batch_size // process_count
  weights = sources.configured_sources(config)
  streams = []
  for i, name in enumerate(weights):
    source = sources.get_source(name, "train", config)
    options = sources.source_options(name, config)
    if options.get("balance_by") and options.get("balance_power", 0.5) > 0:
      source = balance.Balanced(source, options.balance_by, options.get("balance_power", 0.5),
                                seed=config.seed + i)
    spec = augment.spec_for(options, config)
    # Each source reshuffles every epoch (grain reseeds its shuffle per pass); augmentation
    # randomness is seeded by the element's index in its source stream: deterministic
    # whatever the worker count.
    streams.append(grain.MapDataset.source(source)
                   .shuffle(seed=config.seed + 7919 * i).repeat()
                   .random_map(_train_record(source, spec, config.data.image_size, i),
                               seed=config.seed + 104729 * (i + 1)))
  ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, list(weights.values()))
  ds = ds.batch(per_process, drop_remainder=True)
  ds = ds[process_index::process_count][start_step:]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                            prefetch_buffer_size=config.data.prefetch))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return it


def eval_batches(source, config: ml_collections.ConfigDict, *, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-size per-process batches over the whole `source`, padded, with a `mask`.

  Every process yields the same number of batches (collectives stay in step); padding
  examples carry mask 0.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  global_batch = config.data.eval_batch_size
  per_process = global_batch // process_count
  size = config.data.image_size
  n = len(source)
  num_batches = -(-n // global_batch)

  def load(b):
    # This process reads indices [b*G + p*L, b*G + (p+1)*L) of global batch b.
    lo = b * global_batch + process_index * per_process
    return _padded([source[i] for i in range(lo, min(lo + per_process, n))], per_process, size)

  ds = grain.MapDataset.range(num_batches).map(load)
  yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads))


def _padded(records, per_process, size):
  images = np.zeros((per_process, size, size, 3), np.uint8)
  labels = np.zeros((per_process,), np.int32)
  mask = np.zeros((per_process,), np.float32)
  for i, r in enumerate(records):
    try:
      images[i] = preprocess.eval_image(r["image"], size)
    except preprocess.ImageError as e:  # counted out of the metrics (mask 0), never a crash
      _warn_bad(r, e)
      continue
    labels[i], mask[i] = r["label"], 1.0
  return {"image": images, "label": labels, "mask": mask}
