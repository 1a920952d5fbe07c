"""Input pipeline throughput: decode + augment + batch at 224 px, grain beside plain tf.data.

  python benchmarks/input_pipeline.py [--folder ../shared/data/utkface-2k] [--data_dir DIR]

Prepares the folder (cached), then runs the same work three ways on one thread each:
  grain/array_record  the training pipeline (pipeline.train_dataset) over the prepared split
  grain/in-memory     the same grain pipeline over the JPEG bytes held in memory
  tf.data/in-memory   tf.io.decode_jpeg + sample_distorted_bounding_box crop (same area and
                      aspect ranges) + bilinear resize + flip + batch, from the same bytes
and prints images/s of wall time and images per CPU-second (the per-core figure: CPU time
of every thread of the process, so it is fair on a shared machine).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULT_FOLDER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-2k"


def _measure(name, iterator, batches, batch_size, warmup=2):
  it = iter(iterator)
  for _ in range(warmup):
    next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    b = next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  shape = b["image"].shape if isinstance(b, dict) else b[0].shape
  n = batches * batch_size
  print(f"{name:<22}{n / wall:>10.1f}{n / cpu:>14.1f}   batch {tuple(shape)}", flush=True)
  return n / wall, n / cpu


def _config(options, size, batch_size):
  from configs.common import get_base_config
  config = get_base_config()
  with config.unlocked():
    config.data.sources["folder"] = options
    config.data.update(dict(image_size=size, batch_size=batch_size, read_threads=1,
                            prefetch=0, num_workers=0))
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


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "gender_jax_bench"))
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=15)
  args = parser.parse_args(argv)

  from gender_jax.data import prepare, sources
  t0 = time.perf_counter()
  b = prepare.prepare("folder", args.folder, args.data_dir)
  print(f"prepared {args.folder} in {time.perf_counter() - t0:.1f} s (cached after the first run)")
  options = dict(path=args.folder, data_dir=args.data_dir, weight=1.0, flip=True,
                 crop="random_resized", crop_scale=(0.6, 1.0))
  config = _config(options, args.image_size, args.batch_size)
  train = sources.get_source("folder", "train", config)
  records = [train[i] for i in range(len(train))]
  print(f"{len(records)} train images from {b.data_path}; {os.cpu_count()} CPU cores visible; "
        f"one pipeline thread each")
  print(f"{'pipeline':<22}{'img/s wall':>10}{'img/CPU-s':>14}")
  _measure("grain/array_record", grain_pipeline(config), args.batches, args.batch_size)

  sources.register("bench_memory")(lambda split, o, c: records)
  mem_config = _config(options, args.image_size, args.batch_size)
  with mem_config.unlocked():
    mem_config.data.sources = {"bench_memory": dict(options)}
  _measure("grain/in-memory", grain_pipeline(mem_config), args.batches, args.batch_size)

  images = np.array([r["image"] for r in records], dtype=object)
  labels = np.array([r["label"] for r in records], np.int32)
  _measure("tf.data/in-memory", tf_pipeline(images, labels, args.image_size, args.batch_size),
           args.batches, args.batch_size)


if __name__ == "__main__":
  main()
