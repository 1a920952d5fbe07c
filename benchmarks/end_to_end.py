"""End to end: the trainer's step fed by its input pipeline from disk, against the same step
on a batch already on the device — the fraction of step throughput the input sustains.

  python benchmarks/end_to_end.py                          # ResNet-18, 224 px, batch 256
  python benchmarks/end_to_end.py --arch resnet50 --workers 15 --json e2e.json
  python benchmarks/end_to_end.py --arch resnet_tiny --batch 8 --size 32 --steps 3
  python benchmarks/end_to_end.py --prepared DIR      # a prepared copy, opened without TFDS

The dataset is a folder (male/, female/) prepared once with the project's folder builder
(JPEG array_record, cached under --data-dir), or with --prepared a copy of such a prepared
folder made elsewhere (the `prepared` source: no TFDS or TensorFlow on this host). Three
measurements in one process:
  pipeline   `pipeline.train_dataset` alone: read, JPEG decode, random-resized crop, flip,
             batch, on the host (grain: --read_threads threads, --workers processes)
  disk       the trainer's loop: next batch → `parallel.put_batch` → jitted step, at most
             `trainer.MAX_STEPS_IN_FLIGHT` steps ahead
  synthetic  the same loop and compiled step on one real batch kept on the device
and where the disk run's wall time went: waiting for the next batch from the pipeline,
transferring it, dispatching the step, waiting for the device.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import common  # noqa: I001 — sets the environment before JAX starts
import jax

COLUMNS = [("run", "run", ""), ("img_s", "img/s", ",.1f"), ("fraction", "of synthetic", ".1%"),
           ("read_pct", "waiting for batch", ".1%"), ("transfer_pct", "host→device", ".1%"),
           ("dispatch_pct", "dispatch", ".1%"), ("device_pct", "waiting for device", ".1%")]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--folder", default=str(common.DEFAULT_FOLDER),
                 help="image folder with male/ and female/ (optional labels.csv)")
  p.add_argument("--prepared", help="a prepared dataset's folder (its .array_record files and "
                 "index), read as is instead of preparing --folder")
  p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "gender_jax_bench"),
                 help="where the prepared copy is cached")
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--steps", type=int, default=50, help="timed steps per run")
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--dtype", default="auto")
  p.add_argument("--devices", type=int, default=1, help="mesh size (0: every device)")
  p.add_argument("--workers", type=int, help="grain worker processes (default: the config's)")
  p.add_argument("--read_threads", type=int, help="grain read threads (default: the config's)")
  p.add_argument("--prefetch", type=int, help="grain prefetch buffer (default: the config's)")
  p.add_argument("--json", help="write the results here")
  args = p.parse_args(argv)
  if args.prepared and not os.path.isdir(args.prepared):
    p.error(f"--prepared {args.prepared}: not a directory")
  if not args.prepared and not os.path.isdir(args.folder):
    p.error(f"--folder {args.folder}: not a directory")
  if args.steps < 1 or args.batch < 1:
    p.error("--steps and --batch must be ≥ 1")
  return args


def make_config(args):
  config = common.train_config(args.arch, args.batch, args.size, common.resolve_dtype(args.dtype))
  if args.prepared:
    config.data.sources["prepared"] = dict(path=os.path.abspath(args.prepared), weight=1.0)
  else:
    config.data.folder = os.path.abspath(args.folder)
  config.data.data_dir = os.path.abspath(args.data_dir)
  for key in ("workers", "read_threads", "prefetch"):
    value = getattr(args, key)
    if value is not None:
      config.data["num_workers" if key == "workers" else key] = value
  return config


def main(argv=None) -> dict:
  args = parse_args(argv)
  from gender_jax import parallel
  from gender_jax.train import loop as trainer
  from gender_jax.data import pipeline, prepare, sources

  info = common.device_info(with_torch=False)
  config = make_config(args)
  start = time.perf_counter()
  name = "prepared" if args.prepared else "folder"
  if not args.prepared:
    prepare.prepare("folder", config.data.folder, config.data.data_dir)
  num_train = len(sources.get_source(name, "train", config))
  print(f"{args.prepared or args.folder}: {num_train} train images, prepared/opened in "
        f"{time.perf_counter() - start:.1f} s; {args.arch}, batch {args.batch}, {args.size} px "
        f"on {info['device_kind']} ({info['platform']}); grain workers "
        f"{config.data.num_workers}, read threads {config.data.read_threads}, prefetch "
        f"{config.data.prefetch}; {os.cpu_count()} CPU cores", flush=True)

  mesh = parallel.create_mesh(args.devices or None)
  parallel.local_batch_size(args.batch, mesh)
  setup = common.create_train_setup(config, mesh, total_steps=10**6)
  state = jax.jit(setup.init_state, out_shardings=setup.state_sharding)()
  max_in_flight = trainer.MAX_STEPS_IN_FLIGHT

  # ---- the pipeline alone, from a different part of the stream than the disk run reads
  pipeline_only = iter(pipeline.train_dataset(config, start_step=10**5))
  next(pipeline_only)
  start = time.perf_counter()
  for _ in range(args.steps):
    next(pipeline_only)
  pipeline_img_s = args.steps * args.batch / (time.perf_counter() - start)
  del pipeline_only

  # ---- disk: the trainer's loop, reading from the start of the stream
  it = iter(pipeline.train_dataset(config))
  timer = common.Timer()

  def next_batch():
    with timer("read"):
      batch = next(it)
    return parallel.put_batch(batch, mesh)

  first = next_batch()
  start = time.perf_counter()
  compiled = setup.train_step.lower(state, first).compile()
  compile_s = time.perf_counter() - start
  state = common.run_steps(compiled, state, next_batch, args.warmup, max_in_flight)
  timer = common.Timer()
  start = time.perf_counter()
  state = common.run_steps(compiled, state, next_batch, args.steps, max_in_flight, timer)
  disk_s = time.perf_counter() - start

  # ---- synthetic: the same compiled step on one batch kept on the device
  state = common.run_steps(compiled, state, lambda: first, args.warmup, max_in_flight)
  synth_timer = common.Timer()
  start = time.perf_counter()
  state = common.run_steps(compiled, state, lambda: first, args.steps, max_in_flight, synth_timer)
  synthetic_s = time.perf_counter() - start

  n = args.steps * args.batch
  synthetic = dict(run="synthetic (on device)", img_s=n / synthetic_s, fraction=1.0,
                   **_shares(synth_timer, synthetic_s))
  disk = dict(run="from disk", img_s=n / disk_s, fraction=synthetic_s / disk_s,
              **_shares(timer, disk_s))
  pipe = dict(run="pipeline alone (host)", img_s=pipeline_img_s,
              fraction=pipeline_img_s / synthetic["img_s"])
  rows = [synthetic, disk, pipe]
  print()
  print(common.format_table(rows, COLUMNS))
  verdict = _verdict(disk["fraction"], disk, pipe, config)
  print("\n" + verdict)
  if info["platform"] == "cpu":
    print("CPU numbers (XLA:CPU step, host pipeline on the same cores): not what a GPU run shows.")
  payload = dict(benchmark="end_to_end", device=info, args=vars(args), compile_s=compile_s,
                 num_train=num_train, grain=dict(num_workers=config.data.num_workers,
                                                 read_threads=config.data.read_threads,
                                                 prefetch=config.data.prefetch,
                                                 resolved=dict(zip(
                                                     ("read_threads", "num_workers"),
                                                     pipeline.input_parallelism(config)))),
                 rows=rows, verdict=verdict)
  common.write_json(args.json, payload)
  return payload


def _shares(timer, total: float) -> dict[str, float]:
  t = timer.totals
  return dict(read_pct=t["read"] / total, transfer_pct=(t["data"] - t["read"]) / total,
              dispatch_pct=t["dispatch"] / total, device_pct=t["device"] / total)


def _verdict(fraction, disk, pipe, config) -> str:
  if fraction >= 0.9:
    return f"input keeps up: {fraction:.0%} of the synthetic-batch rate (target ≥ 90%)."
  if disk["read_pct"] > disk["device_pct"]:
    return (f"input-bound: {fraction:.0%} of the synthetic rate; the loop waited for the next "
            f"batch {disk['read_pct']:.0%} of the time. The pipeline alone makes "
            f"{pipe['img_s']:,.0f} img/s, {pipe['fraction']:.0%} of what the step consumes: "
            f"raise --workers (now {config.data.num_workers}) or store images pre-resized "
            "near the training size.")
  return (f"{fraction:.0%} of the synthetic rate, but the loop mostly waited for the device "
          f"({disk['device_pct']:.0%}): the host pipeline competes with the step for the same "
          "cores (XLA:CPU), or host→device transfer is slow.")


if __name__ == "__main__":
  main()
