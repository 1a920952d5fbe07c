"""The grain input pipeline: mix → shuffle → decode/augment per example, in parallel → batch.

Everything before batching is a random-access `grain.MapDataset`, so the batch a process
reads at step `s` is a pure function of (config, s, process index, process count):
resuming at step `s` means slicing the stream at `s`. That makes resume exact without
storing worker state, and lets a run saved on N processes resume on M.

Each example is decoded and augmented on its own (threads, and optionally worker processes,
take examples, not whole batches), and batches are formed after that parallel map, so one
slow image does not hold a whole batch on one core. Examples cross process boundaries as
uint8. With `data.device_augment` the host only decodes, crops, rotates and resizes; flip,
colour jitter and grayscale then run on the device (device_augment.py), keyed by the
`index` field every batch carries (the example's position in the global batch).
"""
from __future__ import annotations

import logging
import os
import sys
import threading

import grain
import jax
import ml_collections
import numpy as np

# grain's own index shuffle, the one its `shuffle` uses (not exported; grain is pinned, and
# tests/test_data_pipeline.py would see a change in it).
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

from gender_jax.data import augment, balance, preprocess, sources


# A record that fails to decode at training time (a source that was not prepared, or a file
# damaged after preparation) is replaced by another record of the same source drawn with the
# element's own rng, so the stream stays deterministic and training goes on.
MAX_DECODE_RETRIES = 8
# Decode threads when the training step runs on the CPU: the cores are the step's.
CPU_BACKEND_THREADS = 2


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


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))  # what a launcher (SLURM, taskset) gave this process
  except AttributeError:
    return os.cpu_count() or 1


