"""Exported model size and single-image CPU latency, per format, beside JAX itself.

  python benchmarks/export.py [--bundle WORKDIR/bundle] [--arch resnet18 --size 64]
                              [--images ../shared/data/utkface-2k] [--threads 1] [--runs 200]
                              [--out export_benchmark.json]

Without --bundle a bundle of `--arch` with random weights at `--size` px is written to a
temporary directory (size and latency do not depend on the weight values). Each format is
written with `gender_jax.export.export` — so each also passes through its parity check —
then timed on one image at a time: median and 90th percentile of `--runs` calls after a
warm-up, and the process CPU time per call, the runtime limited to `--threads` threads (LiteRT, onnxruntime, TensorFlow's
intra-op pool; JAX/XLA:CPU has no such knob and uses what it finds). Random weights make
int8 label agreement meaningless (no decisions to keep), so parity failures are reported in
the table instead of stopping the run.
Prints a Markdown table and writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULT_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-2k"

# (name, format, quantization, batch): batch 1 for TFLite (BatchNorm fuses into the convs),
# dynamic for the server formats, as the export command's defaults.
VARIANTS = (
    ("tflite float32", "tflite", "float32", 1),
    ("tflite float16", "tflite", "float16", 1),
    ("tflite dynamic-range", "tflite", "dynamic_range", 1),
    ("tflite int8", "tflite", "int8", 1),
    ("SavedModel", "saved_model", "float32", None),
    ("ONNX", "onnx", "float32", None),
)


def make_bundle(directory, arch: str, size: int) -> str:
  import ml_collections
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  model_config = dict(arch=arch, num_classes=2, compute_dtype="float32")
  model = create_model(ml_collections.ConfigDict(model_config))
  # The head starts at zero (every probability 0.5); random head weights give the parity
  # check something to compare.
  rng = np.random.default_rng(0)
  model.fc.kernel[...] = rng.normal(0, 0.05, model.fc.kernel.shape).astype(np.float32)
  model.eval()
  save_bundle(directory, model, model_config=model_config,
                         preprocessing=preprocess.make_spec(size))
  return directory


def time_calls(fn, image, runs: int, warmup: int = 10) -> dict[str, float]:
  for _ in range(warmup):
    fn(image)
  times = []
  cpu = time.process_time()
  for _ in range(runs):
    start = time.perf_counter()
    fn(image)
    times.append(time.perf_counter() - start)
  cpu = (time.process_time() - cpu) / runs
  times = np.array(times) * 1e3
  # CPU time per call (all threads of this process) barely moves when other jobs share the
  # cores, while wall time does: on a busy machine read the cpu column.
  return dict(median_ms=float(np.median(times)), p90_ms=float(np.percentile(times, 90)),
              cpu_ms=float(cpu * 1e3))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--bundle")
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--images", default=str(DEFAULT_IMAGES),
                      help="folder for int8 calibration and the parity check (else synthetic)")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--runs", type=int, default=200)
  parser.add_argument("--only", help="comma-separated variant names to run (default: all)")
  parser.add_argument("--out", default="export_benchmark.json")
  args = parser.parse_args(argv)

  import jax
  import tensorflow as tf
  from gender_jax import export
  from gender_jax.inference.bundle import Bundle
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)

  tmp = tempfile.mkdtemp(prefix="export_bench_")
  bundle_dir = args.bundle or make_bundle(os.path.join(tmp, "bundle"), args.arch, args.size)
  bundle = Bundle(bundle_dir, compute_dtype="float32")
  size = bundle.image_size
  images_dir = args.images if pathlib.Path(args.images).is_dir() else None
  if images_dir:
    _, sample = export.sample_images(images_dir, size, calibration=0, check=1)
  else:
    images_dir = os.path.join(tmp, "images")
    from PIL import Image
    os.makedirs(os.path.join(images_dir, "any"))
    for i, img in enumerate(export.synthetic_images(264, size)):
      Image.fromarray(img).save(os.path.join(images_dir, "any", f"{i}.png"))
    sample = export.synthetic_images(1, size, seed=1)

  rows = []
  probs = bundle.probs_fn()
  rows.append(dict(name="JAX (jit, XLA:CPU)", format="jax", quantization="float32",
                   size_mb=None, parity="reference",
                   **time_calls(lambda x: jax.block_until_ready(probs(x)), sample, args.runs)))
  only = set(args.only.split(",")) if args.only else None
  for name, fmt, quantization, batch in VARIANTS:
    if only and name not in only:
      continue
    out = pathlib.Path(tmp) / {"tflite": f"{quantization}.tflite", "saved_model": "saved_model",
                               "onnx": "model.onnx"}[fmt]
    try:
      result = export.export(bundle_dir, fmt, out, quantization=quantization, batch=batch,
                             calibration_dir=images_dir if quantization == "int8" else None,
                             check_dir=images_dir, log=lambda *a: None)
      p = result["parity"]
      parity = f"max |Δp| {p['max_abs_prob_diff']:.1e}, labels {p['label_agreement']:.0%}"
    except export.ParityError as e:
      parity = "FAILED: " + str(e).split(": ", 1)[1].split(". Do not")[0]
    run = export.load_runtime(fmt, out, num_threads=args.threads)
    rows.append(dict(name=name, format=fmt, quantization=quantization,
                     size_mb=export._size(out) / 1e6, parity=parity,
                     **time_calls(run, sample, args.runs)))
    print(f"{name}: {rows[-1]['size_mb']:.2f} MB, {rows[-1]['median_ms']:.2f} ms", flush=True)

  print(f"\n{bundle.model_config.arch} at {size} px, one image per call, {args.threads} "
        f"thread(s), {args.runs} calls; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs ({_cpu_name()})\n")
  print("| format | size (MB) | latency median (ms) | p90 (ms) | CPU ms / call | parity vs JAX |")
  print("|---|---:|---:|---:|---:|---|")
  for r in rows:
    size_mb = "—" if r["size_mb"] is None else f"{r['size_mb']:.2f}"
    print(f"| {r['name']} | {size_mb} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
          f"{r['cpu_ms']:.2f} | {r['parity']} |")
  report = dict(arch=bundle.model_config.arch, image_size=size, threads=args.threads,
                runs=args.runs, cpu=_cpu_name(), load_average=os.getloadavg(), rows=rows)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nwrote {args.out}")
  return 0


def _cpu_name() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown"


if __name__ == "__main__":
  sys.exit(main())
