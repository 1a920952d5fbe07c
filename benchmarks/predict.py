"""Inference throughput: the bundle's jitted logits function beside torchvision eager.

  python benchmarks/predict.py                           # ResNet-50, batches 1, 32, 256, 224 px
  python benchmarks/predict.py --arch resnet18 --batches 1,32,256 --json predict.json
  python benchmarks/predict.py --arch resnet_tiny --size 32 --batches 1,8 --steps 3 --no-peer

gender_jax: an inference bundle (random weights, written with `save_bundle` to a temporary
directory unless --bundle names one) loaded with `Bundle(dir, compute_dtype)`, its
`logits_fn()` — uint8 NHWC in, normalisation and the eval-mode model inside — under
`jax.jit`, on uint8 batches already on the device. torch eager: the torchvision model of the
same name in eval mode under `inference_mode`, bf16 autocast, channels_last, normalising the
same uint8 NHWC batch inside the call. For each batch size: img/s over back-to-back calls
(the throughput a full queue sees) and the median latency of one call waited on alone.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import common  # noqa: I001 — sets the environment before JAX starts
import jax
import numpy as np

COLUMNS = [("batch", "batch", ""), ("impl", "implementation", ""), ("img_s", "img/s", ",.0f"),
           ("latency_ms", "latency ms", ".2f"), ("x_eager", "× eager", ".2f"),
           ("compile_s", "compile s", ".1f")]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="resnet50")
  p.add_argument("--bundle", help="an inference bundle directory (default: random weights)")
  p.add_argument("--size", type=int, default=224, help="image size (ignored with --bundle)")
  p.add_argument("--batches", default="1,32,256", help="comma-separated batch sizes")
  p.add_argument("--steps", type=int, default=30, help="timed calls per batch size")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--dtype", default="auto")
  p.add_argument("--no-peer", dest="peer", action="store_false")
  p.add_argument("--json", help="write the results here")
  args = p.parse_args(argv)
  try:
    args.batch_sizes = [int(b) for b in args.batches.split(",") if b]
  except ValueError:
    p.error(f"--batches {args.batches!r}: expected comma-separated integers")
  if not args.batch_sizes or min(args.batch_sizes) < 1 or args.steps < 1:
    p.error("--batches and --steps must be ≥ 1")
  return args


def make_bundle(directory: str, arch: str, size: int, compute_dtype: str) -> str:
  import ml_collections
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  model_config = dict(arch=arch, num_classes=2, compute_dtype=compute_dtype)
  model = create_model(ml_collections.ConfigDict(model_config))
  model.eval()
  save_bundle(directory, model, model_config=model_config,
                         preprocessing=preprocess.make_spec(size))
  return directory


def time_calls(call, sync, warmup: int, steps: int) -> dict[str, float]:
  """Back-to-back throughput, then the median of single waited-on calls."""
  for _ in range(warmup):
    sync(call())
  start = time.perf_counter()
  for _ in range(steps):
    out = call()
  sync(out)
  per_call = (time.perf_counter() - start) / steps
  latencies = []
  for _ in range(min(steps, 20)):
    start = time.perf_counter()
    sync(call())
    latencies.append(time.perf_counter() - start)
  return dict(per_call_s=per_call, latency_ms=float(np.median(latencies)) * 1e3)


def bench_jax(bundle, batch_size: int, args) -> dict:
  logits, state = bundle.logits_fn()
  device = jax.devices()[0]
  state = jax.device_put(state, device)
  key = jax.random.key(batch_size)
  images = jax.jit(lambda: jax.random.randint(
      key, (batch_size, bundle.image_size, bundle.image_size, 3), 0, 256).astype(np.uint8))()
  fn = jax.jit(logits)
  start = time.perf_counter()
  compiled = fn.lower(state, images).compile()
  compile_s = time.perf_counter() - start
  t = time_calls(lambda: compiled(state, images), jax.block_until_ready, args.warmup, args.steps)
  return dict(impl="gender_jax", compile_s=compile_s, **t)


def bench_torch_eager(torch, model, spec, batch_size: int, size: int, compute_dtype: str, args):
  images, _ = common.torch_batch(torch, batch_size, size)

  def call():
    with torch.inference_mode(), common.torch_autocast(torch, compute_dtype):
      return model(common.torch_normalize(torch, images, spec, torch.float32))
  t = time_calls(call, lambda _: common.torch_sync(torch), args.warmup, args.steps)
  return dict(impl="torch eager", **t)


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.device_info(with_torch=args.peer)  # torch before anything imports TensorFlow
  from gender_jax.inference.bundle import Bundle
  compute_dtype = common.resolve_dtype(args.dtype)
  with tempfile.TemporaryDirectory(prefix="predict_bench_") as tmp:
    bundle_dir = args.bundle or make_bundle(os.path.join(tmp, "bundle"), args.arch, args.size,
                                            compute_dtype)
    bundle = Bundle(bundle_dir, compute_dtype=compute_dtype)
  arch, size = bundle.model_config.arch, bundle.image_size
  print(f"{arch} inference at {size} px, {compute_dtype}, on {info['device_kind']} "
        f"({info['platform']})", flush=True)

  torch = model = None
  if args.peer:
    torch = common.import_torch()
    if torch is None:
      print(f"  torch eager skipped: {common.torch_skip_reason()}")
    else:
      model = common.torchvision_model(arch, len(bundle.class_names))
      if model is None:
        print(f"  torch eager skipped: torchvision has no {arch}")
      else:
        model = model.to(common.torch_device(torch), memory_format=torch.channels_last).eval()

  rows = []
  for batch_size in args.batch_sizes:
    jax_row = bench_jax(bundle, batch_size, args)
    batch_rows = [jax_row]
    if model is not None:
      batch_rows.append(bench_torch_eager(torch, model, bundle.preprocessing, batch_size, size,
                                          compute_dtype, args))
    for r in batch_rows:
      r.update(arch=arch, batch=batch_size, size=size, dtype=compute_dtype,
               img_s=batch_size / r["per_call_s"])
    if len(batch_rows) > 1:
      jax_row["x_eager"] = jax_row["img_s"] / batch_rows[1]["img_s"]
    rows += batch_rows
    print(f"  batch {batch_size}: " + ", ".join(f"{r['impl']} {r['img_s']:,.0f} img/s"
                                                  for r in batch_rows), flush=True)
  return common.report("predict", rows, COLUMNS, info, args)


if __name__ == "__main__":
  main()