def input_parallelism(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(decode threads per process, worker processes) for the training stream.

  `data.read_threads` < 0 ("auto"): on an accelerator host every usable core but one (the
  loop's: transfer and dispatch), on a CPU backend CPU_BACKEND_THREADS (the step needs the
  cores). `data.num_workers` < 0: 0 — libjpeg-turbo and OpenCV (or PIL) decode and resize
  without the GIL, so threads scale (2 threads: 1.3-1.4x one on two cores) where processes
  would add a copy of every example (about 2x the CPU per image; benchmarks/README.md).
  """
  threads = config.data.get("read_threads", 2)
  workers = config.data.get("num_workers", 0)
  if workers == "auto" or workers < 0:
    workers = 0
  if threads == "auto" or threads < 0:
    cores = CPU_BACKEND_THREADS if jax.default_backend() == "cpu" else _usable_cores() - 1
    threads = max(1, cores // max(1, workers))  # each worker process runs its own threads
  return int(threads), int(workers)


class _Epochs(grain.MapDataset):
  """`MapDataset.source(source).shuffle(shuffle_seed).repeat().random_map(fn, map_seed)` in one
  step, element for element (tests/test_data_pipeline.py compares them): the same per-epoch
  index shuffle and the same Philox stream per element. grain's chain runs four Python
  layers with per-element statistics around each read, about a third of an image's time
  under the GIL at 112 px, which is what kept a second read thread from adding throughput.
  """

  def __init__(self, source, fn, *, shuffle_seed: int, map_seed: int):
    super().__init__([])
    if not 0 <= shuffle_seed < 2**32:
      raise ValueError(f"shuffle seed {shuffle_seed} must be in [0, 2**32)")
    self._source, self._fn, self._n = source, fn, len(source)
    self._read = sources.training_reader(source)
    self._shuffle_seed = shuffle_seed
    self._key = np.random.Philox(map_seed).state["state"]["key"]  # grain seeds Philox(seed)
    self._local = threading.local()

  def __getstate__(self):
    return dict(self.__dict__, _local=None)  # worker processes make their own generators

  def __setstate__(self, state):
    self.__dict__.update(state, _local=threading.local())

  def __len__(self) -> int:
    return sys.maxsize if self._n else 0

  def __str__(self) -> str:
    return f"Epochs({self._source!r})"

  def _rng(self, index: int) -> np.random.Generator:
    """The element's generator: Philox at counter (0, 0, 0, index), as grain's random_map."""
    rng = getattr(self._local, "rng", None)
    if rng is None:
      rng = self._local.rng = np.random.Generator(np.random.Philox(key=self._key))
    rng.bit_generator.state = {
        "bit_generator": "Philox", "state": {"counter": np.array([0, 0, 0, index], np.uint64),
                                             "key": self._key},
        "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}
    return rng

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if not self._n:
      raise IndexError(f"{self._source!r} has no records to train on")
    index = int(index)
    epoch, position = divmod(index, self._n)
    shuffled = index_shuffle_module.index_shuffle(
        position, max_index=self._n - 1, seed=(self._shuffle_seed + epoch) % 2**32, rounds=4)
    return self._fn(self._read(shuffled), self._rng(index))


class _ProcessExamples(grain.MapDataset):
  """This process's examples from `start_step` on, in batch order: element i is example
  j = i mod L of step s = start_step + i // L, i.e. element (s·P + p)·L + j of the global
  stream (P processes, L examples each per step), with `index` = p·L + j, its position in
  the global batch."""

  def __init__(self, parent: grain.MapDataset, per_process: int, process_index: int,
               process_count: int, start_step: int):
    super().__init__(parent)
    self._per, self._p, self._count, self._start = (per_process, process_index, process_count,
                                                    start_step)

  def __len__(self) -> int:
    steps = len(self._parent) // (self._per * self._count) - self._start
    return max(0, steps) * self._per

  def __str__(self) -> str:
    return f"ProcessExamples(process={self._p}/{self._count}, start_step={self._start})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, j = divmod(int(index), self._per)
    element = self._parent[((self._start + step) * self._count + self._p) * self._per + j]
    return dict(element, index=np.int32(self._p * self._per + j))


def train_examples(config: ml_collections.ConfigDict) -> grain.MapDataset:
  """The global stream of training examples (mixed, reshuffled each epoch, decoded and
  augmented on access), before any batching or sharding."""
  weights = sources.configured_sources(config)
  host_spec_only = bool(config.data.get("device_augment", False))
  streams = []
  for i, name in enumerate(weights):
    source = sources.get_source(name, "train", config)
    options = sources.source_options(name, config)
    if options.get("balance_by") and options.get("balance_power", 0.5) > 0:
      # The draw is made over the metadata columns (no image read at start-up); the stream
      # then reads the drawn records.
      drawn = balance.Balanced(sources.Metadata(source), options.balance_by,
                               options.get("balance_power", 0.5), seed=config.seed + i)
      source = sources.Subset(source, drawn.indices)
    spec = augment.spec_for(options, config)
    if host_spec_only:  # flip and colour run on the device, keyed per example
      spec = augment.host_only(spec)
    # Each source reshuffles every epoch (grain reseeds its shuffle per pass); augmentation
    # randomness is seeded by the element's index in its source stream: deterministic
    # whatever the worker count.
    streams.append(_Epochs(source, _train_record(source, spec, config.data.image_size, i),
                           shuffle_seed=config.seed + 7919 * i,
                           map_seed=config.seed + 104729 * (i + 1)))
  return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, list(weights.values()))


def train_dataset(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None):
  """The per-process stream of training batches from `start_step` on, as a grain IterDataset.

  Batches hold `image` (uint8 NHWC), `label`, `source_id` (the index of the record's source
  in `configured_sources(config)`) and `index` (int32, each example's position in the
  global batch: the per-example key of device augmentation).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.data.batch_size % process_count:
    raise ValueError(f"data.batch_size={config.data.batch_size} must divide by "
                     f"{process_count} processes")
  per_process = config.data.batch_size // process_count
  ds = _ProcessExamples(train_examples(config), per_process, process_index, process_count,
                        start_step)
  threads, workers = input_parallelism(config)
  # The threads take a few consecutive examples per task: one task per image costs ~20% more
  # CPU per image in hand-offs (measured: 1,932 img/CPU-s on the caller's thread, 1,552 with
  # one prefetch thread). The examples, and so the batches, are the same for any chunk.
  chunk = _chunk_size(per_process) if config.data.prefetch else 1
  if chunk > 1:
    ds = _Chunks(ds, chunk)
  # prefetch counts batches; the threads work ahead over that many examples (prefetch 0:
  # none, each example decoded on the caller's thread when asked for).
  buffer = max(config.data.prefetch * per_process // chunk, threads) if config.data.prefetch else 0
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer))
  if workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a library caller parsed none
      flags.FLAGS.mark_as_parsed()
    # Each worker maps every `workers`-th example; they come back interleaved in order, so
    # the batches are the same for any worker count.
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, -(-per_process // workers))))
  if chunk > 1:
    return it.batch(per_process // chunk, drop_remainder=True, batch_fn=_stack_chunks)
  return it.batch(per_process, drop_remainder=True)


def _chunk_size(per_process: int, most: int = 8) -> int:
  return max(c for c in range(1, most + 1) if per_process % c == 0)


def _stack_chunks(chunks):
  """The batch of the chunks' examples, stacked once (as grain's own batch would)."""
  examples = [e for chunk in chunks for e in chunk]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class _Chunks(grain.MapDataset):
  """Element k: examples k·c … k·c + c - 1 of the parent, as a tuple (one task per c)."""

  def __init__(self, parent: grain.MapDataset, chunk: int):
    super().__init__(parent)
    self._c = chunk

  def __len__(self) -> int:
    return len(self._parent) // self._c

  def __str__(self) -> str:
    return f"Chunks({self._c})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return tuple(self._parent[int(index) * self._c + j] for j in range(self._c))
