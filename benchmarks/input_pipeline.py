"""Input pipeline throughput, grain beside plain tf.data, per core, at several sizes.

  python benchmarks/input_pipeline.py [--folder ../shared/data/utkface-2k] [--data-dir DIR]
      [--sizes 224,112] [--batch_size 64] [--batches 12] [--json results/input.json]

Prepares the folder (cached; at each size also a copy stored at ~1.15x that size), then, at
each size, runs:
  tf.data/in-memory      tf.io.decode_and_crop_jpeg on a sample_distorted_bounding_box crop
                         (same area and aspect ranges) + bilinear resize + flip, one thread
  grain/in-memory        the training pipeline over the same JPEG bytes held in memory
  grain                  the training pipeline (pipeline.train_dataset) over array_record
  grain +host colour     the same with colour jitter 0.4 and grayscale 0.1 on the host
                         (data.device_augment off: what moving them to the device saves)
  grain host share       data.device_augment on: the host only decodes, crops, resizes
    … on one read thread (the consumer apart, as with more), ×2 threads, 1 worker,
      2 workers (processes; one thread each)
  grain stored           host share over the copy stored at ~1.15x the size
  … PIL backend          host share with data.image_backend="pil" (PIL decode and resize;
                         the default "opencv" is libjpeg-turbo + OpenCV), 1 and 2 threads
Prints images/s of wall time and images per CPU-second (CPU time of the process and of its
worker processes: the per-core figure, fair on a machine shared with other jobs), as a
Markdown table; --json writes every row with the machine's load.

  python benchmarks/input_pipeline.py --startup FOLDER [--data-dir DIR] [--config configs/utkface.py]

times instead the data work of a training launch on FOLDER, in a fresh process (prepared
first if needed): the sanity counts, the train and validation sizes, the bad-file report and
split listing, the training stream and its first batch.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULT_FOLDER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-2k"
HOST_COLOUR = dict(color_jitter=0.4, grayscale=0.1)


def _cpu_seconds() -> float:
  """CPU time of this process and its live children (grain workers)."""
  import psutil
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
      pass
  return total


def _measure(iterator, batches, batch_size, warmup=2):
  it = iter(iterator)
  for _ in range(warmup):  # also starts any worker processes
    next(it)
  wall, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(batches):
    b = next(it)
  wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  if hasattr(it, "close"):
    it.close()  # stops worker processes before the next row is timed
  shape = b["image"].shape if isinstance(b, dict) else b[0].shape
  n = batches * batch_size
  return dict(img_s_wall=n / wall, img_per_cpu_s=n / cpu, batch=list(shape))


def _config(sources_dict, size, batch_size, threads=1, workers=0, prefetch=None, **data):
  """prefetch None: 0 (decode on the caller's thread) for one thread and no worker, else 2."""
  from configs.common import get_base_config
  config = get_base_config()
  if prefetch is None:
    prefetch = 0 if threads == 1 and not workers else 2
  with config.unlocked():
    for name, options in sources_dict.items():
      config.data.sources[name] = options
    config.data.update(dict(image_size=size, batch_size=batch_size, read_threads=threads,
                            prefetch=prefetch, num_workers=workers))
    config.data.update(data)
  return config


def grain_pipeline(config):
  from gender_jax.data import pipeline
  return pipeline.train_dataset(config, process_index=0, process_count=1)


def tf_pipeline(images, labels, size, batch_size, seed=0):
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.set_visible_devices([], "GPU")

  def augment(data, label, index):
    seeds = tf.stack([tf.cast(index, tf.int32), tf.constant(seed, tf.int32)])
    shape = tf.io.extract_jpeg_shape(data)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([1, 0, 4]), seed=seeds, area_range=(0.6, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(crop)
    image = tf.io.decode_and_crop_jpeg(data, tf.stack([y, x, h, w]), channels=3)
    image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seeds + 1)
    return tf.cast(tf.clip_by_value(image + 0.5, 0, 255), tf.uint8), label

  ds = tf.data.Dataset.from_tensor_slices((images, labels, np.arange(len(images))))
  ds = ds.shuffle(len(images), seed=seed).repeat()
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.autotune.enabled = False
  ds = ds.map(augment, num_parallel_calls=1).batch(batch_size, drop_remainder=True)
  return ds.with_options(options).as_numpy_iterator()


def rows_for_size(size, args, folder_options, records):
  """(name, threads, workers, iterator factory) for one image size."""
  from gender_jax.data import prepare
  b, n = args.batch_size, size
  device = dict(device_augment=True)
  folder = {"folder": folder_options}
  memory = {"bench_memory": dict(folder_options)}
  stored = {"folder": dict(folder_options, store_size=prepare.store_size_for(size))}
  images = np.array([r["image"] for r in records], dtype=object)
  labels = np.array([r["label"] for r in records], np.int32)
  return [
      ("tf.data/in-memory", 1, 0, lambda: tf_pipeline(images, labels, n, b)),
      ("grain/in-memory", 1, 0, lambda: grain_pipeline(_config(memory, n, b))),
      ("grain", 1, 0, lambda: grain_pipeline(_config(folder, n, b))),
      ("grain +host colour", 1, 0, lambda: grain_pipeline(_config(
          {"folder": dict(folder_options, **HOST_COLOUR)}, n, b))),
      ("grain host share", 1, 0, lambda: grain_pipeline(_config(folder, n, b, **device))),
      ("grain host share, read thread", 1, 0, lambda: grain_pipeline(_config(
          folder, n, b, 1, prefetch=2, **device))),
      ("grain host share", 2, 0, lambda: grain_pipeline(_config(folder, n, b, 2, **device))),
      ("grain host share", 1, 1, lambda: grain_pipeline(_config(folder, n, b, 1, 1, **device))),
      ("grain host share", 1, 2, lambda: grain_pipeline(_config(folder, n, b, 1, 2, **device))),
      (f"grain stored {prepare.store_size_for(size)}px", 1, 0,
       lambda: grain_pipeline(_config(stored, n, b, **device))),
      ("grain host share, PIL backend", 1, 0, lambda: grain_pipeline(_config(
          folder, n, b, image_backend="pil", **device))),
      ("grain host share, PIL backend", 2, 0, lambda: grain_pipeline(_config(
          folder, n, b, 2, image_backend="pil", **device))),
  ]


STARTUP = """
import importlib.util, os, sys, tempfile, time
sys.path.insert(0, {repo!r})
spec = importlib.util.spec_from_file_location("bench_config", {config!r})
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
from gender_jax.train import preflight
from gender_jax.data import pipeline, sources
config = module.get_config()
with config.unlocked():
  config.data.folder, config.data.data_dir = {folder!r}, {data_dir!r}
marks, t = {{}}, time.perf_counter()
def mark(name):
  global t
  marks[name] = time.perf_counter() - t
  t = time.perf_counter()
preflight.log_data_sanity(config); mark("sanity counts")
names = sources.configured_sources(config)
sum(len(sources.get_source(n, "train", config)) for n in names)
[sources.get_source(n, "validation", config) for n in names]; mark("sizes")
workdir = tempfile.mkdtemp()
sources.write_bad_file_report(config, workdir)
sources.write_split_listing(config, workdir); mark("reports + listing")
it = iter(pipeline.train_dataset(config, process_index=0, process_count=1)); mark("stream")
next(it); mark("first batch")
print("|".join(f"{{k}}={{v:.2f}}" for k, v in marks.items()))
"""


def startup(args) -> dict:
  import subprocess
  from gender_jax.data import prepare
  prepare.prepare("folder", args.startup, args.data_dir)  # not part of a start: done once
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  code = STARTUP.format(repo=repo, config=os.path.abspath(args.config), folder=args.startup,
                        data_dir=args.data_dir)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  marks = dict(item.split("=") for item in out.stdout.strip().splitlines()[-1].split("|"))
  marks = {k: float(v) for k, v in marks.items()}
  print("data work of a launch, fresh process: " + "; ".join(
      f"{k} {v:.2f} s" for k, v in marks.items()) + f"; total {sum(marks.values()):.2f} s "
      f"(load average {os.getloadavg()[0]:.1f})")
  return marks


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
  parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "gender_jax_bench"))
  parser.add_argument("--sizes", default="224,112", help="comma-separated image sizes")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--json", default="", help="write every row here")
  parser.add_argument("--startup", default="", help="time a launch's data work on this folder")
  parser.add_argument("--config", default=str(pathlib.Path(__file__).resolve().parents[1] /
                                             "configs" / "utkface.py"),
                      help="the config whose data section --startup uses")
  args = parser.parse_args(argv)
  if args.startup:
    return startup(args)
  sizes = [int(s) for s in args.sizes.split(",")]

  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read its absl flags
  from gender_jax.data import prepare, sources
  t0 = time.perf_counter()
  b = prepare.prepare("folder", args.folder, args.data_dir)
  for size in sizes:
    prepare.prepare("folder", args.folder, args.data_dir,
                    store_size=prepare.store_size_for(size))
  print(f"prepared {args.folder} ({', '.join(f'stored at {prepare.store_size_for(s)} px' for s in sizes)}"
        f" too) in {time.perf_counter() - t0:.1f} s (cached after the first run)")
  options = dict(path=args.folder, data_dir=args.data_dir, weight=1.0, flip=True,
                 crop="random_resized", crop_scale=(0.6, 1.0))
  config = _config({"folder": options}, sizes[0], args.batch_size)
  train = sources.get_source("folder", "train", config)
  records = [train[i] for i in range(len(train))]
  sources.register("bench_memory")(lambda split, o, c: records)
  load = os.getloadavg()
  print(f"{len(records)} train images from {b.data_path}; {os.cpu_count()} CPU cores visible; "
        f"load average {load[0]:.1f} (other jobs share this machine)")
  print("| size | pipeline | threads | workers | img/s wall | img/CPU-s |")
  print("|---|---|---|---|---|---|")
  results = []
  for size in sizes:
    for name, threads, workers, make in rows_for_size(size, args, options, records):
      row = dict(size=size, pipeline=name, threads=threads, workers=workers,
                 **_measure(make(), args.batches, args.batch_size))
      results.append(row)
      print(f"| {size} | {name} | {threads} | {workers} | {row['img_s_wall']:.0f} | "
            f"{row['img_per_cpu_s']:.0f} |", flush=True)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(dict(rows=results, args=vars(args), cpu_count=os.cpu_count(),
                     load_average_start=load, load_average_end=os.getloadavg(),
                     python=platform.python_version()), f, indent=2)
  return results


if __name__ == "__main__":
  main()
